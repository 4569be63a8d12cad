//! Root functional tests: real netlink in a throwaway netns with a veth as the lower device.

use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use macvtap_link::*;

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

    let first = ns.nl(|nl| {
        let id = id.clone();
        async move {
            nl.create_macvtap("lower0", &id, MacvtapMode::Vepa)
                .await
                .unwrap()
        }
    });
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

    // The tap node is named after the ifindex at creation.
    let tap_ok = first.tap_path().exists();
    eprintln!("{} exists: {tap_ok}", first.tap_path().display());

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
