//! DNS on every agent (`--dns 127.0.0.1:8600`): masters, replicas, service instances and
//! agents under `corral.`, answered from the local replica, so any program finds them
//! with no Corral library and no extra hop.
//!
//! ```text
//!  zone.rs    names under corral. and the records that answer them (no I/O)
//!  server.rs  the handler, reading the replica and the gossip view; hickory serves UDP
//!  tcp.rs     DNS over TCP, connections capped and timed out
//! ```

pub mod server;
pub mod tcp;
pub mod zone;

/// The TTL of every answer unless `--dns-ttl` says otherwise: an answer is never cached,
/// so a failover is seen by the next lookup.
pub const DEFAULT_TTL: u32 = 0;

/// Refuses a DNS address beyond loopback unless `public`: DNS carries no identity, so no
/// access rule applies to what it answers.
pub fn check_address(address: std::net::SocketAddr, public: bool) -> Result<(), String> {
    if address.ip().is_loopback() || public {
        return Ok(());
    }
    Err(format!(
        "DNS on {address} would answer anyone who reaches it, with no access rule applied: \
         bind a loopback address, or give --dns-public"
    ))
}

#[cfg(test)]
mod tests {
    #[test]
    fn dns_beyond_loopback_needs_to_be_asked_for() {
        let check = |address: &str, public| super::check_address(address.parse().unwrap(), public);
        assert!(check("127.0.0.1:8600", false).is_ok());
        assert!(check("[::1]:8600", false).is_ok());
        let refused = check("0.0.0.0:8600", false).unwrap_err();
        assert!(refused.contains("--dns-public"), "{refused}");
        assert!(check("10.0.0.7:53", false).is_err());
        assert!(check("10.0.0.7:53", true).is_ok());
    }
}
