#!/usr/bin/env bash
# Builds (once) kwok, which simulates nodes and pod lifecycles against the test apiserver, from the
# Go module proxy, cached outside the checkout. Prints the binary's path.
set -euo pipefail
VERSION=${KWOK_VERSION:-0.8.0}
data_dir=${XDG_DATA_HOME:-$HOME/.local/share}
dest="$data_dir/runservice/tools/kwok-v$VERSION"
if [ ! -x "$dest/kwok" ]; then
  echo "kwok: building kwok v$VERSION (first time only)" >&2
  mkdir -p "$dest"
  GOBIN="$dest" CGO_ENABLED=0 GOFLAGS=-buildvcs=false go install "sigs.k8s.io/kwok/cmd/kwok@v$VERSION" >&2
fi
echo "$dest/kwok"
