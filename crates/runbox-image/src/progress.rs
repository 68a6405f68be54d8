//! Progress for long work: an indicatif bar on a terminal, one plain line per phase otherwise
//! (logs and CI keep a readable record instead of carriage-return noise), or nothing.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Style {
    Bar,
    Lines,
    Quiet,
}

/// Where progress goes (always stderr).
#[derive(Debug, Clone)]
pub struct Progress {
    style: Style,
}

/// The unit a phase counts in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Unit {
    Items,
    Bytes,
}

impl Progress {
    pub fn new(style: Style) -> Progress {
        Progress { style }
    }

    /// A bar when stderr is a terminal, lines otherwise.
    pub fn for_stderr() -> Progress {
        Progress::new(if std::io::stderr().is_terminal() {
            Style::Bar
        } else {
            Style::Lines
        })
    }

    pub fn style(&self) -> Style {
        self.style
    }

    /// A line for the user (above any bar), unless quiet.
    pub fn note(&self, message: &str) {
        if self.style != Style::Quiet {
            eprintln!("{message}");
        }
    }

    /// Starts a phase: a bar of `total` units, or a spinner without one.
    pub(crate) fn phase(&self, label: &str, total: Option<u64>, unit: Unit) -> Phase {
        let bar = match (self.style, total) {
            (Style::Bar, Some(total)) => {
                let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
                let template = match unit {
                    Unit::Items => "{prefix:>12.bold} [{bar:30}] {pos}/{len} {wide_msg}",
                    Unit::Bytes => {
                        "{prefix:>12.bold} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} {wide_msg}"
                    }
                };
                bar.set_style(
                    ProgressStyle::with_template(template)
                        .unwrap_or_else(|_| ProgressStyle::default_bar())
                        .progress_chars("=> "),
                );
                bar
            }
            (Style::Bar, None) => {
                let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
                let template = match unit {
                    Unit::Items => "{prefix:>12.bold} {spinner} {elapsed} {wide_msg}",
                    Unit::Bytes => "{prefix:>12.bold} {spinner} {bytes} {bytes_per_sec} {wide_msg}",
                };
                bar.set_style(
                    ProgressStyle::with_template(template)
                        .unwrap_or_else(|_| ProgressStyle::default_spinner()),
                );
                bar.enable_steady_tick(Duration::from_millis(120));
                bar
            }
            (Style::Lines, _) => {
                match total {
                    Some(total) if unit == Unit::Items => eprintln!("{label} ({total})..."),
                    Some(total) => eprintln!("{label} ({})...", human_bytes(total)),
                    None => eprintln!("{label}..."),
                }
                ProgressBar::hidden()
            }
            (Style::Quiet, _) => ProgressBar::hidden(),
        };
        bar.set_prefix(label.to_owned());
        Phase {
            bar,
            style: self.style,
            label: label.to_owned(),
            started: Instant::now(),
        }
    }
}

#[derive(Debug)]
pub(crate) struct Phase {
    bar: ProgressBar,
    style: Style,
    label: String,
    started: Instant,
}

impl Phase {
    pub(crate) fn inc(&self, n: u64) {
        self.bar.inc(n);
    }

    /// A handle that advances this phase from another task or thread.
    pub(crate) fn ticker(&self) -> ProgressBar {
        self.bar.clone()
    }

    pub(crate) fn set_message(&self, message: impl Into<String>) {
        self.bar.set_message(message.into());
    }

    /// A line printed above the bar (or plainly), e.g. a warning from a tool.
    pub(crate) fn println(&self, line: &str) {
        match self.style {
            Style::Bar => self.bar.println(line),
            Style::Lines => eprintln!("{line}"),
            Style::Quiet => {}
        }
    }

    pub(crate) fn finish(self, summary: &str) {
        let took = self.started.elapsed();
        match self.style {
            Style::Bar => {
                self.bar.finish_and_clear();
                eprintln!("{:>12} {summary} ({:.1}s)", self.label, took.as_secs_f64());
            }
            Style::Lines => eprintln!("{}: {summary} ({:.1}s)", self.label, took.as_secs_f64()),
            Style::Quiet => {}
        }
    }

    /// Ends the phase without a summary (the caller reports the failure).
    pub(crate) fn abandon(self) {
        self.bar.finish_and_clear();
    }
}

/// `1.4 GiB`, `12.0 MiB`, `512 B`.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::human_bytes;

    #[test]
    fn bytes_read_like_du() {
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(3 << 30), "3.0 GiB");
    }
}
