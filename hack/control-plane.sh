#!/usr/bin/env bash
# Builds the control-plane binaries that envtest and `make run` need (etcd, kube-apiserver, kubectl)
# from the Go module proxy, because the usual envtest download bucket cannot be reached here.
# The binaries are cached outside the checkout, keyed by version, like setup-envtest does.
# Prints the directory that holds them (use it as KUBEBUILDER_ASSETS).
# A KUBEBUILDER_ASSETS that already holds the binaries is honoured as it is.
set -euo pipefail

K8S_VERSION=${K8S_VERSION:-1.37.2}
STAGING_VERSION=${STAGING_VERSION:-0.37.2}
ETCD_VERSION=${ETCD_VERSION:-3.7.3}

have_all() {
  [ -x "$1/etcd" ] && [ -x "$1/kube-apiserver" ] && [ -x "$1/kubectl" ]
}

if [ -n "${KUBEBUILDER_ASSETS:-}" ] && have_all "$KUBEBUILDER_ASSETS"; then
  echo "$KUBEBUILDER_ASSETS"
  exit 0
fi

data_dir=${XDG_DATA_HOME:-$HOME/.local/share}
dest="$data_dir/runservice/envtest/k8s-$K8S_VERSION-etcd-$ETCD_VERSION-$(go env GOOS)-$(go env GOARCH)"
if have_all "$dest"; then
  echo "$dest"
  exit 0
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$dest"
export CGO_ENABLED=0 GOFLAGS=-buildvcs=false

log() { echo "control-plane: $*" >&2; }

if [ ! -x "$dest/etcd" ]; then
  log "building etcd v$ETCD_VERSION (first time only)"
  mkdir -p "$work/etcd" && cd "$work/etcd"
  go mod init etcdbuild >/dev/null 2>&1
  go get "go.etcd.io/etcd/server/v3@v$ETCD_VERSION" >&2
  go build -trimpath -o "$dest/etcd.tmp" go.etcd.io/etcd/server/v3 >&2
  mv "$dest/etcd.tmp" "$dest/etcd"
fi

if [ ! -x "$dest/kube-apiserver" ] || [ ! -x "$dest/kubectl" ]; then
  log "building kube-apiserver and kubectl v$K8S_VERSION (first time only, several minutes)"
  mkdir -p "$work/k8s" && cd "$work/k8s"
  go mod init k8sbuild >/dev/null 2>&1
  gomod=$(go mod download -json "k8s.io/kubernetes@v$K8S_VERSION" | sed -n 's/.*"GoMod": "\(.*\)".*/\1/p')
  # k8s.io/kubernetes requires its staging modules at v0.0.0 and replaces them with local paths;
  # point each at the published tag instead.
  for m in $(awk '$2 == "=>" && $3 ~ /^\.\/staging/ {print $1}' "$gomod"); do
    go mod edit -replace "$m=$m@v$STAGING_VERSION"
  done
  go mod edit -require "k8s.io/kubernetes@v$K8S_VERSION"
  cat > tools.go <<'GO'
//go:build tools

package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kubectl"
)
GO
  go mod tidy >&2
  pkg=k8s.io/component-base/version
  ldflags="-s -w -X $pkg.gitVersion=v$K8S_VERSION -X $pkg.gitMajor=${K8S_VERSION%%.*} -X $pkg.gitMinor=$(echo "$K8S_VERSION" | cut -d. -f2) -X $pkg.gitTreeState=clean"
  ldflags="$ldflags -X k8s.io/client-go/pkg/version.gitVersion=v$K8S_VERSION"
  tags=selinux,notest,grpcnotrace
  go build -trimpath -tags "$tags" -ldflags "$ldflags" -o "$dest/kube-apiserver.tmp" k8s.io/kubernetes/cmd/kube-apiserver >&2
  mv "$dest/kube-apiserver.tmp" "$dest/kube-apiserver"
  go build -trimpath -tags "$tags" -ldflags "$ldflags" -o "$dest/kubectl.tmp" k8s.io/kubernetes/cmd/kubectl >&2
  mv "$dest/kubectl.tmp" "$dest/kubectl"
fi

echo "$dest"
