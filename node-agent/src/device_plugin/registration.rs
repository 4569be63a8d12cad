//! The registration state machine of one resource: serve a generation of the gRPC server on
//! `<dir>/macvtap-<name>.sock`, register it with the kubelet, and serve + register again whenever the kubelet
//! restarts.
//!
//! A kubelet restart removes every socket in the directory and creates `kubelet.sock` again. The loop notices
//! either its own socket vanishing or `kubelet.sock` changing identity ([`DirState`]), ends the generation (which
//! also ends its ListAndWatch streams, so none leak), binds a new one and registers again.
//!
//! A kubelet that dies and leaves its files behind is seen by the directory's probe ([`Kubelet::NotAnswering`]):
//! the resource is marked not registered, with the reason, while our server keeps serving (a kubelet that is down
//! makes the agent unready, not unhealthy). Whatever answers next on `kubelet.sock` is a new
//! [`Kubelet::Up`] incarnation, registered at once.
//!
//! [`Kubelet::NotAnswering`]: super::kubelet::Kubelet::NotAnswering
//! [`Kubelet::Up`]: super::kubelet::Kubelet::Up

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use kubelet_api::deviceplugin::device_plugin_server::DevicePluginServer;
use kubelet_api::deviceplugin::registration_client::RegistrationClient;
use kubelet_api::deviceplugin::{KUBELET_SOCKET_NAME, RegisterRequest};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::dir::{DevicePluginDir, DirState, socket_id};
use super::pool::DevicePool;
use super::service::{DevicePluginService, options};
use crate::metrics::ResourceLabel;

/// Socket file name of a resource's plugin, relative to the device plugin directory.
pub fn socket_name(resource: &str) -> String {
    format!("macvtap-{resource}.sock")
}

/// Serves and registers `pool`'s resource until `cancel`; the socket is removed at the end.
pub async fn run(pool: Arc<DevicePool>, dir: DevicePluginDir, cancel: CancellationToken) {
    let name = pool.name();
    let label = ResourceLabel::new(&name);
    let states = pool.states().clone();
    let socket = dir.path().join(socket_name(&name));
    let mut dir_state = dir.subscribe();
    'serve: while !cancel.is_cancelled() {
        let generation = cancel.child_token();
        let (ino, mut server) = match serve(&pool, &dir, &socket, &generation) {
            Ok(served) => {
                states.update(&name, |r| r.serving = true);
                served
            }
            Err(e) => {
                let msg = format!("serving {}: {e}", socket.display());
                tracing::error!(resource = %name, "{msg}");
                states.update(&name, |r| {
                    r.serving = false;
                    r.registered = false;
                    r.last_error = Some(msg.clone());
                });
                tokio::select! {
                    _ = cancel.cancelled() => break 'serve,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => continue 'serve,
                }
            }
        };
        // The kubelet incarnation we registered with, and the last one we saw up.
        let mut registered_with: Option<u64> = None;
        let mut seen: Option<u64> = None;
        let mut retry_at: Option<tokio::time::Instant> = None;
        // Backoff for a kubelet that answers but refuses or fails Register: 0.5 s doubling to 5 s.
        let mut backoff = Duration::from_millis(500);
        loop {
            let state: DirState = dir_state.borrow_and_update().clone();
            // The directory scan only wakes us; the file itself says whether our socket is still there (a scan
            // taken before our bind would not list it yet).
            if socket_id(&socket) != Some(ino) {
                tracing::info!(resource = %name, "plugin socket removed (kubelet restart?); serving again");
                break;
            }
            let kubelet = state.kubelet.incarnation();
            if kubelet.is_some() && kubelet != seen {
                // A new kubelet: register with it at once, whatever the backoff of the previous one.
                seen = kubelet;
                retry_at = None;
                backoff = Duration::from_millis(500);
            }
            if let Some(kubelet) = kubelet
                && registered_with != Some(kubelet)
                && retry_at.is_none_or(|t| t <= tokio::time::Instant::now())
            {
                match register(dir.path(), &name).await {
                    Ok(()) => {
                        tracing::info!(resource = %name, "registered with the kubelet");
                        pool.metrics().registrations.get_or_create(&label).inc();
                        states.update(&name, |r| {
                            r.registered = true;
                            r.last_error = None;
                        });
                        registered_with = Some(kubelet);
                        retry_at = None;
                        backoff = Duration::from_millis(500);
                    }
                    Err(e) => {
                        let msg = format!("registering with the kubelet: {e}");
                        tracing::warn!(resource = %name, "{msg}");
                        pool.metrics()
                            .registration_failures
                            .get_or_create(&label)
                            .inc();
                        states.update(&name, |r| {
                            r.registered = false;
                            r.last_error = Some(msg.clone());
                        });
                        retry_at = Some(tokio::time::Instant::now() + backoff);
                        backoff = (backoff * 2).min(Duration::from_secs(5));
                    }
                }
                continue;
            }
            if let Some(why) = state.kubelet.problem(&dir.path().join(KUBELET_SOCKET_NAME)) {
                if registered_with.take().is_some() {
                    tracing::warn!(resource = %name, "not registered: {why}");
                }
                states.update(&name, |r| {
                    r.registered = false;
                    r.last_error = Some(why);
                });
            }
            let retry = async {
                match retry_at {
                    Some(t) => tokio::time::sleep_until(t).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = cancel.cancelled() => {
                    generation.cancel();
                    remove_socket_if(&socket, ino);
                    break 'serve;
                }
                // Never closed: `dir` holds the sending side.
                _ = dir_state.changed() => {}
                // The server ended without being asked to: serve again on a fresh socket.
                r = &mut server => {
                    let msg = match r {
                        Ok(Err(e)) => format!("device plugin server stopped: {e}"),
                        _ => "device plugin server stopped".to_string(),
                    };
                    tracing::error!(resource = %name, "{msg}; serving again");
                    states.update(&name, |r| r.last_error = Some(msg.clone()));
                    break;
                }
                _ = retry => {}
            }
        }
        generation.cancel();
        states.update(&name, |r| {
            r.serving = false;
            r.registered = false;
        });
        remove_socket_if(&socket, ino);
    }
}

/// Removes the socket only if it is still the one we bound (a new kubelet may have put something else there).
fn remove_socket_if(path: &Path, ino: u64) {
    if socket_id(path) == Some(ino) {
        let _ = std::fs::remove_file(path);
    }
}

/// Binds the socket and spawns the server of one generation; returns the socket's identity and the server task.
fn serve(
    pool: &Arc<DevicePool>,
    dir: &DevicePluginDir,
    socket: &Path,
    generation: &CancellationToken,
) -> std::io::Result<(u64, JoinHandle<Result<(), String>>)> {
    let incoming = kubelet_api::unix::bind(socket)?;
    let ino = socket_id(socket)
        .ok_or_else(|| std::io::Error::other("socket vanished right after bind"))?;
    let svc = DevicePluginService {
        pool: pool.clone(),
        generation: generation.clone(),
    };
    let stop = generation.clone();
    let server = tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(DevicePluginServer::new(svc))
            .serve_with_incoming_shutdown(incoming, stop.cancelled_owned())
            .await
            .map_err(|e| e.to_string())
    });
    // The kubelet is told to dial us only after this socket accepts connections (bind + listen are done).
    dir.rescan();
    Ok((ino, server))
}

async fn register(dir: &Path, name: &str) -> Result<(), String> {
    let kubelet = dir.join(KUBELET_SOCKET_NAME);
    let channel =
        tokio::time::timeout(Duration::from_secs(5), kubelet_api::unix::connect(&kubelet))
            .await
            .map_err(|_| "timed out dialing kubelet.sock".to_string())?
            .map_err(|e| format!("dialing {}: {e}", kubelet.display()))?;
    let mut client = RegistrationClient::new(channel);
    let req = RegisterRequest {
        version: kubelet_api::deviceplugin::VERSION.into(),
        endpoint: socket_name(name),
        resource_name: macvtap_core::extended_resource_name(name),
        options: Some(options()),
    };
    tokio::time::timeout(Duration::from_secs(5), client.register(req))
        .await
        .map_err(|_| "Register timed out".to_string())?
        .map_err(|s| format!("Register: {}", s.message()))?;
    Ok(())
}
