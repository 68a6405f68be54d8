#!/usr/bin/env bash
# The one test command: host setup, formatting, lints, build, then every test in the workspace.
# Privileged tests need root (CI runs as root); as another user they skip and say why.
set -euo pipefail
cd "$(dirname "$0")/.."

section() { printf '\n==> %s\n' "$*"; }

section "setup (scripts/setup.sh)"
scripts/setup.sh

if [[ $(id -u) -ne 0 ]]; then
  printf 'test: WARNING: not root; privileged tests will be skipped (CI runs them as root)\n'
fi

section "cargo fmt --all --check"
cargo fmt --all --check

section "cargo clippy --workspace --all-targets --locked -- -D warnings"
cargo clippy --workspace --all-targets --locked -- -D warnings

# Integration tests run the real binaries (runbox, runbox-probe), so build them all first.
section "cargo build --workspace --locked"
cargo build --workspace --locked

# The default sandbox image (debootstrap bookworm + python3, numpy, pandas, matplotlib, nodejs),
# as a rootfs for native and gvisor and as runbox/default:latest in the local Docker engine.
# Rebuilt only when missing or older than its recipe (crates/runbox-image).
section "runbox image build default"
image_dir=/var/lib/runbox/images/default
if [[ $(id -u) -eq 0 ]]; then
  if [[ ! -f $image_dir/image.json ]] || [[ -n $(find crates/runbox-image/src -newer "$image_dir/image.json" -print -quit) ]] \
    || ! docker image inspect runbox/default:latest >/dev/null 2>&1; then
    target/debug/runbox image build default
  else
    printf 'test: image default is up to date (%s)\n' "$image_dir"
  fi
fi

log=$(mktemp)
pylog=$(mktemp)
trap 'rm -f "$log" "$pylog"' EXIT
status=0
# Backend tests fail instead of skipping when their backend is missing: CI has all three.
if [[ $(id -u) -eq 0 ]]; then
  export RUNBOX_REQUIRE_DOCKER=1 RUNBOX_REQUIRE_GVISOR=1
fi
# Nothing may outlive a suite: containers, runsc sandboxes, mounts, cgroups, processes.
checks_passed=0
checks_failed=0
leftovers() {
  section "leftover check after $1"
  if [[ $(id -u) -ne 0 ]]; then
    return
  fi
  if scripts/leftovers.sh; then
    checks_passed=$((checks_passed + 1))
  else
    checks_failed=$((checks_failed + 1))
    status=1
  fi
}

section "cargo test --workspace --locked --no-fail-fast"
cargo test --workspace --locked --no-fail-fast 2>&1 | tee "$log" || status=$?
leftovers "the workspace tests"

# The conformance suite: the server's API contract tests again on the docker and gvisor
# backends (native ran above), and the official OpenSandbox SDK suite on each backend below.
for runtime in docker gvisor; do
  section "conformance on $runtime: cargo test -p runbox-server --test api"
  RUNBOX_TEST_RUNTIME=$runtime cargo test -p runbox-server --test api --locked --no-fail-fast 2>&1 \
    | tee -a "$log" || status=$?
  leftovers "the $runtime conformance tests"
done

# Python suites, each in its own venv under target/ (reinstalled only when its requirements
# change): the runbox SDK's tests, and the official OpenSandbox SDKs driving a spawned server.
# Server-backed tests start target/debug/runbox serve and skip, saying why, when they cannot.
python=python3
[[ -x /usr/bin/python3 ]] && python=/usr/bin/python3
py_status=0
# pytest_suite NAME VENV STAMP_SOURCE TESTS PIP_ARGS...
pytest_suite() {
  local name=$1 venv=$2 source=$3 tests=$4
  shift 4
  section "$name: pytest $tests"
  if ! "$venv/bin/python" -c 'import sys' 2>/dev/null; then
    rm -rf "$venv"
    "$python" -m venv "$venv" || { py_status=1; return; }
  fi
  local stamp=$venv/.runbox-installed
  if [[ ! -f $stamp || $source -nt $stamp ]]; then
    if "$venv/bin/pip" install -q --disable-pip-version-check "$@"; then
      touch "$stamp"
    else
      printf 'test: pip install into %s failed\n' "$venv"
      py_status=1
      return
    fi
  fi
  RUNBOX_BIN=target/debug/runbox "$venv/bin/python" -m pytest -q "$tests" 2>&1 | tee -a "$pylog" \
    || py_status=1
}
pytest_suite "python SDK" target/sdk-venv sdk/python/pyproject.toml sdk/python/tests -e sdk/python pytest
pytest_suite "official OpenSandbox SDKs" target/opensandbox-venv tests/opensandbox/requirements.txt tests/opensandbox -r tests/opensandbox/requirements.txt
leftovers "the SDK suites on native"
for runtime in docker gvisor; do
  RUNBOX_RUNTIME=$runtime pytest_suite "official OpenSandbox SDKs on $runtime" target/opensandbox-venv tests/opensandbox/requirements.txt tests/opensandbox -r tests/opensandbox/requirements.txt
  leftovers "the OpenSandbox SDK suite on $runtime"
done

# Last, so that the summary below is the closing line of the log.
# One closing line for the whole workspace and the SDK (cargo prints one per test binary, and
# the last one is often a crate's empty doc-test run; pytest prints its own just above).
passed=$(grep -oE '^test result: [A-Za-z]+\. [0-9]+ passed' "$log" | awk '{s+=$4} END {print s+0}')
failed=$(grep -oE '[0-9]+ failed;' "$log" | awk '{s+=$1} END {print s+0}')
skipped=$(grep -c 'SKIPPED' "$log" || true)
py_summary=$(grep -E '[0-9]+ (passed|failed|skipped|errors?)[ ,].*in [0-9.]+s' "$pylog" || true)
py_count() { grep -oE "[0-9]+ $1\b" <<<"$py_summary" | awk '{s+=$1} END {print s+0}' || true; }
passed=$((passed + $(py_count passed) + checks_passed))
failed=$((failed + $(py_count failed) + $(py_count 'errors?') + checks_failed))
skipped=$((skipped + $(py_count skipped)))
if ((py_status != 0)) && [[ -z $py_summary ]]; then
  failed=$((failed + 1)) # the SDK tests did not run at all
fi
printf '\ntests: %s passed, %s failed, %s skipped\n' "$passed" "$failed" "$skipped"
if ((status == 0)); then
  status=$py_status
fi
exit "$status"
