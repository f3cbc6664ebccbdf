//! Polling for a moment before sleeping: while something is awaited that usually comes
//! within microseconds, a worker thread keeps polling its sockets for a short, adaptive
//! window instead of parking at once.
//!
//! ```text
//!  awaiting() ──► window open: wake the poller      (agent: an answer went out, the next
//!                                                     request is awaited; client: a request
//!                                                     went out, its reply is awaited)
//!  arrived()  ──► the gap since awaiting() adapts the window
//!  poller: yield ─► worker polls sockets (epoll, timeout 0) ─► yield … until the window
//!          closes, then it sleeps until the next awaiting()
//! ```
//!
//! Waking a thread that sleeps on an idle core costs tens of microseconds on virtual
//! machines whose idle cores halt: more than a local read itself. Both ends of the agent's
//! socket use it: the agent after each answer, the client library after each request. The
//! window adapts as the kernel's halt polling does: it grows while what was awaited came
//! just after it closed, and shrinks while it comes too late for any window, so sparse
//! traffic and slow answers (writes, which wait for the core) pay nothing. The policy
//! ([`Window`]) is free of I/O and of clocks.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::{Notify, watch};

/// The adaptive window, in nanoseconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Window {
    current: u64,
    max: u64,
}

impl Window {
    /// The smallest window the first catchable gap opens.
    pub const START_NS: u64 = 2_000;

    pub fn new(max: Duration) -> Self {
        Window {
            current: 0,
            max: u64::try_from(max.as_nanos()).unwrap_or(u64::MAX),
        }
    }

    pub fn current(&self) -> u64 {
        self.current
    }

    /// What was awaited came `gap` nanoseconds after the window opened.
    pub fn on_gap(&mut self, gap: u64) {
        if gap <= self.current {
            // Caught while polling.
        } else if gap <= self.max {
            // A longer window would have caught it.
            self.current = (self.current.saturating_mul(2))
                .max(Self::START_NS)
                .max(gap.saturating_add(gap / 4))
                .min(self.max);
        } else {
            // No window would have: stop paying for one.
            self.current /= 2;
            if self.current < Self::START_NS {
                self.current = 0;
            }
        }
    }
}

/// One poller: call [`IdlePoll::awaiting`] when something starts to be awaited and
/// [`IdlePoll::arrived`] when it comes, and run [`IdlePoll::run`] as a task of the runtime
/// whose sockets deliver it.
#[derive(Debug)]
pub struct IdlePoll {
    epoch: Instant,
    /// Nanoseconds since `epoch` of the last [`IdlePoll::awaiting`].
    since: AtomicU64,
    /// True from [`IdlePoll::awaiting`] until [`IdlePoll::arrived`]: that gap is what the
    /// window covers.
    waiting: AtomicBool,
    /// The window now, in nanoseconds.
    open_ns: AtomicU64,
    max_ns: u64,
    polling: AtomicBool,
    wake: Notify,
}

impl IdlePoll {
    /// A poller whose window never exceeds `max` (zero: never polls).
    pub fn new(max: Duration) -> Arc<Self> {
        Arc::new(IdlePoll {
            epoch: Instant::now(),
            since: AtomicU64::new(0),
            waiting: AtomicBool::new(false),
            open_ns: AtomicU64::new(0),
            max_ns: Window::new(max).max,
            polling: AtomicBool::new(false),
            wake: Notify::new(),
        })
    }

    fn nanos(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.epoch).as_nanos()).unwrap_or(u64::MAX)
    }

    fn now(&self) -> u64 {
        self.nanos(Instant::now())
    }

    /// What was awaited came, at `now`: the time since [`IdlePoll::awaiting`] adapts the
    /// window. (The caller passes the clock it read anyway.)
    pub fn arrived(&self, now: Instant) {
        if !self.waiting.swap(false, Ordering::Relaxed) {
            return;
        }
        let gap = self
            .nanos(now)
            .saturating_sub(self.since.load(Ordering::Relaxed));
        // Two arrivals at once may both adapt it: the window is a hint, either result is.
        let mut window = Window {
            current: self.open_ns.load(Ordering::Relaxed),
            max: self.max_ns,
        };
        window.on_gap(gap);
        self.open_ns.store(window.current(), Ordering::Relaxed);
    }

    /// Something is awaited from `now` on: poll while the window is open.
    pub fn awaiting(&self, now: Instant) {
        self.since.store(self.nanos(now), Ordering::Relaxed);
        self.waiting.store(true, Ordering::Relaxed);
        if self.open_ns.load(Ordering::Relaxed) > 0 && !self.polling.swap(true, Ordering::AcqRel) {
            self.wake.notify_one();
        }
    }

    /// The window now: how long the poller polls after the next [`IdlePoll::awaiting`].
    pub fn window(&self) -> Duration {
        Duration::from_nanos(self.open_ns.load(Ordering::Relaxed))
    }

    fn window_open(&self) -> bool {
        let since = self
            .now()
            .saturating_sub(self.since.load(Ordering::Relaxed));
        since < self.open_ns.load(Ordering::Relaxed)
    }

    /// Polls while a window is open; sleeps otherwise. Ends when `shutdown` turns true.
    pub async fn run(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        loop {
            tokio::select! {
                _ = self.wake.notified() => {}
                _ = shutdown.changed() => return,
            }
            loop {
                while self.window_open() {
                    tokio::task::yield_now().await;
                }
                self.polling.store(false, Ordering::Release);
                // An awaiting() between the last check and the store above found
                // `polling` still set and did not wake us: look once more.
                if !self.window_open() || self.polling.swap(true, Ordering::AcqRel) {
                    break;
                }
            }
            if *shutdown.borrow() {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX: u64 = 50_000;

    fn window() -> Window {
        Window::new(Duration::from_nanos(MAX))
    }

    #[test]
    fn sparse_requests_keep_the_window_shut() {
        let mut w = window();
        for _ in 0..100 {
            w.on_gap(1_000_000);
            assert_eq!(w.current(), 0);
        }
    }

    #[test]
    fn close_requests_open_the_window_to_cover_their_gaps_and_no_further_than_max() {
        let mut w = window();
        w.on_gap(8_000);
        assert!(w.current() >= 8_000, "{w:?}");
        let opened = w.current();
        w.on_gap(8_000);
        assert_eq!(w.current(), opened, "a caught gap changes nothing");
        for _ in 0..20 {
            w.on_gap(45_000);
        }
        assert_eq!(w.current(), MAX);
    }

    #[test]
    fn the_window_shrinks_to_nothing_once_gaps_grow_past_max() {
        let mut w = window();
        w.on_gap(40_000);
        assert!(w.current() > 0);
        let mut steps = 0;
        while w.current() > 0 {
            w.on_gap(10 * MAX);
            steps += 1;
            assert!(steps < 10, "{w:?}");
        }
    }

    #[test]
    fn a_zero_max_never_polls() {
        let mut w = Window::new(Duration::ZERO);
        for gap in [0, 1, 1_000, 1_000_000] {
            w.on_gap(gap);
            assert_eq!(w.current(), 0);
        }
    }

    #[test]
    fn only_the_gap_from_awaiting_to_arrival_adapts_the_window() {
        let poll = IdlePoll::new(Duration::from_millis(1));
        poll.arrived(Instant::now());
        assert_eq!(
            poll.open_ns.load(Ordering::Relaxed),
            0,
            "nothing awaited before"
        );
        poll.awaiting(Instant::now());
        poll.arrived(Instant::now());
        let opened = poll.open_ns.load(Ordering::Relaxed);
        assert!(opened >= Window::START_NS, "{opened}");
        // A second arrival before anything is awaited again (pipelined requests) says
        // nothing about the gap.
        std::thread::sleep(Duration::from_millis(5));
        poll.arrived(Instant::now());
        assert_eq!(poll.open_ns.load(Ordering::Relaxed), opened);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn the_poller_polls_while_something_is_awaited_and_then_sleeps() {
        let poll = IdlePoll::new(Duration::from_millis(5));
        let (stop, stopped) = watch::channel(false);
        let poller = tokio::spawn(poll.clone().run(stopped));
        // A window as a run of quick arrivals opens it.
        poll.open_ns.store(5_000_000, Ordering::Relaxed);
        let opened = std::time::Instant::now();
        poll.awaiting(Instant::now());
        tokio::task::yield_now().await;
        assert!(
            poll.polling.load(Ordering::Acquire),
            "not polling while something is awaited"
        );
        // It polls until the window closes, and then stops.
        let deadline = opened + Duration::from_secs(5);
        while poll.polling.load(Ordering::Acquire) {
            assert!(
                std::time::Instant::now() < deadline,
                "still polling after 5 s"
            );
            tokio::task::yield_now().await;
        }
        assert!(
            opened.elapsed() >= Duration::from_millis(5),
            "stopped before its window closed"
        );
        stop.send(true).expect("poller gone");
        tokio::time::timeout(Duration::from_secs(5), poller)
            .await
            .expect("poller did not stop")
            .expect("poller failed");
    }
}
