# The manager image: a static binary FROM scratch (no base image to pull).
# Build the binary first: CGO_ENABLED=0 go build -o bin/manager ./cmd/manager
FROM scratch
COPY bin/manager /manager
USER 65532:65532
ENTRYPOINT ["/manager"]
