//! runbox-runtime: sandboxes whose first process is `runbox-agent`, behind one `Runtime`
//! trait with three backends: `native` (runbox-jail), `docker` (a hardened container through
//! the Docker Engine API) and `gvisor` (runsc). `client` speaks the execd API to the agent
//! over its unix socket; the server (runbox-server) drives sandboxes only through these.
#![forbid(unsafe_code)]

pub mod client;
pub mod docker;
pub mod gvisor;
pub mod native;
pub mod runtime;
pub mod seccomp_profile;
pub mod spawner;

pub use client::{AgentClient, Body, ClientError, Response};
pub use docker::DockerRuntime;
pub use gvisor::GvisorRuntime;
pub use native::{
    agent_argv, error_chain, installed_agent, random_hex, AgentSandbox, NativeRuntime, StartError,
};
pub use runtime::{
    AsyncStream, Backend, Ended, ImageSource, Instance, Runtime, RuntimeError, StartSpec, Stream,
};
