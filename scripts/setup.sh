#!/usr/bin/env bash
# Installs the host packages runbox needs to build, test and benchmark.
# Idempotent: when every package is already installed it only checks and exits.
set -euo pipefail

# Debian packages the project needs. Add new ones here, one per line, with the reason.
APT_PACKAGES=(
  python3     # Debian's /usr/bin/python3: the interpreter the sandbox runs from the host /usr
  bubblewrap  # bwrap: the baseline in the startup benchmark (bench/README.md)
  util-linux  # unshare: the namespaces-only baseline in the startup benchmark
  python3-numpy python3-pandas python3-matplotlib  # what the python kernel's rich results use
  nodejs      # the javascript kernel
  python3-venv python3-pip  # the Python SDK's test venv (target/sdk-venv, scripts/test.sh)
  runsc       # gVisor: the gvisor backend
  debootstrap # `runbox image build`: the default sandbox image from Debian packages
  e2fsprogs   # mkfs.ext4: the filesystem of a workspace with a disk quota (runbox.disk)
)

log() { printf 'setup: %s\n' "$*"; }

missing=()
for pkg in "${APT_PACKAGES[@]}"; do
  if dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q '^install ok installed$'; then
    log "$pkg: installed"
  else
    missing+=("$pkg")
  fi
done

if ((${#missing[@]})); then
  if [[ $(id -u) -eq 0 ]]; then
    as_root=()
  elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
    as_root=(sudo -n)
  else
    log "WARNING: missing packages: ${missing[*]}"
    log "WARNING: not root and no passwordless sudo; install them with:"
    log "  apt-get update && apt-get install -y ${missing[*]}"
    exit 0
  fi
  export DEBIAN_FRONTEND=noninteractive
  # A fresh VM may still be running unattended-upgrades: wait for the dpkg lock, don't fail.
  apt_opts=(-o DPkg::Lock::Timeout=300 -o Dpkg::Use-Pty=0 -q)
  log "installing: ${missing[*]}"
  log "apt-get update"
  "${as_root[@]}" apt-get "${apt_opts[@]}" update
  log "apt-get install -y --no-install-recommends ${missing[*]}"
  "${as_root[@]}" apt-get "${apt_opts[@]}" install -y --no-install-recommends "${missing[@]}"
fi

# Host tuning (opt out with RUNBOX_SETUP_NO_HOST_TUNING=1): every move of a process into a
# cgroup otherwise waits for an RCU grace period (5-15 ms), which is most of a sandbox's
# start. `favordynmods` on any cgroup hierarchy removes that wait host-wide (the kernel's
# documented trade: cheaper migrations, slightly dearer fork and exit). It lasts until reboot;
# runbox itself never changes it, `runbox doctor` shows it as "fast cgroup join".
cgroup2_mount=$(awk '$3 == "cgroup2" { print $2; exit }' /proc/mounts)
if [[ ${RUNBOX_SETUP_NO_HOST_TUNING:-0} != 1 && $(id -u) -eq 0 && -n $cgroup2_mount ]]; then
  if grep -qE '^cgroup2? [^ ]+ cgroup2? [^ ]*favordynmods' /proc/mounts; then
    log "cgroup: favordynmods already on"
  elif mount -o remount,favordynmods "$cgroup2_mount" 2>/dev/null; then
    log "cgroup: remounted $cgroup2_mount with favordynmods (fast cgroup join; RUNBOX_SETUP_NO_HOST_TUNING=1 skips this)"
  else
    log "cgroup: could not remount $cgroup2_mount with favordynmods (kernel older than 6.0?); sandboxes start slower"
  fi
fi

if ! command -v cargo >/dev/null; then
  log "ERROR: cargo not found; install Rust with rustup (the version is pinned in rust-toolchain.toml)"
  exit 1
fi
log "ok"
