# Sourced by run.sh and bench.sh: how release binaries are built.
#
# They are static-pie: glibc is linked in, so a start pays no dynamic loader (no library
# lookups, no symbol binding) and `runbox run` starts about 0.6 ms sooner (bench/README.md),
# and runbox-agent runs inside any image, with or without glibc. Static linking needs an
# explicit --target so that build scripts and proc-macros, which run on the host as shared
# objects, stay dynamic; binaries therefore land in target/<triple>/release/.
#
# Relative relocations are packed (RELR, glibc >= 2.36 and binutils >= 2.38, both in Debian 12):
# a static-pie relocates itself at every start, and 19,164 RELA entries (460 KB) become a 5 KB
# bitmap; `runbox --version` went from 2.13 to 1.82 ms (N=100, bench/README.md).
RUNBOX_TARGET=$(rustc -vV | sed -n 's/^host: //p')
export RUNBOX_TARGET
export RUSTFLAGS="${RUSTFLAGS:-} -C target-feature=+crt-static -C link-arg=-Wl,-z,pack-relative-relocs"
RUNBOX_RELEASE_DIR=target/$RUNBOX_TARGET/release
export RUNBOX_RELEASE_DIR
