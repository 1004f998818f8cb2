//! Leader election against a fake API server holding one Lease with resourceVersion semantics
//! (a write with a stale resourceVersion gets 409), driven by a fake clock.

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::mockapi::{not_found, status, MockApi, Recorded, Reply};
use serde_json::{json, Value};
use static_macvlan_operator::leader::{Elector, Timing};

const PATH: &str = "/apis/coordination.k8s.io/v1/namespaces/static-macvlan-system/leases";

/// The fake API server's state: the Lease (if any), whether it fails, and a barrier making the
/// next two GETs wait for each other (to race two replicas).
#[derive(Default)]
struct State {
    lease: Option<Value>,
    rv: u64,
    failing: bool,
    race: Option<Arc<tokio::sync::Barrier>>,
}

type Shared = Arc<Mutex<State>>;

fn server(state: Shared) -> MockApi {
    MockApi::new(move |r: Recorded| {
        let state = state.clone();
        async move {
            let barrier = {
                let s = state.lock().unwrap();
                if s.failing {
                    return Reply::Json(
                        500,
                        status(500, "InternalError", "etcdserver: request timed out"),
                    );
                }
                if r.method == "GET" {
                    s.race.clone()
                } else {
                    None
                }
            };
            let snapshot = state.lock().unwrap().lease.clone();
            if let Some(b) = barrier {
                b.wait().await;
            }
            let mut s = state.lock().unwrap();
            match r.method.as_str() {
                "GET" => match snapshot {
                    Some(l) => Reply::Json(200, l),
                    None => not_found("leases \"static-macvlan-operator\""),
                },
                "POST" => {
                    assert_eq!(r.path, PATH);
                    if s.lease.is_some() {
                        return Reply::Json(409, status(409, "AlreadyExists", "exists"));
                    }
                    s.rv += 1;
                    let mut l = r.body.clone();
                    l["metadata"]["resourceVersion"] = json!(s.rv.to_string());
                    l["metadata"]["namespace"] = json!("static-macvlan-system");
                    s.lease = Some(l.clone());
                    Reply::Json(201, l)
                }
                "PUT" => {
                    assert_eq!(r.path, format!("{PATH}/static-macvlan-operator"));
                    let current = s
                        .lease
                        .as_ref()
                        .map(|l| l["metadata"]["resourceVersion"].clone());
                    if current != Some(r.body["metadata"]["resourceVersion"].clone()) {
                        return Reply::Json(
                            409,
                            status(409, "Conflict", "the object has been modified"),
                        );
                    }
                    s.rv += 1;
                    let mut l = r.body.clone();
                    l["metadata"]["resourceVersion"] = json!(s.rv.to_string());
                    s.lease = Some(l.clone());
                    Reply::Json(200, l)
                }
                other => panic!("unexpected {other} {}", r.uri),
            }
        }
    })
}

fn elector(api: &MockApi, id: &str) -> Elector {
    Elector::new(
        api.client.clone(),
        "static-macvlan-system",
        "static-macvlan-operator",
        id,
        Timing::default(),
    )
}

fn held_by(holder: &str, renew: &str, transitions: i32, rv: u64) -> Value {
    json!({
        "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": {"name": "static-macvlan-operator", "namespace": "static-macvlan-system",
                     "uid": "l-1", "resourceVersion": rv.to_string()},
        "spec": {"holderIdentity": holder, "leaseDurationSeconds": 15,
                 "acquireTime": "2026-03-01T10:00:00.000000Z", "renewTime": renew,
                 "leaseTransitions": transitions}
    })
}

fn spec(state: &Shared) -> Value {
    state.lock().unwrap().lease.as_ref().unwrap()["spec"].clone()
}

#[tokio::test]
async fn creates_a_missing_lease_then_renews() {
    let state = Shared::default();
    let api = server(state.clone());
    let mut me = elector(&api, "op-a_1");
    let t0 = Instant::now();
    assert!(me.tick(t0).await);
    let s = spec(&state);
    assert_eq!(s["holderIdentity"], "op-a_1");
    assert_eq!(s["leaseDurationSeconds"], 15);
    assert_eq!(s["leaseTransitions"], 0);
    let first_renew = s["renewTime"].clone();

    tokio::time::sleep(Duration::from_millis(5)).await;
    assert!(me.tick(t0 + Duration::from_secs(2)).await);
    let s = spec(&state);
    assert_eq!(s["holderIdentity"], "op-a_1");
    assert_ne!(s["renewTime"], first_renew, "renewed");
    let methods: Vec<String> = api.requests().into_iter().map(|r| r.method).collect();
    assert_eq!(methods, ["GET", "POST", "GET", "PUT"]);
}

#[tokio::test]
async fn follows_a_renewing_holder_and_takes_over_when_it_stops() {
    let state = Shared::default();
    state.lock().unwrap().lease = Some(held_by("op-b_2", "2026-03-01T10:00:05.000000Z", 2, 7));
    state.lock().unwrap().rv = 7;
    let api = server(state.clone());
    let mut me = elector(&api, "op-a_1");
    let t0 = Instant::now();
    let at = |s: u64| t0 + Duration::from_secs(s);

    assert!(!me.tick(at(0)).await);
    // The holder renews at 10 s: the record changed, the clock restarts.
    state.lock().unwrap().lease = Some(held_by("op-b_2", "2026-03-01T10:00:15.000000Z", 2, 8));
    assert!(!me.tick(at(10)).await);
    assert!(!me.tick(at(20)).await, "unchanged for 10 s only");
    assert!(me.tick(at(26)).await, "unchanged for 16 s: expired");
    let s = spec(&state);
    assert_eq!(s["holderIdentity"], "op-a_1");
    assert_eq!(s["leaseTransitions"], 3);
    assert_ne!(s["acquireTime"], "2026-03-01T10:00:00.000000Z");
}

#[tokio::test]
async fn two_replicas_racing_for_an_expired_lease_one_wins() {
    let state = Shared::default();
    state.lock().unwrap().lease = Some(held_by("op-dead_0", "2026-03-01T10:00:05.000000Z", 0, 3));
    state.lock().unwrap().rv = 3;
    let api = server(state.clone());
    let mut a = elector(&api, "op-a_1");
    let mut b = elector(&api, "op-b_2");
    let t0 = Instant::now();
    assert!(!a.tick(t0).await);
    assert!(!b.tick(t0).await);
    // Both read the same expired record, then both write it.
    state.lock().unwrap().race = Some(Arc::new(tokio::sync::Barrier::new(2)));
    let t = t0 + Duration::from_secs(16);
    let (la, lb) = tokio::join!(a.tick(t), b.tick(t));
    assert!(la ^ lb, "exactly one leads: a={la} b={lb}");
    let winner = if la { "op-a_1" } else { "op-b_2" };
    assert_eq!(spec(&state)["holderIdentity"], winner);
    assert_eq!(spec(&state)["leaseTransitions"], 1);
    // The loser follows from now on.
    state.lock().unwrap().race = None;
    let loser = if la { &mut b } else { &mut a };
    assert!(!loser.tick(t + Duration::from_secs(2)).await);
}

#[tokio::test]
async fn steps_down_when_it_cannot_renew_in_time() {
    let state = Shared::default();
    let api = server(state.clone());
    let mut me = elector(&api, "op-a_1");
    let t0 = Instant::now();
    assert!(me.tick(t0).await);
    state.lock().unwrap().failing = true;
    let at = |s: u64| t0 + Duration::from_secs(s);
    assert!(me.tick(at(2)).await, "within the renew deadline");
    assert!(me.tick(at(9)).await, "within the renew deadline");
    assert!(!me.tick(at(11)).await, "10 s without a renew: step down");
    // Back: the Lease still names us, so we renew and lead again.
    state.lock().unwrap().failing = false;
    assert!(me.tick(at(12)).await);
}

#[tokio::test]
async fn loses_the_lease_to_another_writer() {
    let state = Shared::default();
    let api = server(state.clone());
    let mut a = elector(&api, "op-a_1");
    let t0 = Instant::now();
    assert!(a.tick(t0).await);
    // While A was paused past the lease duration, B took the Lease over.
    let rv = state.lock().unwrap().rv + 1;
    state.lock().unwrap().lease = Some(held_by("op-b_2", "2026-03-01T10:01:00.000000Z", 1, rv));
    state.lock().unwrap().rv = rv;
    assert!(
        !a.tick(t0 + Duration::from_secs(2)).await,
        "A sees B's record and follows"
    );
    assert_eq!(spec(&state)["holderIdentity"], "op-b_2", "A wrote nothing");
}

#[tokio::test]
async fn release_on_shutdown_hands_over_at_once() {
    let state = Shared::default();
    let api = server(state.clone());
    let mut a = elector(&api, "op-a_1");
    let mut b = elector(&api, "op-b_2");
    let t0 = Instant::now();
    assert!(a.tick(t0).await);
    assert!(!b.tick(t0).await);
    a.release().await.unwrap();
    let s = spec(&state);
    assert_eq!(s["holderIdentity"], Value::Null);
    assert_eq!(s["leaseDurationSeconds"], 1);
    // B takes over at its next round, without waiting for the lease duration.
    assert!(b.tick(t0 + Duration::from_secs(2)).await);
    assert_eq!(spec(&state)["holderIdentity"], "op-b_2");
    assert!(!a.tick(t0 + Duration::from_secs(4)).await);
}
