//! A bound on how deeply the wire's boxed messages nest. A command names its actor once
//! (`Command::Act`), and an agent request acts in a session or on a client's behalf at
//! most once each (`InSession`, `OnBehalf`): decoding anything deeper would recurse once
//! per level, and a frame of a few megabytes of nested headers would overflow the stack
//! of whoever decodes it. So the boxed field of each refuses, while decoding, to be
//! entered more than its limit, and the frame is refused as undecodable.

use std::cell::Cell;

use serde::{Deserialize, Deserializer};

thread_local! {
    /// Boxed messages being decoded on this thread, outermost first.
    static DEPTH: Cell<u32> = const { Cell::new(0) };
}

/// Leaves one level when dropped, however decoding ended.
struct Level;

impl Drop for Level {
    fn drop(&mut self) {
        DEPTH.with(|depth| depth.set(depth.get().saturating_sub(1)));
    }
}

fn boxed_within<'de, D, T>(deserializer: D, max: u32) -> Result<Box<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    let entered = DEPTH.with(|depth| {
        let now = depth.get() + 1;
        depth.set(now);
        now
    });
    let _level = Level;
    if entered > max {
        return Err(serde::de::Error::custom(format!(
            "a message nests more than {max} deep"
        )));
    }
    T::deserialize(deserializer).map(Box::new)
}

/// For a box that may hold one more: an HTTP client's request acting in a session, a
/// command with its actor inside the positions the leader attached.
pub(crate) fn boxed_twice<'de, D, T>(deserializer: D) -> Result<Box<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    boxed_within(deserializer, 2)
}

#[cfg(test)]
mod tests {
    use crate::api::AgentRequest;
    use crate::{Actor, Command};

    fn act(command: Command) -> Command {
        Command::Act {
            actor: Actor {
                certificate: "a1".into(),
                session: None,
            },
            command: Box::new(command),
        }
    }

    fn in_session(request: AgentRequest) -> AgentRequest {
        AgentRequest::InSession {
            session: 1,
            request: Box::new(request),
        }
    }

    /// Two levels decode; a deeper one is refused; and a frame of a hundred thousand
    /// nested headers is refused without overflowing the stack.
    #[test]
    fn nesting_is_bounded_while_decoding() {
        let once = act(Command::CreateShard { name: "M1".into() });
        let bytes = postcard::to_stdvec(&once).unwrap();
        assert_eq!(postcard::from_bytes::<Command>(&bytes).unwrap(), once);
        let promoting = Command::Promoting {
            positions: vec![],
            command: Box::new(once.clone()),
        };
        let bytes = postcard::to_stdvec(&promoting).unwrap();
        assert_eq!(postcard::from_bytes::<Command>(&bytes).unwrap(), promoting);
        // Decodes, but is not a valid command.
        let twice = act(once);
        let bytes = postcard::to_stdvec(&twice).unwrap();
        assert!(
            postcard::from_bytes::<Command>(&bytes)
                .unwrap()
                .validate()
                .is_err()
        );
        let thrice = act(twice);
        let bytes = postcard::to_stdvec(&thrice).unwrap();
        assert!(postcard::from_bytes::<Command>(&bytes).is_err());

        let request = in_session(AgentRequest::Status);
        let behalf = AgentRequest::OnBehalf {
            token: None,
            request: Box::new(request.clone()),
        };
        let bytes = postcard::to_stdvec(&behalf).unwrap();
        assert_eq!(
            postcard::from_bytes::<AgentRequest>(&bytes).unwrap(),
            behalf
        );
        let bytes = postcard::to_stdvec(&in_session(in_session(request))).unwrap();
        assert!(postcard::from_bytes::<AgentRequest>(&bytes).is_err());

        // Hand-made: the header of Act (its variant, then an actor) a hundred thousand
        // times over. Encoding such a value would itself recurse that deep.
        let header = postcard::to_stdvec(&act(Command::CreateShard { name: "x".into() })).unwrap();
        let prefix_len = header.len()
            - postcard::to_stdvec(&Command::CreateShard { name: "x".into() })
                .unwrap()
                .len();
        let mut deep = Vec::new();
        for _ in 0..100_000 {
            deep.extend_from_slice(&header[..prefix_len]);
        }
        assert!(postcard::from_bytes::<Command>(&deep).is_err());
        // The depth is back to zero after a refusal: a good command still decodes.
        let good = postcard::to_stdvec(&act(Command::CreateShard { name: "y".into() })).unwrap();
        assert!(postcard::from_bytes::<Command>(&good).is_ok());
    }
}
