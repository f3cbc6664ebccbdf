//! etcd's Watch service, from the replica's applied batches.
//!
//! ```text
//!  replica signals (every applied batch) ──► one task per stream ──► its watchers
//!  create(start_revision) ──► the replica's history first, then the signals after it
//!  a start older than the history, a lag past it, a replaced state ──► canceled with
//!  compact_revision: the client re-reads and watches again, as after etcd's compaction
//! ```
//!
//! Each watcher remembers the next revision it is owed, so a batch is sent to it exactly
//! once and in order, whether it came from the history or from the signals.

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use corral_proto::EventBatch;
use corral_proto::range::KeyRange;
use futures::Stream;
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tonic::{Request, Response, Status, Streaming};

use super::convert::{self, WatchSpec};
use super::pb::etcdserverpb::{
    WatchCreateRequest, WatchRequest, WatchResponse, watch_create_request, watch_request,
    watch_server::Watch,
};
use super::pb::mvccpb;
use super::server::{Caller, Etcd};
use super::{Services, errors};
use crate::replica::ReplicaSignal;

/// Responses a stream holds for a client that reads slowly; past them the stream waits,
/// and its watchers catch up from the history (or are canceled) once it reads again.
const WATCH_BUFFER: usize = 64;

/// Most watchers on one stream.
pub(super) const WATCHERS_PER_STREAM_MAX: usize = 1024;

/// How often a watcher that asked for progress notes gets one when it had no events.
const PROGRESS_NOTIFY_INTERVAL: Duration = Duration::from_secs(10);

/// The ID etcd's stream-wide progress answers carry.
const STREAM_WIDE: i64 = -1;

type WatchStream = Pin<Box<dyn Stream<Item = Result<WatchResponse, Status>> + Send>>;

#[derive(Debug)]
struct Watcher {
    spec: WatchSpec,
    /// The first revision not yet sent to it.
    next: u64,
    progress_notify: bool,
    /// Whether it got anything since the last progress note.
    busy: bool,
}

/// One stream: its watchers and where its answers go.
struct WatchStreamTask {
    etcd: Arc<Etcd>,
    caller: Caller,
    watchers: BTreeMap<i64, Watcher>,
    out: mpsc::Sender<Result<WatchResponse, Status>>,
}

/// The stream's answers are gone (the client left).
struct Gone;

impl WatchStreamTask {
    async fn send(&self, response: WatchResponse) -> Result<(), Gone> {
        self.out.send(Ok(response)).await.map_err(|_| Gone)
    }

    fn response(&self, watch_id: i64, revision: u64) -> WatchResponse {
        WatchResponse {
            header: self.etcd.header(revision),
            watch_id,
            ..Default::default()
        }
    }

    async fn create(&mut self, create: WatchCreateRequest) -> Result<(), Gone> {
        let refuse = |reason: String| WatchResponse {
            header: self.etcd.header_now(),
            watch_id: STREAM_WIDE,
            created: true,
            canceled: true,
            cancel_reason: reason,
            ..Default::default()
        };
        if create.key.is_empty() && create.range_end.is_empty() {
            return self
                .send(refuse("etcdserver: key is not provided".into()))
                .await;
        }
        if self.watchers.len() >= WATCHERS_PER_STREAM_MAX {
            let reason =
                format!("corral: a stream holds at most {WATCHERS_PER_STREAM_MAX} watchers");
            return self.send(refuse(reason)).await;
        }
        let id = if create.watch_id != 0 {
            if self.watchers.contains_key(&create.watch_id) {
                let reason = "etcdserver: mvcc: watcher ID is already in use".to_string();
                return self.send(refuse(reason)).await;
            }
            create.watch_id
        } else {
            (0..)
                .find(|id| !self.watchers.contains_key(id))
                .unwrap_or(0)
        };
        let filters: Vec<_> = create
            .filters
            .iter()
            .filter_map(|f| watch_create_request::FilterType::try_from(*f).ok())
            .collect();
        let spec = WatchSpec {
            range: KeyRange::from_etcd(&create.key, &create.range_end),
            no_put: filters.contains(&watch_create_request::FilterType::Noput),
            no_delete: filters.contains(&watch_create_request::FilterType::Nodelete),
            prev_kv: create.prev_kv,
        };
        let replica = &self.etcd.context.replica;
        // The history up to now, read under one look at the replica; the signals bring
        // what comes after.
        let start = create.start_revision.max(0) as u64;
        let looked = replica.read(|r| {
            let allowed = self
                .etcd
                .check_watch(r.machine(), &self.caller, &spec.range);
            let current = r.revision();
            let history = if start == 0 || start > current {
                Some(Vec::new())
            } else {
                r.history_after(start - 1)
            };
            (allowed, current, history, r.history_floor())
        });
        let (allowed, current, history, floor) = looked;
        if let Err(refused) = allowed {
            return self.send(refuse(refused.message().to_string())).await;
        }
        let created = WatchResponse {
            created: true,
            ..self.response(id, current)
        };
        self.send(created).await?;
        let Some(history) = history else {
            let canceled = WatchResponse {
                canceled: true,
                compact_revision: (floor + 1) as i64,
                cancel_reason: format!(
                    "etcdserver: mvcc: required revision has been compacted (this agent keeps \
                     events after revision {floor})"
                ),
                ..self.response(id, current)
            };
            return self.send(canceled).await;
        };
        let next = if start == 0 {
            current + 1
        } else {
            start.max(1)
        };
        self.watchers.insert(
            id,
            Watcher {
                spec,
                next,
                progress_notify: create.progress_notify,
                busy: false,
            },
        );
        for batch in history {
            self.deliver_to(id, &batch).await?;
        }
        if let Some(watcher) = self.watchers.get_mut(&id) {
            watcher.next = watcher.next.max(current + 1);
        }
        Ok(())
    }

    /// Sends `batch` to watcher `id` if it is owed it and anything in it matches.
    async fn deliver_to(&mut self, id: i64, batch: &EventBatch) -> Result<(), Gone> {
        let Some(watcher) = self.watchers.get_mut(&id) else {
            return Ok(());
        };
        if batch.revision < watcher.next {
            return Ok(());
        }
        watcher.next = batch.revision + 1;
        let mut events = convert::events_for(&watcher.spec, batch);
        if events.is_empty() {
            return Ok(());
        }
        watcher.busy = true;
        if watcher.spec.prev_kv {
            self.fill_previous(batch.revision, &mut events);
        }
        let response = WatchResponse {
            events,
            ..self.response(id, batch.revision)
        };
        self.send(response).await
    }

    /// The values the keys had before `revision`, as far as the history tells.
    fn fill_previous(&self, revision: u64, events: &mut [mvccpb::Event]) {
        self.etcd.context.replica.read(|r| {
            for event in events.iter_mut() {
                let Some(kv) = &event.kv else { continue };
                let created =
                    event.r#type == mvccpb::event::EventType::Put as i32 && kv.version == 1;
                if created {
                    continue;
                }
                let Ok(key) = std::str::from_utf8(&kv.key) else {
                    continue;
                };
                if let Some(Some(previous)) = r.value_before(revision, key) {
                    event.prev_kv = Some(convert::key_value(&previous));
                }
            }
        });
    }

    async fn applied(&mut self, batch: &EventBatch) -> Result<(), Gone> {
        let ids: Vec<i64> = self.watchers.keys().copied().collect();
        for id in ids {
            self.deliver_to(id, batch).await?;
        }
        Ok(())
    }

    /// The signals were missed (the stream fell behind) or the state was replaced: every
    /// watcher catches up from the history, or is canceled where the history no longer
    /// reaches.
    async fn catch_up(&mut self) -> Result<(), Gone> {
        let ids: Vec<i64> = self.watchers.keys().copied().collect();
        for id in ids {
            let next = self.watchers[&id].next;
            let (history, current, floor) = self.etcd.context.replica.read(|r| {
                (
                    r.history_after(next.saturating_sub(1)),
                    r.revision(),
                    r.history_floor(),
                )
            });
            match history {
                Some(history) => {
                    for batch in history {
                        self.deliver_to(id, &batch).await?;
                    }
                }
                None if next <= current => {
                    self.watchers.remove(&id);
                    let canceled = WatchResponse {
                        canceled: true,
                        compact_revision: (floor + 1) as i64,
                        cancel_reason: "etcdserver: mvcc: required revision has been compacted \
                                        (the watcher fell behind this agent's history)"
                            .into(),
                        ..self.response(id, current)
                    };
                    self.send(canceled).await?;
                }
                None => {}
            }
        }
        Ok(())
    }

    async fn progress(&mut self, every: bool) -> Result<(), Gone> {
        let current = self.etcd.context.replica.revision();
        if every {
            return self.send(self.response(STREAM_WIDE, current)).await;
        }
        let due: Vec<i64> = self
            .watchers
            .iter_mut()
            .filter(|(_, w)| w.progress_notify)
            .filter_map(|(id, w)| (!std::mem::replace(&mut w.busy, false)).then_some(*id))
            .collect();
        for id in due {
            self.send(self.response(id, current)).await?;
        }
        Ok(())
    }

    async fn handle(&mut self, request: WatchRequest) -> Result<(), Gone> {
        match request.request_union {
            Some(watch_request::RequestUnion::CreateRequest(create)) => self.create(create).await,
            Some(watch_request::RequestUnion::CancelRequest(cancel)) => {
                if self.watchers.remove(&cancel.watch_id).is_some() {
                    let current = self.etcd.context.replica.revision();
                    let canceled = WatchResponse {
                        canceled: true,
                        ..self.response(cancel.watch_id, current)
                    };
                    self.send(canceled).await?;
                }
                Ok(())
            }
            Some(watch_request::RequestUnion::ProgressRequest(_)) => self.progress(true).await,
            None => Ok(()),
        }
    }

    async fn run(mut self, mut inbound: Streaming<WatchRequest>) {
        let mut signals = self.etcd.context.replica.subscribe();
        let mut shutdown = self.etcd.context.shutdown.clone();
        let mut tick = tokio::time::interval(PROGRESS_NOTIFY_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            let step = tokio::select! {
                request = inbound.next() => match request {
                    Some(Ok(request)) => self.handle(request).await,
                    _ => break,
                },
                signal = signals.recv() => match signal {
                    Ok(ReplicaSignal::Applied(batch)) => self.applied(&batch).await,
                    Ok(ReplicaSignal::Replaced(_)) | Err(RecvError::Lagged(_)) => {
                        self.catch_up().await
                    }
                    Err(RecvError::Closed) => break,
                },
                _ = tick.tick() => self.progress(false).await,
                _ = super::stopped(&mut shutdown) => break,
            };
            if step.is_err() {
                break;
            }
        }
    }
}

impl Etcd {
    fn check_watch(
        &self,
        machine: &corral_state::StateMachine,
        caller: &Caller,
        range: &KeyRange,
    ) -> Result<(), Status> {
        let request = corral_proto::api::AgentRequest::Subscribe {
            filter: corral_proto::api::EventFilter::keys(range.covering_prefix()),
            after: None,
        };
        crate::api::rights::check(machine.access(), &caller.identity(), &request)
            .map_err(|e| errors::from_api(&e))
    }
}

#[tonic::async_trait]
impl Watch for Services {
    type WatchStream = WatchStream;

    async fn watch(
        &self,
        request: Request<Streaming<WatchRequest>>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let caller = self.0.caller(&request)?;
        let permit = self
            .0
            .watch_streams
            .clone()
            .try_acquire_owned()
            .map_err(|_| {
                Status::resource_exhausted(format!(
                    "corral: this agent serves at most {} etcd watch streams",
                    super::server::WATCH_STREAMS_MAX
                ))
            })?;
        let (out, receiver) = mpsc::channel(WATCH_BUFFER);
        let task = WatchStreamTask {
            etcd: self.0.clone(),
            caller,
            watchers: BTreeMap::new(),
            out,
        };
        let inbound = request.into_inner();
        tokio::spawn(async move {
            task.run(inbound).await;
            drop(permit);
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(receiver),
        )))
    }
}
