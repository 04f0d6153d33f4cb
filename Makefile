# runservice Makefile. Tools are pinned in go.mod (`go tool ...`); the control plane for tests and
# `make run` is built by hack/control-plane.sh and cached outside the checkout.
SHELL := /usr/bin/env bash -o pipefail
.SHELLFLAGS := -ec

GO ?= go
CONTROLLER_GEN := $(GO) tool controller-gen
BIN := $(CURDIR)/bin
GOTEST_FLAGS ?= -count=1
TEST_TIMEOUT ?= 30m

.PHONY: all
all: build

##@ Development

.PHONY: manifests
manifests: ## Generate CRDs, RBAC and webhook configuration from markers.
	$(CONTROLLER_GEN) crd:maxDescLen=400 paths=./api/v1alpha1/... output:crd:artifacts:config=config/crd/bases
	$(CONTROLLER_GEN) rbac:roleName=manager paths=./controllers/... paths=./internal/... output:rbac:artifacts:config=config/rbac
	$(CONTROLLER_GEN) rbac:roleName=executor paths=./executor/... output:rbac:artifacts:config=config/rbac/executor
	$(CONTROLLER_GEN) webhook paths=./internal/webhook/... output:webhook:artifacts:config=config/webhook

.PHONY: generate
generate: ## Generate deepcopy code and the typed clientset, listers and informers.
	$(CONTROLLER_GEN) object:headerFile=hack/boilerplate.go.txt paths=./api/...
	hack/update-codegen.sh

.PHONY: fmt
fmt: ## Run gofmt.
	gofmt -w $$(git ls-files '*.go')

.PHONY: vet
vet: ## Run go vet.
	$(GO) vet ./...

.PHONY: lint
lint: vet ## Lint (gofmt check and go vet).
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed: $$out"; exit 1; fi

.PHONY: verify
verify: generate manifests lint ## Fail when regeneration changes the tree.
	@if [ -n "$$(git status --porcelain -- api config pkg/client pkg/generated)" ]; then \
		git status --porcelain -- api config pkg/client pkg/generated; git diff --stat -- api config pkg/client pkg/generated; \
		echo "generated files are out of date: run make generate manifests"; exit 1; fi

.PHONY: control-plane
control-plane: ## Build (once) the etcd, kube-apiserver and kubectl binaries used by tests and make run.
	@hack/control-plane.sh

.PHONY: test
test: ## Run all tests: the Go suites against a real control plane (built on first use), then test-cluster.
	KUBEBUILDER_ASSETS="$$(hack/control-plane.sh)" $(GO) test $(GOTEST_FLAGS) -timeout $(TEST_TIMEOUT) ./...
	$(MAKE) test-cluster

.PHONY: test-faults
test-faults: ## Run the fault suite: the tests README's "Guarantees and faults" table names (make test runs them too).
	hack/test-faults.sh

.PHONY: test-cluster
test-cluster: ## Deploy the README's way onto a real single-node cluster here (hack/cluster.sh) and check it (root).
	hack/cluster-e2e.sh

.PHONY: bench
bench: ## Run the benchmarks and print their figures.
	KUBEBUILDER_ASSETS="$$(hack/control-plane.sh)" $(GO) run ./hack/bench $(BENCH_FLAGS)

##@ Build

.PHONY: build
build: ## Build the binaries into bin/.
	CGO_ENABLED=0 $(GO) build -o $(BIN)/ ./cmd/...
	ln -sf runctl $(BIN)/kubectl-runs

PREFIX ?= $(HOME)/.local

.PHONY: install-runctl
install-runctl: ## Install runctl and its kubectl plugin name kubectl-runs into $(PREFIX)/bin.
	CGO_ENABLED=0 $(GO) build -o $(PREFIX)/bin/runctl ./cmd/runctl
	ln -sf runctl $(PREFIX)/bin/kubectl-runs

.PHONY: run
run: ## Run the manager: against the current cluster if reachable, else on a local control plane.
	KUBEBUILDER_ASSETS="$$(hack/control-plane.sh)" $(GO) run ./hack/localrun $(RUN_FLAGS)

.PHONY: docker-build
docker-build: build ## Build the manager, executor and toolbox images (static binaries FROM scratch).
	for t in manager executor toolbox; do DOCKER_BUILDKIT=0 docker build -q --target $$t -t runservice-$$t:dev -f Dockerfile . || exit 1; done

DEPLOY_CONFIG ?= config/selfsigned

.PHONY: deploy
deploy: ## Install CRDs, RBAC and the manager (DEPLOY_CONFIG: config/selfsigned, or config/default with cert-manager) and executors in default.
	kubectl apply -k $(DEPLOY_CONFIG)
	kubectl apply -k config/executor

.PHONY: help
help: ## Show this help.
	@awk 'BEGIN {FS = ":.*##"} /^[a-zA-Z_-]+:.*?##/ { printf "  %-15s %s\n", $$1, $$2 }' $(MAKEFILE_LIST)
