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
        let mut last = after.unwrap_or(start);
        match backlog {
            Ok(batches) => {
                for batch in batches {
                    if let Err(end) = self.send_filtered(id, &filter, &batch) {
                        return end;
                    }
                    last = batch.revision;
                }
            }
            Err(reset) => {
                if let Err(end) = self.send_event(id, reset) {
                    return end;
                }
                last = start;
            }
        }
        loop {
            let member_event = async {
                match members.as_mut() {
                    Some(receiver) => receiver.recv().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = &mut stopped => return None,
                event = member_event => match event {
                    Ok(member) => {
                        if let Err(end) = self.send_event(id, SubscriptionItem::Member(member)) {
                    return end;
                }
                    }
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        tracing::debug!(missed = n, "member events lagged");
                    }
                    Err(broadcast::error::RecvError::Closed) => members = None,
                },
                signal = signals.recv() => {
                    let resume = match signal {
                        Ok(ReplicaSignal::Applied(batch)) => {
                            if batch.revision <= last {
                                continue;
                            }
                            if batch.revision == last + 1 {
                                if let Err(end) = self.send_filtered(id, &filter, &batch) {
                        return end;
                    }
                                last = batch.revision;
                                continue;
                            }
                            true
                        }
                        Ok(ReplicaSignal::Replaced(_)) => true,
                        Err(broadcast::error::RecvError::Lagged(_)) => true,
                        Err(broadcast::error::RecvError::Closed) => {
                            return Some("the agent is stopping".into());
                        }
                    };
                    if resume {
                        // Catch up from history, or reset when it no longer reaches back.
                        let catch_up = replica.read(|r| match r.history_after(last) {
                            Some(batches) => Ok(batches),
                            None => Err(translate::reset_item(r.machine(), &filter)),
                        });
                        match catch_up {
                            Ok(batches) => {
                                for batch in batches {
                                    if batch.revision <= last {
                                        continue;
                                    }
                                    if let Err(end) = self.send_filtered(id, &filter, &batch) {
                        return end;
                    }
                                    last = batch.revision;
                                }
                            }
                            Err((revision, reset)) => {
                                if revision < last {
                                    // The replica started over below us; wait to pass `last`.
                                    continue;
                                }
                                if let Err(end) = self.send_event(id, reset) {
                    return end;
                }
                                last = revision;
                            }
                        }
                    }
                }
            }
        }
    }
}
