//! The webhook's HTTPS server: axum over `tokio-rustls`, with the serving certificate swapped in place when the
//! Secret changes (no restart, no dropped connection). TLS handshakes run in tasks of their own, so a slow or
//! silent client never holds up the next one.

use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tracing::debug;

/// How long a client may take for its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The certificate the server presents, replaceable while it serves.
#[derive(Debug, Default)]
pub struct ServingCert {
    current: RwLock<Option<(String, Arc<CertifiedKey>)>>,
}

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("unreadable PEM certificate chain: {0}")]
    Cert(rustls::pki_types::pem::Error),
    #[error("unreadable PEM private key: {0}")]
    Key(rustls::pki_types::pem::Error),
    #[error("unusable private key: {0}")]
    Sign(rustls::Error),
}

impl ServingCert {
    /// Loads a PEM chain and key; `Ok(true)` when it replaced a different certificate (or none).
    pub fn load(&self, cert_pem: &str, key_pem: &str) -> Result<bool, LoadError> {
        if self
            .current
            .read()
            .expect("serving cert lock")
            .as_ref()
            .is_some_and(|(c, _)| c == cert_pem)
        {
            return Ok(false);
        }
        let chain = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(LoadError::Cert)?;
        let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(LoadError::Key)?;
        let signing =
            rustls::crypto::ring::sign::any_supported_type(&key).map_err(LoadError::Sign)?;
        let certified = Arc::new(CertifiedKey::new(chain, signing));
        *self.current.write().expect("serving cert lock") = Some((cert_pem.to_string(), certified));
        Ok(true)
    }
}

impl ResolvesServerCert for ServingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.current
            .read()
            .expect("serving cert lock")
            .as_ref()
            .map(|(_, k)| k.clone())
    }
}

/// Accepted TLS connections, as `axum::serve` takes them.
pub struct TlsListener {
    connections: mpsc::Receiver<(TlsStream<tokio::net::TcpStream>, SocketAddr)>,
    addr: SocketAddr,
}

impl TlsListener {
    /// Binds `addr`; connections are accepted and their handshakes run from now on.
    pub async fn bind(addr: SocketAddr, cert: Arc<ServingCert>) -> std::io::Result<Self> {
        let tcp = TcpListener::bind(addr).await?;
        let addr = tcp.local_addr()?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(std::io::Error::other)?
            .with_no_client_auth()
            .with_cert_resolver(cert);
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let acceptor = TlsAcceptor::from(Arc::new(config));
        let (tx, rx) = mpsc::channel(64);
        tokio::spawn(async move {
            loop {
                let (stream, peer) = match tcp.accept().await {
                    Ok(c) => c,
                    Err(e) => {
                        debug!(error = %e, "webhook accept");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let (acceptor, tx) = (acceptor.clone(), tx.clone());
                tokio::spawn(async move {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                        Ok(Ok(tls)) => {
                            let _ = tx.send((tls, peer)).await;
                        }
                        Ok(Err(e)) => debug!(%peer, error = %e, "webhook TLS handshake failed"),
                        Err(_) => debug!(%peer, "webhook TLS handshake timed out"),
                    }
                });
            }
        });
        Ok(Self {
            connections: rx,
            addr,
        })
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<tokio::net::TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.connections.recv().await {
            Some(c) => c,
            // The accept task lives as long as the runtime; nothing more will come.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.addr)
    }
}
