//! `NetnsGuard`, `Netns::run`, sysctls and `Netlink::open_in` against real namespaces.

mod netlink_common;

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use static_macvlan_cni::netlink::{set_notify_sysctls, NetError, Netlink};
use static_macvlan_cni::netns::{read_sysctl, write_sysctl, Netns, NetnsGuard};
use static_macvlan_testkit::netns::{NetNs, Veth};

/// The inode of the calling thread's network namespace.
fn current_ns() -> u64 {
    std::fs::metadata("/proc/thread-self/ns/net")
        .expect("stat own netns")
        .ino()
}

fn ns_ino(path: &Path) -> u64 {
    std::fs::metadata(path).expect("stat netns").ino()
}

#[test]
fn guard_enters_and_restores_on_drop() {
    let pod = NetNs::new("nsg").unwrap();
    let home = current_ns();
    {
        let _guard = NetnsGuard::enter(pod.path()).unwrap();
        assert_eq!(current_ns(), ns_ino(&pod.path()));
        assert_ne!(current_ns(), home);
    }
    assert_eq!(current_ns(), home);
}

#[test]
fn guard_restores_after_early_return_and_panic() {
    let pod = NetNs::new("nsg").unwrap();
    let home = current_ns();

    fn fails_inside(path: &Path) -> Result<(), NetError> {
        let _guard = NetnsGuard::enter(path)?;
        Err(NetError::LinkNotFound {
            name: "nothing".into(),
        })?;
        unreachable!()
    }
    assert!(fails_inside(&pod.path()).is_err());
    assert_eq!(current_ns(), home, "an early `?` left the thread inside");

    let path = pod.path();
    let result = std::panic::catch_unwind(|| {
        let _guard = NetnsGuard::enter(&path).unwrap();
        panic!("boom inside the pod namespace");
    });
    assert!(result.is_err());
    assert_eq!(current_ns(), home, "a panic left the thread inside");
}

#[test]
fn guards_nest() {
    let a = NetNs::new("nsa").unwrap();
    let b = NetNs::new("nsb").unwrap();
    let home = current_ns();
    let ga = NetnsGuard::enter(a.path()).unwrap();
    {
        let _gb = NetnsGuard::enter(b.path()).unwrap();
        assert_eq!(current_ns(), ns_ino(&b.path()));
    }
    assert_eq!(current_ns(), ns_ino(&a.path()));
    drop(ga);
    assert_eq!(current_ns(), home);
}

#[test]
fn entering_a_missing_or_non_namespace_path_fails_and_stays_home() {
    let home = current_ns();
    let err = NetnsGuard::enter("/var/run/netns/static-macvlan-no-such-ns").unwrap_err();
    match &err {
        NetError::Netns { source, path, .. } => {
            assert_eq!(source.kind(), std::io::ErrorKind::NotFound);
            assert!(path.ends_with("static-macvlan-no-such-ns"));
        }
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(
        err.to_string(),
        "open network namespace /var/run/netns/static-macvlan-no-such-ns: No such file or directory (os error 2)"
    );

    let err = NetnsGuard::enter("/proc/self/status").unwrap_err();
    assert!(
        err.to_string()
            .starts_with("enter network namespace /proc/self/status: "),
        "{err}"
    );
    assert_eq!(err.errno(), Some(nix::libc::EINVAL));
    assert_eq!(current_ns(), home);
}

#[test]
fn run_and_sysctls_act_only_inside_the_namespace() {
    let pod = NetNs::new("nss").unwrap();
    let key = "net/ipv4/conf/lo/arp_notify";
    let home_value = read_sysctl(key).unwrap();

    let ns = Netns::open(pod.path()).unwrap();
    let home = current_ns();
    let inside = ns.run(current_ns).unwrap();
    assert_eq!(inside, ns_ino(&pod.path()));
    assert_eq!(current_ns(), home);

    ns.run(|| write_sysctl(key, "1")).unwrap().unwrap();
    assert_eq!(
        pod.run(&["cat", "/proc/sys/net/ipv4/conf/lo/arp_notify"])
            .unwrap()
            .trim(),
        "1"
    );
    assert_eq!(ns.run(|| read_sysctl(key)).unwrap().unwrap(), "1");
    assert_eq!(read_sysctl(key).unwrap(), home_value, "host sysctl changed");

    let err = ns
        .run(|| write_sysctl("net/ipv4/conf/nope0/arp_notify", "1"))
        .unwrap()
        .unwrap_err();
    assert!(
        matches!(err, NetError::Sysctl { ref source, .. } if source.kind() == std::io::ErrorKind::NotFound)
    );
}

#[tokio::test]
async fn notify_sysctls_are_set_for_a_pod_interface() {
    let pod = NetNs::new("nsn").unwrap();
    let peer = NetNs::new("nsp").unwrap();
    Veth::pair("net1", &pod, "peer0", &peer).unwrap();
    let ns = Netns::open(pod.path()).unwrap();
    set_notify_sysctls(&ns, "net1").unwrap();
    let read = |k: &str| pod.run(&["cat", &format!("/proc/sys/{k}")]).unwrap();
    assert_eq!(read("net/ipv4/conf/net1/arp_notify").trim(), "1");
    if Path::new("/proc/sys/net/ipv6").exists() {
        assert_eq!(read("net/ipv6/conf/net1/ndisc_notify").trim(), "1");
    }
    assert!(matches!(
        set_notify_sysctls(&ns, "absent0"),
        Err(NetError::Sysctl { .. })
    ));
}

#[tokio::test]
async fn netlink_opened_in_a_namespace_sees_that_namespace_only() {
    let pod = NetNs::new("nsl").unwrap();
    let peer = NetNs::new("nsp").unwrap();
    Veth::pair("net7", &pod, "peer7", &peer).unwrap();
    let home = current_ns();
    let nl = Netlink::open_in(&Netns::open(pod.path()).unwrap()).unwrap();
    assert_eq!(current_ns(), home);
    let names: Vec<String> = nl
        .links()
        .await
        .unwrap()
        .into_iter()
        .map(|l| l.name)
        .collect();
    assert_eq!(names, vec!["lo".to_string(), "net7".to_string()]);
    let link = nl.link_by_name("net7").await.unwrap();
    assert_eq!(link.kind.as_deref(), Some("veth"));
    assert!(link.up);
    assert!(!nl.link_exists("peer7").await.unwrap());
    assert!(matches!(
        nl.link_by_name("peer7").await,
        Err(NetError::LinkNotFound { name }) if name == "peer7"
    ));
}
