//! Garbage collection of reservations whose pod is gone.
//!
//! A committed reservation is released when the API server has confirmed, for at least the grace
//! period, that its owner pod UID no longer exists: `GET` of the pod by namespace/name answers
//! 404, or a pod of that name with another UID (a re-created StatefulSet pod). The first time a
//! UID is seen gone is kept in memory; a new leader starts counting afresh (conservative).
//!
//! Safety rules:
//! - any API error other than 404 skips the whole cycle: nothing is decided from a partial or
//!   unreachable API server;
//! - pending reservations are never touched: their lease frees them;
//! - the release is [`Allocator::release_exact`], compare-and-delete on the revision read, so a
//!   reservation created or changed meanwhile (a new pod taking the same static address) is
//!   never freed.
//!
//! The decision is the pure function [`decide`]; [`plan`] gathers its inputs, [`execute`] acts.

use std::collections::{BTreeSet, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use kube::{Api, Client};
use static_macvlan_allocator::{Allocator, Reservation, State};

use crate::error::Error;
use crate::metrics::{GcResult, Metrics};

/// What the API server said about a pod name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PodAnswer {
    /// 404: no pod of that namespace/name.
    Missing,
    /// A pod of that name exists with this UID.
    Present(String),
}

/// `(namespace, name)` of a pod.
pub type PodName = (String, String);

/// The outcome of [`decide`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Decision {
    /// Release these (exactly these revisions).
    pub release: Vec<Reservation>,
    /// First-seen-gone time of every owner UID still confirmed gone (the state for the next
    /// cycle; UIDs seen alive again, or no longer holding anything, are forgotten).
    pub gone_since: HashMap<String, Instant>,
    /// Reservations of gone pods still inside the grace period.
    pub waiting: usize,
}

/// Decides what to release. `answers` holds the API server's fresh answers for the pod names
/// asked about; a reservation whose pod name was not asked about counts as alive.
pub fn decide(
    reservations: &[Reservation],
    answers: &HashMap<PodName, PodAnswer>,
    gone_since: &HashMap<String, Instant>,
    now: Instant,
    grace: Duration,
) -> Decision {
    let mut d = Decision::default();
    for res in reservations {
        if res.record.state == State::Pending {
            continue;
        }
        let o = &res.record.owner;
        let gone = match answers.get(&(o.namespace.clone(), o.pod.clone())) {
            Some(PodAnswer::Missing) => true,
            Some(PodAnswer::Present(uid)) => *uid != o.pod_uid,
            None => false,
        };
        if !gone {
            continue;
        }
        let since = gone_since.get(&o.pod_uid).copied().unwrap_or(now);
        d.gone_since.insert(o.pod_uid.clone(), since);
        if now.saturating_duration_since(since) >= grace {
            d.release.push(res.clone());
        } else {
            d.waiting += 1;
        }
    }
    d
}

/// The pod names to ask the API server about: those of committed reservations, except where
/// `live` (a synced pod index: name → UID) already shows the owner UID running.
pub fn questions(
    reservations: &[Reservation],
    live: Option<&HashMap<PodName, String>>,
) -> BTreeSet<PodName> {
    reservations
        .iter()
        .filter(|r| r.record.state == State::Committed)
        .map(|r| &r.record.owner)
        .filter(|o| {
            live.and_then(|l| l.get(&(o.namespace.clone(), o.pod.clone())))
                .is_none_or(|uid| *uid != o.pod_uid)
        })
        .map(|o| (o.namespace.clone(), o.pod.clone()))
        .collect()
}

/// Reservations this operator is deleting, so that the etcd watch can label their deletion
/// `reason="gc"`: IP key → revision of the reservation.
#[derive(Debug, Default)]
pub struct Ledger(Mutex<HashMap<String, (i64, Instant)>>);

/// Entries the watch never confirmed (a watch restart) are dropped after this long.
const LEDGER_TTL: Duration = Duration::from_secs(600);

impl Ledger {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, (i64, Instant)>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn note(&self, ip_key: &str, revision: i64) {
        let mut m = self.lock();
        m.retain(|_, (_, at)| at.elapsed() < LEDGER_TTL);
        m.insert(ip_key.to_string(), (revision, Instant::now()));
    }

    pub fn forget(&self, ip_key: &str) {
        self.lock().remove(ip_key);
    }

    /// Whether the deletion of `ip_key` whose last revision was `revision` was ours (consumes
    /// the entry).
    pub fn take(&self, ip_key: &str, revision: i64) -> bool {
        let mut m = self.lock();
        match m.get(ip_key) {
            Some((r, _)) if *r == revision => {
                m.remove(ip_key);
                true
            }
            _ => false,
        }
    }
}

/// The inputs of one cycle: what etcd holds and what the API server says.
#[derive(Clone, Debug, Default)]
pub struct Plan {
    pub reservations: Vec<Reservation>,
    pub answers: HashMap<PodName, PodAnswer>,
}

/// Asks the API server about each pod name (a metadata-only GET each).
///
/// # Errors
/// The first API error other than 404 — the cycle must then be skipped.
pub async fn ask(
    client: &Client,
    names: &BTreeSet<PodName>,
) -> Result<HashMap<PodName, PodAnswer>, Error> {
    let mut answers = HashMap::new();
    for (ns, name) in names {
        let api: Api<Pod> = Api::namespaced(client.clone(), ns);
        let got = api
            .get_metadata_opt(name)
            .await
            .map_err(Error::kube(format!("get pod {ns}/{name}")))?;
        let answer = match got {
            None => PodAnswer::Missing,
            Some(p) => PodAnswer::Present(p.metadata.uid.unwrap_or_default()),
        };
        answers.insert((ns.clone(), name.clone()), answer);
    }
    Ok(answers)
}

/// Reads every reservation and asks about the pods that may be gone.
///
/// # Errors
/// [`Error::Allocator`] when etcd fails; [`Error::Kube`] when the API server does.
pub async fn plan(
    alloc: &Allocator,
    client: &Client,
    metrics: &Metrics,
    live: Option<&HashMap<PodName, String>>,
) -> Result<Plan, Error> {
    let reservations = metrics.etcd("list_reservations", alloc.all()).await?;
    let answers = ask(client, &questions(&reservations, live)).await?;
    Ok(Plan {
        reservations,
        answers,
    })
}

/// Releases each reservation with compare-and-delete; returns how many were freed. One that
/// changed meanwhile is left alone (and logged).
///
/// # Errors
/// etcd failures (those before were released).
pub async fn execute(
    alloc: &Allocator,
    metrics: &Metrics,
    ledger: &Ledger,
    release: &[Reservation],
) -> Result<usize, Error> {
    let mut freed = 0;
    for res in release {
        let r = &res.record;
        let key = alloc.keys().ip(&r.subnet, r.ip);
        ledger.note(&key, res.revision);
        match metrics.etcd("release", alloc.release_exact(res)).await {
            Ok(true) => {
                freed += 1;
                tracing::info!(subnet = %r.subnet, ip = %r.ip, mac = ?r.mac.map(|m| m.to_string()),
                    pod = %format!("{}/{}", r.owner.namespace, r.owner.pod), uid = %r.owner.pod_uid,
                    ifname = %r.owner.ifname, "gc released the reservation of a pod that is gone");
            }
            Ok(false) => {
                ledger.forget(&key);
                tracing::info!(subnet = %r.subnet, ip = %r.ip, uid = %r.owner.pod_uid,
                    "gc left a reservation alone: it changed since it was read");
            }
            Err(e) => {
                ledger.forget(&key);
                return Err(e.into());
            }
        }
    }
    Ok(freed)
}

/// The collector: its memory of first-seen-gone times across cycles.
pub struct Collector {
    pub alloc: Allocator,
    pub client: Client,
    pub metrics: std::sync::Arc<Metrics>,
    pub ledger: std::sync::Arc<Ledger>,
    pub grace: Duration,
    gone_since: HashMap<String, Instant>,
}

impl Collector {
    pub fn new(
        alloc: Allocator,
        client: Client,
        metrics: std::sync::Arc<Metrics>,
        ledger: std::sync::Arc<Ledger>,
        grace: Duration,
    ) -> Collector {
        Collector {
            alloc,
            client,
            metrics,
            ledger,
            grace,
            gone_since: HashMap::new(),
        }
    }

    /// One cycle at `now`. `live` is the pod index when it is synced (it only saves API
    /// requests: every release is confirmed by a fresh GET).
    pub async fn cycle(
        &mut self,
        now: Instant,
        live: Option<&HashMap<PodName, String>>,
    ) -> GcResult {
        let p = match plan(&self.alloc, &self.client, &self.metrics, live).await {
            Ok(p) => p,
            Err(e @ Error::Kube { .. }) => {
                tracing::warn!(error = %e, "gc skipped: the API server did not answer; nothing is released without it");
                return GcResult::Skipped;
            }
            Err(e) => {
                tracing::warn!(error = %e, "gc failed");
                return GcResult::Failed;
            }
        };
        let d = decide(
            &p.reservations,
            &p.answers,
            &self.gone_since,
            now,
            self.grace,
        );
        self.gone_since = d.gone_since;
        self.metrics.gc_waiting.set(d.waiting as i64);
        match execute(&self.alloc, &self.metrics, &self.ledger, &d.release).await {
            Ok(n) => {
                tracing::debug!(released = n, waiting = d.waiting, "gc cycle done");
                GcResult::Completed
            }
            Err(e) => {
                tracing::warn!(error = %e, "gc failed while releasing");
                GcResult::Failed
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use static_macvlan_allocator::{Owner, Record};

    fn res(uid: &str, pod: &str, ip: &str, state: State, revision: i64) -> Reservation {
        Reservation {
            record: Record {
                subnet: "lan".into(),
                ip: ip.parse().unwrap(),
                prefix_len: 24,
                mac: None,
                owner: Owner {
                    pod_uid: uid.into(),
                    namespace: "db".into(),
                    pod: pod.into(),
                    container_id: format!("c-{uid}"),
                    ifname: "net1".into(),
                    node: "node-a".into(),
                    network: String::new(),
                },
                state,
                since: "2026-01-01T00:00:00Z".into(),
                lease: None,
                sticky: None,
            },
            revision,
        }
    }

    fn name(pod: &str) -> PodName {
        ("db".to_string(), pod.to_string())
    }

    #[test]
    fn decisions() {
        let t0 = Instant::now();
        let grace = Duration::from_secs(300);
        let at = |s: u64| t0 + Duration::from_secs(s);
        let c = State::Committed;
        struct Case {
            what: &'static str,
            res: Vec<Reservation>,
            answers: Vec<(&'static str, PodAnswer)>,
            gone_since: Vec<(&'static str, u64)>,
            now: u64,
            release: Vec<&'static str>,
            tracked: Vec<(&'static str, u64)>,
            waiting: usize,
        }
        let present = |u: &str| PodAnswer::Present(u.to_string());
        let cases = vec![
            Case {
                what: "pod alive with the same uid: nothing, forgotten",
                res: vec![res("u1", "a", "10.0.0.1", c, 5)],
                answers: vec![("a", present("u1"))],
                gone_since: vec![("u1", 0)],
                now: 1000,
                release: vec![],
                tracked: vec![],
                waiting: 0,
            },
            Case {
                what: "first seen missing: tracked, waits",
                res: vec![res("u1", "a", "10.0.0.1", c, 5)],
                answers: vec![("a", PodAnswer::Missing)],
                gone_since: vec![],
                now: 10,
                release: vec![],
                tracked: vec![("u1", 10)],
                waiting: 1,
            },
            Case {
                what: "missing within grace: still waits",
                res: vec![res("u1", "a", "10.0.0.1", c, 5)],
                answers: vec![("a", PodAnswer::Missing)],
                gone_since: vec![("u1", 10)],
                now: 309,
                release: vec![],
                tracked: vec![("u1", 10)],
                waiting: 1,
            },
            Case {
                what: "missing past grace: released",
                res: vec![res("u1", "a", "10.0.0.1", c, 5)],
                answers: vec![("a", PodAnswer::Missing)],
                gone_since: vec![("u1", 10)],
                now: 310,
                release: vec!["u1"],
                tracked: vec![("u1", 10)],
                waiting: 0,
            },
            Case {
                what: "name re-used by another uid: the old uid is gone",
                res: vec![
                    res("old", "web-0", "10.0.0.1", c, 5),
                    res("new", "web-0", "10.0.0.2", c, 9),
                ],
                answers: vec![("web-0", present("new"))],
                gone_since: vec![("old", 0)],
                now: 300,
                release: vec!["old"],
                tracked: vec![("old", 0)],
                waiting: 0,
            },
            Case {
                what: "pending reservations are left to their lease",
                res: vec![res("u1", "a", "10.0.0.1", State::Pending, 5)],
                answers: vec![("a", PodAnswer::Missing)],
                gone_since: vec![("u1", 0)],
                now: 1000,
                release: vec![],
                tracked: vec![],
                waiting: 0,
            },
            Case {
                what: "not asked about (seen alive in the index): alive",
                res: vec![res("u1", "a", "10.0.0.1", c, 5)],
                answers: vec![],
                gone_since: vec![("u1", 0)],
                now: 1000,
                release: vec![],
                tracked: vec![],
                waiting: 0,
            },
            Case {
                what: "pod came back with the same uid before grace: forgotten",
                res: vec![res("u1", "a", "10.0.0.1", c, 5)],
                answers: vec![("a", present("u1"))],
                gone_since: vec![("u1", 0)],
                now: 100,
                release: vec![],
                tracked: vec![],
                waiting: 0,
            },
            Case {
                what: "two interfaces of one gone pod: both released together",
                res: vec![
                    res("u1", "a", "10.0.0.1", c, 5),
                    res("u1", "a", "10.0.0.2", c, 6),
                ],
                answers: vec![("a", PodAnswer::Missing)],
                gone_since: vec![("u1", 0)],
                now: 300,
                release: vec!["u1", "u1"],
                tracked: vec![("u1", 0)],
                waiting: 0,
            },
        ];
        for case in cases {
            let answers: HashMap<PodName, PodAnswer> = case
                .answers
                .into_iter()
                .map(|(p, a)| (name(p), a))
                .collect();
            let gone: HashMap<String, Instant> = case
                .gone_since
                .into_iter()
                .map(|(u, s)| (u.to_string(), at(s)))
                .collect();
            let d = decide(&case.res, &answers, &gone, at(case.now), grace);
            let released: Vec<&str> = d
                .release
                .iter()
                .map(|r| r.record.owner.pod_uid.as_str())
                .collect();
            assert_eq!(released, case.release, "{}", case.what);
            let want: HashMap<String, Instant> = case
                .tracked
                .into_iter()
                .map(|(u, s)| (u.to_string(), at(s)))
                .collect();
            assert_eq!(d.gone_since, want, "{}", case.what);
            assert_eq!(d.waiting, case.waiting, "{}", case.what);
        }
    }

    #[test]
    fn questions_skip_live_and_pending() {
        let rs = vec![
            res("u1", "a", "10.0.0.1", State::Committed, 1),
            res("u2", "b", "10.0.0.2", State::Committed, 2),
            res("u3", "c", "10.0.0.3", State::Pending, 3),
            res("u4", "d", "10.0.0.4", State::Committed, 4),
        ];
        let all: Vec<PodName> = questions(&rs, None).into_iter().collect();
        assert_eq!(all, [name("a"), name("b"), name("d")]);
        let live: HashMap<PodName, String> = [
            (name("a"), "u1".to_string()),
            (name("b"), "other".to_string()),
        ]
        .into_iter()
        .collect();
        let asked: Vec<PodName> = questions(&rs, Some(&live)).into_iter().collect();
        assert_eq!(asked, [name("b"), name("d")]);
    }

    #[test]
    fn ledger_matches_revision() {
        let l = Ledger::default();
        l.note("/p/ips/lan/10.0.0.1", 7);
        assert!(!l.take("/p/ips/lan/10.0.0.1", 8));
        assert!(l.take("/p/ips/lan/10.0.0.1", 7));
        assert!(!l.take("/p/ips/lan/10.0.0.1", 7));
    }
}
