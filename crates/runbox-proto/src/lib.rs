//! runbox-proto: the shapes that cross process boundaries. `execd` is the in-sandbox agent's
//! API, exactly as OpenSandbox's execd-api.yaml and its official SDKs define it.
#![forbid(unsafe_code)]

pub mod execd;
