//! The kubelet's gRPC APIs, generated from this crate's own `.proto` files (written from the public interface
//! facts: package, service, message and field names and numbers), with clients and servers:
//!
//! - [`deviceplugin`] (`v1beta1`): `Registration` (served by the kubelet on `kubelet.sock`) and `DevicePlugin`
//!   (served by each plugin on its own socket in the device plugin directory).
//! - [`podresources`] (`v1`): `PodResourcesLister` (`List`, `Get`, `GetAllocatableResources`).
//! - [`unix`]: gRPC over unix sockets, both directions: [`unix::connect`] for a client channel and
//!   [`unix::bind`] for a server's incoming stream (replacing a stale socket file).
//!
//! Features: `client` (generated clients, [`unix::connect_once`]), `channel` (`unix::connect*`: reconnecting
//! tonic channels) and `server` (generated servers, `unix::bind*`, tonic's full transport), all on by default; the
//! `macvtap` CNI takes `client` alone to stay small.
//!
//! `tonic` is re-exported so users need no direct dependency of their own.

pub use tonic;

/// Device plugin API `v1beta1`.
pub mod deviceplugin {
    tonic::include_proto!("v1beta1");

    /// The API version a plugin sends in `RegisterRequest.version`.
    pub const VERSION: &str = "v1beta1";
    /// The kubelet's device plugin directory.
    pub const DEVICE_PLUGIN_PATH: &str = "/var/lib/kubelet/device-plugins";
    /// The kubelet's registration socket, in the device plugin directory.
    pub const KUBELET_SOCKET_NAME: &str = "kubelet.sock";
    /// `Device.health` values.
    pub const HEALTHY: &str = "Healthy";
    pub const UNHEALTHY: &str = "Unhealthy";
}

/// PodResources API `v1`.
pub mod podresources {
    tonic::include_proto!("v1");

    /// The kubelet's PodResources socket.
    pub const POD_RESOURCES_SOCKET: &str = "/var/lib/kubelet/pod-resources/kubelet.sock";
}

/// gRPC over unix domain sockets.
pub mod unix {
    #[cfg(feature = "server")]
    use std::io;
    #[cfg(any(feature = "client", feature = "server"))]
    use std::path::Path;
    #[cfg(feature = "channel")]
    use std::path::PathBuf;

    #[cfg(feature = "client")]
    use hyper_util::rt::TokioIo;
    #[cfg(feature = "server")]
    use tokio::net::UnixListener;
    #[cfg(feature = "client")]
    use tokio::net::UnixStream;
    #[cfg(feature = "server")]
    use tokio_stream::wrappers::UnixListenerStream;
    #[cfg(feature = "channel")]
    use tonic::transport::{Channel, Endpoint};

    /// One HTTP/2 connection to the gRPC server on a unix socket, for short-lived clients that must stay small (the
    /// CNI): no reconnects, no buffering or balancing layers. The connection task runs on the current tokio runtime
    /// (current-thread is fine) until the connection or the runtime ends. Give it to a generated client with an
    /// origin: `XClient::with_origin(conn, tonic::codegen::http::Uri::from_static("http://localhost"))`.
    #[cfg(feature = "client")]
    #[derive(Debug, Clone)]
    pub struct Connection(
        hyper::client::conn::http2::SendRequest<tonic::body::Body>,
        tokio::task::AbortHandle,
    );

    #[cfg(feature = "client")]
    impl Connection {
        /// Ends the connection now: the socket is closed without a GOAWAY. For a client whose runtime goes on with
        /// other work (the CNI's): dropping every clone instead makes the connection task write its GOAWAY
        /// whenever that runtime next runs it, waking the server mid-way through that work.
        pub fn close_now(&self) {
            self.1.abort();
        }
    }

    /// Why [`connect_once`] failed.
    #[cfg(feature = "client")]
    #[derive(Debug)]
    pub enum ConnectError {
        /// Connecting to the socket.
        Io(std::io::Error),
        /// The HTTP/2 handshake.
        Http2(hyper::Error),
    }

    #[cfg(feature = "client")]
    impl std::fmt::Display for ConnectError {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            match self {
                ConnectError::Io(e) => write!(f, "connecting: {e}"),
                ConnectError::Http2(e) => write!(f, "HTTP/2 handshake: {e}"),
            }
        }
    }

    #[cfg(feature = "client")]
    impl std::error::Error for ConnectError {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            match self {
                ConnectError::Io(e) => Some(e),
                ConnectError::Http2(e) => Some(e),
            }
        }
    }

    /// Connect once to the gRPC server on the unix socket `path` (see [`Connection`]).
    #[cfg(feature = "client")]
    pub async fn connect_once(path: impl AsRef<Path>) -> Result<Connection, ConnectError> {
        let stream = UnixStream::connect(path.as_ref())
            .await
            .map_err(ConnectError::Io)?;
        // h2 writes the 24-byte preface on its own, unflushed; through a write buffer it goes out with the SETTINGS
        // and the first request at the connection's first flush, so the server wakes once for the whole call
        // instead of first for the preface alone.
        let (send, conn) =
            hyper::client::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                .handshake(TokioIo::new(tokio::io::BufWriter::new(stream)))
                .await
                .map_err(ConnectError::Http2)?;
        let task = tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(Connection(send, task.abort_handle()))
    }

    #[cfg(feature = "client")]
    impl tonic::codegen::Service<tonic::codegen::http::Request<tonic::body::Body>> for Connection {
        type Response = tonic::codegen::http::Response<hyper::body::Incoming>;
        type Error = hyper::Error;
        type Future = std::pin::Pin<
            Box<dyn std::future::Future<Output = Result<Self::Response, Self::Error>> + Send>,
        >;

        fn poll_ready(
            &mut self,
            cx: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Result<(), Self::Error>> {
            self.0.poll_ready(cx)
        }

        fn call(&mut self, req: tonic::codegen::http::Request<tonic::body::Body>) -> Self::Future {
            Box::pin(self.0.send_request(req))
        }
    }

    /// A channel to the gRPC server on the unix socket `path`. The connection is made now (an error if nobody
    /// listens); if it drops later, tonic reconnects to the same path on the next call.
    #[cfg(feature = "channel")]
    pub async fn connect(path: impl AsRef<Path>) -> Result<Channel, tonic::transport::Error> {
        let path: PathBuf = path.as_ref().to_path_buf();
        // The URI is required by the API but unused: the connector below decides where to connect.
        Endpoint::from_static("http://[::1]:50051")
            .connect_with_connector(tower::service_fn(move |_| {
                let path = path.clone();
                async move { UnixStream::connect(path).await.map(TokioIo::new) }
            }))
            .await
    }

    /// Like [`connect`], but never connects before the first call (for clients created while the server is
    /// not there yet).
    #[cfg(feature = "channel")]
    pub fn connect_lazy(path: impl AsRef<Path>) -> Channel {
        let path: PathBuf = path.as_ref().to_path_buf();
        Endpoint::from_static("http://[::1]:50051").connect_with_connector_lazy(tower::service_fn(
            move |_| {
                let path = path.clone();
                async move { UnixStream::connect(path).await.map(TokioIo::new) }
            },
        ))
    }

    /// Listen on the unix socket `path`, first removing a stale socket file left there (not any other kind of
    /// file: that is an error). Returns the stream to hand to `Server::serve_with_incoming*`.
    #[cfg(feature = "server")]
    pub fn bind(path: impl AsRef<Path>) -> io::Result<UnixListenerStream> {
        Ok(UnixListenerStream::new(bind_listener(path)?))
    }

    /// [`bind`] returning the plain listener.
    #[cfg(feature = "server")]
    pub fn bind_listener(path: impl AsRef<Path>) -> io::Result<UnixListener> {
        use std::os::unix::fs::FileTypeExt;
        let path = path.as_ref();
        match std::fs::symlink_metadata(path) {
            Ok(m) if m.file_type().is_socket() => std::fs::remove_file(path)?,
            Ok(_) => {
                return Err(io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    format!("{} exists and is not a socket", path.display()),
                ));
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        UnixListener::bind(path)
    }
}

#[cfg(all(test, feature = "channel", feature = "server"))]
mod tests {
    use super::deviceplugin::registration_client::RegistrationClient;
    use super::deviceplugin::registration_server::{Registration, RegistrationServer};
    use super::deviceplugin::{Empty, RegisterRequest};
    use prost::Message;
    use tokio::sync::mpsc;

    /// The wire encoding uses the interface's field numbers: endpoint = 2, resource_name = 3.
    #[test]
    fn register_request_field_numbers() {
        let req = RegisterRequest {
            version: String::new(),
            endpoint: "a".into(),
            resource_name: "b".into(),
            options: None,
        };
        // field 2, wire type 2 (len) = 0x12; field 3 = 0x1a
        assert_eq!(req.encode_to_vec(), vec![0x12, 1, b'a', 0x1a, 1, b'b']);
    }

    struct Recorder(mpsc::UnboundedSender<RegisterRequest>);

    #[tonic::async_trait]
    impl Registration for Recorder {
        async fn register(
            &self,
            request: tonic::Request<RegisterRequest>,
        ) -> Result<tonic::Response<Empty>, tonic::Status> {
            self.0.send(request.into_inner()).unwrap();
            Ok(tonic::Response::new(Empty {}))
        }
    }

    #[tokio::test]
    async fn grpc_over_a_unix_socket_both_ways() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("kubelet.sock");
        // A stale socket file is replaced.
        drop(std::os::unix::net::UnixListener::bind(&sock).unwrap());
        let incoming = super::unix::bind(&sock).unwrap();
        let (tx, mut rx) = mpsc::unbounded_channel();
        let server = tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(RegistrationServer::new(Recorder(tx)))
                .serve_with_incoming(incoming),
        );
        let mut client = RegistrationClient::new(super::unix::connect(&sock).await.unwrap());
        client
            .register(RegisterRequest {
                version: super::deviceplugin::VERSION.into(),
                endpoint: "x.sock".into(),
                resource_name: "example.com/x".into(),
                options: None,
            })
            .await
            .unwrap();
        let got = rx.recv().await.unwrap();
        assert_eq!(got.endpoint, "x.sock");
        assert_eq!(got.resource_name, "example.com/x");

        // The plain one-connection client (what the CNI uses) reaches the same server.
        let conn = super::unix::connect_once(&sock).await.unwrap();
        let mut once = RegistrationClient::with_origin(
            conn,
            tonic::codegen::http::Uri::from_static("http://localhost"),
        );
        once.register(RegisterRequest {
            version: super::deviceplugin::VERSION.into(),
            endpoint: "y.sock".into(),
            resource_name: "example.com/y".into(),
            options: None,
        })
        .await
        .unwrap();
        assert_eq!(rx.recv().await.unwrap().endpoint, "y.sock");
        server.abort();
        let gone = dir.path().join("nobody.sock");
        assert!(matches!(
            super::unix::connect_once(&gone).await,
            Err(super::unix::ConnectError::Io(_))
        ));

        // A regular file is never removed to make room for a socket.
        let file = dir.path().join("file");
        std::fs::write(&file, "x").unwrap();
        assert!(super::unix::bind(&file).is_err());
        assert!(file.exists());
    }
}
