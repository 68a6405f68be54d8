#!/usr/bin/env bash
# Runs one benchmark (or all) against the release binaries users get from scripts/run.sh
# (static-pie, see scripts/static-build.sh):
#   scripts/bench.sh startup | agent | server | backends | all
# RUNBOX_BENCH_N sets the runs per variant where a benchmark has one.
set -euo pipefail
cd "$(dirname "$0")/.."

. scripts/static-build.sh
# The agent and server benchmarks start the agent binary that sits beside them.
cargo build --release --locked --target "$RUNBOX_TARGET" -p runbox -p runbox-agent
bench() { cargo bench --locked --target "$RUNBOX_TARGET" -p "$1" --bench "$2"; }
case ${1:-} in
  startup) bench runbox startup ;;
  agent) bench runbox-runtime agent ;;
  server) bench runbox-server server ;;
  backends) bench runbox-server backends ;;
  all)
    bench runbox startup
    bench runbox-runtime agent
    bench runbox-server server
    bench runbox-server backends
    ;;
  *)
    printf 'usage: scripts/bench.sh startup|agent|server|backends|all\n' >&2
    exit 64
    ;;
esac
