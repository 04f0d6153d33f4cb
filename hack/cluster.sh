#!/usr/bin/env bash
# A real single-node Kubernetes cluster on this host, to deploy runservice as in any cluster (the
# README's "Deploying to a cluster"): etcd, kube-apiserver (RBAC, ServiceAccount tokens, every default
# admission plugin), kube-controller-manager, kube-scheduler and kube-proxy, with the node of
# hack/node/node.sh (kubelet, containerd, CNI). Unlike the tests' control plane (envtest), nothing
# is switched off: Deployments make pods, the scheduler places them, Services route, pods get tokens.
#
#   cluster.sh up [STATE_DIR]          starts it (default STATE_DIR: bin/cluster) and an S3 server
#                                      (versitygw) for the object store, whose settings it writes to
#                                      STATE_DIR/object-store.env; prints the kubeconfig's path
#   cluster.sh down [STATE_DIR]        stops it and undoes every host change (idempotent)
#   cluster.sh load [STATE_DIR] IMAGE...   copies images from the local Docker daemon into the node
#                                      (there is no registry here; a real cluster pulls them)
#
# All binaries are built from the Go module proxy and cached (hack/control-plane.sh, hack/node/node.sh
# build). Every component authenticates with one admin client certificate (a development cluster).
# Needs root. Environment: NODE_IP (the default route's source), APISERVER_PORT (6443), ETCD_PORT
# (32379), SERVICE_CIDR (10.96.0.0/24), S3_PORT (7070), and node.sh's.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/.." && pwd)
APISERVER_PORT=${APISERVER_PORT:-6443}
ETCD_PORT=${ETCD_PORT:-32379}
SERVICE_CIDR=${SERVICE_CIDR:-10.96.0.0/24}
SERVICE_IP=${SERVICE_CIDR%.*}.1 # the `kubernetes` Service: the range's first address
POD_SUBNET=${POD_SUBNET:-10.88.0.0/16}
export POD_SUBNET
S3_PORT=${S3_PORT:-7070}
S3_SECRET=${S3_SECRET:-runservice-local-secret}

. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
log() { echo "cluster: $*" >&2; }
die() { log "$*"; exit 1; }

# start NAME CMD...: runs CMD in the background with its log and pid file in the state dir.
start() {
  local name=$1; shift
  daemon "$@" >"$state/$name.log" 2>&1
  echo $! > "$state/$name.pid"
}

stop() { # stop NAME: TERM, then KILL after 10 s
  local f="$state/$1.pid" pid
  [ -s "$f" ] || return 0
  pid=$(cat "$f")
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -KILL "$pid" 2>/dev/null || true
  rm -f "$f"
}

alive() { [ -s "$state/$1.pid" ] && kill -0 "$(cat "$state/$1.pid")" 2>/dev/null; }

wait_for() { # wait_for WHAT SECONDS COMMAND...: until COMMAND succeeds, failing on a dead component
  local what=$1 secs=$2 t0=$SECONDS c; shift 2
  until "$@" >/dev/null 2>&1; do
    for c in etcd kube-apiserver kube-controller-manager kube-scheduler kube-proxy s3; do
      if [ -e "$state/$c.pid" ] && ! alive "$c"; then tail -20 "$state/$c.log" >&2; die "$c exited"; fi
    done
    [ $((SECONDS - t0)) -lt "$secs" ] || die "$what: not after $secs s"
    sleep 0.2
  done
}

certs() {
  local d="$state/pki" node_ip=$1
  mkdir -p "$d"
  openssl req -x509 -newkey rsa:2048 -nodes -days 365 -subj /CN=runservice-local-ca \
    -keyout "$d/ca.key" -out "$d/ca.crt" 2>/dev/null
  # The front proxy's CA (API aggregation: the apiserver's client certificate toward the archive API),
  # apart from the cluster's, as kubeadm makes it.
  openssl req -x509 -newkey rsa:2048 -nodes -days 365 -subj /CN=runservice-front-proxy-ca \
    -keyout "$d/front-proxy-ca.key" -out "$d/front-proxy-ca.crt" 2>/dev/null
  # sign NAME SUBJECT EXTENSIONS [CA]
  sign() {
    local ca=${4:-ca}
    openssl req -newkey rsa:2048 -nodes -subj "$2" -keyout "$d/$1.key" -out "$d/$1.csr" 2>/dev/null
    openssl x509 -req -in "$d/$1.csr" -CA "$d/$ca.crt" -CAkey "$d/$ca.key" -CAcreateserial -days 365 \
      -out "$d/$1.crt" -extfile <(printf '%s\n' "$3") 2>/dev/null
    rm -f "$d/$1.csr"
  }
  sign apiserver /CN=kube-apiserver "subjectAltName=DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local,DNS:localhost,IP:127.0.0.1,IP:$node_ip,IP:$SERVICE_IP
extendedKeyUsage=serverAuth"
  sign admin "/O=system:masters/CN=admin" "extendedKeyUsage=clientAuth"
  sign front-proxy-client /CN=front-proxy-client "extendedKeyUsage=clientAuth" front-proxy-ca
  openssl genrsa -out "$d/sa.key" 2048 2>/dev/null
  openssl rsa -in "$d/sa.key" -pubout -out "$d/sa.pub" 2>/dev/null
  cat > "$state/kubeconfig" <<YAML
apiVersion: v1
kind: Config
clusters:
- name: local
  cluster:
    server: https://$node_ip:$APISERVER_PORT
    certificate-authority-data: $(base64 -w0 < "$d/ca.crt")
users:
- name: admin
  user:
    client-certificate-data: $(base64 -w0 < "$d/admin.crt")
    client-key-data: $(base64 -w0 < "$d/admin.key")
contexts:
- name: local
  context: {cluster: local, user: admin}
current-context: local
YAML
  chmod 600 "$state/kubeconfig"
}

up() {
  [ "$(id -u)" = 0 ] || die "up must run as root"
  mkdir -p "$1"
  state=$(cd "$1" && pwd)
  if alive kube-apiserver || alive etcd; then die "a cluster already runs from $state (cluster.sh down $state first)"; fi
  if ! command -v openssl >/dev/null; then
    log "installing openssl from Debian"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >&2 && apt-get install -y -qq openssl >&2
  fi
  local assets nodebin node_ip
  assets=$("$here/control-plane.sh")
  nodebin=$("$here/node/node.sh" build)/bin
  node_ip=${NODE_IP:-$(ip -4 route get 1.1.1.1 2>/dev/null | sed -n 's/.* src \([0-9.]*\).*/\1/p')}
  [ -n "$node_ip" ] || die "no IPv4 address for the node (set NODE_IP)"
  export NODE_IP=$node_ip
  local t0=$SECONDS
  trap 'rc=$?; trap - EXIT; if [ $rc -ne 0 ]; then log "up failed: tearing down (logs stay in $state)"; down "$state" || true; fi; exit $rc' EXIT

  rm -rf "$state/etcd" "$state/pki"
  certs "$node_ip"
  local pki="$state/pki" kc="$state/kubeconfig"
  log "starting etcd, kube-apiserver (https://$node_ip:$APISERVER_PORT), kube-controller-manager, kube-scheduler (logs in $state)"
  start etcd "$assets/etcd" --data-dir "$state/etcd" --name local \
    --listen-client-urls "http://127.0.0.1:$ETCD_PORT" --advertise-client-urls "http://127.0.0.1:$ETCD_PORT" \
    --listen-peer-urls "http://127.0.0.1:$((ETCD_PORT + 1))" --initial-advertise-peer-urls "http://127.0.0.1:$((ETCD_PORT + 1))" \
    --initial-cluster "local=http://127.0.0.1:$((ETCD_PORT + 1))" --unsafe-no-fsync
  start kube-apiserver "$assets/kube-apiserver" \
    --etcd-servers "http://127.0.0.1:$ETCD_PORT" \
    --bind-address "$node_ip" --advertise-address "$node_ip" --secure-port "$APISERVER_PORT" \
    --tls-cert-file "$pki/apiserver.crt" --tls-private-key-file "$pki/apiserver.key" --client-ca-file "$pki/ca.crt" \
    --service-cluster-ip-range "$SERVICE_CIDR" \
    --service-account-issuer https://kubernetes.default.svc.cluster.local \
    --service-account-key-file "$pki/sa.pub" --service-account-signing-key-file "$pki/sa.key" \
    --authorization-mode Node,RBAC --allow-privileged=true \
    --requestheader-client-ca-file "$pki/front-proxy-ca.crt" --requestheader-allowed-names front-proxy-client \
    --requestheader-username-headers X-Remote-User --requestheader-uid-headers X-Remote-Uid \
    --requestheader-group-headers X-Remote-Group --requestheader-extra-headers-prefix X-Remote-Extra- \
    --proxy-client-cert-file "$pki/front-proxy-client.crt" --proxy-client-key-file "$pki/front-proxy-client.key" \
    --enable-aggregator-routing=true
  wait_for "the apiserver" 60 "$assets/kubectl" --kubeconfig "$kc" get --raw /readyz
  start kube-controller-manager "$nodebin/kube-controller-manager" --kubeconfig "$kc" --leader-elect=false \
    --secure-port 0 --service-account-private-key-file "$pki/sa.key" --root-ca-file "$pki/ca.crt" \
    --cluster-signing-cert-file "$pki/ca.crt" --cluster-signing-key-file "$pki/ca.key" \
    --service-cluster-ip-range "$SERVICE_CIDR" --cluster-cidr "$POD_SUBNET"
  start kube-scheduler "$nodebin/kube-scheduler" --kubeconfig "$kc" --leader-elect=false --secure-port 0

  # The object store the manager and the executors share, as a real deployment's S3.
  local s3bin
  s3bin=$("$here/s3.sh")
  mkdir -p "$state/s3/runservice"
  start s3 "$s3bin" --port "$node_ip:$S3_PORT" --access runservice --secret "$S3_SECRET" posix --nometa "$state/s3"
  cat > "$state/object-store.env" <<ENV
RUNSERVICE_OBJECT_STORE=s3://runservice?endpoint=http://$node_ip:$S3_PORT&use_path_style=true&region=us-east-1
AWS_ACCESS_KEY_ID=runservice
AWS_SECRET_ACCESS_KEY=$S3_SECRET
AWS_RESPONSE_CHECKSUM_VALIDATION=when_required
ENV

  "$here/node/node.sh" up "$kc" "$state/node" >/dev/null

  cat > "$state/kube-proxy.yaml" <<YAML
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection: {kubeconfig: $kc}
hostnameOverride: $(. "$state/node/node.env" && echo "$NODE_NAME")
mode: iptables
clusterCIDR: $POD_SUBNET
# Leave the host's conntrack sysctls and route_localnet alone: down restores only what it knows.
conntrack: {maxPerCore: 0, min: 0, tcpEstablishedTimeout: 0s, tcpCloseWaitTimeout: 0s}
iptables: {localhostNodePorts: false}
healthzBindAddress: ""
metricsBindAddress: ""
YAML
  start kube-proxy "$nodebin/kube-proxy" --config "$state/kube-proxy.yaml"
  # Ready when pods can run: the namespace default has its ServiceAccount and root CA (the
  # controller-manager), and kube-proxy has written the `kubernetes` Service's rules.
  wait_for "the default ServiceAccount" 60 "$assets/kubectl" --kubeconfig "$kc" -n default get serviceaccount default
  wait_for "the kube-root-ca.crt ConfigMap" 60 "$assets/kubectl" --kubeconfig "$kc" -n default get configmap kube-root-ca.crt
  wait_for "kube-proxy's rules" 60 sh -c "iptables-save -t nat | grep -q -- '-d $SERVICE_IP/32'"
  # Run with sudo: the user who asked may read what they need.
  [ -n "${SUDO_USER:-}" ] && chown "$SUDO_USER" "$kc" "$state/object-store.env"
  trap - EXIT
  log "cluster up in $((SECONDS - t0)) s: export KUBECONFIG=$kc"
  echo "$kc"
}

down() {
  [ "$(id -u)" = 0 ] || die "down must run as root"
  if [ ! -d "$1" ]; then log "$1 does not exist: nothing to tear down"; return 0; fi
  state=$(cd "$1" && pwd)
  # kube-proxy first (node.sh down removes its KUBE-* chains with the kubelet's), then the node
  # while the apiserver can still be told, then the control plane.
  stop kube-proxy
  "$here/node/node.sh" down "$state/node"
  stop kube-scheduler
  stop kube-controller-manager
  stop kube-apiserver
  stop etcd
  stop s3
  rm -rf "$state/etcd" "$state/pki" "$state/s3" "$state/kubeconfig" "$state/kube-proxy.yaml" "$state/object-store.env"
  log "cluster torn down (logs kept in $state)"
}

load() {
  state=$(cd "$1" && pwd); shift
  local tmp img
  tmp=$(mktemp -d)
  # shellcheck disable=SC2064
  trap "rm -rf '$tmp'" RETURN
  for img in "$@"; do
    docker save -o "$tmp/image.tar" "$img"
    "$here/node/node.sh" import "$state/node" "$tmp/image.tar"
  done
}


cmd=${1:-}
[ $# -gt 0 ] && shift
case "$cmd" in
  up) up "${1:-$root/bin/cluster}" ;;
  down) down "${1:-$root/bin/cluster}" ;;
  load)
    dir="$root/bin/cluster"
    if [ $# -gt 0 ] && [ -d "$1" ]; then dir=$1; shift; fi
    [ $# -gt 0 ] || die "usage: $0 load [STATE_DIR] IMAGE..."
    load "$dir" "$@" ;;
  *) echo "usage: $0 up [STATE_DIR] | down [STATE_DIR] | load [STATE_DIR] IMAGE..." >&2; exit 2 ;;
esac
