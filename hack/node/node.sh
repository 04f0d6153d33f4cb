#!/usr/bin/env bash
# A real single-node Kubernetes for end-to-end tests with real pods, against a kube-apiserver that
# is already running (e.g. envtest's, see internal/testenv): containerd + runc + CNI + kubelet.
#
#   node.sh build                       builds (once, cached) kubelet, containerd, crictl and the two test
#                                       images (pause, busybox), and for hack/cluster.sh kube-controller-
#                                       manager, kube-scheduler and kube-proxy; prints the cache dir
#   node.sh up KUBECONFIG STATE_DIR     starts containerd and the kubelet, registers the node and
#                                       waits until it is Ready
#   node.sh down STATE_DIR              stops everything, removes the pods' containers and mounts and
#                                       undoes the host changes the kubelet made (idempotent)
#   node.sh import STATE_DIR TAR...     loads more OCI image archives (hack/node/ocipack) into the node
#
# No scheduler and no controller-manager run (hack/cluster.sh adds them), so pods must set
#   spec.nodeName                       `up` prints it (default: the host name)
#   imagePullPolicy: Never              images: busybox:1.36 and registry.k8s.io/pause:3.10.2 only
#   automountServiceAccountToken: false the token volume needs the kube-root-ca.crt ConfigMap, which
#                                       only the controller-manager publishes
# and if the apiserver runs the ServiceAccount admission plugin (envtest disables it), the namespace
# needs a ServiceAccount "default" (nobody creates it): without it every pod is Forbidden.
# kubectl logs/exec work (the kubelet allows anonymous requests; it listens where its name resolves).
#
# Environment: NODE_NAME, NODE_IP (the default route's source), KUBELET_PORT (10250), UP_TIMEOUT (120 s),
# POD_SUBNET (10.88.0.0/16), CNI_BRIDGE (rsnode0); kubectl from PATH, KUBEBUILDER_ASSETS or
# hack/control-plane.sh. Needs root. The host changes (iptables chains, sysctls, the kubepods
# cgroups) are global: one node per host at a time (`up` refuses a second one).
set -euo pipefail

K8S_VERSION=${K8S_VERSION:-1.37.2}
STAGING_VERSION=${STAGING_VERSION:-0.37.2}
CONTAINERD_VERSION=${CONTAINERD_VERSION:-2.4.2}
CRICTL_VERSION=${CRICTL_VERSION:-1.37.0}  # crictl: for `down` (stops the pod sandboxes through CRI) and debugging
PAUSE_IMAGE=registry.k8s.io/pause:3.10.2
BUSYBOX_IMAGE=docker.io/library/busybox:1.36
# The apiserver reaches the kubelet (logs, exec) at the node's Hostname address first, which is the
# node name: the host's own name resolves here, a made-up one does not (unless the apiserver runs with
# --kubelet-preferred-address-types=InternalIP,...).
NODE_NAME=${NODE_NAME:-$(hostname | tr '[:upper:]' '[:lower:]')}
KUBELET_PORT=${KUBELET_PORT:-10250}
POD_SUBNET=${POD_SUBNET:-10.88.0.0/16}
CNI_BRIDGE=${CNI_BRIDGE:-rsnode0}
SYSCTLS="kernel.panic kernel.panic_on_oops vm.overcommit_memory"
# kubelet for every node; the others for hack/cluster.sh's control plane
K8S_BINARIES="kubelet kube-controller-manager kube-scheduler kube-proxy"

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
data_dir=${XDG_DATA_HOME:-$HOME/.local/share}
cache="$data_dir/runservice/node/k8s-$K8S_VERSION-containerd-$CONTAINERD_VERSION-$(go env GOOS 2>/dev/null || echo linux)-$(go env GOARCH 2>/dev/null || echo amd64)"

. "$here/../lib.sh"
log() { echo "node: $*" >&2; }
die() { log "$*"; exit 1; }

# ---------------------------------------------------------------------------------------------- build

have_all() {
  local f
  for f in $K8S_BINARIES containerd containerd-shim-runc-v2 ctr crictl; do [ -x "$cache/bin/$f" ] || return 1; done
  [ -s "$cache/images/pause.tar" ] && [ -s "$cache/images/busybox.tar" ]
}

debian_packages() {
  local missing=()
  command -v runc >/dev/null 2>&1 || missing+=(runc)
  [ -x /usr/lib/cni/bridge ] || missing+=(containernetworking-plugins)
  # the image is FROM scratch: the busybox must be the static one
  if [ ! -x /bin/busybox ] || ldd /bin/busybox >/dev/null 2>&1; then missing+=(busybox-static); fi
  command -v iptables >/dev/null 2>&1 || missing+=(iptables)
  command -v mount >/dev/null 2>&1 || missing+=(mount)
  if [ ${#missing[@]} -gt 0 ]; then
    log "installing ${missing[*]} from Debian"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >&2
    apt-get install -y -qq "${missing[@]}" >&2
  fi
}

build() {
  debian_packages
  if have_all; then
    echo "$cache"
    return
  fi
  local work
  work=$(mktemp -d)
  # shellcheck disable=SC2064
  trap "rm -rf '$work'" EXIT
  mkdir -p "$cache/bin" "$cache/images"
  export CGO_ENABLED=0 GOFLAGS=-buildvcs=false

  local missing_k8s="" b
  for b in $K8S_BINARIES; do [ -x "$cache/bin/$b" ] || missing_k8s="$missing_k8s $b"; done
  if [ -n "$missing_k8s" ]; then
    log "building$missing_k8s v$K8S_VERSION (first time only)"
    mkdir -p "$work/k8s" && cd "$work/k8s"
    go mod init kubeletbuild >/dev/null 2>&1
    local gomod m
    gomod=$(go mod download -json "k8s.io/kubernetes@v$K8S_VERSION" | sed -n 's/.*"GoMod": "\(.*\)".*/\1/p')
    # k8s.io/kubernetes requires its staging modules at v0.0.0 and replaces them with local paths;
    # point each at the published tag instead (go install pkg@version refuses replace directives).
    for m in $(awk '$2 == "=>" && $3 ~ /^\.\/staging/ {print $1}' "$gomod"); do
      go mod edit -replace "$m=$m@v$STAGING_VERSION"
    done
    go mod edit -require "k8s.io/kubernetes@v$K8S_VERSION"
    { printf '//go:build tools\n\npackage tools\n\nimport (\n'
      for b in $missing_k8s; do printf '\t_ "k8s.io/kubernetes/cmd/%s"\n' "$b"; done
      printf ')\n'; } > tools.go
    go mod tidy >&2
    local pkg=k8s.io/component-base/version ldflags
    ldflags="-s -w -X $pkg.gitVersion=v$K8S_VERSION -X $pkg.gitMajor=${K8S_VERSION%%.*} -X $pkg.gitMinor=$(echo "$K8S_VERSION" | cut -d. -f2) -X $pkg.gitTreeState=clean"
    ldflags="$ldflags -X k8s.io/client-go/pkg/version.gitVersion=v$K8S_VERSION"
    for b in $missing_k8s; do
      go build -trimpath -tags selinux,notest,grpcnotrace -ldflags "$ldflags" -o "$cache/bin/$b.tmp" "k8s.io/kubernetes/cmd/$b" >&2
      mv "$cache/bin/$b.tmp" "$cache/bin/$b"
    done
  fi

  if [ ! -x "$cache/bin/containerd" ] || [ ! -x "$cache/bin/containerd-shim-runc-v2" ] || [ ! -x "$cache/bin/ctr" ]; then
    log "building containerd v$CONTAINERD_VERSION (first time only)"
    mkdir -p "$work/containerd" && cd "$work/containerd"
    go mod init containerdbuild >/dev/null 2>&1
    local mod=github.com/containerd/containerd/v2
    go mod edit -require "$mod@v$CONTAINERD_VERSION"
    printf '//go:build tools\n\npackage tools\n\nimport (\n\t_ "%s/cmd/containerd"\n\t_ "%s/cmd/containerd-shim-runc-v2"\n\t_ "%s/cmd/ctr"\n)\n' "$mod" "$mod" "$mod" > tools.go
    go mod tidy >&2
    local ldflags="-s -w -X $mod/version.Version=v$CONTAINERD_VERSION -X $mod/version.Package=$mod"
    local tags="no_btrfs no_devmapper no_zfs urfave_cli_no_docs" b
    for b in containerd containerd-shim-runc-v2 ctr; do
      go build -trimpath -tags "$tags" -ldflags "$ldflags" -o "$cache/bin/$b.tmp" "$mod/cmd/$b" >&2
      mv "$cache/bin/$b.tmp" "$cache/bin/$b"
    done
  fi

  if [ ! -x "$cache/bin/crictl" ]; then
    log "building crictl v$CRICTL_VERSION (first time only)"
    GOBIN="$work/gobin" go install -trimpath -ldflags "-s -w -X sigs.k8s.io/cri-tools/pkg/version.Version=v$CRICTL_VERSION" \
      "sigs.k8s.io/cri-tools/cmd/crictl@v$CRICTL_VERSION" >&2
    mv "$work/gobin/crictl" "$cache/bin/crictl"
  fi

  if [ ! -s "$cache/images/pause.tar" ] || [ ! -s "$cache/images/busybox.tar" ]; then
    log "packing the pause and busybox images"
    # The two helpers are standard-library only; build them in a module of their own so that a
    # broken checkout elsewhere cannot stop this.
    mkdir -p "$work/tools/pause" "$work/tools/ocipack" && cd "$work/tools"
    cp "$here/pause/main.go" pause/ && cp "$here/ocipack/main.go" ocipack/
    go mod init nodetools >/dev/null 2>&1
    go build -trimpath -ldflags "-s -w" -o "$work/pause-bin" ./pause >&2
    go build -trimpath -o "$work/ocipack" ./ocipack >&2

    mkdir -p "$work/pause-root"
    cp "$work/pause-bin" "$work/pause-root/pause"
    "$work/ocipack" -rootfs "$work/pause-root" -name "$PAUSE_IMAGE" -entrypoint /pause -o "$cache/images/pause.tar"

    local r="$work/busybox-root"
    mkdir -p "$r/bin" "$r/etc" "$r/tmp" "$r/root" "$r/proc" "$r/sys" "$r/dev" "$r/var"
    chmod 1777 "$r/tmp"
    cp /bin/busybox "$r/bin/busybox"
    # What `/bin/busybox --install -s /bin` does inside the image: a symlink per applet.
    local a
    for a in $(/bin/busybox --list); do
      [ "$a" = busybox ] || ln -sf /bin/busybox "$r/bin/$a"
    done
    printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n' > "$r/etc/passwd"
    printf 'root:x:0:\nnogroup:x:65534:\n' > "$r/etc/group"
    "$work/ocipack" -rootfs "$r" -name "$BUSYBOX_IMAGE" -env PATH=/bin -cmd /bin/sh -o "$cache/images/busybox.tar"
  fi
  cd /
  echo "$cache"
}

# ------------------------------------------------------------------------------------------- helpers

find_kubectl() {
  if command -v kubectl >/dev/null 2>&1; then command -v kubectl; return; fi
  if [ -n "${KUBEBUILDER_ASSETS:-}" ] && [ -x "$KUBEBUILDER_ASSETS/kubectl" ]; then echo "$KUBEBUILDER_ASSETS/kubectl"; return; fi
  echo "$("$here/../control-plane.sh")/kubectl"
}

ip2int() { local IFS=.; set -- $1; echo $(( ($1 << 24) + ($2 << 16) + ($3 << 8) + $4 )); }

# cidr_overlap A/n B/m: true when the two IPv4 ranges overlap.
cidr_overlap() {
  local a=${1%/*} an=${1#*/} b=${2%/*} bn=${2#*/} n
  n=$(( an < bn ? an : bn ))
  local mask=$(( n == 0 ? 0 : (0xffffffff << (32 - n)) & 0xffffffff ))
  [ $(( $(ip2int "$a") & mask )) -eq $(( $(ip2int "$b") & mask )) ]
}

# The paths the kubelet, containerd and the CNI plugins create outside the state dir even when told
# to keep their data there (hard-coded in them); `down` removes those that did not exist at `up`.
HOST_PATHS="/var/lib/kubelet /var/log/containers /var/log/pods /var/lib/cni /run/containerd /run/containerd/s /run/containerd/fifo /var/run/netns /var/run/nri /opt/containerd /etc/cni"

chains() { # chains(iptables-save binary): "table chain" per line
  "$1" 2>/dev/null | awk '/^\*/ {t = substr($1, 2)} /^:/ {print t, substr($1, 2)}' | sort
}

kill_pidfile() { # kill_pidfile FILE NAME: TERM, then KILL after 10 s
  local f=$1 pid
  [ -s "$f" ] || return 0
  pid=$(cat "$f")
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$pid" 2>/dev/null; then
      log "$2 (pid $pid) did not stop on SIGTERM, killing it"
      kill -KILL "$pid" 2>/dev/null || true
      sleep 0.2
    fi
  fi
  rm -f "$f"
}

# ---------------------------------------------------------------------------------------------- up

up() {
  local kubeconfig=$1 state
  [ "$(id -u)" = 0 ] || die "up must run as root"
  [ -r "$kubeconfig" ] || die "cannot read kubeconfig $kubeconfig"
  mkdir -p "$2"
  state=$(cd "$2" && pwd)
  local f
  for f in kubelet containerd; do
    if [ -s "$state/$f.pid" ] && kill -0 "$(cat "$state/$f.pid")" 2>/dev/null; then
      die "a node already runs from $state (node.sh down $state first)"
    fi
  done
  (build) >/dev/null
  local kubectl
  kubectl=$(find_kubectl)
  local t0=$SECONDS t0ns
  t0ns=$(date +%s%N)

  # Refuse what would collide with a node or a network already on this host.
  local c
  for c in /sys/fs/cgroup/*/kubepods /sys/fs/cgroup/kubepods; do
    [ -d "$c" ] && die "$c exists: another kubelet runs (or ran without teardown) on this host"
  done
  ip link show "$CNI_BRIDGE" >/dev/null 2>&1 && die "interface $CNI_BRIDGE exists already (another node? set CNI_BRIDGE)"
  for c in $(ip -o -4 addr show | awk '{print $4}'); do
    cidr_overlap "$c" "$POD_SUBNET" && die "POD_SUBNET $POD_SUBNET overlaps $c on this host (set POD_SUBNET)"
  done
  for c in $(ip -4 route show | awk '$1 ~ /\// {print $1}'); do
    cidr_overlap "$c" "$POD_SUBNET" && die "POD_SUBNET $POD_SUBNET overlaps the route $c on this host (set POD_SUBNET)"
  done
  [ -z "$(ss -Hltn "sport = :$KUBELET_PORT" 2>/dev/null)" ] || die "port $KUBELET_PORT is in use (set KUBELET_PORT)"

  # What `down` restores: saved once, so that an `up` after a failed `up` keeps the original values.
  mkdir -p "$state/host"
  if [ ! -e "$state/host/saved" ]; then
    local s p
    for s in $SYSCTLS; do sysctl -n "$s" > "$state/host/sysctl.$s"; done
    : > "$state/host/existing-paths"
    for p in $HOST_PATHS; do [ -e "$p" ] && echo "$p" >> "$state/host/existing-paths"; done
    chains iptables-save > "$state/host/iptables.chains"
    chains ip6tables-save > "$state/host/ip6tables.chains"
    touch "$state/host/saved"
  fi
  # From here on a failed `up` tears down what it started.
  UP_STATE=$state
  # shellcheck disable=SC2154
  trap 'rc=$?; trap - EXIT; if [ $rc -ne 0 ]; then log "up failed: tearing down (logs stay in $UP_STATE)"; down "$UP_STATE" || true; fi; exit $rc' EXIT

  local node_ip
  node_ip=${NODE_IP:-$(ip -4 route get 1.1.1.1 2>/dev/null | sed -n 's/.* src \([0-9.]*\).*/\1/p')}
  [ -n "$node_ip" ] || node_ip=$(ip -o -4 addr show scope global | awk '{sub("/.*", "", $4); print $4; exit}')
  [ -n "$node_ip" ] || die "no IPv4 address for the node (set NODE_IP; loopback is refused by the kubelet)"
  # Where the kubelet listens: where its node name resolves, if that is this host.
  local bind_ip
  bind_ip=$(getent ahostsv4 "$NODE_NAME" 2>/dev/null | awk 'NR == 1 {print $1}')
  case "$bind_ip" in
    127.*) ;;
    "$node_ip") ;;
    *)
      if [ -n "$bind_ip" ] && ip -o -4 addr show | awk '{sub("/.*", "", $4); print $4}' | grep -qxF "$bind_ip"; then :; else
        log "warning: the node name $NODE_NAME does not resolve to this host; kubectl logs/exec need the apiserver's --kubelet-preferred-address-types=InternalIP,Hostname"
        bind_ip=$node_ip
      fi ;;
  esac

  # containerd: everything under the state dir (the shims' sockets stay in /run/containerd/s, hard-coded).
  local cd="$state/containerd" sock="$state/containerd/containerd.sock"
  mkdir -p "$cd/root" "$cd/state" "$cd/opt" "$cd/runc" "$state/cni/net.d" "$state/cni/ipam" "$state/kubelet" "$state/pod-logs"
  cat > "$cd/config.toml" <<TOML
version = 3
root = "$cd/root"
state = "$cd/state"
temp = "$cd/tmp"
disabled_plugins = ["io.containerd.nri.v1.nri"]

[grpc]
  address = "$sock"

[plugins."io.containerd.internal.v1.opt"]
  path = "$cd/opt"

[plugins."io.containerd.cri.v1.images"]
  snapshotter = "overlayfs"
  [plugins."io.containerd.cri.v1.images".pinned_images]
    sandbox = "$PAUSE_IMAGE"

[plugins."io.containerd.cri.v1.runtime"]
  # No CAP_SYS_RESOURCE here: negative OOM scores would fail every sandbox.
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  cdi_spec_dirs = []
  [plugins."io.containerd.cri.v1.runtime".containerd]
    default_runtime_name = "runc"
    [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc.options]
        BinaryName = "$(command -v runc)"
        Root = "$cd/runc"
        SystemdCgroup = false
  [plugins."io.containerd.cri.v1.runtime".cni]
    bin_dirs = ["/usr/lib/cni"]
    conf_dir = "$state/cni/net.d"
TOML
  cat > "$state/cni/net.d/10-runservice.conflist" <<JSON
{
  "cniVersion": "1.0.0",
  "name": "runservice-node",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "$CNI_BRIDGE",
      "isGateway": true,
      "ipMasq": true,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "dataDir": "$state/cni/ipam",
        "ranges": [[{"subnet": "$POD_SUBNET"}]],
        "routes": [{"dst": "0.0.0.0/0"}]
      }
    },
    {"type": "portmap", "capabilities": {"portMappings": true}},
    {"type": "firewall"}
  ]
}
JSON
  log "starting containerd (log: $state/containerd.log)"
  PATH="$cache/bin:$PATH" daemon "$cache/bin/containerd" --config "$cd/config.toml" \
    >"$state/containerd.log" 2>&1
  echo $! > "$state/containerd.pid"
  for _ in $(seq 1 100); do
    "$cache/bin/ctr" --address "$sock" version >/dev/null 2>&1 && break
    kill -0 "$(cat "$state/containerd.pid")" 2>/dev/null || { tail -20 "$state/containerd.log" >&2; die "containerd exited"; }
    sleep 0.1
  done
  local img
  for img in pause busybox; do
    "$cache/bin/ctr" --address "$sock" -n k8s.io images import "$cache/images/$img.tar" >&2
  done

  # kubelet
  cp "$kubeconfig" "$state/kubeconfig"
  cat > "$state/kubelet-config.yaml" <<YAML
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
# cgroup v1 hosts (this one is hybrid v1) need both.
failCgroupV1: false
cgroupDriver: cgroupfs
failSwapOn: false
containerRuntimeEndpoint: unix://$sock
address: $bind_ip
port: $KUBELET_PORT
readOnlyPort: 0
healthzPort: 0
# The apiserver calls the kubelet (logs, exec) without a client certificate unless it has
# --kubelet-client-certificate, and envtest's has none: anonymous, allow all.
authentication:
  anonymous:
    enabled: true
  webhook:
    enabled: false
authorization:
  mode: AlwaysAllow
podLogsDir: $state/pod-logs
# No registry can be reached: never garbage-collect the imported images, evict only when really full.
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard:
  memory.available: 100Mi
  nodefs.available: 1%
  nodefs.inodesFree: 1%
  imagefs.available: 1%
evictionPressureTransitionPeriod: 5s
nodeStatusUpdateFrequency: 2s
syncFrequency: 10s
fileCheckFrequency: 5s
resolvConf: /etc/resolv.conf
YAML
  log "starting kubelet as node $NODE_NAME (node IP $node_ip, listening on $bind_ip:$KUBELET_PORT; log: $state/kubelet.log)"
  daemon "$cache/bin/kubelet" --config "$state/kubelet-config.yaml" --kubeconfig "$state/kubeconfig" \
    --root-dir "$state/kubelet" --hostname-override "$NODE_NAME" --node-ip "$node_ip" -v 2 \
    >"$state/kubelet.log" 2>&1
  echo $! > "$state/kubelet.pid"
  local kt0ns
  kt0ns=$(date +%s%N)

  local ready=""
  while [ $((SECONDS - t0)) -lt "${UP_TIMEOUT:-120}" ]; do
    kill -0 "$(cat "$state/kubelet.pid")" 2>/dev/null || { tail -30 "$state/kubelet.log" >&2; die "the kubelet exited"; }
    ready=$("$kubectl" --kubeconfig "$state/kubeconfig" get node "$NODE_NAME" \
      -o 'jsonpath={.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null || true)
    [ "$ready" = True ] && break
    sleep 0.2
  done
  [ "$ready" = True ] || { grep -E '^[EF][0-9]{4}' "$state/kubelet.log" | tail -10 >&2; die "node $NODE_NAME not Ready after ${UP_TIMEOUT:-120} s"; }
  local now
  now=$(date +%s%N)
  cat > "$state/node.env" <<ENV
NODE_NAME=$NODE_NAME
NODE_IP=$node_ip
CONTAINERD_ADDRESS=$sock
CONTAINER_RUNTIME_ENDPOINT=unix://$sock
KUBECONFIG=$state/kubeconfig
BIN=$cache/bin
ENV
  log "node $NODE_NAME Ready: $(( (now - kt0ns) / 1000000 )) ms after the kubelet started, $(( (now - t0ns) / 1000000 )) ms in all"
  trap - EXIT
  echo "$NODE_NAME"
}

# -------------------------------------------------------------------------------------------- down

down() {
  [ "$(id -u)" = 0 ] || die "down must run as root"
  if [ ! -d "$1" ]; then log "$1 does not exist: nothing to tear down"; return 0; fi
  local state sock ctr crictl
  state=$(cd "$1" && pwd)
  sock="$state/containerd/containerd.sock"
  ctr="$cache/bin/ctr"
  crictl="$cache/bin/crictl"

  # 1. The kubelet first, so that it restarts nothing.
  kill_pidfile "$state/kubelet.pid" kubelet

  # 2. The pods, through CRI while containerd still runs (stops the sandboxes: CNI DEL, unmounts),
  #    then whatever is left, through containerd's own API.
  if [ -S "$sock" ] && "$ctr" --address "$sock" version >/dev/null 2>&1; then
    if [ -x "$crictl" ]; then
      timeout 90 "$crictl" --timeout 30s --runtime-endpoint "unix://$sock" --image-endpoint "unix://$sock" rmp -af >"$state/crictl-rmp.log" 2>&1 ||
        log "crictl rmp -af failed ($(tail -1 "$state/crictl-rmp.log")); removing the containers directly"
    fi
    local ns id
    for ns in $("$ctr" --address "$sock" namespaces ls -q 2>/dev/null); do
      for id in $("$ctr" --address "$sock" -n "$ns" tasks ls -q 2>/dev/null); do
        "$ctr" --address "$sock" -n "$ns" tasks kill -a -s KILL "$id" >/dev/null 2>&1 || true
        sleep 0.1
        "$ctr" --address "$sock" -n "$ns" tasks rm -f "$id" >/dev/null 2>&1 || true
      done
      for id in $("$ctr" --address "$sock" -n "$ns" containers ls -q 2>/dev/null); do
        "$ctr" --address "$sock" -n "$ns" containers rm "$id" >/dev/null 2>&1 || true
      done
    done
  fi

  # 3. containerd, then any shim of ours still there (found by our socket path in its command line).
  kill_pidfile "$state/containerd.pid" containerd
  local pid
  for pid in $(grep -lsF -- "$sock" /proc/[0-9]*/cmdline | cut -d/ -f3); do
    case "$(cat "/proc/$pid/comm" 2>/dev/null)" in containerd-shim*) ;; *) continue ;; esac
    log "killing leftover shim $pid"
    kill -KILL "$pid" 2>/dev/null || true
  done

  # 4. Processes still in the pods' cgroups (containers whose shim died).
  local f
  for f in /sys/fs/cgroup/*/kubepods/cgroup.procs /sys/fs/cgroup/*/kubepods/*/cgroup.procs \
    /sys/fs/cgroup/*/kubepods/*/*/cgroup.procs /sys/fs/cgroup/*/kubepods/*/*/*/cgroup.procs; do
    [ -r "$f" ] || continue
    for pid in $(cat "$f"); do kill -KILL "$pid" 2>/dev/null || true; done
  done

  # 5. Mounts under the state dir (volumes, rootfs, shm, netns, the kubelet's root dir), deepest first.
  local m
  for _ in 1 2 3; do
    m=$(awk -v s="$state/" 'index($5, s) == 1 {print $5}' /proc/self/mountinfo | sort -r)
    [ -z "$m" ] && break
    for f in $m; do umount "$f" 2>/dev/null || umount -l "$f" 2>/dev/null || true; done
  done

  # The host-wide changes, only if this state dir's `up` got as far as saving the host's state (so
  # that a `down` of a node that never started does not touch another node's chains or cgroups).
  if [ ! -e "$state/host/saved" ]; then
    rm -rf "$state/containerd" "$state/kubelet" "$state/cni" "$state/pod-logs" "$state/host" "$state/kubeconfig" "$state/node.env"
    log "node torn down (logs kept in $state)"
    return 0
  fi

  # 6. The CNI bridge and any veth left on it.
  if ip link show "$CNI_BRIDGE" >/dev/null 2>&1; then
    for f in $(ip -o link show master "$CNI_BRIDGE" 2>/dev/null | awk -F': ' '{sub("@.*", "", $2); print $2}'); do
      ip link del "$f" 2>/dev/null || true
    done
    ip link del "$CNI_BRIDGE" 2>/dev/null || true
  fi

  # 7. iptables chains the kubelet (KUBE-FIREWALL, KUBE-KUBELET-CANARY, KUBE-IPTABLES-HINT, ...) and the
  #    CNI plugins (CNI-*) added, and the rules that jump to them; chains that existed before stay.
  local bin
  for bin in iptables ip6tables; do
    command -v "$bin-save" >/dev/null 2>&1 || continue
    local before="$state/host/$bin.chains" doomed
    doomed=$(chains "$bin-save" | grep -E ' (KUBE-|CNI-)' | grep -vxF -f "$before" || true)
    [ -n "$doomed" ] || continue
    local t c rule
    for t in $(echo "$doomed" | awk '{print $1}' | sort -u); do
      local names
      names=$(echo "$doomed" | awk -v t="$t" '$1 == t {print $2}')
      # rules that jump to a doomed chain, from any chain
      local rules
      rules=$("$bin" -t "$t" -S 2>/dev/null | grep -E -- "-j ($(echo "$names" | paste -sd'|'))( |\$)" || true)
      while read -r rule; do
        [ -n "$rule" ] && { eval "\"$bin\" -t \"$t\" -D ${rule#-A }" 2>/dev/null || log "could not delete the $bin -t $t rule $rule"; }
      done <<<"$rules"
      for c in $names; do "$bin" -t "$t" -F "$c" 2>/dev/null || true; done
      for c in $names; do "$bin" -t "$t" -X "$c" 2>/dev/null || log "could not delete $bin -t $t chain $c"; done
    done
  done

  # 8. The kubepods cgroup hierarchy, in every controller, deepest first.
  for _ in 1 2 3 4 5; do
    m=$(find /sys/fs/cgroup -mindepth 2 -maxdepth 7 -type d -path '*/kubepods*' 2>/dev/null | awk '{print length, $0}' | sort -rn | cut -d' ' -f2-)
    [ -z "$m" ] && break
    for f in $m; do rmdir "$f" 2>/dev/null || true; done
    sleep 0.2
  done
  [ -z "$m" ] || log "could not remove the cgroups: $m"

  # 9. sysctls.
  local s
  for s in $SYSCTLS; do
    [ -s "$state/host/sysctl.$s" ] && sysctl -qw "$s=$(cat "$state/host/sysctl.$s")" >/dev/null
  done

  # 10. Paths created outside the state dir (children before parents).
  local p
  for p in $(echo "$HOST_PATHS" | tr ' ' '\n' | sort -r); do
    [ -e "$p" ] || continue
    grep -qxF "$p" "$state/host/existing-paths" && continue
    case "$p" in
      # shared with any other containerd on the host (Docker's shims put their sockets there too)
      /run/containerd*) rmdir "$p" 2>/dev/null || log "left $p (not empty)" ;;
      *) rm -rf "$p" ;;
    esac
  done

  # 11. The runtime data; the logs stay.
  rm -rf "$state/containerd" "$state/kubelet" "$state/cni" "$state/pod-logs" "$state/host" \
    "$state/kubeconfig" "$state/node.env"
  log "node torn down (logs kept in $state)"
}

# import loads OCI image archives (e.g. from hack/node/ocipack) into the node's containerd.
import_images() {
  local state=$1; shift
  local tarball
  for tarball in "$@"; do
    "$cache/bin/ctr" --address "$state/containerd/containerd.sock" -n k8s.io images import "$tarball" >&2
  done
}

case "${1:-}" in
  build) build ;;
  up) shift; [ $# -eq 2 ] || die "usage: $0 up KUBECONFIG STATE_DIR"; up "$@" ;;
  down) shift; [ $# -eq 1 ] || die "usage: $0 down STATE_DIR"; down "$@" ;;
  import) shift; [ $# -ge 2 ] || die "usage: $0 import STATE_DIR IMAGE.tar..."; import_images "$@" ;;
  *) echo "usage: $0 build | up KUBECONFIG STATE_DIR | down STATE_DIR | import STATE_DIR IMAGE.tar..." >&2; exit 2 ;;
esac
