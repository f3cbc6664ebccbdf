//! Who may ask what of a core member, decided from the names on the peer's certificate
//! alone (read once per connection), free of I/O:
//!
//! | request | certificate |
//! |---|---|
//! | Raft's messages (`corral-raft/1`) | `core-<id>` of the member the message comes from |
//! | `Access`, `AddVoter`, `RemoveVoter` | `admin` |
//! | `StateDigest` (it serializes the whole state) | `admin` or a core member's |
//! | `Write`, `WriteBatch` | any; each command is then attributed to the certificate ([`crate::server::actor`]); none may carry replication positions |
//! | `ReportPositions` | the node's own (checked where it is answered); only positions of replicas its sessions registered are kept |
//! | the others | any certificate of the cluster's CA |
//!
//! A revoked certificate is refused everything, before these rules.

use corral_net::rpc::{CoreRequest, NodeId};
use corral_net::transport::certificate_authority::{ADMIN_NAME, core_member_name};

use crate::server::actor::PeerNames;

/// Whether `peer` may send `request`; `members` lists the ids of the core's members (asked
/// only where a rule needs it). The refusal says what it takes.
pub(crate) fn may_ask(
    request: &CoreRequest,
    peer: &PeerNames,
    members: impl FnOnce() -> Vec<NodeId>,
) -> Result<(), &'static str> {
    match request {
        CoreRequest::Access if !peer.has(ADMIN_NAME) => {
            Err("the access rules are read under the admin certificate")
        }
        CoreRequest::AddVoter { .. } | CoreRequest::RemoveVoter { .. } if !peer.has(ADMIN_NAME) => {
            Err("changing the membership needs the admin certificate")
        }
        CoreRequest::StateDigest
            if !peer.has(ADMIN_NAME)
                && !members()
                    .into_iter()
                    .any(|id| peer.has(&core_member_name(id))) =>
        {
            Err("a state digest needs a member's or the admin certificate")
        }
        _ => Ok(()),
    }
}

/// Whether `peer` may send a Raft message that says it comes from member `sender`.
pub(crate) fn may_send_raft(sender: Option<NodeId>, peer: &PeerNames) -> Result<(), &'static str> {
    match sender {
        Some(id) if peer.has(&core_member_name(id)) => Ok(()),
        _ => Err("Raft messages are accepted only from the core member they claim to come from"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::actor::tests::peer;
    use corral_net::transport::certificate_authority;

    /// Each rule of the table, for the admin, a core member, an agent and a peer without a
    /// certificate.
    #[test]
    fn every_request_is_checked_against_the_certificate_it_came_under() {
        let dir = tempfile::tempdir().unwrap();
        certificate_authority::init(dir.path(), 30).unwrap();
        let admin = peer(dir.path(), ADMIN_NAME);
        let member = peer(dir.path(), &core_member_name(2));
        let agent = peer(dir.path(), "web-1");
        let nobody = PeerNames::default();
        let members = || vec![1, 2, 3];
        let admin_only = [
            CoreRequest::Access,
            CoreRequest::AddVoter {
                id: 4,
                address: "127.0.0.1:1".into(),
            },
            CoreRequest::RemoveVoter { id: 3 },
        ];
        for request in &admin_only {
            assert_eq!(may_ask(request, &admin, members), Ok(()), "{request:?}");
            for other in [&member, &agent, &nobody] {
                assert!(may_ask(request, other, members).is_err(), "{request:?}");
            }
        }
        let digest = CoreRequest::StateDigest;
        assert_eq!(may_ask(&digest, &admin, members), Ok(()));
        assert_eq!(may_ask(&digest, &member, members), Ok(()));
        assert!(may_ask(&digest, &member, || vec![1, 3]).is_err());
        assert!(may_ask(&digest, &agent, members).is_err());
        for open in [
            CoreRequest::Status,
            CoreRequest::ReadIndex,
            CoreRequest::Probe { fresh: true },
            CoreRequest::Write(corral_proto::Command::Delete {
                key: "k".into(),
                prefix: false,
            }),
        ] {
            assert_eq!(may_ask(&open, &agent, members), Ok(()), "{open:?}");
        }

        assert_eq!(may_send_raft(Some(2), &member), Ok(()));
        assert!(may_send_raft(Some(1), &member).is_err());
        assert!(may_send_raft(None, &member).is_err());
        assert!(may_send_raft(Some(2), &admin).is_err());
        assert!(may_send_raft(Some(2), &agent).is_err());
    }
}
