//! Root functional tests: real netlink in a throwaway netns with a veth as the lower device.
//! A list of independent cases over one netns fixture, hence over 400 lines.

use std::os::unix::fs::MetadataExt;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use macvtap_link::tap::{TapError, TapNode};
use macvtap_link::*;

/// An ifindex no other test process uses (the kernel's own picks stay far below): `/dev/tap<ifindex>` is one node
/// for the whole machine, so links that must own theirs get indices nobody else has.
fn unique_index() -> u32 {
    static N: AtomicU32 = AtomicU32::new(0);
    10_000_000 + (std::process::id() % 1_000_000) * 1000 + N.fetch_add(1, Ordering::Relaxed) % 1000
}

/// The device number of the tap of `name` (index `index`) as the netns holding it sees it in its own sysfs.
fn sysfs_tap_dev(ns: &Ns, name: &str, index: u32) -> (u64, u64) {
    let out = Command::new("ip")
        .args(["netns", "exec", &ns.0, "cat"])
        .arg(format!("/sys/class/net/{name}/tap{index}/dev"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let s = String::from_utf8_lossy(&out.stdout);
    let (a, b) = s.trim().split_once(':').unwrap();
    (a.parse().unwrap(), b.parse().unwrap())
}

/// Minimal netns guard (this crate must not depend on the e2e harness, which pulls in kube).
struct Ns(String);

impl Ns {
    fn new() -> Self {
        static N: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "mvlink-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        ip(&["netns", "add", &name]);
        Ns(name)
    }
    fn path(&self) -> String {
        format!("/var/run/netns/{}", self.0)
    }
    fn ip(&self, args: &[&str]) -> String {
        let mut a = vec!["-n", &self.0];
        a.extend_from_slice(args);
        ip(&a)
    }
    /// Run an async netlink job inside this netns on its own thread.
    fn nl<T: Send, F: std::future::Future<Output = T>>(
        &self,
        f: impl FnOnce(Netlink) -> F + Send,
    ) -> T {
        in_netns(self.path(), || {
            block_on(async { f(Netlink::new().unwrap()).await }).unwrap()
        })
        .unwrap()
    }
}

impl Drop for Ns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

fn ip(args: &[&str]) -> String {
    let out = Command::new("ip").args(args).output().unwrap();
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn node_with_lower() -> Ns {
    let ns = Ns::new();
    ns.ip(&[
        "link",
        "add",
        "lower0",
        "txqueuelen",
        "1234",
        "type",
        "veth",
        "peer",
        "name",
        "peer0",
    ]);
    ns.ip(&["link", "set", "lower0", "up"]);
    ns.ip(&["link", "set", "peer0", "up"]);
    ns
}

#[test]
fn create_list_recreate_delete() {
    let ns = node_with_lower();
    let id = device_id("dataplane", 7);
    let name = host_link_name(&id);

    let at = unique_index();
    let first = ns.nl(|nl| {
        let id = id.clone();
        async move {
            nl.create_macvtap_at("lower0", &id, MacvtapMode::Vepa, Some(at))
                .await
                .unwrap()
        }
    });
    assert_eq!(first.index, at);
    assert_eq!(first.name, name);
    assert!(first.is_macvtap());
    assert!(first.is_ours(&id));
    assert_eq!(first.alias.as_deref(), Some(ownership_alias(&id).as_str()));
    assert_eq!(first.txqlen, 1234, "txqlen copied from the lower device");
    assert_eq!(first.macvtap_mode, Some(MacvtapMode::Vepa));
    assert!(first.admin_up);
    // What `ip` sees agrees with what we parsed.
    let shown = ns.ip(&["-d", "link", "show", &name]);
    assert!(shown.contains("macvtap mode vepa"), "{shown}");
    assert!(
        shown.contains(&format!("alias {}", ownership_alias(&id))),
        "{shown}"
    );
    let lower_idx = ns.nl(|nl| async move { nl.find_link("lower0").await.unwrap().unwrap().index });
    assert_eq!(first.parent_index, Some(lower_idx));

    // The tap node is named after the ifindex at creation, and it is this link's.
    let tap = TapNode::verify(&name, first.index).unwrap();
    assert_eq!(tap.path(), first.tap_path());
    assert_eq!(tap.device(), sysfs_tap_dev(&ns, &name, first.index));

    let ours = ns.nl(|nl| async move { nl.list_our_links().await.unwrap() });
    assert_eq!(ours.len(), 1);
    assert_eq!(ours[0].device_id, id);
    assert_eq!(ours[0].link.index, first.index);

    // Re-creating replaces a stale link of ours.
    let second = ns.nl(|nl| {
        let id = id.clone();
        async move {
            nl.create_macvtap("lower0", &id, MacvtapMode::Bridge)
                .await
                .unwrap()
        }
    });
    assert_ne!(second.index, first.index);
    assert_eq!(second.macvtap_mode, Some(MacvtapMode::Bridge));
    let again = ns.nl(|nl| async move { nl.link_by_index(first.index).await.unwrap() });
    assert!(again.is_none(), "the stale link is gone");

    let deleted = ns.nl(|nl| {
        let id = id.clone();
        async move {
            (
                nl.delete_our_link(&id).await.unwrap(),
                nl.delete_our_link(&id).await.unwrap(),
            )
        }
    });
    assert_eq!(deleted, (true, false));
    assert!(
        ns.nl(|nl| async move { nl.list_our_links().await.unwrap() })
            .is_empty()
    );
}

#[test]
fn refuses_links_that_are_not_ours() {
    let ns = node_with_lower();
    let id = device_id("foreign", 0);
    let name = host_link_name(&id);
    // A veth squatting on the name: neither replaced nor deleted.
    ns.ip(&[
        "link", "add", &name, "type", "veth", "peer", "name", "squat1",
    ]);
    let (create, delete) = ns.nl(|nl| {
        let id = id.clone();
        async move {
            (
                nl.create_macvtap("lower0", &id, MacvtapMode::Bridge)
                    .await
                    .map(|_| ()),
                nl.delete_our_link(&id).await,
            )
        }
    });
    assert!(matches!(create, Err(Error::NotOurs { .. })), "{create:?}");
    assert!(matches!(delete, Err(Error::NotOurs { .. })), "{delete:?}");
    assert!(ns.ip(&["link", "show", &name]).contains(&name));

    // A macvtap of the right name without our alias is not ours either.
    ns.ip(&["link", "del", &name]);
    ns.ip(&[
        "link", "add", "link", "lower0", "name", &name, "type", "macvtap",
    ]);
    let link = ns.nl(|nl| {
        let name = name.clone();
        async move { nl.find_link(&name).await.unwrap().unwrap() }
    });
    assert!(link.is_macvtap());
    assert!(!link.is_ours(&id));
    let delete = ns.nl(|nl| {
        let id = id.clone();
        async move { nl.delete_our_link(&id).await }
    });
    assert!(matches!(delete, Err(Error::NotOurs { .. })), "{delete:?}");
    assert!(ns.ip(&["link", "show", &name]).contains(&name));
    // An alias for another device ID does not make it ours.
    ns.ip(&["link", "set", &name, "alias", &ownership_alias("otherMvp1")]);
    let link = ns.nl(|nl| {
        let name = name.clone();
        async move { nl.find_link(&name).await.unwrap().unwrap() }
    });
    assert_eq!(link.marker_device_id(), Some("otherMvp1"));
    assert!(!link.is_ours(&id));
    assert!(
        !link.is_ours("otherMvp1"),
        "name does not match that device ID"
    );
}

#[test]
fn missing_lower_device() {
    let ns = Ns::new();
    let r = ns.nl(|nl| async move {
        nl.create_macvtap("nosuch0", "xMvp0", MacvtapMode::Bridge)
            .await
    });
    assert!(
        matches!(r, Err(Error::LowerDeviceNotFound(ref n)) if n == "nosuch0"),
        "{r:?}"
    );
    assert!(
        ns.nl(|nl| async move { nl.lower_device_state("nosuch0").await.unwrap() })
            .is_none()
    );
}

#[test]
fn lower_device_state_follows_admin_and_oper_state() {
    let ns = Ns::new();
    ns.ip(&[
        "link", "add", "lower0", "type", "veth", "peer", "name", "peer0",
    ]);
    let st = ns.nl(|nl| async move { nl.lower_device_state("lower0").await.unwrap().unwrap() });
    assert_eq!(st.kind.as_deref(), Some("veth"));
    assert!(!st.admin_up && !st.oper_up);
    ns.ip(&["link", "set", "lower0", "up"]);
    let st = ns.nl(|nl| async move { nl.lower_device_state("lower0").await.unwrap().unwrap() });
    assert!(st.admin_up);
    assert!(!st.oper_up, "peer down: no carrier");
    ns.ip(&["link", "set", "peer0", "up"]);
    let st = ns.nl(|nl| async move { nl.lower_device_state("lower0").await.unwrap().unwrap() });
    assert!(st.admin_up && st.oper_up);
}

#[test]
fn move_rename_configure_in_another_netns() {
    let node = node_with_lower();
    let pod = Ns::new();
    let id = device_id("mv", 1);
    let created = node.nl(|nl| {
        let id = id.clone();
        async move {
            nl.create_macvtap("lower0", &id, MacvtapMode::Bridge)
                .await
                .unwrap()
        }
    });
    let pod_file = std::fs::File::open(pod.path()).unwrap();
    node.nl(|nl| async move {
        nl.move_to_netns(created.index, &pod_file, Some("net1"))
            .await
            .unwrap()
    });
    let in_pod = pod.nl(|nl| async move {
        let l = nl.find_link("net1").await.unwrap().unwrap();
        let change = LinkChange {
            mtu: Some(1400),
            mac: Some([0x02, 0, 0, 0, 0, 0x42]),
            promisc: Some(true),
            up: Some(true),
            ..Default::default()
        };
        nl.set_link(l.index, &change).await.unwrap();
        nl.add_address(l.index, "10.9.0.5".parse().unwrap(), 24)
            .await
            .unwrap();
        nl.add_route(
            "10.10.0.0".parse().unwrap(),
            16,
            Some("10.9.0.1".parse().unwrap()),
            l.index,
        )
        .await
        .unwrap();
        let l = nl.link_by_index(l.index).await.unwrap().unwrap();
        let addrs = nl.addresses(l.index).await.unwrap();
        (l, addrs, nl.routes().await.unwrap())
    });
    let (l, addrs, routes) = in_pod;
    assert_eq!(
        l.marker_device_id(),
        Some(id.as_str()),
        "the alias travels with the link"
    );
    assert_eq!(l.mtu, 1400);
    assert_eq!(l.mac_string().as_deref(), Some("02:00:00:00:00:42"));
    assert!(l.promisc && l.admin_up);
    assert!(
        addrs.contains(&LinkAddress {
            ip: "10.9.0.5".parse().unwrap(),
            prefix_len: 24
        }),
        "{addrs:?}"
    );
    assert!(routes.iter().any(
        |r| r.dst == "10.10.0.0".parse::<std::net::IpAddr>().unwrap()
            && r.dst_len == 16
            && r.gateway == Some("10.9.0.1".parse().unwrap())
            && r.oif == Some(l.index)
    ));
    // Gone from the node.
    assert!(
        node.nl(|nl| async move { nl.list_our_links().await.unwrap() })
            .is_empty()
    );
}

#[test]
fn in_netns_does_not_move_the_caller() {
    let ns = Ns::new();
    let before = std::fs::read_link("/proc/thread-self/ns/net").unwrap();
    let inside = in_netns(ns.path(), || {
        std::fs::read_link("/proc/thread-self/ns/net").unwrap()
    })
    .unwrap();
    assert_ne!(before, inside);
    assert_eq!(
        std::fs::read_link("/proc/thread-self/ns/net").unwrap(),
        before
    );
    assert!(matches!(
        in_netns("/nonexistent/netns", || ()),
        Err(Error::Netns { .. })
    ));
}

#[test]
fn in_netns_here_returns_the_thread_even_after_a_panic() {
    let ns = Ns::new();
    let me = || std::fs::read_link("/proc/thread-self/ns/net").unwrap();
    let before = me();
    let (inside, thread) =
        in_netns_here(ns.path(), || (me(), std::thread::current().id())).unwrap();
    assert_ne!(before, inside);
    assert_eq!(thread, std::thread::current().id(), "no thread started");
    assert_eq!(me(), before);
    let panicked = std::panic::catch_unwind(|| {
        in_netns_here(ns.path(), || panic!("inside")).unwrap();
    });
    assert!(panicked.is_err());
    assert_eq!(me(), before, "back after a panic");
    assert!(matches!(
        in_netns_here("/nonexistent/netns", || ()),
        Err(Error::Netns { .. })
    ));
    assert_eq!(me(), before);
}

#[test]
fn unmarked_original_links_are_recognised_but_not_ours() {
    let ns = node_with_lower();
    let id = device_id("orig", 0);
    let name = host_link_name(&id);
    // What kubevirt/macvtap-cni's device plugin leaves: a macvtap of the scheme's name, no alias.
    ns.ip(&[
        "link", "add", "link", "lower0", "name", &name, "type", "macvtap",
    ]);
    let get = |n: &str| {
        let n = n.to_string();
        ns.nl(|nl| async move { nl.find_link(&n).await.unwrap().unwrap() })
    };
    let l = get(&name);
    assert!(l.is_unmarked_original(&id));
    assert!(!l.is_ours(&id), "no marker, not ours");
    assert!(
        !l.is_unmarked_original("origMvp1"),
        "named for another device ID"
    );
    // Any alias is someone's marker: not the original's link any more.
    ns.ip(&["link", "set", &name, "alias", "something"]);
    assert!(!get(&name).is_unmarked_original(&id));
    // Not a macvtap.
    let id2 = device_id("orig", 2);
    let name2 = host_link_name(&id2);
    ns.ip(&[
        "link", "add", &name2, "type", "veth", "peer", "name", "squat2",
    ]);
    assert!(!get(&name2).is_unmarked_original(&id2));
}

/// The move keeps the ifindex (so `/dev/tapN` stays this link's) or does not happen at all.
#[test]
fn move_keeping_index_or_not_at_all() {
    let node = node_with_lower();
    let pod = Ns::new();
    let id = device_id("keep", 0);
    let name = host_link_name(&id);
    let at = unique_index();
    node.nl(|nl| {
        let id = id.clone();
        async move {
            nl.create_macvtap_at("lower0", &id, MacvtapMode::Bridge, Some(at))
                .await
                .unwrap()
        }
    });
    // The pod already has a link with that index.
    pod.ip(&[
        "link",
        "add",
        "squat0",
        "index",
        &at.to_string(),
        "type",
        "veth",
        "peer",
        "name",
        "squat1",
    ]);
    let pod_file = std::fs::File::open(pod.path()).unwrap();
    let moved = node.nl(|nl| {
        let f = &pod_file;
        async move { nl.move_to_netns_keeping_index(at, f).await }
    });
    let err = moved.expect_err("the index is taken in the pod");
    assert!(err.is_busy(), "{err:?}");
    let still = node.nl(|nl| {
        let name = name.clone();
        async move { nl.find_link(&name).await.unwrap().unwrap() }
    });
    assert_eq!(still.index, at, "untouched on the node");
    assert!(still.is_ours(&id));
    TapNode::verify(&name, at).unwrap();

    pod.ip(&["link", "del", "squat0"]);
    node.nl(|nl| {
        let f = &pod_file;
        async move { nl.move_to_netns_keeping_index(at, f).await.unwrap() }
    });
    let in_pod = pod.nl(|nl| async move { nl.link_by_index(at).await.unwrap().unwrap() });
    assert_eq!(in_pod.name, name);
    // The kernel re-created the tap for the pod: same node name, still this link's, also after a rename.
    let tap = TapNode::verify(&name, at).unwrap();
    assert_eq!(tap.device(), sysfs_tap_dev(&pod, &name, at));
    pod.ip(&["link", "set", &name, "name", "net1"]);
    TapNode::verify("net1", at).unwrap();
    assert!(matches!(
        TapNode::verify(&name, at),
        Err(TapError::OtherDevice { .. })
    ));
}

/// devtmpfs is shared: a second macvtap with the same ifindex in another netns gets no node of its own, and
/// `/dev/tapN` keeps naming the first one's device. The check tells them apart; the chown reaches the right node.
#[test]
fn tap_of_a_colliding_index_is_refused_and_the_right_one_chowned() {
    let first = node_with_lower();
    let second = node_with_lower();
    let at = unique_index();
    let create = |ns: &Ns, id: &str| {
        let id = id.to_string();
        ns.nl(|nl| async move {
            nl.create_macvtap_at("lower0", &id, MacvtapMode::Bridge, Some(at))
                .await
                .unwrap()
        })
    };
    let a = create(&first, &device_id("tapa", 0));
    let b = create(&second, &device_id("tapb", 0));
    assert_eq!((a.index, b.index), (at, at));
    let tap = TapNode::verify(&a.name, at).unwrap();
    match TapNode::verify(&b.name, at) {
        Err(TapError::OtherDevice { owner, .. }) => assert!(owner.contains(&a.name), "{owner}"),
        other => panic!("the second link must not get the first one's node: {other:?}"),
    }
    tap.chown(Some(4242), Some(4343)).unwrap();
    let md = std::fs::metadata(a.tap_path()).unwrap();
    assert_eq!((md.uid(), md.gid()), (4242, 4343));
    assert_eq!(
        (
            nix::sys::stat::major(md.rdev()),
            nix::sys::stat::minor(md.rdev())
        ),
        sysfs_tap_dev(&first, &a.name, at)
    );
    // Once the first goes, the second has no node at all.
    drop(first);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    // The kernel tears a deleted netns down asynchronously.
    while a.tap_path().exists() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert!(matches!(
        TapNode::verify(&b.name, at),
        Err(TapError::Missing { .. })
    ));
}

/// An index of the in-place range no other test process uses.
fn unique_tap_index() -> u32 {
    static N: AtomicU32 = AtomicU32::new(0);
    macvtap_core::allocation::TAP_INDEX_FIRST
        + (std::process::id() % 16_000) * 1000
        + N.fetch_add(1, Ordering::Relaxed) % 1000
}

/// In-place attach: one request creates the macvtap inside the pod's netns with its name, index, MAC, MTU, promisc
/// and up state; its tap is `/dev/tap<index>`; the node netns never sees it; a taken name or index is refused with
/// nothing created.
#[test]
fn create_in_another_netns_in_one_request() {
    let node = node_with_lower();
    let pod = Ns::new();
    let at = unique_tap_index();
    let mac = [0x02, 0x11, 0x22, 0x33, 0x44, 0x55];
    let pod_fd = std::fs::File::open(pod.path()).unwrap();
    let create = |name: &'static str, index: u32, mtu: Option<u32>| {
        let fd = pod_fd.try_clone().unwrap();
        node.nl(move |nl| async move {
            let lower = nl.find_link("lower0").await.unwrap().unwrap();
            let spec = PodMacvtap {
                name,
                index,
                lower: &lower,
                mode: MacvtapMode::Vepa,
                mac,
                mtu,
                promisc: true,
                up: true,
            };
            nl.create_macvtap_in(&spec, &fd).await
        })
    };
    create("net1", at, Some(1400)).unwrap();
    let link = pod.nl(|nl| async move { nl.find_link("net1").await.unwrap().unwrap() });
    assert_eq!(link.index, at);
    assert!(link.is_macvtap());
    assert_eq!(link.macvtap_mode, Some(MacvtapMode::Vepa));
    assert_eq!(link.mac.as_deref(), Some(&mac[..]));
    assert_eq!(link.mtu, 1400);
    assert_eq!(link.txqlen, 1234, "txqlen of the lower device");
    assert!(link.promisc && link.admin_up);
    assert!(link.alias.is_none(), "the kernel sets no alias on creation");
    assert!(
        node.nl(|nl| async move { nl.link_by_index(at).await.unwrap() })
            .is_none(),
        "created in the pod only"
    );
    let tap = TapNode::verify("net1", at).unwrap();
    assert_eq!(tap.device(), sysfs_tap_dev(&pod, "net1", at));

    // Taken index, taken name, MTU above the lower device's: refused, nothing created.
    let e = create("net2", at, None).unwrap_err();
    assert!(e.is_exists(), "{e}");
    let e = create("net1", unique_tap_index(), None).unwrap_err();
    assert!(e.is_exists(), "{e}");
    let e = create("net3", unique_tap_index(), Some(9000)).unwrap_err();
    assert_eq!(e.errno(), Some(nix::libc::EINVAL), "{e}");
    let e = create("net4", 0, None).unwrap_err();
    assert!(matches!(e, Error::InvalidIndex(0)), "{e}");
    let names: Vec<String> = pod.nl(|nl| async move {
        nl.list_links()
            .await
            .unwrap()
            .into_iter()
            .map(|l| l.name)
            .collect()
    });
    assert_eq!(names, ["lo", "net1"]);

    // The tap goes with the link.
    pod.ip(&["link", "del", "net1"]);
    assert!(matches!(
        TapNode::verify("net1", at),
        Err(TapError::Missing { .. })
    ));
}

#[test]
fn a_link_subscription_wakes_on_a_change_and_reads_the_table() {
    let ns = Ns::new();
    let name = ns.0.clone();
    let (woke, seen) = in_netns(ns.path(), || {
        block_on(async {
            let mut sub = Netlink::subscribe_links().unwrap();
            let before = sub.links().await.unwrap();
            assert!(before.iter().all(|l| l.name != "probe0"), "{before:?}");
            ip(&[
                "-n", &name, "link", "add", "probe0", "type", "veth", "peer", "name", "probe1",
            ]);
            // No timer in this runtime: a detached thread bounds the wait, so a deaf subscription fails, not hangs.
            let (tx, deadline) = futures::channel::oneshot::channel::<()>();
            std::thread::spawn(move || {
                std::thread::sleep(std::time::Duration::from_secs(10));
                let _ = tx.send(());
            });
            let woke = match futures::future::select(Box::pin(sub.changed()), deadline).await {
                futures::future::Either::Left((woke, _)) => woke,
                futures::future::Either::Right(_) => false,
            };
            let seen = sub.links().await.unwrap();
            (woke, seen.iter().any(|l| l.name == "probe0"))
        })
        .unwrap()
    })
    .unwrap();
    assert!(woke, "no link event within 10 s of adding a link");
    assert!(seen, "the re-read table has the new link");
}
