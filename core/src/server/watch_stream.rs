//! Serving one watch stream on a core member ([`corral_net::watch_serve`]), and reading
//! the watcher's beats on its side of the stream into the member's liveness
//! ([`super::liveness`]).

use std::time::Instant;

use corral_net::rpc::{WatchBeat, WatchItem};
use corral_net::transport::tls::peer_has_name;
use corral_net::watch_serve::{self, BeatsHeard, WatchEnd, WatchSignal, WatchSource, WatchStart};
use corral_proto::Revision;
use corral_proto::frame;
use quinn::{RecvStream, SendStream};
use tokio::sync::broadcast;

use super::liveness::BEAT_FRAME_MAX;
use super::member::CoreMember;

/// What a watch stream carries to its watcher.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Served {
    /// Every entry after this revision (None: from a snapshot), and progress when quiet.
    Entries(Option<Revision>),
    /// Progress only ([`corral_net::rpc::CoreRequest::Beats`]).
    Progress,
}

pub(crate) async fn serve(
    member: &CoreMember,
    connection: &quinn::Connection,
    served: Served,
    mut send: SendStream,
    mut receive: RecvStream,
) {
    let stream_id = member.next_watch_stream();
    let mut beating: Option<String> = None;
    let beats_heard = BeatsHeard::default();
    let items = async {
        match served {
            Served::Entries(after) => {
                watch_serve::serve(member, after, &mut send, &beats_heard).await
            }
            Served::Progress => watch_serve::serve_progress(member, &mut send, &beats_heard).await,
        }
    };
    let result = tokio::select! {
        result = items => result,
        // The watcher closing its side (or resetting, or sending what is not a beat) ends
        // the stream.
        end = beats(member, connection, stream_id, &mut receive, &mut beating, &beats_heard) => Err(end),
    };
    if let Some(name) = &beating {
        member
            .liveness
            .lock()
            .stream_ended(name, stream_id, Instant::now());
    }
    match result {
        Ok(()) | Err(WatchEnd::Stopped) => {
            let _ = send.finish();
        }
        Err(WatchEnd::Gone(reason)) => tracing::debug!(%reason, "watch stream ended"),
    }
}

/// Reads the watcher's beats into the member's liveness until its side ends. A beat counts
/// only under a name the connection's certificate carries; `beating` is the name that beat.
async fn beats(
    member: &CoreMember,
    connection: &quinn::Connection,
    stream_id: u64,
    receive: &mut RecvStream,
    beating: &mut Option<String>,
    beats_heard: &BeatsHeard,
) -> WatchEnd {
    loop {
        let beat = match frame::read_frame::<_, WatchBeat>(receive, BEAT_FRAME_MAX).await {
            Ok(Some(beat)) => beat,
            Ok(None) => return WatchEnd::Gone("closed by the watcher".into()),
            Err(e) => return WatchEnd::Gone(format!("bad beat: {e}")),
        };
        if beating.as_deref() != Some(beat.name.as_str()) {
            if !peer_has_name(connection, &beat.name) {
                return WatchEnd::Gone(format!(
                    "a beat as {:?}, which the watcher's certificate does not name",
                    beat.name
                ));
            }
            if let Some(previous) = beating.replace(beat.name.clone()) {
                member
                    .liveness
                    .lock()
                    .stream_ended(&previous, stream_id, Instant::now());
            }
        }
        member
            .liveness
            .lock()
            .beat(&beat.name, beat.incarnation, stream_id, Instant::now());
        beats_heard.heard(beat.seq);
    }
}

impl WatchSource for CoreMember {
    fn watch_from(
        &self,
        after: Option<Revision>,
    ) -> (WatchStart, broadcast::Receiver<WatchSignal>) {
        self.applied.watch_from(after)
    }

    /// How far this member applied, the leader and term it knows, and the last beat it
    /// received on the stream.
    fn progress(&self, beat: Option<u64>) -> WatchItem {
        let (leader, term) = {
            let metrics = self.raft.metrics();
            let m = metrics.borrow();
            (m.current_leader, m.current_term)
        };
        WatchItem::Progress {
            revision: self.applied.revision(),
            leader,
            term,
            beat,
        }
    }

    fn checkpoint(&self) -> Option<(Revision, [u8; 32])> {
        self.applied.read(|a| a.machine.checkpoint())
    }
}
