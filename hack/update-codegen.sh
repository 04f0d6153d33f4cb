#!/usr/bin/env bash
# Generates the typed clientset, listers and informers under pkg/client with k8s.io/code-generator,
# and the OpenAPI definitions the archive API server publishes under pkg/generated/openapi with
# k8s.io/kube-openapi (the versions pinned in go.mod as tools).
set -euo pipefail
cd "$(dirname "$0")/.."

module=$(go list -m)
header=hack/boilerplate.go.txt
api="$module/api/v1alpha1"
archive="$module/api/archive/v1alpha1"
out=pkg/client

rm -rf "$out"
go tool client-gen --go-header-file "$header" --clientset-name versioned \
  --input-base "$module" --input api/v1alpha1 --input api/archive/v1alpha1 \
  --output-pkg "$module/$out/clientset" --output-dir "$out/clientset"
# ArchivedRuns cannot be watched: no listers or informers for them.
go tool lister-gen --go-header-file "$header" \
  --output-pkg "$module/$out/listers" --output-dir "$out/listers" "$api"
go tool informer-gen --go-header-file "$header" \
  --versioned-clientset-package "$module/$out/clientset/versioned" \
  --listers-package "$module/$out/listers" \
  --output-pkg "$module/$out/informers" --output-dir "$out/informers" "$api"

# The archive API server's OpenAPI (its generic server needs the models of what it serves, and
# kubectl explain reads them). The API rules are checked on runservice's own types only.
openapi=pkg/generated/openapi
report=$(mktemp)
trap 'rm -f "$report"' EXIT
rm -f "$openapi/zz_generated.openapi.go"
# Model names (zz_generated.model_name.go beside the types) are the ones the server's scheme gives
# the kinds, so that the models carry their group, version and kind.
go tool openapi-gen --go-header-file "$header" --report-filename "$report" \
  --output-dir "$openapi" --output-pkg "$module/$openapi" --output-file zz_generated.openapi.go \
  --output-model-name-file zz_generated.model_name.go \
  --readonly-pkg k8s.io/apimachinery/pkg/apis/meta/v1 --readonly-pkg k8s.io/apimachinery/pkg/runtime \
  --readonly-pkg k8s.io/apimachinery/pkg/version --readonly-pkg k8s.io/apimachinery/pkg/api/resource \
  k8s.io/apimachinery/pkg/apis/meta/v1 k8s.io/apimachinery/pkg/runtime k8s.io/apimachinery/pkg/version \
  k8s.io/apimachinery/pkg/api/resource "$api" "$archive"
if grep -F "$module/" "$report"; then
  echo "update-codegen: the API rules above are broken by runservice's types" >&2
  exit 1
fi
