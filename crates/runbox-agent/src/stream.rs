//! Execution streams: handlers push `Event`s into a channel; the response body writes each as
//! one JSON object and a blank line, as the execd contract and the official SDKs expect.

use std::convert::Infallible;

use axum::body::Body;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures_util::StreamExt;
use runbox_proto::execd::{ErrorDetail, Event, EventKind};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

/// Unix milliseconds now.
pub fn now_ms() -> i64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    now.as_millis() as i64
}

/// RFC 3339 timestamp (UTC, seconds precision) for the JSON bodies.
pub fn rfc3339(t: std::time::SystemTime) -> String {
    let t: time::OffsetDateTime = t.into();
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// The sending half handed to the code producing events. Sending never fails loudly: a client
/// that went away must not stop the execution's bookkeeping.
#[derive(Debug, Clone)]
pub struct Emitter {
    tx: mpsc::Sender<Event>,
}

impl Emitter {
    pub async fn send(&self, event: Event) {
        let _ = self.tx.send(event).await;
    }

    pub async fn kind(&self, kind: EventKind) {
        self.send(Event::new(kind, now_ms())).await;
    }

    pub async fn text(&self, kind: EventKind, text: impl Into<String>) {
        self.send(Event::new(kind, now_ms()).with_text(text)).await;
    }

    pub async fn error(&self, ename: &str, evalue: impl Into<String>, traceback: Vec<String>) {
        let mut e = Event::new(EventKind::Error, now_ms());
        e.error = Some(ErrorDetail {
            ename: ename.to_owned(),
            evalue: evalue.into(),
            traceback,
        });
        self.send(e).await;
    }

    pub fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }
}

/// A channel whose receiving end is the streaming HTTP response.
pub fn channel() -> (Emitter, Response) {
    let (tx, rx) = mpsc::channel::<Event>(256);
    let body = ReceiverStream::new(rx).map(|e| Ok::<_, Infallible>(Bytes::from(e.to_wire())));
    let response = (
        [
            (header::CONTENT_TYPE, "text/event-stream"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        Body::from_stream(body),
    )
        .into_response();
    (Emitter { tx }, response)
}

/// Splits a chunk of output into complete lines (without their newline), keeping the partial
/// last line in `pending` for the next chunk.
pub fn split_lines(pending: &mut Vec<u8>, chunk: &[u8]) -> Vec<String> {
    pending.extend_from_slice(chunk);
    let mut lines = Vec::new();
    while let Some(pos) = pending.iter().position(|&b| b == b'\n') {
        let line: Vec<u8> = pending.drain(..=pos).collect();
        lines.push(String::from_utf8_lossy(&line[..line.len() - 1]).into_owned());
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_split_across_chunks() {
        let mut pending = Vec::new();
        assert_eq!(split_lines(&mut pending, b"a\nb"), vec!["a"]);
        assert_eq!(split_lines(&mut pending, b"c\n\nd"), vec!["bc", ""]);
        assert_eq!(pending, b"d");
    }

    #[test]
    fn rfc3339_formats_utc() {
        let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_766_394_485);
        assert_eq!(rfc3339(t), "2025-12-22T09:08:05Z");
    }
}
