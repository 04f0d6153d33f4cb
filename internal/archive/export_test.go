package archive

// ReadSegmentFrom reads a segment's content from r, as ReadSegment reads it from the store.
var ReadSegmentFrom = readSegment
