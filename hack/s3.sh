#!/usr/bin/env bash
# Builds (once) versitygw, the S3 server the tests use for the object store's s3:// path, from the Go
# module proxy, cached outside the checkout. Prints the binary's path.
set -euo pipefail
VERSION=${VERSITYGW_VERSION:-1.8.0}
data_dir=${XDG_DATA_HOME:-$HOME/.local/share}
dest="$data_dir/runservice/tools/versitygw-v$VERSION"
if [ ! -x "$dest/versitygw" ]; then
  echo "s3: building versitygw v$VERSION (first time only)" >&2
  mkdir -p "$dest"
  GOBIN="$dest" CGO_ENABLED=0 GOFLAGS=-buildvcs=false go install "github.com/versity/versitygw/cmd/versitygw@v$VERSION" >&2
fi
echo "$dest/versitygw"
