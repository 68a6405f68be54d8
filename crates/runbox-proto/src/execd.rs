//! The execd API (OpenSandbox `execd-api.yaml`): request and response bodies and the stream
//! event. Field names follow the spec exactly (snake_case in bodies, camelCase where the spec
//! says so); unknown request fields are rejected so typos fail loudly.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Header carrying the per-sandbox access token on every execd request.
pub const ACCESS_TOKEN_HEADER: &str = "X-EXECD-ACCESS-TOKEN";
/// Response header of `GET /command/{id}/logs` with the next cursor.
pub const TAIL_CURSOR_HEADER: &str = "EXECD-COMMANDS-TAIL-CURSOR";
/// The port the official SDK resolves for execd.
pub const EXECD_PORT: u16 = 44772;
/// The port the official CodeInterpreter health check connects to inside the sandbox.
pub const JUPYTER_PORT: u16 = 44771;

/// Whether a presented access token equals the expected one, in time independent of where
/// they differ (the agent and the server's proxy both check it).
pub fn token_matches(given: &str, expected: &str) -> bool {
    let (a, b) = (given.as_bytes(), expected.as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// One event of an execution stream. On the wire: the JSON object followed by a blank line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    #[serde(rename = "type")]
    pub kind: EventKind,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub text: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub execution_count: Option<u64>,
    /// Milliseconds.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub execution_time: Option<u64>,
    /// Unix milliseconds; always present.
    pub timestamp: i64,
    /// MIME bundle of a result (`text` instead of Jupyter's `text/plain`).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub results: Option<BTreeMap<String, serde_json::Value>>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub error: Option<ErrorDetail>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    Init,
    Status,
    Error,
    Stdout,
    Stderr,
    Result,
    ExecutionComplete,
    ExecutionCount,
    Ping,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorDetail {
    pub ename: String,
    pub evalue: String,
    #[serde(default)]
    pub traceback: Vec<String>,
}

impl Event {
    pub fn new(kind: EventKind, timestamp: i64) -> Self {
        Self {
            kind,
            text: None,
            execution_count: None,
            execution_time: None,
            timestamp,
            results: None,
            error: None,
        }
    }

    pub fn with_text(mut self, text: impl Into<String>) -> Self {
        self.text = Some(text.into());
        self
    }

    /// The wire form: JSON and a blank line.
    pub fn to_wire(&self) -> String {
        let mut s = serde_json::to_string(self).unwrap_or_else(|_| "{}".into());
        s.push_str("\n\n");
        s
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunCommandRequest {
    #[serde(default)]
    pub command: String,
    /// What the official SDK (1.1.1) sends for a list of arguments: run without a shell.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub argv: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cwd: Option<String>,
    #[serde(default)]
    pub background: bool,
    /// Milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gid: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub envs: Option<BTreeMap<String, String>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommandStatusResponse {
    pub id: String,
    pub content: String,
    pub running: bool,
    pub exit_code: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub error: Option<String>,
    pub started_at: String,
    pub finished_at: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateSessionRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cwd: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreateSessionResponse {
    pub session_id: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunInSessionRequest {
    pub command: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cwd: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<u64>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CodeContextRequest {
    #[serde(default)]
    pub language: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CodeContext {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(default)]
    pub language: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunCodeRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context: Option<CodeContext>,
    pub code: String,
    /// runbox extension: per-run timeout in milliseconds (the cell is interrupted, then the
    /// kernel killed and restarted if it does not stop).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileInfo {
    pub path: String,
    #[serde(rename = "type")]
    pub kind: FileKind,
    pub size: u64,
    pub modified_at: String,
    pub created_at: String,
    pub owner: String,
    pub group: String,
    /// Permission bits written as octal digits (0o755 -> 755), as the spec does.
    pub mode: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FileKind {
    File,
    Directory,
    Symlink,
    Other,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Permission {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    pub mode: u32,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileMetadata {
    pub path: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RenameFileItem {
    pub src: String,
    pub dest: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplaceFileContentItem {
    pub old: String,
    pub new: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplaceFileContentResult {
    #[serde(rename = "replacedCount")]
    pub replaced_count: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Metrics {
    pub cpu_count: f64,
    pub cpu_used_pct: f64,
    pub mem_total_mib: f64,
    pub mem_used_mib: f64,
    pub timestamp: i64,
}

/// Every error body: a stable machine-readable code and a message for people.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorResponse {
    pub code: String,
    pub message: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_serialize_as_the_sdk_expects() {
        let e = Event::new(EventKind::ExecutionComplete, 1_700_000_000_000);
        assert_eq!(
            e.to_wire(),
            "{\"type\":\"execution_complete\",\"timestamp\":1700000000000}\n\n"
        );
        let out = Event::new(EventKind::Stdout, 1).with_text("hi");
        assert_eq!(
            serde_json::to_string(&out).expect("json"),
            r#"{"type":"stdout","text":"hi","timestamp":1}"#
        );
    }

    #[test]
    fn unknown_command_fields_are_rejected() {
        let bad = serde_json::from_str::<RunCommandRequest>(r#"{"command":"ls","bogus":1}"#);
        assert!(bad.is_err());
        let ok: RunCommandRequest =
            serde_json::from_str(r#"{"command":"ls","timeout":5}"#).expect("parses");
        assert_eq!(ok.timeout, Some(5));
    }

    #[test]
    fn replace_result_uses_camel_case() {
        let r = ReplaceFileContentResult { replaced_count: 2 };
        assert_eq!(
            serde_json::to_string(&r).expect("json"),
            r#"{"replacedCount":2}"#
        );
    }
}
