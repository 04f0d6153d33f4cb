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

# taskOf RUN TASK: the name of the ExecutorTask of RUN's TASK (named by the run's uid), once created.
taskOf() {
  local et
  for _ in $(seq 1 300); do
    et=$(kubectl get run "$1" -o jsonpath="{.status.tasks[?(@.name==\"$2\")].executorTask}" 2>/dev/null || true)
    if [ -n "$et" ] && kubectl get executortask "$et" >/dev/null 2>&1; then echo "$et"; return 0; fi
    sleep 0.2
  done
  fail "the ExecutorTask of $1/$2 was not created"
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

# The manager's metrics: through their Service (any replica), and each replica's runservice figures.
metrics=$(kubectl get --raw /api/v1/namespaces/runservice-system/services/runservice-manager-metrics:metrics/proxy/metrics) ||
  fail "the manager's metrics Service does not answer"
grep -q '^process_start_time_seconds' <<<"$metrics" || fail "the manager's metrics Service answers without metrics"
# Go's soft memory limit: 90% of the container's memory limit, in every manager replica (its metrics)
# and executor (its log), as automemlimit computes it from the cgroup.
# limit90 NS DEPLOYMENT: 90% of the deployment's container memory limit (in Mi), in bytes.
limit90() {
  local mem
  mem=$(kubectl -n "$1" get deploy "$2" -o jsonpath='{.spec.template.spec.containers[0].resources.limits.memory}')
  [[ $mem == *Mi ]] || fail "$2's memory limit is $mem, not in Mi"
  echo $((${mem%Mi} * 1048576 * 9 / 10))
}
# Each replica counts the runs it owns (sharded): one of the three counts the finished run.
counted=
checked=0
want=$(limit90 runservice-system runservice-manager)
for pod in $(kubectl -n runservice-system get pods -l app.kubernetes.io/name=runservice-manager -o jsonpath='{.items[*].metadata.name}'); do
  # The runservice figures list the replica's cache within 5 s, and are left out when that fails (a
  # replica under load, once in CI): read again, for up to 30 s, saying so.
  for try in $(seq 30); do
    metrics=$(kubectl get --raw "/api/v1/namespaces/runservice-system/pods/$pod:8080/proxy/metrics") || fail "the manager replica $pod serves no metrics"
    grep -q '^runservice_shard_runs{' <<<"$metrics" && break
    [ "$try" = 30 ] && fail "the manager replica $pod is not sharded: $(echo "$metrics" | grep '^runservice_')"
    echo "cluster-e2e: the manager replica $pod's metrics have no runservice_shard_runs yet (try $try)" >&2
    sleep 1
  done
  grep -q '^runservice_runs{phase="Finished"} [1-9]' <<<"$metrics" && counted=$pod
  got=$(echo "$metrics" | awk '/^go_gc_gomemlimit_bytes /{printf "%d", $2}')
  [ "$got" = "$want" ] || fail "the manager replica $pod runs with Go's memory limit $got, want $want"
  checked=$((checked + 1))
done
[ -n "$counted" ] || fail "no manager replica's metrics count the finished run"
want=$(limit90 default runservice-executor)
for pod in $(kubectl get pods -l app.kubernetes.io/name=runservice-executor -o jsonpath='{.items[*].metadata.name}'); do
  podlog=$(kubectl logs "$pod")
  grep -q "GOMEMLIMIT is updated.*$want" <<<"$podlog" ||
    fail "the executor $pod did not set Go's memory limit to $want: $(grep GOMEMLIMIT <<<"$podlog")"
  checked=$((checked + 1))
done
[ "$checked" = 6 ] || fail "Go's memory limit checked in $checked processes, want 3 manager replicas and 3 executors"
log "Go's memory limit is 90% of the container's in the 3 manager replicas and the 3 executors"

# The archive API: registered by its APIService and served by every manager replica behind its
# Service (the front proxy of hack/cluster.sh, the caBundle the manager keeps, delegated auth).
kubectl wait --for=condition=Available apiservice/v1alpha1.archive.runservice.dev --timeout=60s >/dev/null ||
  fail "the archive API's APIService is not Available: $(kubectl get apiservice v1alpha1.archive.runservice.dev -o jsonpath='{.status.conditions}')"
kubectl get --raw /apis/archive.runservice.dev/v1alpha1 | grep -q '"name":"archivedruns"' || fail "the archive API does not serve archivedruns"
log "archive API: Available through its Service"

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
grep -q 'spec.tasks\[0\].depends.*cycle' <<<"$bad" || fail "a cyclic run was not refused by the webhook: $bad"
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
long_sleep=$(taskOf long sleep)
kubectl wait "executortask/$long_sleep" --for=jsonpath='{.status.phase}'=Running --timeout=2m >/dev/null
victim=$(kubectl get executortask "$long_sleep" -o jsonpath='{.spec.executor}')
uid=$(kubectl get executortask "$long_sleep" -o jsonpath='{.metadata.uid}')
kubectl get pods -l "runservice.dev/executortask-uid=$uid" -o name | grep -q . || fail "no pod for task long-sleep"
sibling=$(kubectl get executors -o name | sed 's|.*/||' | grep -vx "$victim" | head -1)
[ -n "$sibling" ] || fail "no second executor"

# Least privilege, with the task above on $victim and $sibling another live member. Each refusal is
# asked of the real apiserver as the service account itself: RBAC with `kubectl auth can-i`, the
# admission policies with real (dry-run) requests carrying the pod-bound token's extra, the pod name.
mgr_sa=system:serviceaccount:runservice-system:runservice-manager
ex_sa=system:serviceaccount:default:runservice-executor
pod_extra=authentication.kubernetes.io/pod-name
denied=() # every check that went wrong, reported together
wrong() { log "least privilege: $*"; denied+=("$*"); }
may() { kubectl auth can-i --as="$1" "${@:2}" >/dev/null 2>&1 || wrong "$1 may not: ${*:2}"; }
mayNot() { if kubectl auth can-i --as="$1" "${@:2}" >/dev/null 2>&1; then wrong "$1 may: ${*:2}"; fi; }
# as POD CMD...: kubectl as the executor pod POD (what its pod-bound token carries).
as() { local pod=$1; shift; kubectl --as="$ex_sa" --as-user-extra="$pod_extra=$pod" "$@"; }
# patchAs POD PATH JSON: a merge patch of the API object at PATH as the executor pod POD, a dry run,
# sent straight to the apiserver (kubectl patch reads the object first, which executors may not).
patchAs() { patchAsUser "$ex_sa" "$2" "$3" -H "Impersonate-Extra-authentication.kubernetes.io%2fpod-name: $1"; }
# patchAsUser USER PATH JSON [CURL ARGS...]: the same, as USER.
patchAsUser() {
  curl -sS --fail-with-body --cacert "$state/pki/ca.crt" --cert "$state/pki/admin.crt" --key "$state/pki/admin.key" \
    -X PATCH -H 'Content-Type: application/merge-patch+json' -H "Impersonate-User: $1" "${@:4}" \
    "$(kubectl config view --minify -o jsonpath='{.clusters[0].cluster.server}')$2?dryRun=All" -d "$3"
}
# current KIND NAME: the object as JSON without its resourceVersion, for an update that does not race
# the writers of the object (the requests below are dry runs).
current() { kubectl get "$@" -o json | sed '/"resourceVersion":/d'; }
# status KIND NAME CMD...: CMD (a kubectl, or `as POD`) writes the object's status unchanged as a dry
# run, read again when its writers came first (a status update must name the version it replaces).
status() {
  local kind=$1 name=$2 out; shift 2
  for _ in 1 2 3 4 5 6 7 8 9 10; do
    out=$(kubectl get "$kind" "$name" -o json | "$@" replace --dry-run=server --subresource=status -f - 2>&1) && return 0
    grep -q 'the object has been modified' <<<"$out" || break
  done
  echo "$out"
  return 1
}
# refused WHAT CMD...: CMD fails, and the apiserver (not a typo) said why: an admission policy.
refused() {
  local what=$1 out; shift
  if out=$("$@" 2>&1); then wrong "$what was allowed: $out"; return; fi
  grep -q 'ValidatingAdmissionPolicy' <<<"$out" || wrong "$what failed for another reason: $out"
}
kubectl create namespace rbac-probe >/dev/null
kubectl -n rbac-probe create secret generic other --from-literal=k=v >/dev/null
# The manager: the executors' token Secret in any namespace and its certificate's Secret, by name only.
mayNot "$mgr_sa" get secret/other -n rbac-probe
mayNot "$mgr_sa" list secrets -A
mayNot "$mgr_sa" get secret/runservice-object-store -n runservice-system
may "$mgr_sa" get secret/runservice-executor-token -n rbac-probe
may "$mgr_sa" update secret/runservice-webhook-cert -n runservice-system
mayNot "$mgr_sa" patch validatingwebhookconfiguration/another-webhook
may "$mgr_sa" patch validatingwebhookconfiguration/runservice-validating-webhook-configuration
may "$mgr_sa" patch mutatingwebhookconfiguration/runservice-mutating-webhook-configuration
mayNot "$mgr_sa" patch mutatingwebhookconfiguration/another-webhook
may "$mgr_sa" patch apiservice/v1alpha1.archive.runservice.dev
mayNot "$mgr_sa" patch apiservice/v1.apps
may "$mgr_sa" get configmap/extension-apiserver-authentication -n kube-system
mayNot "$mgr_sa" get configmap/kube-root-ca.crt -n kube-system
mayNot "$mgr_sa" update leases -n kube-system
# The executors: no Secret read but their token's; no ExecutorTask spec, no Executor status.
mayNot "$ex_sa" list secrets -n default
mayNot "$ex_sa" get secret/runservice-object-store -n default
may "$ex_sa" get secret/runservice-executor-token -n default
mayNot "$ex_sa" update executortasks -n default
mayNot "$ex_sa" update executors --subresource=status -n default
# An executor writes its own Executor, not a sibling's (updates as the executors do them: no patch).
as "$victim" replace --dry-run=server -f - <<<"$(current executor "$victim")" >/dev/null ||
  wrong "$victim may not update its Executor"
refused "$victim updating $sibling's Executor" \
  as "$victim" replace --dry-run=server -f - <<<"$(current executor "$sibling")"
refused "$victim creating an Executor named otherwise" as "$victim" create --dry-run=server -f - <<YAML
{"apiVersion": "runservice.dev/v1alpha1", "kind": "Executor", "metadata": {"name": "forged"}, "spec": {"driver": "Kubernetes"}}
YAML
refused "a token bound to no pod updating an Executor" \
  kubectl --as="$ex_sa" replace --dry-run=server -f - <<<"$(current executor "$victim")"
# ... and the status of the tasks scheduled on it, not of a sibling's.
status executortask "$long_sleep" as "$victim" >/dev/null || wrong "$victim may not write the status of its task long-sleep"
refused "$sibling writing the status of $victim's task" status executortask "$long_sleep" as "$sibling"
# An ExecutorTask's spec is what was scheduled, for a cluster admin too (the CRDs' admission policy).
refused "an admin changing the command of task long-sleep" kubectl patch --dry-run=server executortask "$long_sleep" \
  --type=json -p '[{"op": "replace", "path": "/spec/task/steps/0/run/command", "value": "echo changed"}]'
# The group's clean-up: a sibling's Executor may be deleted; other Leases and Secrets stay out of reach.
as "$sibling" delete --dry-run=server executor "$victim" >/dev/null || wrong "$sibling may not remove $victim's Executor"
kubectl apply -f - >/dev/null <<'YAML'
{"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": {"name": "other-app", "namespace": "default"}, "spec": {"holderIdentity": "other-app"}}
YAML
refused "an executor taking another application's Lease" as "$victim" replace --dry-run=server -f - \
  <<<"$(current -n default lease other-app | sed 's/"holderIdentity": "other-app"/"holderIdentity": "cleanup-by-'"$victim"'"/')"
refused "an executor creating a Secret of no task of its own" \
  as "$victim" create --dry-run=server secret generic forged --from-literal=k=v
# Pods: none of another's made its own by relabelling, none carrying a Secret of the namespace out.
refused "$victim relabelling $sibling's pod as its own" patchAs "$victim" "/api/v1/namespaces/default/pods/$sibling" \
  '{"metadata": {"labels": {"runservice.dev/executor": "'"$victim"'"}}}'
refused "$victim creating a pod that mounts another Secret" as "$victim" create --dry-run=server -f - <<YAML
{"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "exfil", "labels": {"runservice.dev/executor": "$victim"}},
 "spec": {"automountServiceAccountToken": false, "containers": [{"name": "c", "image": "busybox:1.36"}],
          "volumes": [{"name": "s", "secret": {"secretName": "runservice-object-store"}}]}}
YAML
# Run results are the manager's: not even a cluster admin rewrites them.
refused "an admin rewriting a run's result" kubectl replace --dry-run=server --subresource=status -f - \
  <<<"$(kubectl get run diamond -o json | sed 's/"result": "Success"/"result": "Failed"/')"
refused "an admin patching a run's result" kubectl patch run diamond --subresource=status --type=merge \
  -p '{"status": {"result": "Failed"}}' --dry-run=server
# The manager patches run statuses (locked on the resourceVersion); it has no update of them.
out=$(patchAsUser "$mgr_sa" /apis/runservice.dev/v1alpha1/namespaces/default/runs/diamond/status \
  '{"status": {"result": "Success"}}' 2>&1) || wrong "the manager may not patch a run's status: $out"
kubectl delete namespace rbac-probe --wait=false >/dev/null
kubectl -n default delete lease other-app >/dev/null
[ ${#denied[@]} -eq 0 ] || fail "least privilege: ${#denied[@]} checks went wrong (above)"
log "least privilege: RBAC and admission policies refuse what the manager and the executors do not need"

kubectl delete pod "$victim" --grace-period=0 --force >/dev/null 2>&1
log "killed executor pod $victim under task long-sleep"
kubectl wait run/long --for=jsonpath='{.status.tasks[0].reason}'=ExecutorRemoved --timeout=3m >/dev/null ||
  fail "task long-sleep did not fail with ExecutorRemoved"
kubectl get executor "$victim" >/dev/null 2>&1 && fail "the dead executor's Executor still exists"
# The sibling waited for the pod to end (its node confirmed); the kubelet then removes the object.
for _ in $(seq 1 150); do
  [ -z "$(kubectl get pods,secrets -l "runservice.dev/executortask-uid=$uid" -o name)" ] && break
  sleep 0.2
done
left=$(kubectl get pods,secrets -l "runservice.dev/executortask-uid=$uid" -o custom-columns=NAME:.metadata.name,DELETED:.metadata.deletionTimestamp --no-headers)
[ -z "$left" ] || fail "the dead executor's task pod or secret is left: $left"
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
drain_sleep=$(taskOf drain sleep)
kubectl wait "executortask/$drain_sleep" --for=jsonpath='{.status.phase}'=Running --timeout=2m >/dev/null
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

# 5. Nothing was forbidden: the RBAC and the admission policies in config/ allow what the processes do.
for ns in runservice-system default; do
  for p in $(kubectl -n "$ns" get pods -o name -l 'app.kubernetes.io/name in (runservice-manager,runservice-executor)'); do
    if kubectl -n "$ns" logs "$p" | grep -Ei 'forbidden|ValidatingAdmissionPolicy' >&2; then fail "$ns/$p was refused something"; fi
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
# 7. No manager replica restarted: a replica that does not lead runs its share (a cache it needs
#    started on the leader only once made every other replica exit after two minutes).
restarts=$(kubectl -n runservice-system get pods -l app.kubernetes.io/name=runservice-manager \
  -o jsonpath='{range .items[*]}{.metadata.name}={.status.containerStatuses[0].restartCount}{"\n"}{end}' | grep -v '=0$' || true)
[ -z "$restarts" ] || fail "manager replicas restarted: $restarts"
log "no manager replica restarted ($((SECONDS - t0)) s)"

log "PASS in $((SECONDS - t0)) s"
