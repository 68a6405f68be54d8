#!/usr/bin/env bash
# Runs one benchmark (or all) against the release binaries users get from scripts/run.sh
# (static-pie, see scripts/static-build.sh):
#   scripts/bench.sh startup | agent | server | backends | all
# RUNBOX_BENCH_N sets the runs per variant where a benchmark has one.
set -euo pipefail
cd "$(dirname "$0")/.."

bench() {
  case $1 in
    startup) set -- runbox startup ;;
    agent) set -- runbox-runtime agent ;;
    server | backends) set -- runbox-server "$1" ;;
  esac
  cargo bench --locked --target "$RUNBOX_TARGET" -p "$1" --bench "$2"
}

case ${1:-} in
  startup | agent | server | backends) names=("$1") ;;
  all) names=(startup agent server backends) ;;
  *)
    printf 'usage: scripts/bench.sh startup|agent|server|backends|all\n' >&2
    exit 64
    ;;
esac

. scripts/static-build.sh
# The agent and server benchmarks start the agent binary that sits beside them.
cargo build --release --locked --target "$RUNBOX_TARGET" -p runbox -p runbox-agent
for name in "${names[@]}"; do
  bench "$name"
done
