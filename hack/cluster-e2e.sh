#!/usr/bin/env bash
# Deploys runservice the README's way onto a real single-node cluster on this host (hack/cluster.sh)
# and checks it works there: the README's "Deploying to a cluster" block runs as it is written, then
# a few checks that only a real cluster can answer (RBAC as written in config/, Services through
# kube-proxy, ServiceAccount tokens, a Deployment replacing a killed executor pod). `make test` runs
# it. Needs root and Docker (hack/docker.sh); with CI set, not being root is a failure.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"

log() { echo "cluster-e2e: $*" >&2; }
fail() { log "FAIL: $*"; exit 1; }

if [ "$(id -u)" != 0 ]; then
  [ -n "${CI:-}" ] && fail "needs root (the node changes the host)"
  log "SKIP: needs root (the node changes the host)"
  exit 0
fi

state=${CLUSTER_E2E_STATE:-$root/bin/cluster-e2e}
export KUBECONFIG=$state/kubeconfig OBJECT_STORE_ENV=$state/object-store.env
kubectl_dir=$(hack/control-plane.sh)
export PATH=$root/bin:$kubectl_dir:$PATH

dump() {
  log "state at failure:"
  kubectl get runs,executortasks,executors,leases,pods -A -o wide >&2 || true
  kubectl get events -A --field-selector type=Warning >&2 || true
  for ns in runservice-system default; do
    for p in $(kubectl -n "$ns" get pods -o name -l 'app.kubernetes.io/name in (runservice-manager,runservice-executor)' 2>/dev/null); do
      log "--- $ns/$p"; kubectl -n "$ns" logs "$p" --tail=30 >&2 || true
    done
  done
}
# exists OBJECT: waits (up to a minute) until it exists; kubectl wait needs an object to wait on.
exists() {
  for _ in $(seq 1 300); do
    kubectl get "$1" >/dev/null 2>&1 && return 0
    sleep 0.2
  done
  fail "$1 was not created"
}

trap 'rc=$?; [ $rc -eq 0 ] || dump; hack/cluster.sh down "$state" >/dev/null 2>&1 || log "teardown failed (see $state)"; exit $rc' EXIT

t0=$SECONDS
hack/docker.sh
hack/cluster.sh up "$state" >/dev/null
build_log=$(make -s docker-build 2>&1) || { echo "$build_log" >&2; fail "make docker-build"; }
hack/cluster.sh load "$state" runservice-manager:dev runservice-executor:dev runservice-toolbox:dev 2>/dev/null
log "cluster and images ready in $((SECONDS - t0)) s"

# 1. The README's block, as written.
block=$(awk '/^<!-- cluster-walkthrough -->$/ {on = 1; next} /^<!-- \/cluster-walkthrough -->$/ {on = 0} on' README.md | sed '/^```/d')
[ -n "$block" ] || fail "README.md has no cluster-walkthrough block"
out=$(bash -euxo pipefail -c "$block" 2>&1) || { echo "$out" >&2; fail "the README's cluster walkthrough failed"; }
echo "$out" | tail -5 >&2
[ "$(kubectl get run diamond -o jsonpath='{.status.result}')" = Success ] || fail "run diamond did not succeed"
[ "$(echo "$out" | tail -1)" = packaged ] || fail "runctl logs diamond package did not print the step's output"
log "README walkthrough: diamond Success, logs read from S3 ($((SECONDS - t0)) s)"

# The manager's metrics: through their Service (either replica), and the leader's runservice figures.
metrics=$(kubectl get --raw /api/v1/namespaces/runservice-system/services/runservice-manager-metrics:metrics/proxy/metrics) ||
  fail "the manager's metrics Service does not answer"
echo "$metrics" | grep -q '^process_start_time_seconds' || fail "the manager's metrics Service answers without metrics"
leader=$(kubectl -n runservice-system get lease runservice-manager.runservice.dev -o jsonpath='{.spec.holderIdentity}')
leader=${leader%%_*}
metrics=$(kubectl get --raw "/api/v1/namespaces/runservice-system/pods/$leader:8080/proxy/metrics") || fail "the leader $leader serves no metrics"
echo "$metrics" | grep -q '^runservice_runs{phase="Finished"} [1-9]' || fail "the leader's metrics do not count the finished run: $(echo "$metrics" | grep '^runservice_')"

# 2. Bad input is refused at apply time, through the webhook Service.
bad=$(kubectl apply -f - 2>&1 <<'YAML' || true
apiVersion: runservice.dev/v1alpha1
kind: Run
metadata: {name: cycle}
spec:
  tasks:
  - {name: a, depends: [{task: b}], containers: [{image: busybox:1.36}], steps: [{run: {command: "true"}}]}
  - {name: b, depends: [{task: a}], containers: [{image: busybox:1.36}], steps: [{run: {command: "true"}}]}
YAML
)
echo "$bad" | grep -q 'spec.tasks\[0\].depends.*cycle' || fail "a cyclic run was not refused by the webhook: $bad"
kubectl get run cycle >/dev/null 2>&1 && fail "the refused run exists"
log "webhook: $bad"

# 3. An executor pod killed mid-task: a sibling deletes its task pod and its Executor (with the
#    executor Role as written), the task fails with ExecutorRemoved, the Deployment replaces the pod.
kubectl apply -f - <<'YAML'
apiVersion: runservice.dev/v1alpha1
kind: Run
metadata: {name: long}
spec:
  tasks:
  - name: sleep
    containers: [{image: busybox:1.36}]
    steps: [{run: {command: "sleep 600"}}]
YAML
exists executortask/long-sleep
kubectl wait executortask/long-sleep --for=jsonpath='{.status.phase}'=Running --timeout=2m >/dev/null
victim=$(kubectl get executortask long-sleep -o jsonpath='{.spec.executor}')
uid=$(kubectl get executortask long-sleep -o jsonpath='{.metadata.uid}')
kubectl get pods -l "runservice.dev/executortask-uid=$uid" -o name | grep -q . || fail "no pod for task long-sleep"
kubectl delete pod "$victim" --grace-period=0 --force >/dev/null 2>&1
log "killed executor pod $victim under task long-sleep"
kubectl wait run/long --for=jsonpath='{.status.tasks[0].reason}'=ExecutorRemoved --timeout=3m >/dev/null ||
  fail "task long-sleep did not fail with ExecutorRemoved"
kubectl get executor "$victim" >/dev/null 2>&1 && fail "the dead executor's Executor still exists"
[ -z "$(kubectl get pods,secrets -l "runservice.dev/executortask-uid=$uid" -o name)" ] || fail "the dead executor's task pod or secret is left"
kubectl rollout status deployment/runservice-executor --timeout=2m >/dev/null
log "group cleanup: $victim's task pod and Executor removed, task Failed/ExecutorRemoved, replaced ($((SECONDS - t0)) s)"

# 4. A rollout restart drains: the executor pod running a task takes no new ones, follows its task
#    to the end, then leaves the group; the task succeeds.
kubectl apply -f - <<'YAML'
apiVersion: runservice.dev/v1alpha1
kind: Run
metadata: {name: drain}
spec:
  tasks:
  - name: sleep
    containers: [{image: busybox:1.36}]
    steps: [{run: {command: "sleep 15 && echo slept"}}]
YAML
exists executortask/drain-sleep
kubectl wait executortask/drain-sleep --for=jsonpath='{.status.phase}'=Running --timeout=2m >/dev/null
kubectl rollout restart deployment/runservice-executor >/dev/null
kubectl wait run/drain --for=jsonpath='{.status.phase}'=Finished --timeout=3m >/dev/null
[ "$(kubectl get run drain -o jsonpath='{.status.result}')" = Success ] || fail "the task running during the rollout did not succeed: $(kubectl get run drain -o jsonpath='{.status.tasks}')"
kubectl rollout status deployment/runservice-executor --timeout=3m >/dev/null
for _ in $(seq 1 120); do
  [ "$(kubectl get executors --no-headers | wc -l)" = 3 ] && break
  sleep 0.5
done
[ "$(kubectl get executors --no-headers | wc -l)" = 3 ] || fail "after the rollout, the old executors did not leave: $(kubectl get executors --no-headers)"
log "rollout restart: the running task finished on its draining executor, the old executors left ($((SECONDS - t0)) s)"

# 5. Nothing was forbidden: the RBAC in config/ covers what the processes do.
for ns in runservice-system default; do
  for p in $(kubectl -n "$ns" get pods -o name -l 'app.kubernetes.io/name in (runservice-manager,runservice-executor)'); do
    if kubectl -n "$ns" logs "$p" | grep -i forbidden >&2; then fail "$ns/$p was refused something"; fi
  done
done
# 6. Every emptyDir of the manager's and the executors' pods is bounded (a task writing without end
#    must not fill the node's disk through the executor's copy of its logs).
for ns in runservice-system default; do
  for p in $(kubectl -n "$ns" get pods -o name -l 'app.kubernetes.io/name in (runservice-manager,runservice-executor)'); do
    unbounded=$(kubectl -n "$ns" get "$p" -o jsonpath='{range .spec.volumes[?(@.emptyDir)]}{.name}={.emptyDir.sizeLimit}{"\n"}{end}' | grep '=$' || true)
    [ -z "$unbounded" ] || fail "$ns/$p has an emptyDir without sizeLimit: $unbounded"
  done
done
log "every emptyDir of the manager and the executors has a sizeLimit"

log "PASS in $((SECONDS - t0)) s"
