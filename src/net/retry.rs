//! The one retry policy: which failures are worth another attempt, how many attempts a
//! URL gets, how long to wait between them, and when to stop trying at all.
//!
//! Bounded three ways, so that no server can keep a build waiting forever:
//! - `attempts`: requests to one URL that ended without completing the body and
//!   without resuming it (a failure before any byte, a 5xx, a 200 that starts again
//!   from byte 0 after a cut, a stall);
//! - `resumes`: attempts that continued a partial body with `Range` (206) and made
//!   progress — a flaky link gets more of these, since each one moves the download on;
//! - `deadline`: no new attempt starts once this long has passed since the first one
//!   (a transfer that keeps receiving bytes is never cut by it).
//!
//! Backoff is capped exponential (like `curl --retry`); a server's `Retry-After` is
//! honoured up to the cap.

use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub struct RetryPolicy {
    /// Attempts (including the first) that made no resumed progress.
    pub attempts: u32,
    /// Further attempts allowed when each one resumed and made progress.
    pub resumes: u32,
    /// No new attempt after this long.
    pub deadline: Duration,
    pub backoff_base: Duration,
    pub backoff_cap: Duration,
}

impl RetryPolicy {
    /// Large downloads into the cache (artifacts, base images, packages).
    pub fn downloads(attempts: u32) -> RetryPolicy {
        RetryPolicy {
            attempts,
            resumes: 20,
            deadline: Duration::from_secs(600),
            backoff_base: Duration::from_millis(200),
            backoff_cap: Duration::from_secs(4),
        }
    }

    /// Small whole-file GETs and API calls: nothing to resume.
    pub fn small(attempts: u32) -> RetryPolicy {
        RetryPolicy { resumes: 0, deadline: Duration::from_secs(120), ..RetryPolicy::downloads(attempts) }
    }

    /// The wait before retry `n` (1-based).
    pub fn backoff(&self, n: u32) -> Duration {
        self.backoff_base.saturating_mul(1 << n.saturating_sub(1).min(16)).min(self.backoff_cap)
    }

    pub fn start(&self) -> Retry {
        Retry { policy: self.clone(), started: Instant::now(), plain: 0, resumed: 0 }
    }
}

/// The retry state of one URL.
#[derive(Debug)]
pub struct Retry {
    policy: RetryPolicy,
    started: Instant,
    plain: u32,
    resumed: u32,
}

/// What a failed attempt achieved, for [`Retry::failed`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    /// Nothing kept (no byte, or a body that started again from byte 0).
    None,
    /// The attempt continued the partial body (206) and added to it.
    Resumed,
}

impl Retry {
    /// Count a failed attempt. `Some(wait)`: try again after `wait` (the numbers are
    /// for the progress line); `None`: give up on this URL.
    pub fn failed(&mut self, progress: Progress, retry_after: Option<Duration>) -> Option<Duration> {
        match progress {
            Progress::Resumed if self.resumed < self.policy.resumes => self.resumed += 1,
            _ => self.plain += 1,
        }
        if self.plain >= self.policy.attempts || self.started.elapsed() >= self.policy.deadline {
            return None;
        }
        let backoff = self.policy.backoff(self.plain + self.resumed);
        let wait = retry_after.map_or(backoff, |r| r.min(self.policy.backoff_cap).max(backoff));
        // a wait that would run past the deadline is not worth starting
        (self.started.elapsed() + wait < self.policy.deadline).then_some(wait)
    }

    /// Attempts so far (for messages: "attempt 3 of at most 5").
    pub fn attempts(&self) -> u32 {
        self.plain + self.resumed
    }

    /// Why the last [`failed`](Retry::failed) gave up.
    pub fn why_stopped(&self) -> String {
        if self.plain >= self.policy.attempts {
            format!("gave up after {} attempts", self.attempts())
        } else {
            format!(
                "gave up after {} attempts in {:.0} s (retry deadline {} s)",
                self.attempts(),
                self.started.elapsed().as_secs_f64(),
                self.policy.deadline.as_secs()
            )
        }
    }

    pub fn policy(&self) -> &RetryPolicy {
        &self.policy
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attempts_that_restart_from_zero_are_bounded() {
        let mut r = RetryPolicy::downloads(5).start();
        let mut n = 1;
        while r.failed(Progress::None, None).is_some() {
            n += 1;
            assert!(n < 100, "unbounded");
        }
        assert_eq!(n, 5);
    }

    #[test]
    fn resumes_get_more_room_but_not_infinite() {
        let mut r = RetryPolicy { backoff_base: Duration::ZERO, ..RetryPolicy::downloads(3) }.start();
        let mut n = 1;
        while r.failed(Progress::Resumed, None).is_some() {
            n += 1;
            assert!(n < 1000, "unbounded");
        }
        assert_eq!(n, 20 + 3);
    }

    #[test]
    fn the_deadline_stops_retries_and_backoff_is_capped() {
        let p = RetryPolicy { deadline: Duration::ZERO, ..RetryPolicy::downloads(5) };
        assert!(p.start().failed(Progress::None, None).is_none());
        let p = RetryPolicy::downloads(50);
        assert_eq!(p.backoff(1), Duration::from_millis(200));
        assert_eq!(p.backoff(2), Duration::from_millis(400));
        assert_eq!(p.backoff(30), Duration::from_secs(4));
        let mut r = p.start();
        assert_eq!(r.failed(Progress::None, Some(Duration::from_secs(3600))), Some(Duration::from_secs(4)));
    }
}
