//! The cluster's certificate authority: `corral ca init` and `corral ca issue`.
//!
//! ```text
//!  DIR/ca.pem          the CA certificate: every node trusts exactly this
//!  DIR/ca-key.pem      the CA key (0600): keep it off the hosts
//!  DIR/NAME.pem        a node certificate, valid for the name NAME
//!  DIR/NAME-key.pem    its key (0600)
//!  DIR/crl.pem         the certificates revoked (`corral ca revoke`), signed by the CA;
//!                      copy it beside ca.pem on every host and send SIGHUP
//! ```

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyIdMethod, KeyPair, KeyUsagePurpose, RevocationReason,
    RevokedCertParams, SerialNumber,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer};
use time::{Duration, OffsetDateTime};

use super::tls::TlsError;

/// The extra name every core member's certificate carries.
pub const CORE_NAME: &str = "core";
/// The name of the operators' certificate that may change the core's membership.
pub const ADMIN_NAME: &str = "admin";

pub fn crl_path(dir: &Path) -> PathBuf {
    dir.join("crl.pem")
}

pub fn ca_cert_path(dir: &Path) -> PathBuf {
    dir.join("ca.pem")
}

pub fn ca_key_path(dir: &Path) -> PathBuf {
    dir.join("ca-key.pem")
}

pub fn cert_path(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("{name}.pem"))
}

pub fn key_path(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("{name}-key.pem"))
}

/// The name of core member `id`'s certificate.
pub fn core_member_name(id: u64) -> String {
    format!("core-{id}")
}

fn rcgen_err(e: rcgen::Error) -> TlsError {
    TlsError::Generate(e.to_string())
}

fn write_file(path: &Path, contents: &str, secret: bool) -> Result<(), TlsError> {
    let io = |e| TlsError::Io {
        path: path.to_path_buf(),
        source: e,
    };
    let mut options = fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(if secret { 0o600 } else { 0o644 });
    }
    let mut file = options.open(path).map_err(io)?;
    file.write_all(contents.as_bytes()).map_err(io)?;
    file.sync_all().map_err(io)
}

/// Replaces `path` with `contents` at once: written to an exclusively created temporary
/// name beside it (never through a link someone left there), then renamed over it.
fn replace_file(path: &Path, contents: &str) -> Result<(), TlsError> {
    let mut temporary = path.as_os_str().to_owned();
    temporary.push(format!(".{}.tmp", std::process::id()));
    let temporary = PathBuf::from(temporary);
    write_file(&temporary, contents, false)?;
    fs::rename(&temporary, path).map_err(|e| {
        let _ = fs::remove_file(&temporary);
        TlsError::Io {
            path: path.to_path_buf(),
            source: e,
        }
    })
}

/// Checks a node name: it becomes a DNS name in a certificate.
pub fn validate_node_name(name: &str) -> Result<(), TlsError> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
        && !name.starts_with(['-', '.'])
        && !name.ends_with(['-', '.']);
    if !ok {
        return Err(TlsError::BadName(format!(
            "{name:?}: a node name is 1 to 63 of a-z, 0-9, '-' and '.', not starting or ending with '-' or '.'"
        )));
    }
    if name == CORE_NAME {
        return Err(TlsError::BadName(format!(
            "{name:?} is reserved: core members are named core-<id> and carry it themselves"
        )));
    }
    Ok(())
}

/// Creates a new CA in `dir` (which may exist but must not hold a CA already), valid for
/// `days`, and issues the `admin` certificate.
pub fn init(dir: &Path, days: u32) -> Result<(), TlsError> {
    fs::create_dir_all(dir).map_err(|e| TlsError::Io {
        path: dir.to_path_buf(),
        source: e,
    })?;
    if ca_cert_path(dir).exists() || ca_key_path(dir).exists() {
        return Err(TlsError::Exists(ca_cert_path(dir)));
    }
    let mut params = CertificateParams::new(Vec::<String>::new()).map_err(rcgen_err)?;
    params
        .distinguished_name
        .push(DnType::CommonName, "Corral cluster CA");
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let now = OffsetDateTime::now_utc();
    params.not_before = now - Duration::days(1);
    params.not_after = now + Duration::days(i64::from(days));
    let key = KeyPair::generate().map_err(rcgen_err)?;
    let cert = params.self_signed(&key).map_err(rcgen_err)?;
    write_file(&ca_key_path(dir), &key.serialize_pem(), true)?;
    write_file(&ca_cert_path(dir), &cert.pem(), false)?;
    issue(dir, ADMIN_NAME, days)
}

/// Issues a certificate for `name`, signed by the CA in `dir`, valid for `days`.
pub fn issue(dir: &Path, name: &str, days: u32) -> Result<(), TlsError> {
    validate_node_name(name)?;
    if cert_path(dir, name).exists() {
        return Err(TlsError::Exists(cert_path(dir, name)));
    }
    let read = |path: PathBuf| {
        fs::read_to_string(&path).map_err(|e| TlsError::Io {
            path: path.clone(),
            source: e,
        })
    };
    let ca_key = KeyPair::from_pem(&read(ca_key_path(dir))?).map_err(rcgen_err)?;
    let issuer = Issuer::from_ca_cert_pem(&read(ca_cert_path(dir))?, ca_key).map_err(rcgen_err)?;

    let mut names = vec![name.to_string()];
    if is_core_member_name(name) {
        names.push(CORE_NAME.to_string());
    }
    let mut params = CertificateParams::new(names).map_err(rcgen_err)?;
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let now = OffsetDateTime::now_utc();
    params.not_before = now - Duration::days(1);
    params.not_after = now + Duration::days(i64::from(days));
    let key = KeyPair::generate().map_err(rcgen_err)?;
    let cert = params.signed_by(&key, &issuer).map_err(rcgen_err)?;
    write_file(&key_path(dir, name), &key.serialize_pem(), true)?;
    write_file(&cert_path(dir, name), &cert.pem(), false)
}

/// Revokes the certificate of `name` (`DIR/NAME.pem`): adds its serial number to the
/// CA's revocation list `DIR/crl.pem`, signed anew with the CA key. Revoking twice
/// changes nothing. Answers the serial number, in hex.
pub fn revoke(dir: &Path, name: &str) -> Result<String, TlsError> {
    let read = |path: PathBuf| {
        fs::read_to_string(&path).map_err(|e| TlsError::Io {
            path: path.clone(),
            source: e,
        })
    };
    let cert_file = cert_path(dir, name);
    let cert = CertificateDer::from_pem_file(&cert_file).map_err(|e| TlsError::BadPem {
        path: cert_file.clone(),
        what: "certificate".into(),
        reason: e.to_string(),
    })?;
    let serial = serial_of(&cert).ok_or_else(|| TlsError::BadPem {
        path: cert_file,
        what: "certificate".into(),
        reason: "no serial number could be read".into(),
    })?;
    let mut revoked = revoked_serials(dir)?;
    let now = OffsetDateTime::now_utc();
    if !revoked.iter().any(|(s, _)| *s == serial) {
        revoked.push((serial.clone(), now));
    }
    let ca_key = KeyPair::from_pem(&read(ca_key_path(dir))?).map_err(rcgen_err)?;
    let issuer = Issuer::from_ca_cert_pem(&read(ca_cert_path(dir))?, ca_key).map_err(rcgen_err)?;
    let params = CertificateRevocationListParams {
        this_update: now - Duration::minutes(1),
        next_update: now + Duration::days(3650),
        crl_number: SerialNumber::from(now.unix_timestamp_nanos().to_be_bytes().to_vec()),
        issuing_distribution_point: None,
        revoked_certs: revoked
            .iter()
            .map(|(serial, at)| RevokedCertParams {
                serial_number: SerialNumber::from(serial.clone()),
                revocation_time: *at,
                reason_code: Some(RevocationReason::KeyCompromise),
                invalidity_date: None,
            })
            .collect(),
        key_identifier_method: KeyIdMethod::Sha256,
    };
    let crl = params.signed_by(&issuer).map_err(rcgen_err)?;
    replace_file(&crl_path(dir), &crl.pem().map_err(rcgen_err)?)?;
    Ok(serial.iter().map(|b| format!("{b:02x}")).collect())
}

/// The serial number of a certificate, as its bytes.
pub fn serial_of(cert: &CertificateDer<'_>) -> Option<Vec<u8>> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    Some(parsed.raw_serial().to_vec())
}

/// The serial numbers in `DIR/crl.pem` and when each was revoked (empty without one).
fn revoked_serials(dir: &Path) -> Result<Vec<(Vec<u8>, OffsetDateTime)>, TlsError> {
    let path = crl_path(dir);
    if !path.exists() {
        return Ok(Vec::new());
    }
    let bad = |reason: String| TlsError::BadPem {
        path: path.clone(),
        what: "revocation list".into(),
        reason,
    };
    let der = CertificateRevocationListDer::from_pem_file(&path).map_err(|e| bad(e.to_string()))?;
    let (_, crl) = x509_parser::parse_x509_crl(der.as_ref()).map_err(|e| bad(e.to_string()))?;
    Ok(crl
        .iter_revoked_certificates()
        .map(|entry| {
            let at = OffsetDateTime::from_unix_timestamp(entry.revocation_date.timestamp())
                .unwrap_or(OffsetDateTime::UNIX_EPOCH);
            (entry.raw_serial().to_vec(), at)
        })
        .collect())
}

/// True for `core-<digits>`.
pub fn is_core_member_name(name: &str) -> bool {
    name.strip_prefix("core-")
        .is_some_and(|id| !id.is_empty() && id.bytes().all(|b| b.is_ascii_digit()))
}
