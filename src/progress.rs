//! Progress on stderr: an indicatif bar per task when stderr is a terminal, one plain
//! line per finished task otherwise (logs, CI), nothing at all with `--quiet`.
//!
//! ```no_run
//! let p = imgbuild::progress::Progress::new(false);
//! let t = p.task("kubeadm v1.30.3", Some(50_000_000));
//! t.inc(1 << 20);
//! t.finish("fetched kubeadm v1.30.3 (48.2 MiB, 0.4 s)");
//! ```

use std::io::IsTerminal;
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

#[derive(Debug, Clone)]
enum Mode {
    Quiet,
    Plain,
    Bars(MultiProgress),
}

/// A progress sink shared by concurrent tasks (cheap to clone).
#[derive(Debug, Clone)]
pub struct Progress {
    mode: Mode,
}

impl Progress {
    /// Bars when stderr is a terminal, plain lines otherwise, nothing when `quiet`.
    pub fn new(quiet: bool) -> Progress {
        let mode = if quiet {
            Mode::Quiet
        } else if std::io::stderr().is_terminal() {
            Mode::Bars(MultiProgress::with_draw_target(ProgressDrawTarget::stderr()))
        } else {
            Mode::Plain
        };
        Progress { mode }
    }

    /// Plain lines (or nothing when `quiet`), regardless of the terminal.
    pub fn plain(quiet: bool) -> Progress {
        Progress { mode: if quiet { Mode::Quiet } else { Mode::Plain } }
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
        Task { bar, quiet: matches!(self.mode, Mode::Quiet) }
    }

    /// A one-off message line (above the bars on a terminal).
    pub fn line(&self, msg: &str) {
        match &self.mode {
            Mode::Quiet => {}
            Mode::Plain => eprintln!("{msg}"),
            Mode::Bars(m) => {
                let _ = m.println(msg);
            }
        }
    }
}

/// One running task's bar (terminal) or pending line (plain).
#[derive(Debug)]
pub struct Task {
    bar: Option<ProgressBar>,
    quiet: bool,
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
        match &self.bar {
            Some(b) => b.finish_with_message(msg.to_string()),
            None if !self.quiet => eprintln!("{msg}"),
            None => {}
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
