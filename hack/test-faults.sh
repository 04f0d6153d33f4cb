#!/usr/bin/env bash
# The fault suite: the tests that README's "Guarantees and faults" table names, run on the real
# parts (control plane, Docker, kwok, the object store). The table is the list: a test it names that
# does not exist is an error, so the README cannot promise what nothing checks.
set -euo pipefail
cd "$(dirname "$0")/.."

names=$(sed -n '/^## Guarantees and faults/,/^## /p' README.md | grep -o '`Test[A-Za-z0-9_]*`' | tr -d '`' | sort -u)
[ -n "$names" ] || { echo "test-faults: README names no tests" >&2; exit 1; }
missing=0
for n in $names; do
  if ! grep -rqs --include='*_test.go' "^func $n(" .; then
    echo "test-faults: README names $n, which no test file defines" >&2
    missing=1
  fi
done
[ "$missing" = 0 ] || exit 1

pattern="^($(echo $names | tr ' ' '|'))\$"
pkgs=$(grep -rls --include='*_test.go' -E "^func ($(echo $names | tr ' ' '|'))\(" . | xargs -n1 dirname | sort -u)
echo "test-faults: $(echo $names | wc -w) tests in $(echo $pkgs | wc -w) packages" >&2
KUBEBUILDER_ASSETS="$(hack/control-plane.sh)" go test -count=1 ${GOTEST_FLAGS:-} -run "$pattern" $pkgs
