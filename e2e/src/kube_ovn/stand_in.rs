//! A stand-in for the kube-ovn daemon (`kube-ovn-cni`'s CNI server) that the real `kube-ovn` CNI binary talks
//! to: HTTP/1.1 over a unix socket, `POST /api/v1/add` answered 200 with the v1.16.x `CniResponse` JSON
//! (`{ips:[{protocol,ip,cidr,gateway?}], mac_address, routes, mtu, nicname, dns}`), `POST /api/v1/del` answered
//! 204. Answers come from "pod annotations" the test sets, as the real daemon does for an IPAM-only provider:
//! `<provider>.kubernetes.io/ip_address|cidr|gateway|mac_address|routes|default_route`, with the gateway only
//! for the default-route interface (`default_route: "true"`, or `eth0` when that annotation is absent).
//!
//! Shapes checked against kubeovn/kube-ovn v1.16.2 `pkg/request/cniserver.go` and `cmd/cni/cni.go`. The real
//! daemon polls up to 20 s for the annotation; this one answers 500 at once when it is missing (the CNI binary turns
//! any non-200 into CNI error 11).
//!
//! ```no_run
//! use macvtap_e2e::kube_ovn::stand_in::KubeOvnDaemon;
//! let d = KubeOvnDaemon::start("/tmp/kube-ovn-test.sock").unwrap();
//! d.set_annotation("default", "vm1", "macvtap-nad.default.kubernetes.io/ip_address", "10.16.0.5");
//! d.set_annotation("default", "vm1", "macvtap-nad.default.kubernetes.io/cidr", "10.16.0.0/16");
//! ```

use std::collections::{BTreeMap, HashMap};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use serde_json::{Value, json};

type Annotations = BTreeMap<String, String>;

#[derive(Default)]
struct State {
    /// (namespace, pod name) → annotations.
    pods: HashMap<(String, String), Annotations>,
    /// Every request received: (path, JSON body).
    requests: Vec<(String, Value)>,
}

/// The running stand-in; stops and removes its socket on drop.
pub struct KubeOvnDaemon {
    socket: PathBuf,
    state: Arc<Mutex<State>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl KubeOvnDaemon {
    /// Listen on `socket` (a stale file there is removed first).
    pub fn start(socket: impl Into<PathBuf>) -> io::Result<Self> {
        let socket = socket.into();
        let _ = std::fs::remove_file(&socket);
        let listener = UnixListener::bind(&socket)?;
        let state = Arc::new(Mutex::new(State::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let (st, sp) = (state.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            for conn in listener.incoming() {
                if sp.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                let st = st.clone();
                // One thread per connection: parallel CNI invocations must not serialise behind each other.
                std::thread::spawn(move || {
                    if let Err(e) = serve(conn, &st) {
                        eprintln!("kube-ovn stand-in: {e}");
                    }
                });
            }
        });
        Ok(Self {
            socket,
            state,
            stop,
            thread: Some(thread),
        })
    }

    pub fn socket_path(&self) -> &Path {
        &self.socket
    }

    /// Set one annotation on pod `namespace/name`, as kube-ovn-controller would.
    pub fn set_annotation(&self, namespace: &str, name: &str, key: &str, value: &str) {
        let mut s = self.state.lock().unwrap();
        s.pods
            .entry((namespace.into(), name.into()))
            .or_default()
            .insert(key.into(), value.into());
    }

    /// Requests received so far: (path, body).
    pub fn requests(&self) -> Vec<(String, Value)> {
        self.state.lock().unwrap().requests.clone()
    }
}

impl Drop for KubeOvnDaemon {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop; when its socket file is already gone, nothing can, so leave the thread (it
        // holds no resource but the listener) rather than block forever.
        let woken = UnixStream::connect(&self.socket).is_ok();
        if let Some(t) = self.thread.take()
            && woken
        {
            let _ = t.join();
        }
        let _ = std::fs::remove_file(&self.socket);
    }
}

fn serve(conn: UnixStream, state: &Mutex<State>) -> io::Result<()> {
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut line = String::new();
    if reader.read_line(&mut line)? == 0 {
        return Ok(());
    }
    let mut parts = line.split_whitespace();
    let (method, path) = (
        parts.next().unwrap_or("").to_string(),
        parts.next().unwrap_or("").to_string(),
    );
    let mut content_length = 0usize;
    let mut chunked = false;
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h)? == 0 || h == "\r\n" || h == "\n" {
            break;
        }
        let (k, v) = h.split_once(':').unwrap_or((&h, ""));
        match k.trim().to_ascii_lowercase().as_str() {
            "content-length" => content_length = v.trim().parse().unwrap_or(0),
            "transfer-encoding" => chunked = v.trim().eq_ignore_ascii_case("chunked"),
            _ => {}
        }
    }
    let body = if chunked {
        read_chunked(&mut reader)?
    } else {
        read_exact(&mut reader, content_length)?
    };
    let req: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    state
        .lock()
        .unwrap()
        .requests
        .push((path.clone(), req.clone()));
    let (status, reply) = match (method.as_str(), path.as_str()) {
        ("POST", "/api/v1/add") => add(&req, state),
        ("POST", "/api/v1/del") => (204, None),
        _ => (
            404,
            Some(json!({"error": format!("no route {method} {path}")})),
        ),
    };
    let body = reply.map(|v| v.to_string()).unwrap_or_default();
    let reason = match status {
        200 => "OK",
        204 => "No Content",
        400 => "Bad Request",
        404 => "Not Found",
        _ => "Internal Server Error",
    };
    let mut w = conn;
    let mut head = format!("HTTP/1.1 {status} {reason}\r\nConnection: close\r\n");
    if status != 204 {
        head.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            body.len()
        ));
    }
    head.push_str("\r\n");
    w.write_all(head.as_bytes())?;
    if status != 204 {
        w.write_all(body.as_bytes())?;
    }
    w.flush()
}

fn read_exact(r: &mut impl Read, n: usize) -> io::Result<Vec<u8>> {
    let mut buf = vec![0; n];
    r.read_exact(&mut buf)?;
    Ok(buf)
}

fn read_chunked(r: &mut BufReader<UnixStream>) -> io::Result<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let mut size = String::new();
        r.read_line(&mut size)?;
        let n =
            usize::from_str_radix(size.trim().split(';').next().unwrap_or("0"), 16).unwrap_or(0);
        if n == 0 {
            let mut crlf = String::new();
            r.read_line(&mut crlf)?;
            return Ok(out);
        }
        out.extend(read_exact(r, n)?);
        read_exact(r, 2)?;
    }
}

fn add(req: &Value, state: &Mutex<State>) -> (u16, Option<Value>) {
    let s = |k: &str| {
        req.get(k)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string()
    };
    let (ns, pod, if_name) = (s("pod_namespace"), s("pod_name"), s("if_name"));
    let mut provider = s("provider");
    // The real daemon strips a trailing ".<ifName>" from the provider.
    if let Some(p) = provider.strip_suffix(&format!(".{if_name}")) {
        provider = p.to_string();
    }
    let annotations = state
        .lock()
        .unwrap()
        .pods
        .get(&(ns.clone(), pod.clone()))
        .cloned()
        .unwrap_or_default();
    let get = |key: &str| {
        annotations
            .get(&format!("{provider}.kubernetes.io/{key}"))
            .cloned()
            .unwrap_or_default()
    };
    let ip_address = get("ip_address");
    if ip_address.is_empty() {
        return (
            500,
            Some(
                json!({"error": format!("no {provider}.kubernetes.io/ip_address annotation on {ns}/{pod}")}),
            ),
        );
    }
    let default_route = match get("default_route").as_str() {
        "" => if_name == "eth0",
        v => v == "true",
    };
    let (cidrs, gateways) = (get("cidr"), get("gateway"));
    let is_v6 = |a: &str| a.contains(':');
    let ips: Vec<Value> = ip_address
        .split(',')
        .map(|ip| {
            let v6 = is_v6(ip);
            let cidr = cidrs
                .split(',')
                .find(|c| is_v6(c) == v6)
                .unwrap_or_default();
            let mut e =
                json!({"protocol": if v6 { "IPv6" } else { "IPv4" }, "ip": ip, "cidr": cidr});
            if default_route
                && let Some(gw) = gateways
                    .split(',')
                    .find(|g| !g.is_empty() && is_v6(g) == v6)
            {
                e["gateway"] = json!(gw);
            }
            e
        })
        .collect();
    let mut routes: Vec<Value> = req
        .get("routes")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    if let Ok(Value::Array(extra)) = serde_json::from_str::<Value>(&get("routes")) {
        routes.extend(extra);
    }
    let reply = json!({
        "ips": ips,
        "mac_address": get("mac_address"),
        "routes": routes,
        "mtu": 0,
        "nicname": "",
        "dns": {},
    });
    (200, Some(reply))
}
