//! Progress of long CLI work on stderr: an indicatif bar (or spinner, for
//! one store call of unknown length) when stderr is a terminal; when it is
//! not (a pipe, a CI log), plain lines at the start and end of each phase
//! of large work only, so small commands stay quiet. The command's result
//! lines on stdout are the same either way.

use std::io::IsTerminal;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};

/// Below this many items no plain lines are written.
const PLAIN_FROM: u64 = 10_000;

/// One phase of a command.
#[derive(Debug)]
pub(crate) struct Progress {
    bar: Option<ProgressBar>,
    /// The plain line to end with (not a terminal, large work).
    plain: Option<String>,
}

fn terminal() -> bool {
    std::io::stderr().is_terminal()
}

impl Progress {
    /// A phase of `len` items, e.g. `("checking bodies", 100_000)`.
    pub(crate) fn bar(what: &str, len: u64) -> Progress {
        if terminal() {
            let bar = ProgressBar::new(len);
            if let Ok(style) =
                ProgressStyle::with_template("{msg} [{bar:40}] {pos}/{len} ({per_sec}, {eta} left)")
            {
                bar.set_style(style.progress_chars("=> "));
            }
            bar.set_message(what.to_owned());
            return Progress {
                bar: Some(bar),
                plain: None,
            };
        }
        Progress::plain(what, len)
    }

    /// A phase of one call over `len` items (0: unknown), e.g. one insert.
    pub(crate) fn spinner(what: &str, len: u64) -> Progress {
        if terminal() {
            let bar = ProgressBar::new_spinner();
            bar.set_message(what.to_owned());
            bar.enable_steady_tick(Duration::from_millis(100));
            return Progress {
                bar: Some(bar),
                plain: None,
            };
        }
        Progress::plain(what, len)
    }

    fn plain(what: &str, len: u64) -> Progress {
        if len < PLAIN_FROM {
            return Progress {
                bar: None,
                plain: None,
            };
        }
        eprintln!("{what}: {len} ...");
        Progress {
            bar: None,
            plain: Some(format!("{what}: {len} done")),
        }
    }

    /// `n` more items done.
    pub(crate) fn inc(&self, n: u64) {
        if let Some(b) = &self.bar {
            b.inc(n);
        }
    }

    /// The phase is over (the bar cleared, or the plain end line).
    pub(crate) fn finish(self) {
        if let Some(b) = self.bar {
            b.finish_and_clear();
        }
        if let Some(line) = self.plain {
            eprintln!("{line}");
        }
    }
}
