//! Everything a command tells a person on stderr: progress bars, status lines, warnings.
//! One [`Reporter`] per command, made by the command layer from `--quiet` and passed
//! down; library code never prints on its own.
//!
//! - On a terminal: an indicatif bar per running task, lines above the bars.
//! - Off a terminal (logs, CI, a pipe): no bars, one plain line per message and per
//!   finished task.
//! - With `--quiet`: nothing (errors are printed by the command layer regardless).
//!
//! Writing never panics: when stderr is closed or a broken pipe (`imgbuild … 2>&1 |
//! head -1`), messages are dropped and the command goes on to its real result.
//!
//! ```no_run
//! let r = imgbuild::reporter::Reporter::new(false);
//! let t = r.task("kubeadm v1.30.3", Some(50_000_000));
//! t.inc(1 << 20);
//! t.finish("fetched kubeadm v1.30.3 (48.2 MiB, 0.4 s)");
//! r.status("done");
//! ```

use std::fmt::Display;
use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

#[derive(Debug, Clone)]
enum Mode {
    Quiet,
    Plain,
    Bars(MultiProgress),
}

/// Where a command's progress and messages go (cheap to clone; clones share the bars).
#[derive(Debug, Clone)]
pub struct Reporter {
    mode: Mode,
}

/// Write one line to stderr, ignoring failures: a closed stderr must not turn into a
/// panic ("failed printing to stderr"), and there is nowhere else to report it.
fn stderr_line(msg: &dyn Display) {
    let _ = writeln!(std::io::stderr().lock(), "{msg}");
}

/// A message that must reach stderr even with `--quiet` (a secret-handling warning, the
/// interrupt notice). Never panics.
pub fn always(msg: impl Display) {
    stderr_line(&msg);
}

impl Reporter {
    /// Bars when stderr is a terminal, plain lines otherwise, nothing when `quiet`.
    pub fn new(quiet: bool) -> Reporter {
        let mode = if quiet {
            Mode::Quiet
        } else if std::io::stderr().is_terminal() {
            Mode::Bars(MultiProgress::with_draw_target(ProgressDrawTarget::stderr()))
        } else {
            Mode::Plain
        };
        Reporter { mode }
    }

    /// Plain lines (or nothing when `quiet`), regardless of the terminal.
    pub fn plain(quiet: bool) -> Reporter {
        Reporter { mode: if quiet { Mode::Quiet } else { Mode::Plain } }
    }

    /// A reporter that says nothing (library callers and tests that only want results).
    pub fn silent() -> Reporter {
        Reporter { mode: Mode::Quiet }
    }

    /// A status line (above the bars on a terminal).
    pub fn status(&self, msg: impl Display) {
        match &self.mode {
            Mode::Quiet => {}
            Mode::Plain => stderr_line(&msg),
            Mode::Bars(m) => {
                if m.println(msg.to_string()).is_err() {
                    stderr_line(&msg)
                }
            }
        }
    }

    /// A warning: something the person should look at, that does not stop the command.
    /// The message is printed as given (callers say `warning: …`).
    pub fn warn(&self, msg: impl Display) {
        self.status(msg)
    }

    /// Status lines stamped with the seconds since this call: `[  1.23s] msg`.
    pub fn clock(&self) -> Clock {
        Clock { reporter: self.clone(), t0: Instant::now() }
    }

    /// Start a task of `total` bytes (`None`: unknown size, a spinner).
    pub fn task(&self, label: &str, total: Option<u64>) -> Task {
        let bar = match &self.mode {
            Mode::Bars(m) => {
                let b = match total {
                    Some(t) => ProgressBar::new(t).with_style(bytes_style()),
                    None => ProgressBar::new_spinner().with_style(spinner_style()),
                };
                let b = m.add(b.with_message(label.to_string()));
                b.enable_steady_tick(Duration::from_millis(200));
                Some(b)
            }
            _ => None,
        };
        Task { bar, reporter: self.clone() }
    }
}

/// Timestamped status lines for the steps of one long command (see [`Reporter::clock`]).
#[derive(Debug, Clone)]
pub struct Clock {
    reporter: Reporter,
    t0: Instant,
}

impl Clock {
    pub fn say(&self, msg: impl Display) {
        self.reporter.status(format_args!("[{:6.2}s] {msg}", self.t0.elapsed().as_secs_f64()));
    }
}

/// One running task's bar (terminal) or pending line (plain).
#[derive(Debug)]
pub struct Task {
    bar: Option<ProgressBar>,
    reporter: Reporter,
}

impl Task {
    /// Set or change the expected total (e.g. once a Content-Length is known).
    pub fn set_total(&self, total: u64) {
        if let Some(b) = &self.bar {
            if b.length().is_none() {
                b.set_style(bytes_style());
            }
            b.set_length(total);
        }
    }

    pub fn set_position(&self, pos: u64) {
        if let Some(b) = &self.bar {
            b.set_position(pos);
        }
    }

    pub fn inc(&self, n: u64) {
        if let Some(b) = &self.bar {
            b.inc(n);
        }
    }

    /// Finish: the bar is replaced by `msg` (terminal) or `msg` is printed (plain).
    pub fn finish(self, msg: &str) {
        // The line goes above the bars and the bar goes away, so once all tasks are done
        // the terminal holds plain lines and the cursor is at a line start.
        self.reporter.status(msg);
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }

    /// Remove the bar without a message (the caller reports the failure itself).
    pub fn abandon(self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}

fn bytes_style() -> ProgressStyle {
    ProgressStyle::with_template(
        "{msg:24!} [{bar:30}] {bytes:>10}/{total_bytes:10} {bytes_per_sec:>12} {eta:>4}",
    )
    .unwrap_or_else(|_| ProgressStyle::default_bar())
    .progress_chars("=> ")
}

fn spinner_style() -> ProgressStyle {
    ProgressStyle::with_template("{msg:24!} {spinner} {bytes:>10} {bytes_per_sec:>12}")
        .unwrap_or_else(|_| ProgressStyle::default_spinner())
}

/// `48.2 MiB`: human-readable byte counts for progress lines.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_bytes_units() {
        assert_eq!(human_bytes(12), "12 B");
        assert_eq!(human_bytes(50_541_000), "48.2 MiB");
        assert_eq!(human_bytes(3 << 30), "3.0 GiB");
    }
}
