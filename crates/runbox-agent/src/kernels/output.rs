//! A kernel's stdout or stderr during one cell: split into lines, one event per line, capped
//! at a byte budget; past the cap the bytes are read and dropped, so a cell printing a
//! gigabyte costs the agent one buffer, not a gigabyte.

use runbox_proto::execd::EventKind;

use crate::stream::{split_lines, Emitter};

#[derive(Debug)]
pub(super) struct CappedLines {
    kind: EventKind,
    cap: usize,
    pending: Vec<u8>,
    kept: usize,
    truncated: bool,
}

impl CappedLines {
    pub(super) fn new(kind: EventKind, cap: usize) -> Self {
        Self {
            kind,
            cap,
            pending: Vec::new(),
            kept: 0,
            truncated: false,
        }
    }

    /// Sends the complete lines of `chunk` that fit under the cap; the first time the cap is
    /// hit, also the partial line and a `status` event saying the rest is dropped.
    pub(super) async fn push(&mut self, chunk: &[u8], emit: &Emitter) {
        if self.truncated {
            return;
        }
        let take = chunk.len().min(self.cap.saturating_sub(self.kept));
        self.kept += take;
        for line in split_lines(&mut self.pending, &chunk[..take]) {
            emit.text(self.kind, line).await;
        }
        if take < chunk.len() {
            self.truncated = true;
            self.finish(emit).await;
            let name = if self.kind == EventKind::Stdout {
                "stdout"
            } else {
                "stderr"
            };
            let note = format!(
                "{name} truncated after {} bytes; the rest of this cell's {name} was discarded",
                self.cap
            );
            emit.text(EventKind::Status, note).await;
        }
    }

    /// Sends a last line that had no newline (the cell ended, or the cap was hit).
    pub(super) async fn finish(&mut self, emit: &Emitter) {
        if !self.pending.is_empty() {
            let line = String::from_utf8_lossy(&std::mem::take(&mut self.pending)).into_owned();
            emit.text(self.kind, line).await;
        }
    }
}
