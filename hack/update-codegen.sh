#!/usr/bin/env bash
# Generates the typed clientset, listers and informers under pkg/client with k8s.io/code-generator
# (the version pinned in go.mod as a tool).
set -euo pipefail
cd "$(dirname "$0")/.."

module=$(go list -m)
header=hack/boilerplate.go.txt
api="$module/api/v1alpha1"
out=pkg/client

rm -rf "$out"
go tool client-gen --go-header-file "$header" --clientset-name versioned \
  --input-base "$module" --input api/v1alpha1 \
  --output-pkg "$module/$out/clientset" --output-dir "$out/clientset"
go tool lister-gen --go-header-file "$header" \
  --output-pkg "$module/$out/listers" --output-dir "$out/listers" "$api"
go tool informer-gen --go-header-file "$header" \
  --versioned-clientset-package "$module/$out/clientset/versioned" \
  --listers-package "$module/$out/listers" \
  --output-pkg "$module/$out/informers" --output-dir "$out/informers" "$api"
