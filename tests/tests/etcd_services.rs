//! etcd's Lock and Election services on an agent, through clients generated from etcd's
//! own `.proto` files: the services `etcdctl` never calls (its lock and elect are recipes
//! over KV), but etcd's client libraries do (`etcd-client`'s `lock`, jetcd's election).

use std::time::Duration;

use corral_agent::etcd::pb::etcdserverpb::LeaseGrantRequest;
use corral_agent::etcd::pb::etcdserverpb::lease_client::LeaseClient;
use corral_agent::etcd::pb::v3electionpb::election_client::ElectionClient;
use corral_agent::etcd::pb::v3electionpb::{
    CampaignRequest, LeaderRequest, ProclaimRequest, ResignRequest,
};
use corral_agent::etcd::pb::v3lockpb::lock_client::LockClient;
use corral_agent::etcd::pb::v3lockpb::{LockRequest, UnlockRequest};
use corral_tests::Fleet;
use tonic::transport::Channel;

async fn channel(fleet: &Fleet, name: &str) -> Channel {
    let address = fleet.etcd(name).await;
    Channel::from_shared(format!("http://{address}"))
        .unwrap()
        .connect()
        .await
        .unwrap()
}

async fn lease(channel: &Channel) -> i64 {
    LeaseClient::new(channel.clone())
        .lease_grant(LeaseGrantRequest { ttl: 30, id: 0 })
        .await
        .unwrap()
        .into_inner()
        .id
}

/// Two holders of one lock: the second waits until the first unlocks, and its key's
/// revision (the fencing token) is larger.
#[tokio::test(flavor = "multi_thread")]
async fn the_lock_service_queues_holders_with_growing_revisions() {
    let root = tempfile::tempdir().unwrap();
    let fleet = Fleet::start(root.path(), 1).await;
    let names = fleet.names();
    fleet
        .wait_for_members(&names, &names, Duration::from_secs(30))
        .await;
    let channel = channel(&fleet, "a1").await;
    let (first_lease, second_lease) = (lease(&channel).await, lease(&channel).await);
    let mut locks = LockClient::new(channel.clone());
    let first = locks
        .lock(LockRequest {
            name: b"jobs".to_vec(),
            lease: first_lease,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(first.key, format!("jobs/{first_lease:x}").into_bytes());
    let mut waiter = LockClient::new(channel.clone());
    let second = tokio::spawn(async move {
        waiter
            .lock(LockRequest {
                name: b"jobs".to_vec(),
                lease: second_lease,
            })
            .await
            .map(tonic::Response::into_inner)
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!second.is_finished(), "two holders of one lock");
    locks
        .unlock(UnlockRequest {
            key: first.key.clone(),
        })
        .await
        .unwrap();
    let second = tokio::time::timeout(Duration::from_secs(10), second)
        .await
        .expect("the waiter got the lock")
        .unwrap()
        .unwrap();
    let revision = |header: Option<corral_agent::etcd::pb::etcdserverpb::ResponseHeader>| {
        header.expect("a header").revision
    };
    assert!(revision(second.header) > revision(first.header));
}

/// Campaign, Leader, Proclaim, Observe and Resign: a second candidate leads once the
/// first resigns, and an observer sees both.
#[tokio::test(flavor = "multi_thread")]
async fn the_election_service_hands_over_on_resign() {
    let root = tempfile::tempdir().unwrap();
    let fleet = Fleet::start(root.path(), 1).await;
    let names = fleet.names();
    fleet
        .wait_for_members(&names, &names, Duration::from_secs(30))
        .await;
    let channel = channel(&fleet, "a1").await;
    let (alice_lease, bob_lease) = (lease(&channel).await, lease(&channel).await);
    let mut elections = ElectionClient::new(channel.clone());
    let campaign = |lease: i64, value: &str| CampaignRequest {
        name: b"primary".to_vec(),
        lease,
        value: value.as_bytes().to_vec(),
    };
    let alice = elections
        .campaign(campaign(alice_lease, "alice"))
        .await
        .unwrap()
        .into_inner()
        .leader
        .expect("alice's leader key");
    let mut observer = ElectionClient::new(channel.clone())
        .observe(LeaderRequest {
            name: b"primary".to_vec(),
        })
        .await
        .unwrap()
        .into_inner();
    let seen = observer.message().await.unwrap().unwrap();
    assert_eq!(seen.kv.unwrap().value, b"alice");
    elections
        .proclaim(ProclaimRequest {
            leader: Some(alice.clone()),
            value: b"alice, again".to_vec(),
        })
        .await
        .unwrap();
    let seen = observer.message().await.unwrap().unwrap();
    assert_eq!(seen.kv.unwrap().value, b"alice, again");

    let mut bob_client = ElectionClient::new(channel.clone());
    let bob = tokio::spawn(async move { bob_client.campaign(campaign(bob_lease, "bob")).await });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!bob.is_finished(), "bob led while alice did");
    let leader = elections
        .leader(LeaderRequest {
            name: b"primary".to_vec(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(leader.kv.unwrap().value, b"alice, again");
    elections
        .resign(ResignRequest {
            leader: Some(alice),
        })
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(10), bob)
        .await
        .expect("bob leads")
        .unwrap()
        .unwrap();
    let seen = observer.message().await.unwrap().unwrap();
    assert_eq!(seen.kv.unwrap().value, b"bob");
    // A proclamation from the leader that resigned is refused.
    let stale = elections
        .proclaim(ProclaimRequest {
            leader: Some(corral_agent::etcd::pb::v3electionpb::LeaderKey {
                name: b"primary".to_vec(),
                key: format!("primary/{alice_lease:x}").into_bytes(),
                rev: 1,
                lease: alice_lease,
            }),
            value: b"usurper".to_vec(),
        })
        .await
        .unwrap_err();
    assert_eq!(stale.message(), "etcdserver: election: not leader");
}
