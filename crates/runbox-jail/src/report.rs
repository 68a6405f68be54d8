//! The child-to-parent wire: fixed-size records on a pipe, so the child can send them
//! without allocating.

use crate::landlock::LandlockOutcome;

/// Exit codes of the jail's init when it could not start the command.
pub(crate) const SETUP_FAILED_EXIT: i32 = 125;
pub(crate) const EXEC_FAILED_EXIT: i32 = 127;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Message {
    /// Step `step` of the plan failed with `errno` (u32::MAX: the fork of the command).
    SetupFailed { step: u32, errno: i32 },
    /// Landlock was applied with this outcome.
    Landlock { status: LandlockOutcome },
    /// Every step succeeded; the command is about to be forked.
    Ready,
    /// execve of the command failed.
    ExecFailed { errno: i32 },
}

pub(crate) const MESSAGE_LEN: usize = 12;

impl Message {
    pub(crate) fn encode(self) -> [u8; MESSAGE_LEN] {
        let (kind, a, b): (u32, u32, i32) = match self {
            Message::SetupFailed { step, errno } => (1, step, errno),
            Message::Landlock { status } => (2, status.to_wire(), 0),
            Message::Ready => (3, 0, 0),
            Message::ExecFailed { errno } => (4, 0, errno),
        };
        let mut out = [0u8; MESSAGE_LEN];
        out[..4].copy_from_slice(&kind.to_ne_bytes());
        out[4..8].copy_from_slice(&a.to_ne_bytes());
        out[8..].copy_from_slice(&b.to_ne_bytes());
        out
    }

    pub(crate) fn decode(raw: &[u8; MESSAGE_LEN]) -> Option<Self> {
        let word = |i: usize| [raw[i], raw[i + 1], raw[i + 2], raw[i + 3]];
        let kind = u32::from_ne_bytes(word(0));
        let a = u32::from_ne_bytes(word(4));
        let b = i32::from_ne_bytes(word(8));
        Some(match kind {
            1 => Message::SetupFailed { step: a, errno: b },
            2 => Message::Landlock {
                status: LandlockOutcome::from_wire(a),
            },
            3 => Message::Ready,
            4 => Message::ExecFailed { errno: b },
            _ => return None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip() {
        for m in [
            Message::SetupFailed {
                step: 7,
                errno: libc::EPERM,
            },
            Message::Landlock {
                status: LandlockOutcome::PartiallyEnforced,
            },
            Message::Ready,
            Message::ExecFailed {
                errno: libc::ENOENT,
            },
        ] {
            assert_eq!(Message::decode(&m.encode()), Some(m));
        }
    }
}
