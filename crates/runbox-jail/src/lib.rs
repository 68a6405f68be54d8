//! runbox-jail: native Linux confinement for one command.
//!
//! `Policy` (what the caller wants) -> `prepare` (before fork: resolve paths to fds, compile
//! seccomp, build the ordered `Step` list) -> `apply` (in the cloned child: execute the steps,
//! become PID 1, fork and exec the command) -> `Outcome` with the `Enforcement` report of
//! what the kernel really enforced.
//!
//! All `unsafe` lives in `sys`; the rest of the crate forbids it.
#![deny(unsafe_code)]

mod apply;
pub mod cgroup;
mod control;
mod error;
pub mod features;
pub mod freezer;
pub mod ids;
pub mod landlock;
mod outcome;
pub mod plan;
pub mod policy;
mod prepare;
mod report;
pub mod seccomp;
mod spawn;
mod supervise;
mod sys;

pub use control::{Control, Killer};
pub use error::{ErrorKind, JailError};
pub use outcome::{Enforcement, LimitHit, Outcome, Status};
pub use policy::{
    parse_duration, parse_size, Bind, Filesystem, Limits, Network, Policy, Requirement,
};
pub use spawn::{Launch, Sandbox, Stdin, NAMESPACES};
pub use supervise::{Discard, OutputSink};

/// Runs one command confined and waits for it.
pub fn run(policy: &Policy, stdin: Stdin, sink: &mut dyn OutputSink) -> Result<Outcome, JailError> {
    Sandbox::spawn(policy, stdin)?.wait(sink)
}
