#!/usr/bin/env bash
# Smoke test of hack/node/node.sh: starts etcd + kube-apiserver by hand (envtest's flags, client-cert
# admin), brings the node up, runs real pods, tears the node down and checks that the host is as it
# was. Needs root. SA_ADMISSION=1 keeps the ServiceAccount admission plugin on (envtest turns it off).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
node="$here/node.sh"
ms() { echo $(( ($(date +%s%N) - $1) / 1000000 )); }
log() { echo "smoke: $*" >&2; }
fail() { log "FAIL: $*"; exit 1; }

assets=$("$here/../control-plane.sh")
t=$(date +%s%N)
cache=$("$node" build)
log "node.sh build: $(ms "$t") ms ($cache)"
kubectl="$assets/kubectl"

work=$(mktemp -d /tmp/node-smoke.XXXXXX)
state="$work/node"
pids=()

snapshot() { # the host state that node.sh must leave as it found it
  {
    echo "## iptables chains"; iptables-save | awk '/^\*/ {t = $1} /^:/ {print t, $1}' | sort
    # Docker may be used by other tests meanwhile: its containers' rules, veths and mounts are noise.
    echo "## iptables rules"; iptables-save | grep '^-' | grep -vE '^-A DOCKER|docker0|br-' | sort
    echo "## ip6tables chains"; ip6tables-save 2>/dev/null | awk '/^\*/ {t = $1} /^:/ {print t, $1}' | sort
    echo "## nft tables"; nft list tables 2>/dev/null || true
    # (veths come and go with Docker's containers; the node's own are checked by name below)
    echo "## links"; ip -o link show | awk -F': ' '{sub("@.*", "", $2); print $2}' | grep -v '^veth' | sort
    echo "## sysctls"
    sysctl kernel.panic kernel.panic_on_oops vm.overcommit_memory vm.panic_on_oom kernel.keys.root_maxkeys \
      kernel.keys.root_maxbytes net.ipv4.ip_forward
    echo "## cgroups"; find /sys/fs/cgroup -mindepth 1 -maxdepth 2 -type d | grep -v '/process_api' | sort
    echo "## paths"
    for p in /var/lib/kubelet /var/log/containers /var/log/pods /var/lib/cni /run/containerd /var/run/netns \
      /var/run/nri /opt/containerd /etc/cni /etc/containerd; do [ -e "$p" ] && echo "$p"; done
    echo "## mounts"; awk '{print $5}' /proc/self/mountinfo | grep -vE '^/(proc|sys/fs/cgroup)/|^/var/lib/docker/|^/run/docker/' | sort
  } 2>&1
}

stop_control_plane() { # the apiserver first: it hangs in its shutdown once etcd is gone
  local p
  for p in $(printf '%s\n' "${pids[@]}" | tac); do
    kill "$p" 2>/dev/null || continue
    for _ in $(seq 1 100); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$p" 2>/dev/null || true
    wait "$p" 2>/dev/null || true
  done
  pids=()
}

cleanup() {
  local rc=$?
  [ $rc -eq 0 ] || "$node" down "$state" >&2 || log "node.sh down failed"
  stop_control_plane
  if [ $rc -eq 0 ] && [ -z "${KEEP:-}" ]; then rm -rf "$work"; else log "kept $work for inspection"; fi
}
trap cleanup EXIT

snapshot > "$work/before.txt"
dockerd_pid=$(pgrep -x dockerd || true)

# --- control plane, as envtest runs it -------------------------------------------------------------
pki="$work/pki"; mkdir -p "$pki"
(
  cd "$pki"
  openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=smoke-ca -keyout ca.key -out ca.crt 2>/dev/null
  openssl req -newkey rsa:2048 -nodes -subj /CN=kube-apiserver -keyout serving.key -out serving.csr 2>/dev/null
  printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\n' > san.ext
  openssl x509 -req -in serving.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 1 -extfile san.ext -out serving.crt 2>/dev/null
  openssl req -newkey rsa:2048 -nodes -subj "/O=system:masters/CN=admin" -keyout admin.key -out admin.csr 2>/dev/null
  openssl x509 -req -in admin.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 1 -out admin.crt 2>/dev/null
  openssl genrsa -out sa.key 2048 2>/dev/null
  openssl rsa -in sa.key -pubout -out sa.pub 2>/dev/null
)
free_port() { local p; while :; do p=$((20000 + RANDOM % 20000)); (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null || { echo $p; return; }; done; }
etcd_port=$(free_port); peer_port=$(free_port); api_port=$(free_port)
"$assets/etcd" --data-dir "$work/etcd" --listen-client-urls "http://127.0.0.1:$etcd_port" \
  --advertise-client-urls "http://127.0.0.1:$etcd_port" --listen-peer-urls "http://127.0.0.1:$peer_port" \
  --unsafe-no-fsync=true >"$work/etcd.log" 2>&1 &
pids+=($!)
admission=--disable-admission-plugins=ServiceAccount
[ "${SA_ADMISSION:-0}" = 1 ] && admission=--enable-admission-plugins=ServiceAccount
"$assets/kube-apiserver" --allow-privileged=true --authorization-mode=RBAC --bind-address=127.0.0.1 \
  --secure-port "$api_port" --cert-dir "$pki" --tls-cert-file "$pki/serving.crt" --tls-private-key-file "$pki/serving.key" \
  --client-ca-file "$pki/ca.crt" "$admission" --etcd-servers "http://127.0.0.1:$etcd_port" \
  --service-account-issuer "https://127.0.0.1:$api_port/" --service-account-key-file "$pki/sa.pub" \
  --service-account-signing-key-file "$pki/sa.key" --service-cluster-ip-range 10.0.0.0/24 >"$work/apiserver.log" 2>&1 &
pids+=($!)
kc="$work/admin.kubeconfig"
KUBECONFIG=$kc "$kubectl" config set-cluster smoke --server "https://127.0.0.1:$api_port" --certificate-authority "$pki/ca.crt" --embed-certs >/dev/null
KUBECONFIG=$kc "$kubectl" config set-credentials admin --client-certificate "$pki/admin.crt" --client-key "$pki/admin.key" --embed-certs >/dev/null
KUBECONFIG=$kc "$kubectl" config set-context smoke --cluster smoke --user admin >/dev/null
KUBECONFIG=$kc "$kubectl" config use-context smoke >/dev/null
k() { "$kubectl" --kubeconfig "$kc" "$@"; }
t=$(date +%s%N)
until k get --raw /readyz >/dev/null 2>&1; do sleep 0.2; [ "$(ms "$t")" -lt 60000 ] || fail "apiserver not ready"; done
log "control plane ready in $(ms "$t") ms"

# --- node ----------------------------------------------------------------------------------------
t=$(date +%s%N)
node_name=$("$node" up "$kc" "$state")
log "node.sh up: $(ms "$t") ms (node $node_name)"
k get nodes -o wide >&2


pod() { # pod NAME RESTART-POLICY [extra spec yaml, indented 2]
  cat <<YAML
apiVersion: v1
kind: Pod
metadata:
  name: $1
spec:
  nodeName: $node_name
  restartPolicy: $2
  automountServiceAccountToken: false
  terminationGracePeriodSeconds: 2
${3:-}
YAML
}

if [ "${SA_ADMISSION:-0}" = 1 ]; then
  # No controller-manager: nobody creates the default ServiceAccount, and the admission plugin
  # rejects pods until it exists, automountServiceAccountToken: false or not.
  err=$(pod probe Never '  containers: [{name: main, image: busybox:1.36, imagePullPolicy: Never}]' | k apply -f - 2>&1 || true)
  log "with the ServiceAccount admission plugin and no default ServiceAccount: $err"
  k create serviceaccount default >/dev/null
  # A pod that mounts the token: the projected volume also wants the kube-root-ca.crt ConfigMap,
  # which only the controller-manager publishes.
  pod automount Never '  containers: [{name: main, image: busybox:1.36, imagePullPolicy: Never, command: [ls, /var/run/secrets/kubernetes.io/serviceaccount]}]' |
    sed '/automountServiceAccountToken/d' | k apply -f - >/dev/null
  sleep 8
  log "a pod that mounts its token, 8 s later: phase $(k get pod automount -o 'jsonpath={.status.phase}'); events: $(k get events --field-selector involvedObject.name=automount -o 'jsonpath={range .items[*]}{.reason}: {.message}; {end}')"
  k delete pod automount --wait=false >/dev/null
fi

wait_for() { # wait_for POD JSONPATH VALUE TIMEOUT-S
  local t0 v=""
  t0=$(date +%s%N)
  while [ "$(ms "$t0")" -lt $(($4 * 1000)) ]; do
    v=$(k get pod "$1" -o "jsonpath=$2" 2>/dev/null || true)
    [ "$v" = "$3" ] && return 0
    sleep 0.1
  done
  k get pod "$1" -o yaml >&2
  k get events --field-selector "involvedObject.name=$1" >&2
  fail "pod $1: $2 is '$v', want '$3'"
}

# 1. exit code and logs
t=$(date +%s%N)
pod exit3 Never '  containers:
  - name: main
    image: busybox:1.36
    imagePullPolicy: Never
    command: ["sh", "-c", "echo hello; exit 3"]' | k apply -f - >/dev/null
wait_for exit3 '{.status.phase}' Failed 60
log "pod exit3 Failed after $(ms "$t") ms from creation"
code=$(k get pod exit3 -o 'jsonpath={.status.containerStatuses[0].state.terminated.exitCode}')
[ "$code" = 3 ] || fail "exit3: exit code $code, want 3"
out=$(k logs exit3)
[ "$out" = hello ] || fail "exit3: logs '$out', want 'hello'"
log "ok: exit3 ended Failed, exit code 3, logs 'hello'"

# 2. emptyDir shared with an init container that copies a file into it
t=$(date +%s%N)
pod copy Never '  volumes:
  - name: work
    emptyDir: {}
  initContainers:
  - name: copy
    image: busybox:1.36
    imagePullPolicy: Never
    command: ["sh", "-c", "cp /etc/passwd /work/passwd && echo copied > /work/note"]
    volumeMounts: [{name: work, mountPath: /work}]
  containers:
  - name: main
    image: busybox:1.36
    imagePullPolicy: Never
    command: ["sh", "-c", "cat /work/note && grep -c root /work/passwd"]
    volumeMounts: [{name: work, mountPath: /work}]' | k apply -f - >/dev/null
wait_for copy '{.status.phase}' Succeeded 60
log "pod copy Succeeded after $(ms "$t") ms from creation"
out=$(k logs copy -c main | tr '\n' ' ')
[ "$out" = "copied 1 " ] || fail "copy: logs '$out', want 'copied 1 '"
log "ok: copy: the init container's file was in the emptyDir"

# 3. a running pod: time to Running, exec, pod IP; left running for `down` to clean up
t=$(date +%s%N)
pod sleeper Never '  containers:
  - name: main
    image: busybox:1.36
    imagePullPolicy: Never
    command: ["sleep", "3600"]' | k apply -f - >/dev/null
wait_for sleeper '{.status.phase}' Running 60
log "pod sleeper Running after $(ms "$t") ms from creation (IP $(k get pod sleeper -o 'jsonpath={.status.podIP}'))"
out=$(k exec sleeper -- sh -c 'echo exec-ok')
[ "$out" = exec-ok ] || fail "exec: '$out'"
log "ok: kubectl exec"

# --- teardown ------------------------------------------------------------------------------------
bridge=${CNI_BRIDGE:-rsnode0}
veths=$(ip -o link show master "$bridge" | awk -F': ' '{sub("@.*", "", $2); print $2}')
[ -n "$veths" ] || fail "no veth on the CNI bridge $bridge"
{
  echo "smoke: while up, the host has:"
  snapshot > "$work/up.txt"
  diff "$work/before.txt" "$work/up.txt" | grep '^[<>]' | grep -v veth | sed 's/^/  /' || true
} >&2
t=$(date +%s%N)
"$node" down "$state"
log "node.sh down: $(ms "$t") ms"
"$node" down "$state" || fail "second down failed"
log "ok: a second down is a no-op"
stop_control_plane

for v in $veths; do ip link show "$v" >/dev/null 2>&1 && fail "the pod veth $v is still there"; done
snapshot > "$work/after.txt"
if ! diff -u "$work/before.txt" "$work/after.txt" >&2; then
  fail "the host differs after down (see the diff above)"
fi
if [ -n "$dockerd_pid" ]; then
  [ "$(pgrep -x dockerd || true)" = "$dockerd_pid" ] || fail "dockerd $dockerd_pid is gone"
  docker version >/dev/null 2>&1 || fail "dockerd does not answer"
  log "ok: dockerd $dockerd_pid still runs and answers"
fi
log "ok: the host is as it was (iptables chains and rules, links, sysctls, cgroups, paths, mounts)"
echo "smoke: PASS"
