//! Debian's `dig` (dnsutils), installed when missing, asking an agent's DNS server.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// `dig`: `$DIG` if set, else on the PATH, installed from Debian's dnsutils when missing.
pub fn dig_binary() -> &'static Path {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY.get_or_init(|| crate::etcd_clients::debian_binary("DIG", "dig", "dnsutils"))
}

/// One answer of `dig`: its whole output, and the lines of its answer section.
#[derive(Debug)]
pub struct DigAnswer {
    pub output: String,
}

impl DigAnswer {
    /// The response code dig printed (`NOERROR`, `NXDOMAIN`, `REFUSED`, ...).
    pub fn status(&self) -> &str {
        self.output
            .split("status: ")
            .nth(1)
            .and_then(|rest| rest.split(',').next())
            .unwrap_or("(none)")
    }

    /// The records of the answer section: (name, TTL, type, data).
    pub fn answers(&self) -> Vec<(String, u32, String, String)> {
        self.section("ANSWER")
    }

    pub fn additionals(&self) -> Vec<(String, u32, String, String)> {
        self.section("ADDITIONAL")
    }

    fn section(&self, name: &str) -> Vec<(String, u32, String, String)> {
        let header = format!(";; {name} SECTION:");
        let Some(start) = self.output.find(&header) else {
            return Vec::new();
        };
        self.output[start + header.len()..]
            .lines()
            .skip(1)
            .take_while(|line| !line.trim().is_empty())
            .filter(|line| !line.starts_with(';'))
            .filter_map(|line| {
                let fields: Vec<&str> = line.split_whitespace().collect();
                let [name, ttl, _class, kind, data @ ..] = fields.as_slice() else {
                    return None;
                };
                Some((
                    name.to_string(),
                    ttl.parse().ok()?,
                    kind.to_string(),
                    data.join(" "),
                ))
            })
            .collect()
    }

    /// The data of the answers, in order.
    pub fn data(&self) -> Vec<String> {
        self.answers().into_iter().map(|(_, _, _, d)| d).collect()
    }
}

/// `dig @server -p port NAME TYPE` (and `extra` options), one try of at most 2 s.
pub fn dig(server: SocketAddr, name: &str, record_type: &str, extra: &[&str]) -> DigAnswer {
    let output = Command::new(dig_binary())
        .arg(format!("@{}", server.ip()))
        .args(["-p", &server.port().to_string()])
        .args(["+time=2", "+tries=1", "+norecurse"])
        .args(extra)
        .args([name, record_type])
        .output()
        .expect("dig runs");
    DigAnswer {
        output: format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ),
    }
}
