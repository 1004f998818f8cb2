//! Reservation semantics against a real etcd: static conflicts name the holder, idempotency,
//! hand-over to a new sandbox, stale releases, commit, queries and bad input.

mod common;

use std::collections::HashSet;
use std::net::IpAddr;

use common::*;
use static_macvlan_allocator::{
    Error, IpRequest, MacAddr, MacRequest, Options, Released, State, SubnetConfig,
};

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn mac(s: &str) -> MacAddr {
    s.parse().unwrap()
}

#[tokio::test]
async fn static_ip_and_mac_conflicts_name_the_holder() {
    let f = fixture(Options::default()).await;
    let lan = put_subnet(
        &f.alloc,
        "lan",
        subnet_config("10.230.0.0/24", "10.230.0.1", vec![]),
    )
    .await;
    let (a, b) = (owner(1), owner(2));
    let res = f
        .alloc
        .reserve(
            &lan,
            &a,
            IpRequest::Static(ip("10.230.0.33")),
            &MacRequest::Static(mac("02:00:00:00:00:21")),
        )
        .await
        .unwrap();
    assert_eq!(res.record.ip, ip("10.230.0.33"));
    assert_eq!(res.record.mac, Some(mac("02:00:00:00:00:21")));
    assert_eq!(res.record.state, State::Pending);

    let rev = f.etcd.revision().await.unwrap();
    match f
        .alloc
        .reserve(
            &lan,
            &b,
            IpRequest::Static(ip("10.230.0.33")),
            &MacRequest::None,
        )
        .await
    {
        Err(Error::IpTaken {
            ip: taken, holder, ..
        }) => {
            assert_eq!(taken, ip("10.230.0.33"));
            assert_eq!(holder.pod, "pod-1");
            let msg = Error::IpTaken {
                subnet: "lan".into(),
                ip: taken,
                holder,
            }
            .to_string();
            assert!(msg.contains("default/pod-1"), "{msg}");
        }
        other => panic!("expected IpTaken, got {other:?}"),
    }
    match f
        .alloc
        .reserve(
            &lan,
            &b,
            IpRequest::Auto,
            &MacRequest::Static(mac("02:00:00:00:00:21")),
        )
        .await
    {
        Err(Error::MacTaken { holder, .. }) => assert_eq!(holder.pod_uid, "uid-1"),
        other => panic!("expected MacTaken, got {other:?}"),
    }
    // Refusals never write: no partial keys for b.
    assert_eq!(f.etcd.revision().await.unwrap(), rev);
    assert!(f.alloc.attachment("uid-2", "net1").await.unwrap().is_none());
}

#[tokio::test]
async fn repeated_reserve_is_idempotent_and_new_sandbox_takes_over() {
    let f = fixture(Options::default()).await;
    let lan = put_subnet(
        &f.alloc,
        "lan",
        subnet_config("10.230.0.0/24", "10.230.0.1", vec![]),
    )
    .await;
    let pool = put_pool(&f.alloc, "vms", "02:00:00:00:00:00", "02:00:00:00:ff:ff").await;
    let o = owner(7);
    let first = f
        .alloc
        .reserve(&lan, &o, IpRequest::Auto, &MacRequest::Auto(pool.clone()))
        .await
        .unwrap();
    let again = f
        .alloc
        .reserve(&lan, &o, IpRequest::Auto, &MacRequest::Auto(pool.clone()))
        .await
        .unwrap();
    assert_eq!(first, again);
    let committed = f.alloc.commit(&again).await.unwrap();
    assert_eq!(committed.record.state, State::Committed);
    // Commit is idempotent too.
    assert_eq!(
        f.alloc.commit(&again).await.unwrap().record.ip,
        first.record.ip
    );

    // Same pod UID and ifname from a new sandbox keeps the address; the old sandbox's DEL is stale.
    let mut newer = o.clone();
    newer.container_id = "c-new".into();
    let taken = f
        .alloc
        .reserve(
            &lan,
            &newer,
            IpRequest::Auto,
            &MacRequest::Auto(pool.clone()),
        )
        .await
        .unwrap();
    assert_eq!(taken.record.ip, first.record.ip);
    assert_eq!(taken.record.mac, first.record.mac);
    assert_eq!(taken.record.owner.container_id, "c-new");
    assert_eq!(taken.record.state, State::Committed);
    match f.alloc.release(&o).await.unwrap() {
        Released::Stale(r) => assert_eq!(r.owner.container_id, "c-new"),
        other => panic!("stale release freed something: {other:?}"),
    }
    assert!(f
        .alloc
        .holder_of_ip("lan", first.record.ip)
        .await
        .unwrap()
        .is_some());

    // A different static request for the same attachment is refused, not silently changed.
    let other_ip = if first.record.ip == ip("10.230.0.9") {
        "10.230.0.10"
    } else {
        "10.230.0.9"
    };
    assert!(matches!(
        f.alloc
            .reserve(
                &lan,
                &newer,
                IpRequest::Static(ip(other_ip)),
                &MacRequest::Auto(pool)
            )
            .await,
        Err(Error::AttachmentConflict { .. })
    ));
}

#[tokio::test]
async fn release_frees_exactly_the_owner_and_twice_is_fine() {
    let f = fixture(Options::default()).await;
    let lan = put_subnet(
        &f.alloc,
        "lan",
        subnet_config("10.230.0.0/24", "10.230.0.1", vec![]),
    )
    .await;
    let o = owner(3);
    let res = f
        .alloc
        .reserve(
            &lan,
            &o,
            IpRequest::Static(ip("10.230.0.50")),
            &MacRequest::Static(mac("02:00:00:00:00:50")),
        )
        .await
        .unwrap();
    f.alloc.commit(&res).await.unwrap();
    assert_eq!(f.alloc.by_node(&o.node).await.unwrap().len(), 1);
    assert_eq!(f.alloc.by_pod(&o.pod_uid).await.unwrap().len(), 1);

    let mut stranger = o.clone();
    stranger.container_id = "someone-else".into();
    assert!(matches!(
        f.alloc.release(&stranger).await.unwrap(),
        Released::Stale(_)
    ));
    assert!(matches!(
        f.alloc.release(&o).await.unwrap(),
        Released::Freed(_)
    ));
    assert_eq!(f.alloc.release(&o).await.unwrap(), Released::NotHeld);

    // Every key of the reservation is gone, so both addresses can be taken again.
    let prefix = format!("{}/", f.cfg.prefix);
    let left = f
        .etcd
        .etcdctl(&["get", "--prefix", "--keys-only", &prefix])
        .unwrap();
    let left: Vec<&str> = left.lines().filter(|l| !l.is_empty()).collect();
    assert!(
        left.iter()
            .all(|k| k.contains("/config/") || k.ends_with("/schema")),
        "leftover keys: {left:?}"
    );
    f.alloc
        .reserve(
            &lan,
            &owner(4),
            IpRequest::Static(ip("10.230.0.50")),
            &MacRequest::Static(mac("02:00:00:00:00:50")),
        )
        .await
        .unwrap();
}

#[tokio::test]
async fn release_exact_never_touches_a_newer_reservation() {
    let f = fixture(Options::default()).await;
    let lan = put_subnet(
        &f.alloc,
        "lan",
        subnet_config("10.230.0.0/24", "10.230.0.1", vec![]),
    )
    .await;
    let old = f
        .alloc
        .reserve(
            &lan,
            &owner(1),
            IpRequest::Static(ip("10.230.0.9")),
            &MacRequest::None,
        )
        .await
        .unwrap();
    f.alloc.release(&owner(1)).await.unwrap();
    // The same address is re-reserved by a new pod before the collector acts on its stale view.
    let newer = f
        .alloc
        .reserve(
            &lan,
            &owner(2),
            IpRequest::Static(ip("10.230.0.9")),
            &MacRequest::None,
        )
        .await
        .unwrap();
    assert!(!f.alloc.release_exact(&old).await.unwrap());
    let holder = f
        .alloc
        .holder_of_ip("lan", ip("10.230.0.9"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(holder.record.owner.pod_uid, "uid-2");
    assert!(f.alloc.release_exact(&newer).await.unwrap());
}

#[tokio::test]
async fn usage_counts_without_listing() {
    let f = fixture(Options::default()).await;
    let lan = put_subnet(
        &f.alloc,
        "lan",
        subnet_config(
            "10.230.0.0/24",
            "10.230.0.1",
            vec![range("10.230.0.10", "10.230.0.29")],
        ),
    )
    .await;
    for i in 0..5 {
        f.alloc
            .reserve(&lan, &owner(i), IpRequest::Auto, &MacRequest::None)
            .await
            .unwrap();
    }
    let u = f.alloc.usage(&lan).await.unwrap();
    assert_eq!((u.used, u.capacity, u.free), (5, 20, 15));
    let ips: HashSet<IpAddr> = held_ips(&f.alloc).await.into_iter().collect();
    assert_eq!(ips.len(), 5);
    assert!(ips.iter().all(|a| lan
        .pool()
        .contains(static_macvlan_allocator::addr::ip_to_u128(*a))));
}

#[tokio::test]
async fn ipv6_auto_and_static() {
    let f = fixture(Options::default()).await;
    let spec = subnet_config(
        "fd00:230::/64",
        "fd00:230::1",
        vec![range("fd00:230::100", "fd00:230::1ff")],
    );
    let lan6 = put_subnet(&f.alloc, "lan6", spec).await;
    let a = f
        .alloc
        .reserve(&lan6, &owner(1), IpRequest::Auto, &MacRequest::None)
        .await
        .unwrap();
    assert!(a.record.ip.is_ipv6() && lan6.cidr.contains(a.record.ip));
    assert_eq!(a.record.prefix_len, 64);
    let key = f.alloc.keys().ip("lan6", a.record.ip);
    assert!(f
        .etcd
        .etcdctl(&["get", &key])
        .unwrap()
        .contains("\"podUid\":\"uid-1\""));
    f.alloc
        .reserve(
            &lan6,
            &owner(2),
            IpRequest::Static(ip("fd00:230::ffff")),
            &MacRequest::None,
        )
        .await
        .unwrap();
}

#[tokio::test]
async fn bad_input_writes_nothing() {
    let f = fixture(Options::default()).await;
    let lan = put_subnet(
        &f.alloc,
        "lan",
        subnet_config("10.230.0.0/24", "10.230.0.1", vec![]),
    )
    .await;
    let rev = f.etcd.revision().await.unwrap();

    type Edit = fn(&mut SubnetConfig);
    let bad_subnets: &[(&str, Edit)] = &[
        ("cidr", |c| c.cidr = "10.230.0/24".into()),
        ("ranges[0].end", |c| {
            c.ranges = vec![range("10.230.0.10", "10.231.0.10")]
        }),
        ("gateway", |c| c.gateway = Some("192.168.1.1".into())),
        ("ranges[0].start", |c| {
            c.ranges = vec![range("10.230.0.90", "10.230.0.10")]
        }),
        ("ranges[0].start", |c| {
            c.ranges = vec![range("fd00::1", "fd00::2")]
        }),
    ];
    for (field, edit) in bad_subnets {
        let mut spec = subnet_config("10.230.0.0/24", "10.230.0.1", vec![]);
        edit(&mut spec);
        let err = f
            .alloc
            .put_subnet(&static_macvlan_allocator::Mirrored {
                name: "bad".into(),
                uid: None,
                generation: None,
                spec,
            })
            .await
            .unwrap_err();
        assert!(
            matches!(&err, Error::Invalid { field: f, .. } if f == field),
            "{field}: {err}"
        );
    }
    let bad_pools = [
        ("02:00:00:00:00:zz", "02:00:00:00:00:ff"),
        ("01:00:5e:00:00:00", "01:00:5e:00:00:ff"),
        ("02:00:00:00:00:ff", "02:00:00:00:00:00"),
    ];
    for (a, b) in bad_pools {
        let err = f
            .alloc
            .put_macpool(&static_macvlan_allocator::Mirrored {
                name: "bad".into(),
                uid: None,
                generation: None,
                spec: static_macvlan_allocator::MacPoolConfig {
                    ranges: vec![range(a, b)],
                    allow_global: false,
                },
            })
            .await
            .unwrap_err();
        assert!(matches!(err, Error::Invalid { .. }), "{a}-{b}: {err}");
    }

    let mut bad_owner = owner(1);
    bad_owner.pod_uid = "a/b".into();
    let err = f
        .alloc
        .reserve(&lan, &bad_owner, IpRequest::Auto, &MacRequest::None)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("owner.podUid"), "{err}");
    for (addr, what) in [
        ("10.230.1.5", "not inside"),
        ("10.230.0.1", "gateway"),
        ("10.230.0.255", "broadcast"),
    ] {
        let err = f
            .alloc
            .reserve(
                &lan,
                &owner(1),
                IpRequest::Static(ip(addr)),
                &MacRequest::None,
            )
            .await
            .unwrap_err();
        assert!(
            matches!(err, Error::OutsideSubnet { .. }) && err.to_string().contains(what),
            "{addr}: {err}"
        );
    }
    let err = f
        .alloc
        .reserve(
            &lan,
            &owner(1),
            IpRequest::Auto,
            &MacRequest::Static(mac("01:00:5e:00:00:01")),
        )
        .await
        .unwrap_err();
    assert!(err.to_string().contains("mac"), "{err}");

    assert_eq!(
        f.etcd.revision().await.unwrap(),
        rev,
        "bad input changed etcd"
    );
}

#[tokio::test]
async fn missing_config_is_a_clear_error() {
    let f = fixture(Options::default()).await;
    let err = f.alloc.get_subnet("nope").await.unwrap_err();
    assert!(
        matches!(err, Error::SubnetNotFound(..)) && err.to_string().contains("nope"),
        "{err}"
    );
    let err = f.alloc.get_macpool("nope").await.unwrap_err();
    assert!(matches!(err, Error::MacPoolNotFound(..)), "{err}");
    // A hand-written config that does not validate is reported as corrupt, with the reason.
    let key = f.alloc.keys().subnet("hand");
    f.etcd
        .etcdctl(&[
            "put",
            &key,
            r#"{"name":"hand","spec":{"master":"eth0","cidr":"10.0.0.0/33"}}"#,
        ])
        .unwrap();
    let err = f.alloc.get_subnet("hand").await.unwrap_err();
    assert!(
        matches!(err, Error::Corrupt { .. }) && err.to_string().contains("cidr"),
        "{err}"
    );
}

#[tokio::test]
async fn no_claim_in_a_subnet_whose_config_was_deleted() {
    let f = fixture(Options::default()).await;
    let lan = put_subnet(
        &f.alloc,
        "lan",
        subnet_config("10.230.0.0/24", "10.230.0.1", vec![]),
    )
    .await;
    // The operator deletes the config once no reservation uses it; a plugin that read the subnet
    // just before must not create a reservation after the deletion.
    f.etcd
        .etcdctl(&["del", &f.alloc.keys().subnet("lan")])
        .unwrap();
    let rev = f.etcd.revision().await.unwrap();
    let err = f
        .alloc
        .reserve(&lan, &owner(1), IpRequest::Auto, &MacRequest::None)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::SubnetNotFound(..)), "{err}");
    assert_eq!(f.etcd.revision().await.unwrap(), rev, "a claim was written");
}

#[tokio::test]
async fn records_name_the_network() {
    let f = fixture(Options::default()).await;
    let lan = put_subnet(
        &f.alloc,
        "lan",
        subnet_config("10.230.0.0/24", "10.230.0.1", vec![]),
    )
    .await;
    let mut o = owner(1);
    o.network = "lan-a".into();
    let r = f
        .alloc
        .reserve(&lan, &o, IpRequest::Auto, &MacRequest::None)
        .await
        .unwrap();
    let key = f.alloc.keys().ip("lan", r.record.ip);
    assert!(f
        .etcd
        .etcdctl(&["get", &key])
        .unwrap()
        .contains(r#""network":"lan-a""#));
    assert_eq!(
        f.alloc.by_node(&o.node).await.unwrap()[0]
            .record
            .owner
            .network,
        "lan-a"
    );
}
