//! A connection's subscriptions: the backlog from the replica's history (or a reset when
//! it no longer reaches back), then live batches through the subscription's filter.

use super::outgoing::Refused;
use super::*;

impl Connection {
    pub(super) async fn subscribe(
        self: &Arc<Self>,
        id: u64,
        filter: EventFilter,
        after: Option<Revision>,
    ) -> Result<(), ApiError> {
        let (stop, stopped) = oneshot::channel();
        {
            let mut subscriptions = self.subscriptions.lock();
            if subscriptions.len() >= SUBSCRIPTIONS_PER_CONNECTION_MAX {
                return Err(ApiError::BadRequest(format!(
                    "at most {SUBSCRIPTIONS_PER_CONNECTION_MAX} subscriptions per connection"
                )));
            }
            subscriptions.insert(id, stop);
        }
        let connection = self.clone();
        tokio::spawn(async move {
            let reason = connection.stream_events(id, filter, after, stopped).await;
            connection.subscriptions.lock().remove(&id);
            if let Some(reason) = reason {
                connection.writer.queue_end(id, reason).await;
            }
        });
        Ok(())
    }

    /// Queues what of `batch` passes `filter`, or says why the subscription ends.
    fn send_filtered(
        &self,
        subscription: u64,
        filter: &EventFilter,
        batch: &EventBatch,
    ) -> Result<(), Option<String>> {
        match translate::filter_batch(filter, batch) {
            Some(filtered) => self.send_event(subscription, SubscriptionItem::Events(filtered)),
            None => Ok(()),
        }
    }

    /// Queues one item, or says why the subscription ends: None when the app is gone,
    /// a reason when it does not read or the item does not fit in a frame.
    fn send_event(&self, subscription: u64, item: SubscriptionItem) -> Result<(), Option<String>> {
        self.writer
            .queue_event(subscription, item)
            .map_err(|refused| match refused {
                Refused::Closed => None,
                Refused::End(reason) => {
                    self.context
                        .metrics
                        .subscriptions_cut
                        .fetch_add(1, Ordering::Relaxed);
                    tracing::info!(subscription, %reason, "subscription ended");
                    Some(reason)
                }
            })
    }

    /// Streams events until the subscriber leaves (None) or the stream must end (Some).
    async fn stream_events(
        &self,
        id: u64,
        filter: EventFilter,
        after: Option<Revision>,
        mut stopped: oneshot::Receiver<()>,
    ) -> Option<String> {
        let replica = &self.context.replica;
        let mut signals = replica.subscribe();
        let mut members = filter
            .members
            .then(|| self.context.gossip.events.subscribe());
        // Where the stream starts, and what it must send first to get there.
        let (start, backlog) = replica.read(|r| match after {
            None => (r.revision(), Ok(Vec::new())),
            Some(after) if after >= r.revision() => (after, Ok(Vec::new())),
            Some(after) => match r.history_after(after) {
                Some(batches) => (r.revision(), Ok(batches)),
                None => {
                    let (revision, item) = translate::reset_item(r.machine(), &filter);
                    (revision, Err(item))
                }
            },
        });
        let reply = AgentFrame::Reply {
            id,
            result: Ok(Reply::Subscribed { revision: start }),
        };
        if !self.writer.queue_reply(&reply).await {
            return None;
        }
        let mut cursor = Cursor::at(after.unwrap_or(start));
        let backlog = match backlog {
            Ok(batches) => batches
                .iter()
                .try_for_each(|batch| self.send_batch(id, &filter, &mut cursor, batch)),
            Err(reset) => self.send_event(id, reset).map(|()| cursor.sent(start)),
        };
        if let Err(end) = backlog {
            return end;
        }
        loop {
            let member_event = async {
                match members.as_mut() {
                    Some(receiver) => receiver.recv().await,
                    None => std::future::pending().await,
                }
            };
            let step = tokio::select! {
                _ = &mut stopped => return None,
                event = member_event => match event {
                    Ok(member) => self.send_event(id, SubscriptionItem::Member(member)),
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        tracing::debug!(missed = n, "member events lagged");
                        Ok(())
                    }
                    Err(broadcast::error::RecvError::Closed) => {
                        members = None;
                        Ok(())
                    }
                },
                signal = signals.recv() => self.on_replica_signal(id, &filter, &mut cursor, signal),
            };
            if let Err(end) = step {
                return end;
            }
        }
    }

    /// Sends a live batch when it is the next one, else catches up from the replica's
    /// history (or sends a reset when the history no longer reaches back).
    fn on_replica_signal(
        &self,
        id: u64,
        filter: &EventFilter,
        cursor: &mut Cursor,
        signal: Result<ReplicaSignal, broadcast::error::RecvError>,
    ) -> Result<(), Option<String>> {
        match signal {
            Ok(ReplicaSignal::Applied(batch)) => match cursor.on_batch(batch.revision) {
                Step::Skip => return Ok(()),
                Step::Send => return self.send_batch(id, filter, cursor, &batch),
                Step::CatchUp => {}
            },
            Ok(ReplicaSignal::Replaced(_)) | Err(broadcast::error::RecvError::Lagged(_)) => {}
            Err(broadcast::error::RecvError::Closed) => {
                return Err(Some("the agent is stopping".into()));
            }
        }
        let catch_up = self
            .context
            .replica
            .read(|r| match r.history_after(cursor.last()) {
                Some(batches) => Ok(batches),
                None => Err(translate::reset_item(r.machine(), filter)),
            });
        match catch_up {
            Ok(batches) => {
                for batch in &batches {
                    if cursor.on_batch(batch.revision) != Step::Skip {
                        self.send_batch(id, filter, cursor, batch)?;
                    }
                }
                Ok(())
            }
            Err((revision, reset)) if cursor.accepts_reset(revision) => {
                self.send_event(id, reset)?;
                cursor.sent(revision);
                Ok(())
            }
            // The replica started over below what was sent; wait for it to pass.
            Err(_) => Ok(()),
        }
    }

    /// Sends what of `batch` passes `filter` and moves the cursor past it.
    fn send_batch(
        &self,
        id: u64,
        filter: &EventFilter,
        cursor: &mut Cursor,
        batch: &EventBatch,
    ) -> Result<(), Option<String>> {
        self.send_filtered(id, filter, batch)?;
        cursor.sent(batch.revision);
        Ok(())
    }
}

/// Where a subscription stands: the last revision it sent (or was reset to). It decides
/// what a live batch calls for; free of I/O.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Cursor {
    last: Revision,
}

/// What a subscription does with a batch at some revision.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Step {
    /// Already sent (or reset past).
    Skip,
    /// The next one: send it.
    Send,
    /// Something was missed between: catch up from the history first.
    CatchUp,
}

impl Cursor {
    pub(crate) fn at(last: Revision) -> Self {
        Cursor { last }
    }

    pub(crate) fn last(&self) -> Revision {
        self.last
    }

    pub(crate) fn on_batch(&self, revision: Revision) -> Step {
        if revision <= self.last {
            Step::Skip
        } else if revision == self.last + 1 {
            Step::Send
        } else {
            Step::CatchUp
        }
    }

    /// Everything up to `revision` was sent.
    pub(crate) fn sent(&mut self, revision: Revision) {
        self.last = self.last.max(revision);
    }

    /// Whether a reset to the state at `revision` may be sent: not when it lies below what
    /// was sent already (the replica started over from an older snapshot), which would
    /// take the subscriber back in time.
    pub(crate) fn accepts_reset(&self, revision: Revision) -> bool {
        revision >= self.last
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A live stream sends each next batch once, skips what it sent, catches up over a gap,
    /// and never resets backwards.
    #[test]
    fn the_cursor_sends_each_revision_once_and_in_order() {
        let mut cursor = Cursor::at(10);
        assert_eq!(cursor.on_batch(9), Step::Skip);
        assert_eq!(cursor.on_batch(10), Step::Skip);
        assert_eq!(cursor.on_batch(11), Step::Send);
        assert_eq!(cursor.on_batch(13), Step::CatchUp);
        cursor.sent(11);
        assert_eq!(cursor.on_batch(11), Step::Skip);
        assert_eq!(cursor.on_batch(12), Step::Send);
        cursor.sent(12);
        assert!(!cursor.accepts_reset(5));
        assert!(cursor.accepts_reset(12) && cursor.accepts_reset(40));
        cursor.sent(40);
        assert_eq!(cursor.last(), 40);
        cursor.sent(20);
        assert_eq!(cursor.last(), 40, "a cursor never moves back");
        assert_eq!(cursor.on_batch(41), Step::Send);
    }
}
