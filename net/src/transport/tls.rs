//! A node's TLS identity and the rustls configurations built from it.
//!
//! Both sides authenticate: a server accepts only clients whose certificate chains to the
//! cluster CA, and a client accepts only a server whose certificate chains to it and
//! carries the expected name. A certificate from any other CA fails the handshake.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};

use super::certificate_authority::{ca_cert_path, cert_path, crl_path, key_path};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("missing {path}: {hint}")]
    Missing { path: PathBuf, hint: String },
    #[error("{path}: not a valid PEM {what}: {reason}")]
    BadPem {
        path: PathBuf,
        what: String,
        reason: String,
    },
    #[error("invalid TLS configuration: {0}")]
    Config(String),
    #[error("cannot generate a certificate: {0}")]
    Generate(String),
    #[error("{} already exists; refusing to overwrite it", .0.display())]
    Exists(PathBuf),
    #[error("invalid node name {0}")]
    BadName(String),
}

/// The certificates and key a node presents, and the CA it trusts.
#[derive(Clone, Debug)]
pub struct TlsIdentity {
    pub name: String,
    chain: Vec<CertificateDer<'static>>,
    key: Arc<PrivateKeyDer<'static>>,
    roots: Arc<RootCertStore>,
    /// The CA's revocation list (`DIR/crl.pem`), if there is one: a handshake with a
    /// revoked certificate fails.
    crls: Vec<CertificateRevocationListDer<'static>>,
    /// The serial numbers it revokes, to refuse requests on connections made before.
    pub revoked: Arc<HashSet<Vec<u8>>>,
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

impl TlsIdentity {
    /// Loads `DIR/ca.pem`, `DIR/NAME.pem` and `DIR/NAME-key.pem`.
    pub fn load(dir: &Path, name: &str) -> Result<Self, TlsError> {
        let hint = format!(
            "issue it with `corral ca issue --dir {} --name {name}`",
            dir.display()
        );
        let ca = ca_cert_path(dir);
        if !ca.exists() {
            return Err(TlsError::Missing {
                path: ca,
                hint: format!(
                    "create the CA with `corral ca init --dir {}`",
                    dir.display()
                ),
            });
        }
        let bad = |path: &Path, what: &str, e: &dyn std::fmt::Display| TlsError::BadPem {
            path: path.to_path_buf(),
            what: what.into(),
            reason: e.to_string(),
        };
        let mut roots = RootCertStore::empty();
        for cert in CertificateDer::pem_file_iter(&ca).map_err(|e| bad(&ca, "certificate", &e))? {
            let cert = cert.map_err(|e| bad(&ca, "certificate", &e))?;
            roots
                .add(cert)
                .map_err(|e| bad(&ca, "CA certificate", &e))?;
        }
        if roots.is_empty() {
            return Err(bad(&ca, "certificate", &"no certificate in the file"));
        }
        let cert_file = cert_path(dir, name);
        if !cert_file.exists() {
            return Err(TlsError::Missing {
                path: cert_file,
                hint,
            });
        }
        let chain = CertificateDer::pem_file_iter(&cert_file)
            .map_err(|e| bad(&cert_file, "certificate", &e))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| bad(&cert_file, "certificate", &e))?;
        if chain.is_empty() {
            return Err(bad(
                &cert_file,
                "certificate",
                &"no certificate in the file",
            ));
        }
        let key_file = key_path(dir, name);
        if !key_file.exists() {
            return Err(TlsError::Missing {
                path: key_file,
                hint,
            });
        }
        let key = PrivateKeyDer::from_pem_file(&key_file)
            .map_err(|e| bad(&key_file, "private key", &e))?;
        let crl_file = crl_path(dir);
        let (crls, revoked) = if crl_file.exists() {
            let crls = CertificateRevocationListDer::pem_file_iter(&crl_file)
                .map_err(|e| bad(&crl_file, "revocation list", &e))?
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| bad(&crl_file, "revocation list", &e))?;
            let mut revoked = HashSet::new();
            for crl in &crls {
                let (_, parsed) = x509_parser::parse_x509_crl(crl.as_ref())
                    .map_err(|e| bad(&crl_file, "revocation list", &e))?;
                revoked.extend(
                    parsed
                        .iter_revoked_certificates()
                        .map(|entry| entry.raw_serial().to_vec()),
                );
            }
            (crls, revoked)
        } else {
            (Vec::new(), HashSet::new())
        };
        let identity = Self {
            name: name.to_string(),
            chain,
            key: Arc::new(key),
            roots: Arc::new(roots),
            crls,
            revoked: Arc::new(revoked),
        };
        if !certificate_has_name(&identity.chain[0], name) {
            return Err(TlsError::Config(format!(
                "{} is not a certificate for {name}",
                cert_path(dir, name).display()
            )));
        }
        Ok(identity)
    }

    /// Server side: require a client certificate from the cluster CA.
    pub fn server_config(&self, alpn: &[&[u8]]) -> Result<ServerConfig, TlsError> {
        let verifier = WebPkiClientVerifier::builder_with_provider(self.roots.clone(), provider())
            .with_crls(self.crls.clone())
            .only_check_end_entity_revocation()
            .build()
            .map_err(|e| TlsError::Config(e.to_string()))?;
        let mut config = ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| TlsError::Config(e.to_string()))?
            .with_client_cert_verifier(verifier)
            .with_single_cert(self.chain.clone(), self.key.clone_key())
            .map_err(|e| TlsError::Config(e.to_string()))?;
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Ok(config)
    }

    /// Client side: trust only the cluster CA, and present our certificate.
    pub fn client_config(&self, alpn: &[&[u8]]) -> Result<ClientConfig, TlsError> {
        let verifier = self.server_verifier()?;
        let mut config = ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| TlsError::Config(e.to_string()))?
            .with_webpki_verifier(verifier)
            .with_client_auth_cert(self.chain.clone(), self.key.clone_key())
            .map_err(|e| TlsError::Config(e.to_string()))?;
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Ok(config)
    }
}

impl TlsIdentity {
    /// True when the CA's revocation list names `cert`.
    pub fn is_revoked(&self, cert: &CertificateDer<'_>) -> bool {
        !self.revoked.is_empty()
            && super::certificate_authority::serial_of(cert)
                .is_some_and(|serial| self.revoked.contains(&serial))
    }

    /// Verifies a server's certificate against the CA, and the revocation list if any.
    fn server_verifier(&self) -> Result<Arc<rustls::client::WebPkiServerVerifier>, TlsError> {
        rustls::client::WebPkiServerVerifier::builder_with_provider(self.roots.clone(), provider())
            .with_crls(self.crls.clone())
            .only_check_end_entity_revocation()
            .build()
            .map_err(|e| TlsError::Config(e.to_string()))
    }

    /// Client side for dialing a peer whose name is not known yet (a gossip seed given
    /// as an address): the peer must still present a certificate from the cluster CA,
    /// under any name. Callers learn and check the name from the connection afterwards.
    pub fn client_config_any_member(&self, alpn: &[&[u8]]) -> Result<ClientConfig, TlsError> {
        let inner = self.server_verifier()?;
        let mut config = ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| TlsError::Config(e.to_string()))?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyMemberVerifier { inner }))
            .with_client_auth_cert(self.chain.clone(), self.key.clone_key())
            .map_err(|e| TlsError::Config(e.to_string()))?;
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Ok(config)
    }
}

/// Verifies the chain, signatures and validity period like the WebPKI verifier, and
/// accepts whatever name the certificate carries.
#[derive(Debug)]
struct AnyMemberVerifier {
    inner: Arc<rustls::client::WebPkiServerVerifier>,
}

impl rustls::client::danger::ServerCertVerifier for AnyMemberVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        use rustls::CertificateError;
        match self.inner.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        ) {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(rustls::client::danger::ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// True when `cert` is valid for the DNS name `name`. The chain itself is checked by the
/// TLS handshake; this answers only "does this certificate carry that name".
pub fn certificate_has_name(cert: &CertificateDer<'_>, name: &str) -> bool {
    let Ok(server_name) = ServerName::try_from(name) else {
        return false;
    };
    let Ok(end_entity) = webpki::EndEntityCert::try_from(cert) else {
        return false;
    };
    end_entity
        .verify_is_valid_for_subject_name(&server_name)
        .is_ok()
}

/// The certificate the peer of a QUIC connection presented, if any.
pub fn peer_certificate(connection: &quinn::Connection) -> Option<CertificateDer<'static>> {
    let identity = connection.peer_identity()?;
    let chain = identity.downcast::<Vec<CertificateDer<'static>>>().ok()?;
    chain.into_iter().next()
}

/// True when the peer of `connection` presented a certificate for `name`.
pub fn peer_has_name(connection: &quinn::Connection, name: &str) -> bool {
    peer_certificate(connection).is_some_and(|cert| certificate_has_name(&cert, name))
}
