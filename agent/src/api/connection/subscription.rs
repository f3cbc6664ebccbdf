//! A connection's subscriptions: the backlog from the replica's history (or a reset when
//! it no longer reaches back), then live batches through the subscription's filter.

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
                let item = SubscriptionItem::Ended { reason };
                let _ = connection
                    .outgoing
                    .send(AgentFrame::Event {
                        subscription: id,
                        item,
                    })
                    .await;
            }
        });
        Ok(())
    }

    /// Sends what of `batch` passes `filter`; false when the connection is gone.
    async fn send_filtered(
        &self,
        subscription: u64,
        filter: &EventFilter,
        batch: &EventBatch,
    ) -> bool {
        match translate::filter_batch(filter, batch) {
            Some(filtered) => {
                self.send_event(subscription, SubscriptionItem::Events(filtered))
                    .await
            }
            None => true,
        }
    }

    async fn send_event(&self, subscription: u64, item: SubscriptionItem) -> bool {
        self.outgoing
            .send(AgentFrame::Event { subscription, item })
            .await
            .is_ok()
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
        if self.outgoing.send(reply).await.is_err() {
            return None;
        }
        let mut last = after.unwrap_or(start);
        match backlog {
            Ok(batches) => {
                for batch in batches {
                    if !self.send_filtered(id, &filter, &batch).await {
                        return None;
                    }
                    last = batch.revision;
                }
            }
            Err(reset) => {
                if !self.send_event(id, reset).await {
                    return None;
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
                        if !self.send_event(id, SubscriptionItem::Member(member)).await {
                            return None;
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
                                if !self.send_filtered(id, &filter, &batch).await {
                        return None;
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
                                    if !self.send_filtered(id, &filter, &batch).await {
                        return None;
                    }
                                    last = batch.revision;
                                }
                            }
                            Err((revision, reset)) => {
                                if revision < last {
                                    // The replica started over below us; wait to pass `last`.
                                    continue;
                                }
                                if !self.send_event(id, reset).await {
                                    return None;
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
