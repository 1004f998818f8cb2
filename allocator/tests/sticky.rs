//! Sticky reservations against a real etcd: an address follows a key (e.g. namespace/name)
//! across pod re-creation for a hold time, and invariant 3 still holds.

mod common;

use std::time::{Duration, Instant};

use common::*;
use static_macvlan_allocator::{
    Error, IpRequest, MacRequest, Options, Released, State, StickyHold,
};

fn hold(key: &str, secs: u64) -> StickyHold {
    StickyHold {
        key: key.into(),
        hold: Duration::from_secs(secs),
    }
}

#[tokio::test]
async fn a_recreated_pod_gets_its_address_back_and_a_stale_del_frees_nothing() {
    let f = fixture(Options::default()).await;
    let lan = put_subnet(
        &f.alloc,
        "lan",
        subnet_config("10.230.0.0/24", "10.230.0.1", vec![]),
    )
    .await;
    let pool = put_pool(&f.alloc, "vms", "02:00:00:00:00:00", "02:00:00:00:ff:ff").await;
    let mac = MacRequest::Auto(pool);
    let key = hold("default/web-0", 60);
    let first = owner(1);
    let r = f
        .alloc
        .reserve_sticky(&lan, &first, IpRequest::Auto, &mac, Some(&key))
        .await
        .unwrap();
    let r = f.alloc.commit(&r).await.unwrap();

    // The pod goes: its address is held for the key, not freed.
    assert!(matches!(
        f.alloc.release(&first).await.unwrap(),
        Released::Freed(_)
    ));
    let held = f
        .alloc
        .holder_of_ip("lan", r.record.ip)
        .await
        .unwrap()
        .expect("held");
    assert_eq!(held.record.state, State::Held);
    assert!(f
        .alloc
        .attachment(&first.pod_uid, "net1")
        .await
        .unwrap()
        .is_none());
    assert_eq!(f.alloc.usage(&lan).await.unwrap().used, 1);

    // A new pod (new UID) with the same key gets the same IP and MAC.
    let mut second = owner(2);
    second.pod = first.pod.clone();
    let again = f
        .alloc
        .reserve_sticky(&lan, &second, IpRequest::Auto, &mac, Some(&key))
        .await
        .unwrap();
    assert_eq!(
        (again.record.ip, again.record.mac),
        (r.record.ip, r.record.mac)
    );
    assert_eq!(again.record.owner.pod_uid, second.pod_uid);
    let again = f.alloc.commit(&again).await.unwrap();
    assert_eq!(again.record.state, State::Committed);

    // Invariant 3: a late DEL of the first incarnation frees nothing.
    assert_eq!(f.alloc.release(&first).await.unwrap(), Released::NotHeld);
    let now = f
        .alloc
        .holder_of_ip("lan", r.record.ip)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(now.record.owner.pod_uid, second.pod_uid);
    assert_eq!(now.record.state, State::Committed);

    // While the second pod holds it, a third pod with the key is told to retry.
    let err = f
        .alloc
        .reserve_sticky(&lan, &owner(3), IpRequest::Auto, &mac, Some(&key))
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::StickyInUse { .. }) && err.is_retryable(),
        "{err}"
    );
    // A static request that differs from the held address is refused, not substituted.
    f.alloc.release(&second).await.unwrap();
    let other = if r.record.ip.to_string() == "10.230.0.99" {
        "10.230.0.98"
    } else {
        "10.230.0.99"
    };
    let err = f
        .alloc
        .reserve_sticky(
            &lan,
            &owner(4),
            IpRequest::Static(other.parse().unwrap()),
            &mac,
            Some(&key),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, Error::AttachmentConflict { .. }), "{err}");
}

#[tokio::test]
async fn the_hold_expires_and_frees_the_address() {
    let f = fixture(Options::default()).await;
    let lan = put_subnet(
        &f.alloc,
        "lan",
        subnet_config("10.230.0.0/24", "10.230.0.1", vec![]),
    )
    .await;
    let key = hold("default/db-0", 2);
    let r = f
        .alloc
        .reserve_sticky(
            &lan,
            &owner(1),
            IpRequest::Auto,
            &MacRequest::None,
            Some(&key),
        )
        .await
        .unwrap();
    f.alloc.commit(&r).await.unwrap();
    f.alloc.release(&owner(1)).await.unwrap();
    let start = Instant::now();
    while f
        .alloc
        .holder_of_ip("lan", r.record.ip)
        .await
        .unwrap()
        .is_some()
    {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "hold never expired"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(f.alloc.usage(&lan).await.unwrap().used, 0);
    // The key starts afresh.
    let fresh = f
        .alloc
        .reserve_sticky(
            &lan,
            &owner(2),
            IpRequest::Auto,
            &MacRequest::None,
            Some(&key),
        )
        .await
        .unwrap();
    assert_eq!(fresh.record.owner.pod_uid, "uid-2");
}

#[tokio::test]
async fn garbage_collection_holds_sticky_reservations_too() {
    let f = fixture(Options::default()).await;
    let lan = put_subnet(
        &f.alloc,
        "lan",
        subnet_config("10.230.0.0/24", "10.230.0.1", vec![]),
    )
    .await;
    let key = hold("vms/vm-1", 60);
    let r = f
        .alloc
        .reserve_sticky(
            &lan,
            &owner(1),
            IpRequest::Auto,
            &MacRequest::None,
            Some(&key),
        )
        .await
        .unwrap();
    let r = f.alloc.commit(&r).await.unwrap();
    assert!(f.alloc.release_exact(&r).await.unwrap());
    let held = f
        .alloc
        .holder_of_ip("lan", r.record.ip)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(held.record.state, State::Held);
    // Nothing of the held reservation shows as an attachment any more.
    assert!(f.alloc.all().await.unwrap().is_empty());
    assert!(f.alloc.by_node(&owner(1).node).await.unwrap().is_empty());
}
