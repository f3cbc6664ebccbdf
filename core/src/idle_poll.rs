//! Polling for a moment before sleeping: after an answer, a worker thread keeps polling
//! its sockets for a short, adaptive window instead of parking at once.
//!
//! ```text
//!  request ──arrived()──► the gap since the last answer adapts the window
//!  answer  ──served()───► window open: wake the poller
//!  poller: yield ─► worker polls sockets (epoll, timeout 0) ─► yield … until the window
//!          closes, then it sleeps until the next answer
//! ```
//!
//! Waking a thread that sleeps on an idle core costs tens of microseconds on virtual
//! machines whose idle cores halt: more than a local read itself. A client that sends its
//! next request right after an answer finds the worker still awake. The window adapts as
//! the kernel's halt polling does: it grows while requests arrive just after it closed,
//! and shrinks while they come too late for any window, so sparse traffic pays nothing.
//! The policy ([`Window`]) is free of I/O and of clocks.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
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

    /// A request came `gap` nanoseconds after the last answer.
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

/// One runtime's poller: call [`IdlePoll::arrived`] when a request comes in and
/// [`IdlePoll::served`] when an answer goes out, and run [`IdlePoll::run`] as a task of
/// that runtime.
#[derive(Debug)]
pub struct IdlePoll {
    epoch: Instant,
    /// Nanoseconds since `epoch` of the last answer.
    served: AtomicU64,
    /// True from an answer until the next request: that gap is what the window covers.
    waiting: AtomicBool,
    /// The window now, in nanoseconds (a copy of `window` for the poller).
    open_ns: AtomicU64,
    window: Mutex<Window>,
    polling: AtomicBool,
    wake: Notify,
}

impl IdlePoll {
    /// A poller whose window never exceeds `max` (zero: never polls).
    pub fn new(max: Duration) -> Arc<Self> {
        Arc::new(IdlePoll {
            epoch: Instant::now(),
            served: AtomicU64::new(0),
            waiting: AtomicBool::new(false),
            open_ns: AtomicU64::new(0),
            window: Mutex::new(Window::new(max)),
            polling: AtomicBool::new(false),
            wake: Notify::new(),
        })
    }

    fn now(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// A request came in: the time since the last answer adapts the window.
    pub fn arrived(&self) {
        if !self.waiting.swap(false, Ordering::Relaxed) {
            return;
        }
        let gap = self
            .now()
            .saturating_sub(self.served.load(Ordering::Relaxed));
        let open = {
            let mut window = self.window.lock();
            window.on_gap(gap);
            window.current()
        };
        self.open_ns.store(open, Ordering::Relaxed);
    }

    /// An answer went out: poll for the next request while the window is open.
    pub fn served(&self) {
        self.served.store(self.now(), Ordering::Relaxed);
        self.waiting.store(true, Ordering::Relaxed);
        if self.open_ns.load(Ordering::Relaxed) > 0 && !self.polling.swap(true, Ordering::AcqRel) {
            self.wake.notify_one();
        }
    }

    fn window_open(&self) -> bool {
        let since = self
            .now()
            .saturating_sub(self.served.load(Ordering::Relaxed));
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
                // An answer between the last check and the store above found `polling`
                // still set and did not wake us: look once more.
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
    fn only_the_gap_from_an_answer_to_the_next_request_adapts_the_window() {
        let poll = IdlePoll::new(Duration::from_millis(1));
        poll.arrived();
        assert_eq!(poll.open_ns.load(Ordering::Relaxed), 0, "no answer before");
        poll.served();
        poll.arrived();
        let opened = poll.open_ns.load(Ordering::Relaxed);
        assert!(opened >= Window::START_NS, "{opened}");
        // A second request before any answer (pipelined) says nothing about the gap.
        std::thread::sleep(Duration::from_millis(5));
        poll.arrived();
        assert_eq!(poll.open_ns.load(Ordering::Relaxed), opened);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn the_poller_polls_after_an_answer_and_then_sleeps() {
        let poll = IdlePoll::new(Duration::from_millis(5));
        let (stop, stopped) = watch::channel(false);
        let poller = tokio::spawn(poll.clone().run(stopped));
        // A window as a run of close requests opens it.
        poll.open_ns.store(5_000_000, Ordering::Relaxed);
        let answered = std::time::Instant::now();
        poll.served();
        tokio::task::yield_now().await;
        assert!(
            poll.polling.load(Ordering::Acquire),
            "not polling after an answer"
        );
        // It polls until the window closes, and then stops.
        let deadline = answered + Duration::from_secs(5);
        while poll.polling.load(Ordering::Acquire) {
            assert!(
                std::time::Instant::now() < deadline,
                "still polling after 5 s"
            );
            tokio::task::yield_now().await;
        }
        assert!(
            answered.elapsed() >= Duration::from_millis(5),
            "stopped before its window closed"
        );
        stop.send(true).expect("poller gone");
        tokio::time::timeout(Duration::from_secs(5), poller)
            .await
            .expect("poller did not stop")
            .expect("poller failed");
    }
}
