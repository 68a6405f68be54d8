//! runbox-runtime: sandboxes whose PID 1 is `runbox-agent`, and the host side of the agent
//! channel. `native` starts them with runbox-jail; `client` speaks the execd API to the agent
//! over its unix socket. The `Runtime` trait with Docker and gVisor backends arrives with
//! issue 5; the server (issue 4) builds on this.
#![forbid(unsafe_code)]

pub mod client;
pub mod native;

pub use client::{AgentClient, Body, ClientError, Response};
pub use native::{agent_argv, installed_agent, random_hex, AgentSandbox, StartError};
