//! Whose write it is: every command a member proposes names the certificate it came under
//! and the session it acts in ([`corral_proto::Actor`]), so that the state machine can
//! check it against what it touches, the same way on every member and every replica.
//!
//! ```text
//!  agent ── Act { actor: {certificate: "web-1", session: 42}, command } ──► member
//!     the member checks "web-1" against the TLS peer's certificate and proposes it as is
//!  tool  ── command ──► member wraps it: Act { actor: {certificate: <peer's name>,
//!                                                       session: <the one it names>}, .. }
//! ```
//!
//! A plain command is what agents and tools of earlier versions send: the session it
//! names, if any, is taken as the one it acts in, so they keep working while the
//! certificate binding still holds.

use corral_proto::{ADMIN_CERTIFICATE, Actor, Command, SessionOwner};
use rustls_pki_types::CertificateDer;

use corral_net::transport::tls::certificate_has_name;

/// The names on a peer's certificate, read once per connection.
#[derive(Clone, Debug, Default)]
pub(crate) struct PeerNames {
    certificate: Option<CertificateDer<'static>>,
    /// The DNS names of its subject alternative name extension, in order.
    names: Vec<String>,
    /// Its serial number, to look up in the revocation list.
    pub(crate) serial: Option<Vec<u8>>,
}

impl PeerNames {
    pub(crate) fn of(certificate: Option<CertificateDer<'static>>) -> Self {
        let names = certificate
            .as_ref()
            .map(|der| dns_names(der))
            .unwrap_or_default();
        let serial = certificate
            .as_ref()
            .and_then(corral_net::transport::certificate_authority::serial_of);
        PeerNames {
            certificate,
            names,
            serial,
        }
    }

    /// True when the certificate is valid for `name`: one of its names as read at
    /// connection time (every write asks, so this is the quick way), or else as the TLS
    /// library checks a name (wildcards included).
    pub(crate) fn has(&self, name: &str) -> bool {
        self.names.iter().any(|own| own.eq_ignore_ascii_case(name))
            || self
                .certificate
                .as_ref()
                .is_some_and(|der| certificate_has_name(der, name))
    }

    /// The name a plain command is attributed to: the admin name where the certificate
    /// carries it, else its first name.
    fn principal(&self) -> Option<&str> {
        if self.has(ADMIN_CERTIFICATE) {
            return Some(ADMIN_CERTIFICATE);
        }
        self.names
            .first()
            .map(String::as_str)
            .filter(|n| self.has(n))
    }
}

fn dns_names(der: &CertificateDer<'_>) -> Vec<String> {
    let Ok((_, certificate)) = x509_parser::parse_x509_certificate(der.as_ref()) else {
        return Vec::new();
    };
    let Ok(Some(names)) = certificate.subject_alternative_name() else {
        return Vec::new();
    };
    names
        .value
        .general_names
        .iter()
        .filter_map(|name| match name {
            x509_parser::extensions::GeneralName::DNSName(dns) => Some(dns.to_string()),
            _ => None,
        })
        .collect()
}

/// The command to propose for `command`, received under `peer`'s certificate, or why it
/// is refused (nothing was proposed).
pub(crate) fn attribute(peer: &PeerNames, command: Command) -> Result<Command, String> {
    if matches!(command, Command::Promoting { .. }) {
        return Err("replication positions are attached by the core's leader alone".into());
    }
    if let Command::Act { actor, .. } = &command
        && !peer.has(&actor.certificate)
    {
        return Err(format!(
            "the request names certificate {:?} as its actor, not the one it came under",
            actor.certificate
        ));
    }
    // Refused here already (the state machine would too): no node may open or renew
    // another's node session.
    if let Command::OpenSession {
        owner: SessionOwner::Node { name, .. },
    }
    | Command::RenewNode { name, .. } = command.unwrapped()
        && !peer.has(name)
        && !peer.has(ADMIN_CERTIFICATE)
    {
        return Err(format!(
            "the node session of {name:?} is opened and renewed only by {name:?} itself"
        ));
    }
    if matches!(command, Command::Act { .. }) {
        return Ok(command);
    }
    let Some(certificate) = peer.principal() else {
        return Err("a write needs a certificate that names its sender".into());
    };
    let actor = Actor {
        certificate: certificate.to_string(),
        session: command.session(),
    };
    Ok(command.acted_by(actor))
}

/// Logs a write under the admin certificate that acts on what sessions own: an operator
/// overriding the owners leaves a trace in every member's log.
pub(crate) fn log_override(command: &Command) {
    let Command::Act { actor, command } = command else {
        return;
    };
    if !actor.is_admin() {
        return;
    }
    let owned = matches!(
        **command,
        Command::CloseSession { .. }
            | Command::DeregisterReplica { .. }
            | Command::SetReplicaPriority { .. }
            | Command::Handover { .. }
            | Command::ReleaseLock { .. }
            | Command::DeregisterService { .. }
    );
    if owned {
        tracing::info!(
            ?command,
            "a write under the admin certificate, which may act for any owner"
        );
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use rustls_pki_types::pem::PemObject as _;

    use super::*;
    use corral_net::transport::certificate_authority;

    /// The names of a certificate `name` issued by the CA in `dir` (now, unless it was).
    pub(crate) fn peer(dir: &std::path::Path, name: &str) -> PeerNames {
        if !certificate_authority::cert_path(dir, name).exists() {
            certificate_authority::issue(dir, name, 30).unwrap();
        }
        let cert = rustls_pki_types::CertificateDer::from_pem_file(
            certificate_authority::cert_path(dir, name),
        )
        .unwrap();
        PeerNames::of(Some(cert))
    }

    /// A plain command is attributed to the peer's name and the session it names; an
    /// actor-wrapped one must name the peer's own certificate; nobody opens another
    /// node's session.
    #[test]
    fn writes_are_attributed_to_the_certificate_they_came_under() {
        let dir = std::env::temp_dir().join(format!("corral-actor-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        certificate_authority::init(&dir, 30).unwrap();
        let web = peer(&dir, "web-1");
        assert!(web.has("web-1") && !web.has("web-2"));
        let release = Command::ReleaseLock {
            name: "l".into(),
            session: 7,
        };
        match attribute(&web, release.clone()).unwrap() {
            Command::Act { actor, command } => {
                assert_eq!(actor.certificate, "web-1");
                assert_eq!(actor.session, Some(7));
                assert_eq!(*command, release);
            }
            other => panic!("{other:?}"),
        }
        let forged = release.clone().acted_by(Actor {
            certificate: "web-2".into(),
            session: Some(7),
        });
        assert!(attribute(&web, forged).is_err());
        let theirs = Command::OpenSession {
            owner: SessionOwner::Node {
                name: "web-2".into(),
                incarnation: 1,
            },
        };
        assert!(attribute(&web, theirs).is_err());
        // Positions are the leader's to attach, whoever sends them.
        let promoting = Command::Promoting {
            positions: vec![],
            command: Box::new(release.clone()),
        };
        assert!(attribute(&web, promoting).is_err());
        let admin = PeerNames::of(Some(
            rustls_pki_types::CertificateDer::from_pem_file(certificate_authority::cert_path(
                &dir,
                ADMIN_CERTIFICATE,
            ))
            .unwrap(),
        ));
        match attribute(&admin, release).unwrap() {
            Command::Act { actor, .. } => assert!(actor.is_admin()),
            other => panic!("{other:?}"),
        }
        assert!(
            attribute(
                &PeerNames::default(),
                Command::CreateShard { name: "x".into() }
            )
            .is_err()
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
