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

# Last, so that the summary below is the closing line of the log.
section "cargo test --workspace --locked --no-fail-fast"
log=$(mktemp)
pylog=$(mktemp)
trap 'rm -f "$log" "$pylog"' EXIT
status=0
cargo test --workspace --locked --no-fail-fast 2>&1 | tee "$log" || status=$?

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

# Last, so that the summary below is the closing line of the log.
# One closing line for the whole workspace and the SDK (cargo prints one per test binary, and
# the last one is often a crate's empty doc-test run; pytest prints its own just above).
passed=$(grep -oE '^test result: [A-Za-z]+\. [0-9]+ passed' "$log" | awk '{s+=$4} END {print s+0}')
failed=$(grep -oE '[0-9]+ failed;' "$log" | awk '{s+=$1} END {print s+0}')
skipped=$(grep -c 'SKIPPED' "$log" || true)
py_summary=$(grep -E '[0-9]+ (passed|failed|skipped|errors?)[ ,].*in [0-9.]+s' "$pylog" || true)
py_count() { grep -oE "[0-9]+ $1\b" <<<"$py_summary" | awk '{s+=$1} END {print s+0}' || true; }
passed=$((passed + $(py_count passed)))
failed=$((failed + $(py_count failed) + $(py_count 'errors?')))
skipped=$((skipped + $(py_count skipped)))
if ((py_status != 0)) && [[ -z $py_summary ]]; then
  failed=$((failed + 1)) # the SDK tests did not run at all
fi
printf '\ntests: %s passed, %s failed, %s skipped\n' "$passed" "$failed" "$skipped"
if ((status == 0)); then
  status=$py_status
fi
exit "$status"
