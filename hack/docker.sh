#!/usr/bin/env bash
# Makes sure a Docker daemon answers on the default socket: installs Debian's docker.io when dockerd
# is missing (needs root and apt), and starts dockerd by hand (no systemd here) when none runs.
# Also builds the local busybox image that tests and samples use (no registry is reachable).
set -euo pipefail

. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
log() { echo "docker: $*" >&2; }

if ! docker version >/dev/null 2>&1; then
  if ! command -v dockerd >/dev/null 2>&1 || ! command -v busybox >/dev/null 2>&1; then
    log "installing docker.io and busybox-static from Debian"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >&2
    apt-get install -y -qq docker.io busybox-static >&2
  fi
  if ! docker version >/dev/null 2>&1; then
    log "starting dockerd (log: /var/log/runservice-dockerd.log)"
    daemon dockerd --host unix:///var/run/docker.sock --exec-opt native.cgroupdriver=cgroupfs \
      >/var/log/runservice-dockerd.log 2>&1
    for _ in $(seq 1 60); do
      docker version >/dev/null 2>&1 && break
      sleep 0.5
    done
  fi
fi
docker version --format 'docker: engine {{.Server.Version}}, API {{.Server.APIVersion}}' >&2

# busybox:1.36, FROM scratch with Debian's static busybox, built once.
if ! docker image inspect busybox:1.36 >/dev/null 2>&1; then
  if ! command -v busybox >/dev/null 2>&1; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq busybox-static >&2
  fi
  ctx=$(mktemp -d)
  trap 'rm -rf "$ctx"' EXIT
  mkdir -p "$ctx/bin"
  cp "$(command -v busybox)" "$ctx/bin/busybox"
  cat > "$ctx/Dockerfile" <<'DF'
FROM scratch
COPY bin/busybox /bin/busybox
RUN ["/bin/busybox", "--install", "-s", "/bin"]
ENV PATH=/bin
CMD ["/bin/sh"]
DF
  log "building busybox:1.36 from Debian's busybox-static"
  docker build -q -t busybox:1.36 "$ctx" >&2
fi
