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
# Sandbox cgroups (runbox/<id>, runbox-gvisor/runbox-<id>): one with a task in it is a leaked
# sandbox. Empty ones are what a `kill -9` of runbox leaves by design (the CLI and restart tests
# do that on purpose; the next sandbox start sweeps them after a minute): removed here, noted.
busy=()
emptied=0
while IFS= read -r dir; do
  if [[ -n $(cat "$dir/cgroup.procs" 2>/dev/null) ]]; then
    busy+=("$dir")
  elif rmdir "$dir" 2>/dev/null; then
    emptied=$((emptied + 1))
  fi
done < <(find /sys/fs/cgroup -mindepth 2 -maxdepth 4 -type d \( -path '*/runbox/*' -o -path '*/runbox-gvisor/*' \) 2>/dev/null | sort -r)
((emptied)) && printf 'leftovers: note: removed %s empty sandbox cgroup directories (left by kill -9 tests)\n' "$emptied"
((${#busy[@]})) && report "cgroups with processes in them: ${busy[*]}"
procs=$(ps -eo pid=,uid=,comm= | awk '$2 >= 1500000000 && $2 < 1500300000')
[[ -n $procs ]] && report "sandbox processes: $procs"
if ((found)); then
  exit 1
fi
printf 'leftovers: none (containers, runsc sandboxes, mounts, cgroups, sandbox processes)\n'
