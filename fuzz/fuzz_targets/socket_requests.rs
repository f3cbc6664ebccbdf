//! Any bytes as a request body on the agent's socket: decoded, turned into the command the
//! agent would send, validated, and applied to a state machine, which must keep its
//! invariants. Never a panic.
#![no_main]

use corral_agent::api::translate;
use corral_core::state::StateMachine;
use corral_proto::api::ClientFrame;
use corral_proto::{Command, SessionOwner, frame};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(message) = frame::decode_body::<ClientFrame>(data) else {
        return;
    };
    let mut machine = StateMachine::default();
    let open = Command::OpenSession {
        owner: SessionOwner::Node {
            name: "host".into(),
            incarnation: 1,
        },
    };
    let (opened, _) = machine.apply(&open);
    let session = match opened.outcome {
        Ok(corral_proto::Answer::SessionOpened { session, .. }) => session,
        other => panic!("opening a session: {other:?}"),
    };
    let _ = translate::binding_of(&message.request);
    let Some(command) = translate::command_for(&message.request, Some(session)) else {
        return;
    };
    if command.validate().is_err() {
        return;
    }
    let _ = machine.apply(&command);
    machine
        .check_invariants()
        .unwrap_or_else(|e| panic!("{command:?} broke an invariant: {e}"));
});
