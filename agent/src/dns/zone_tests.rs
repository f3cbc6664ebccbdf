use std::net::{IpAddr, Ipv4Addr};

use corral_proto::{Answer as CommandAnswer, Command, SessionOwner};
use hickory_server::proto::rr::RData;

use super::*;

struct NoNodes;

impl Nodes for NoNodes {
    fn address(&self, name: &str) -> Option<IpAddr> {
        name.eq_ignore_ascii_case("a1")
            .then_some(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)))
    }
}

fn apply(state: &mut StateMachine, command: Command) -> CommandAnswer {
    let (response, _) = state.apply(&command);
    response
        .outcome
        .unwrap_or_else(|e| panic!("{command:?}: {e}"))
}

/// Shard M3 with a master at 10.0.0.7:6379 and slaves 10.0.0.8:6379 and
/// db9.example:6379; service api with two instances, one tagged v2.
fn state() -> StateMachine {
    let mut state = StateMachine::new();
    let CommandAnswer::SessionOpened { session, .. } = apply(
        &mut state,
        Command::OpenSession {
            owner: SessionOwner::Node {
                name: "a1".into(),
                incarnation: 1,
            },
        },
    ) else {
        panic!("no session")
    };
    apply(&mut state, Command::CreateShard { name: "M3".into() });
    for (address, priority) in [
        ("10.0.0.7:6379", 3),
        ("10.0.0.8:6379", 2),
        ("db9.example:6379", 1),
    ] {
        apply(
            &mut state,
            Command::RegisterReplica {
                shard: "M3".into(),
                address: address.into(),
                priority,
                session,
            },
        );
    }
    for (id, address, tags) in [("api-1", "10.0.1.1", vec!["v2"]), ("api-2", "::1", vec![])] {
        apply(
            &mut state,
            Command::RegisterService {
                service: "api".into(),
                id: id.into(),
                address: address.into(),
                port: 8080,
                tags: tags.into_iter().map(String::from).collect(),
                session,
            },
        );
    }
    state
}

fn ask(name: &str, record_type: RecordType) -> Answer {
    let name = Name::from_ascii(name).unwrap();
    match question(&name) {
        Ok(q) => answer(&q, &name, record_type, &state(), &NoNodes, 0),
        Err(_) => panic!("{name} is not a question"),
    }
}

fn data(answer: &Answer) -> Vec<String> {
    answer
        .answers
        .iter()
        .map(|r| match &r.data {
            RData::A(a) => a.0.to_string(),
            RData::AAAA(a) => a.0.to_string(),
            RData::SRV(s) => format!("{} {} {} {}", s.priority, s.weight, s.port, s.target),
            other => format!("{other:?}"),
        })
        .collect()
}

#[test]
fn names_under_the_zone_are_questions_and_others_are_not() {
    let q = |name: &str| question(&Name::from_ascii(name).unwrap());
    assert_eq!(
        q("master.M3.shard.corral."),
        Ok(Question::Master("M3".into()))
    );
    assert_eq!(
        q("MASTER.m3.Shard.CORRAL."),
        Ok(Question::Master("m3".into()))
    );
    assert_eq!(q("M3.shard.corral."), Ok(Question::Shard("M3".into())));
    assert_eq!(
        q("v2.api.service.corral."),
        Ok(Question::Service {
            name: "api".into(),
            tag: Some("v2".into())
        })
    );
    assert_eq!(q("a1.node.corral."), Ok(Question::Node("a1".into())));
    assert_eq!(
        q("0a000007.addr.corral."),
        Ok(Question::Addr("10.0.0.7".parse().unwrap()))
    );
    assert_eq!(q("corral."), Ok(Question::Apex));
    assert_eq!(q("x.y.z.corral."), Err(true));
    assert_eq!(q("zz.addr.corral."), Err(true));
    assert_eq!(q("0a0000.addr.corral."), Err(true));
    assert_eq!(q("example.com."), Err(false));
    assert_eq!(q("corral.example.com."), Err(false));
}

#[test]
fn the_master_of_a_shard_answers_a_and_srv() {
    let a = ask("master.M3.shard.corral.", RecordType::A);
    assert!(a.exists);
    assert_eq!(data(&a), ["10.0.0.7"]);
    assert_eq!(a.answers[0].ttl, 0);
    let srv = ask("master.m3.shard.corral.", RecordType::SRV);
    assert_eq!(data(&srv), ["0 1 6379 0a000007.addr.corral."]);
    assert_eq!(srv.additionals.len(), 1, "the target's address comes along");
    assert_eq!(
        ask("master.M4.shard.corral.", RecordType::A),
        Answer::default()
    );
}

#[test]
fn a_shard_lists_its_master_first_and_names_stay_names() {
    let srv = ask("M3.shard.corral.", RecordType::SRV);
    assert_eq!(
        data(&srv),
        [
            "0 1 6379 0a000007.addr.corral.",
            "1 1 6379 0a000008.addr.corral.",
            "1 1 6379 db9.example.",
        ]
    );
    assert_eq!(
        data(&ask("M3.shard.corral.", RecordType::A)),
        ["10.0.0.7", "10.0.0.8"]
    );
    let txt = ask("M3.shard.corral.", RecordType::TXT);
    assert!(txt.exists && txt.answers.is_empty(), "no data, not no name");
}

#[test]
fn services_answer_every_instance_or_those_with_a_tag() {
    assert_eq!(
        data(&ask("api.service.corral.", RecordType::A)),
        ["10.0.1.1"]
    );
    assert_eq!(data(&ask("api.service.corral.", RecordType::AAAA)), ["::1"]);
    assert_eq!(
        data(&ask("api.service.corral.", RecordType::SRV)),
        [
            "0 1 8080 0a000101.addr.corral.",
            "0 1 8080 00000000000000000000000000000001.addr.corral.",
        ]
    );
    assert_eq!(
        data(&ask("V2.api.service.corral.", RecordType::A)),
        ["10.0.1.1"]
    );
    assert!(!ask("v3.api.service.corral.", RecordType::A).exists);
    assert!(!ask("web.service.corral.", RecordType::A).exists);
}

#[test]
fn nodes_and_addresses_answer_a() {
    assert_eq!(data(&ask("a1.node.corral.", RecordType::A)), ["10.0.0.1"]);
    assert!(ask("a1.node.corral.", RecordType::SRV).answers.is_empty());
    assert!(!ask("a2.node.corral.", RecordType::A).exists);
    assert_eq!(
        data(&ask("0a000007.addr.corral.", RecordType::A)),
        ["10.0.0.7"]
    );
}
