#!/usr/bin/env bash
# Fails (and lists them) if any sandbox outlived its tests: containers labelled by runbox,
# runsc sandboxes under runbox's state root, runbox mounts, runbox cgroups, processes with a
# sandbox host uid (1500000000..1500300000). Run after each backend's suite (scripts/test.sh).
set -uo pipefail
found=0
report() { printf 'leftovers: %s\n' "$*"; found=1; }

if command -v docker >/dev/null && docker info >/dev/null 2>&1; then
  containers=$(docker ps -a --filter label=runbox.managed=true --format '{{.Names}} ({{.Status}})')
  [[ -n $containers ]] && report "docker containers: $containers"
  volumes=$(docker volume ls -q --filter dangling=true | head -5)
  [[ -n $volumes ]] && report "dangling docker volumes: $volumes"
fi
if command -v runsc >/dev/null && [[ -d /run/runbox/runsc ]]; then
  sandboxes=$(runsc --root /run/runbox/runsc list -quiet 2>/dev/null)
  [[ -n $sandboxes ]] && report "runsc sandboxes: $sandboxes"
fi
mounts=$(grep -E ' /run/runbox/| /var/lib/runbox/images/[^ ]*/rootfs/| [^ ]*/workspaces/[0-9a-f]+ ' /proc/self/mountinfo | awk '{print $5}')
[[ -n $mounts ]] && report "mounts: $mounts"
cgroups=$(find /sys/fs/cgroup -maxdepth 3 -type d \( -name 'runbox-*' -o -name 'runbox' \) \
  -exec sh -c 'for d; do [ -n "$(find "$d" -mindepth 1 -maxdepth 1 -type d)" ] && echo "$d"; done' sh {} + 2>/dev/null)
[[ -n $cgroups ]] && report "cgroups with sandboxes in them: $cgroups"
procs=$(ps -eo pid=,uid=,comm= | awk '$2 >= 1500000000 && $2 < 1500300000')
[[ -n $procs ]] && report "sandbox processes: $procs"
if ((found)); then
  exit 1
fi
printf 'leftovers: none (containers, runsc sandboxes, mounts, cgroups, sandbox processes)\n'
