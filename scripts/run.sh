#!/usr/bin/env bash
# The main job: install what runbox needs, build it, and run a command in a sandbox.
# Without arguments it runs `runbox run -- python3 -c 'print(1)'`; with arguments, `runbox "$@"`
# (for example: scripts/run.sh doctor, scripts/run.sh run --memory 64M -- python3 script.py).
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup.sh
. scripts/static-build.sh
cargo build --release --locked --target "$RUNBOX_TARGET" -p runbox -p runbox-agent

if (($#)); then
  exec "./$RUNBOX_RELEASE_DIR/runbox" "$@"
fi
exec "./$RUNBOX_RELEASE_DIR/runbox" run -- python3 -c 'print(1)'
