//! The cluster's certificate authority: `corral ca init` and `corral ca issue`.
//!
//! ```text
//!  DIR/ca.pem          the CA certificate: every node trusts exactly this
//!  DIR/ca-key.pem      the CA key (0600): keep it off the hosts
//!  DIR/NAME.pem        a node certificate, valid for the name NAME
//!  DIR/NAME-key.pem    its key (0600)
//! ```

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use time::{Duration, OffsetDateTime};

use super::tls::TlsError;

/// The extra name every core member's certificate carries.
pub const CORE_NAME: &str = "core";
/// The name of the operators' certificate that may change the core's membership.
pub const ADMIN_NAME: &str = "admin";

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

/// True for `core-<digits>`.
pub fn is_core_member_name(name: &str) -> bool {
    name.strip_prefix("core-")
        .is_some_and(|id| !id.is_empty() && id.bytes().all(|b| b.is_ascii_digit()))
}
