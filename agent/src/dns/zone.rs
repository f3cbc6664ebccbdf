//! The `corral.` zone: what a name under it means, and the records that answer it, from
//! the local replica's state and the gossip view. Free of I/O: the server
//! ([`super::server`]) reads the state and sends what this decides.
//!
//! ```text
//!  master.M3.shard.corral.   A/AAAA, SRV   the master of shard M3
//!  M3.shard.corral.          SRV, A/AAAA   every replica, the master first (SRV priority 0,
//!                                          the slaves 1)
//!  NAME.service.corral.      SRV, A/AAAA   every instance of service NAME
//!  TAG.NAME.service.corral.  SRV, A/AAAA   the instances carrying TAG
//!  HOST.node.corral.         A/AAAA        agent HOST's address, unless gossip has it down
//!  HEX.addr.corral.          A/AAAA        the address HEX spells: the target of an SRV
//!                                          record whose address is an IP address
//! ```
//!
//! Names compare as DNS does, ignoring ASCII case, preferring the exact spelling when two
//! shards or services differ only in case. A name under `corral.` that names nothing is
//! NXDOMAIN; one that exists without records of the type asked is an empty answer; both
//! carry the zone's SOA, whose minimum (the negative-caching time) is the TTL. Other names
//! are refused: the agent is not a recursive resolver.

use std::net::IpAddr;

use corral_state::StateMachine;
use hickory_server::proto::rr::rdata::{A, AAAA, SOA, SRV};
use hickory_server::proto::rr::{Name, RData, Record, RecordType};

/// The zone every agent answers.
pub const ZONE: &str = "corral.";

/// What a name under [`ZONE`] asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Question {
    Master(String),
    Shard(String),
    Service {
        name: String,
        tag: Option<String>,
    },
    Node(String),
    Addr(IpAddr),
    /// The zone's apex.
    Apex,
}

/// A name's labels (in their original case), without the zone; None for a name outside
/// it.
fn labels_in_zone(name: &Name) -> Option<Vec<String>> {
    let labels: Vec<String> = name
        .iter()
        .map(|label| String::from_utf8_lossy(label).into_owned())
        .collect();
    let (last, rest) = labels.split_last()?;
    last.eq_ignore_ascii_case("corral").then(|| rest.to_vec())
}

/// What `name` asks for: `Err(true)` for a name under the zone that means nothing,
/// `Err(false)` for a name outside it.
pub fn question(name: &Name) -> Result<Question, bool> {
    let labels = labels_in_zone(name).ok_or(false)?;
    let is = |label: &String, word: &str| label.eq_ignore_ascii_case(word);
    Ok(match labels.as_slice() {
        [] => Question::Apex,
        [master, shard, kind] if is(master, "master") && is(kind, "shard") => {
            Question::Master(shard.clone())
        }
        [shard, kind] if is(kind, "shard") => Question::Shard(shard.clone()),
        [service, kind] if is(kind, "service") => Question::Service {
            name: service.clone(),
            tag: None,
        },
        [tag, service, kind] if is(kind, "service") => Question::Service {
            name: service.clone(),
            tag: Some(tag.clone()),
        },
        [host, kind] if is(kind, "node") => Question::Node(host.clone()),
        [hex, kind] if is(kind, "addr") => Question::Addr(address_of_label(hex).ok_or(true)?),
        _ => return Err(true),
    })
}

/// A live member of the gossip pool, as the node lookup needs it.
pub trait Nodes {
    /// The address of agent `name` (ignoring ASCII case), unless gossip has it down.
    fn address(&self, name: &str) -> Option<IpAddr>;
}

/// The answer to one question.
#[derive(Debug, Default, PartialEq)]
pub struct Answer {
    /// False: NXDOMAIN.
    pub exists: bool,
    pub answers: Vec<Record>,
    pub additionals: Vec<Record>,
}

/// One place a name points to: a host (an IP address or a name) and a port.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Target {
    host: String,
    port: u16,
}

impl Target {
    /// `host:port`, `[v6]:port`, or a bare host (port 0).
    fn parse(address: &str) -> Target {
        if let Ok(socket) = address.parse::<std::net::SocketAddr>() {
            return Target {
                host: socket.ip().to_string(),
                port: socket.port(),
            };
        }
        match address.rsplit_once(':') {
            Some((host, port)) if !host.contains(':') => match port.parse() {
                Ok(port) => Target {
                    host: host.to_string(),
                    port,
                },
                Err(_) => Target {
                    host: address.to_string(),
                    port: 0,
                },
            },
            _ => Target {
                host: address.trim_matches(['[', ']']).to_string(),
                port: 0,
            },
        }
    }

    fn ip(&self) -> Option<IpAddr> {
        self.host.parse().ok()
    }
}

/// What answers `question` for `record_type` (A, AAAA, SRV or ANY; others get no records
/// for a name that exists), with `ttl` on every record.
pub fn answer(
    question: &Question,
    query_name: &Name,
    record_type: RecordType,
    state: &StateMachine,
    nodes: &impl Nodes,
    ttl: u32,
) -> Answer {
    let targets: Vec<(Target, u16)> = match question {
        Question::Apex => return exists(Vec::new(), Vec::new()),
        Question::Master(shard) => match find_shard(state, shard).and_then(|s| s.master.clone()) {
            Some(master) => vec![(Target::parse(&master), 0)],
            None => return Answer::default(),
        },
        Question::Shard(shard) => match find_shard(state, shard) {
            Some(shard) => {
                let master = shard.master.iter().map(|m| (Target::parse(m), 0));
                let slaves = shard.slaves().map(|r| (Target::parse(&r.address), 1));
                master.chain(slaves).collect()
            }
            None => return Answer::default(),
        },
        Question::Service { name, tag } => {
            let Some(service) = find_service(state, name) else {
                return Answer::default();
            };
            let instances: Vec<_> = state
                .service(&service)
                .filter(|i| {
                    tag.as_ref()
                        .is_none_or(|tag| i.tags.iter().any(|t| t.eq_ignore_ascii_case(tag)))
                })
                .map(|i| {
                    (
                        Target {
                            host: i.address.clone(),
                            port: i.port,
                        },
                        0,
                    )
                })
                .collect();
            if instances.is_empty() {
                return Answer::default();
            }
            instances
        }
        Question::Node(host) => match nodes.address(host) {
            Some(ip) => vec![(
                Target {
                    host: ip.to_string(),
                    port: 0,
                },
                0,
            )],
            None => return Answer::default(),
        },
        Question::Addr(ip) => vec![(
            Target {
                host: ip.to_string(),
                port: 0,
            },
            0,
        )],
    };
    let wants = |t: RecordType| record_type == t || record_type == RecordType::ANY;
    let mut answers = Vec::new();
    let mut additionals = Vec::new();
    let srv_allowed = matches!(
        question,
        Question::Master(_) | Question::Shard(_) | Question::Service { .. }
    );
    for (target, priority) in &targets {
        if let Some(ip) = target.ip()
            && let Some(record) = address_record(query_name, ip, ttl, &wants)
        {
            answers.push(record);
        }
        if srv_allowed && wants(RecordType::SRV) {
            let (target_name, glue) = match target.ip() {
                Some(ip) => (addr_name(ip), true),
                None => match Name::from_ascii(format!("{}.", target.host)) {
                    Ok(name) => (name, false),
                    Err(_) => continue,
                },
            };
            answers.push(Record::from_rdata(
                query_name.clone(),
                ttl,
                RData::SRV(SRV::new(*priority, 1, target.port, target_name.clone())),
            ));
            if glue && let Some(ip) = target.ip() {
                let any = |_: RecordType| true;
                additionals.extend(address_record(&target_name, ip, ttl, &any));
            }
        }
    }
    exists(answers, additionals)
}

fn exists(answers: Vec<Record>, additionals: Vec<Record>) -> Answer {
    Answer {
        exists: true,
        answers,
        additionals,
    }
}

/// An A or AAAA record for `ip` under `name`, if that type is wanted.
fn address_record(
    name: &Name,
    ip: IpAddr,
    ttl: u32,
    wants: &impl Fn(RecordType) -> bool,
) -> Option<Record> {
    let rdata = match ip {
        IpAddr::V4(v4) if wants(RecordType::A) => RData::A(A(v4)),
        IpAddr::V6(v6) if wants(RecordType::AAAA) => RData::AAAA(AAAA(v6)),
        _ => return None,
    };
    Some(Record::from_rdata(name.clone(), ttl, rdata))
}

/// The zone's SOA, whose minimum is the negative-caching time.
pub fn soa(ttl: u32) -> Record {
    let zone = Name::from_ascii(ZONE).expect("the zone is a valid name");
    let host = Name::from_ascii("agent.corral.").expect("a valid name");
    let mail = Name::from_ascii("operators.corral.").expect("a valid name");
    Record::from_rdata(
        zone,
        ttl,
        RData::SOA(SOA::new(host, mail, 1, 3600, 600, 86_400, ttl)),
    )
}

/// `HEX.addr.corral.`: the name an SRV record points at for an IP address.
fn addr_name(ip: IpAddr) -> Name {
    let hex: String = match ip {
        IpAddr::V4(v4) => v4.octets().iter().map(|b| format!("{b:02x}")).collect(),
        IpAddr::V6(v6) => v6.octets().iter().map(|b| format!("{b:02x}")).collect(),
    };
    Name::from_ascii(format!("{hex}.addr.{ZONE}")).expect("hex digits make a valid label")
}

fn address_of_label(hex: &str) -> Option<IpAddr> {
    let bytes: Option<Vec<u8>> = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
        .collect();
    match bytes?.as_slice() {
        [a, b, c, d] if hex.len() == 8 => Some(IpAddr::from([*a, *b, *c, *d])),
        octets if hex.len() == 32 => {
            let octets: [u8; 16] = octets.try_into().ok()?;
            Some(IpAddr::from(octets))
        }
        _ => None,
    }
}

fn find_shard<'a>(state: &'a StateMachine, name: &str) -> Option<&'a corral_proto::Shard> {
    state.shard(name).or_else(|| {
        let mut matching = state.shards().filter(|s| s.name.eq_ignore_ascii_case(name));
        let first = matching.next()?;
        matching.next().is_none().then_some(first)
    })
}

fn find_service(state: &StateMachine, name: &str) -> Option<String> {
    if state.service(name).next().is_some() {
        return Some(name.to_string());
    }
    let mut matching = state
        .service_names()
        .filter(|n| n.eq_ignore_ascii_case(name));
    let first = matching.next()?;
    matching.next().is_none().then(|| first.clone())
}

#[cfg(test)]
#[path = "zone_tests.rs"]
mod tests;
