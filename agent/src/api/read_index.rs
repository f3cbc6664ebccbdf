//! Linearizable reads of every connection (socket, HTTP, etcd) on their way to the core's
//! read index, coalesced.
//!
//! ```text
//!  read ─┐
//!  read ─┼─► waiting ─► one ReadIndex call for all of them ─► each waits for the replica
//!  read ─┘              (at most one in flight; reads that arrive meanwhile go next)
//! ```
//!
//! A read may use a read index only if the call that got it began after the read arrived:
//! then every write acknowledged before the read is at or below it. Each call therefore
//! takes exactly the reads that were waiting when it began; reads that arrive while it is
//! in flight wait for the next one. Under load that is one round trip to the leader per
//! round trip, not one per read. A read that finds no call in flight makes the call
//! itself, on its own task, so a lone reader pays no hand-off; only reads that queued
//! behind it are served by a task of their own.

use std::sync::Arc;

use corral_net::client::{ClientError, CoreClient};
use corral_proto::Revision;
use parking_lot::Mutex;
use tokio::sync::oneshot;

type Answer = Result<Revision, String>;

/// The reads one call answers. If the reader making the call gives up before it returns
/// (its client went away), they go back to the queue and a task of their own calls again.
struct Batch<'a> {
    index: &'a ReadIndex,
    reads: Vec<oneshot::Sender<Answer>>,
}

impl Drop for Batch<'_> {
    fn drop(&mut self) {
        if self.reads.is_empty() {
            return;
        }
        self.index
            .waiting
            .lock()
            .reads
            .extend(std::mem::take(&mut self.reads));
        tokio::spawn(self.index.clone().run());
    }
}

#[derive(Debug, Default)]
struct Waiting {
    in_flight: bool,
    reads: Vec<oneshot::Sender<Answer>>,
}

/// The agent's door to the core's read index; clones share one queue.
#[derive(Clone, Debug)]
pub struct ReadIndex {
    core: Arc<CoreClient>,
    waiting: Arc<Mutex<Waiting>>,
}

impl ReadIndex {
    pub fn new(core: Arc<CoreClient>) -> Self {
        ReadIndex {
            core,
            waiting: Arc::default(),
        }
    }

    /// The revision a linearizable read that arrives now must reflect.
    pub async fn read_index(&self) -> Result<Revision, ClientError> {
        let (answer, answered) = oneshot::channel();
        let start = {
            let mut waiting = self.waiting.lock();
            waiting.reads.push(answer);
            !std::mem::replace(&mut waiting.in_flight, true)
        };
        if start && self.call_once().await {
            tokio::spawn(self.clone().run());
        }
        match answered.await {
            Ok(Ok(revision)) => Ok(revision),
            Ok(Err(error)) => Err(ClientError::Unavailable(error)),
            Err(_) => Err(ClientError::Unavailable("the agent is stopping".into())),
        }
    }

    /// Calls the core once for the reads waiting now; answers whether more arrived
    /// meanwhile (the call then stays in flight for them).
    async fn call_once(&self) -> bool {
        let mut batch = Batch {
            index: self,
            reads: std::mem::take(&mut self.waiting.lock().reads),
        };
        let answer = self.core.read_index().await.map_err(|e| e.to_string());
        for read in std::mem::take(&mut batch.reads) {
            let _ = read.send(answer.clone());
        }
        let mut waiting = self.waiting.lock();
        if waiting.reads.is_empty() {
            waiting.in_flight = false;
            false
        } else {
            true
        }
    }

    /// Calls the core for the reads waiting, again while more arrived meanwhile.
    async fn run(self) {
        while self.call_once().await {}
    }
}
