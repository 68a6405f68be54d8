//! Sandbox images: root filesystems that the native and gVisor backends mount and that the
//! Docker backend runs as `runbox/<name>:latest`.
//!
//! An images directory holds one directory per image name: `<dir>/<name>/rootfs/` and
//! `<dir>/<name>/image.json` ([`ImageMeta`]). Images come from two places:
//!
//! - [`build`]: debootstrap of Debian bookworm (`minbase` plus Python with numpy, pandas and
//!   matplotlib, Node.js and bash), tidied and smoke-tested;
//! - [`import()`]: a `docker save` archive or an OCI image layout, its layers applied in order.
//!
//! Design decisions:
//!
//! - **Atomic**: every image is assembled in `<dir>/.<label>.tmp-<random>/`, held by a lock
//!   file, and renamed into place only when complete (`RENAME_EXCHANGE` when replacing, so a
//!   reader sees the old image or the new one, never neither). Interrupted work is swept by
//!   the next build or import, and only after every mount under it is detached: debootstrap
//!   mounts /proc and /sys (and in containers binds /dev) inside its target, and a recursive
//!   delete through such a mount would delete the host's files.
//! - **Untrusted archives are applied with `*at` syscalls** from a directory fd of the rootfs:
//!   every parent is opened with `O_NOFOLLOW | O_DIRECTORY`, files are created with
//!   `O_CREAT | O_EXCL | O_NOFOLLOW`, links never follow their source. A symlink planted by
//!   a layer is stored, never traversed, so nothing is written outside the rootfs (see
//!   `layer.rs` for the full list of what is rejected and skipped).
//! - **The Docker copy is made from the rootfs we wrote**, streamed as one tar to the
//!   engine's import endpoint, so both backends run the same, already sanitised tree.
#![forbid(unsafe_code)]

mod archive;
mod build;
mod debootstrap;
mod digest;
mod docker;
mod error;
mod formats;
mod import;
mod layer;
mod name;
mod progress;
mod rootfs;
mod staging;
mod store;
mod tidy;

pub use build::{build, BuildOptions, BuildReport, DEFAULT_MIRROR, DEFAULT_PACKAGES, SUITE};
pub use docker::{docker_ref_for, Engine, Loaded};
pub use error::{BuildError, DockerError, ErrorKind, ImportError, LayerError, StoreError};
pub use import::{import, ImportReport};
pub use name::{name_from_reference, validate_name, NameError};
pub use progress::{human_bytes, Progress, Style};
pub use store::{default_images_dir, Image, ImageMeta, ImageStore, Package, RunConfig};
