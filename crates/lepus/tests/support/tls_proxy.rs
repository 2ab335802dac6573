//! TLS in front of the plain-AMQP test broker: certificates made at test time (rcgen) and a
//! local proxy that terminates TLS (rustls, ring) and forwards the decrypted bytes to the
//! broker. The proxy records what it saw (SNI, failed handshakes, how clients closed) so tests
//! can check the client's side of the handshake.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rcgen::{
    BasicConstraints, Certificate, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::server::WebPkiClientVerifier;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;

use super::proxy::broker_addr;

/// The names the server certificate is valid for.
pub(crate) const SERVER_NAMES: [&str; 3] = ["localhost", "127.0.0.1", "::1"];

/// A throw-away PKI: a CA, a server certificate and a client certificate signed by it, and an
/// unrelated second CA. The PEM files live in a fresh temporary directory, removed on drop.
pub(crate) struct Pki {
    pub(crate) dir: PathBuf,
    /// The CA that signed the server and client certificates (PEM).
    pub(crate) ca: PathBuf,
    /// A CA that signed nothing here (PEM).
    pub(crate) other_ca: PathBuf,
    /// The client certificate (PEM), signed by `ca`.
    pub(crate) client_cert: PathBuf,
    /// The client certificate's private key (PKCS#8 PEM).
    pub(crate) client_key: PathBuf,
    /// The client certificate's common name.
    pub(crate) client_name: &'static str,
    /// The server certificate (PEM), for `localhost`, `127.0.0.1` and `::1`.
    pub(crate) server_cert: PathBuf,
    /// The server certificate's private key (PKCS#8 PEM).
    pub(crate) server_key_file: PathBuf,
    /// The CA certificate, for building rustls configurations in code.
    pub(crate) ca_der: CertificateDer<'static>,
    server_chain: Vec<CertificateDer<'static>>,
    server_key: Vec<u8>,
}

impl Pki {
    pub(crate) fn generate() -> Self {
        let dir = std::env::temp_dir().join(super::unique("tls"));
        std::fs::create_dir_all(&dir).unwrap();

        let (ca, ca_key) = new_ca("lepus test CA");
        let (other_ca, _) = new_ca("lepus unrelated CA");
        let (server, server_key) = leaf(
            &SERVER_NAMES,
            "localhost",
            ExtendedKeyUsagePurpose::ServerAuth,
            &ca,
            &ca_key,
        );
        let client_name = "lepus test client";
        let (client, client_key) = leaf(
            &[],
            client_name,
            ExtendedKeyUsagePurpose::ClientAuth,
            &ca,
            &ca_key,
        );

        let write = |name: &str, contents: &str| {
            let path = dir.join(name);
            std::fs::write(&path, contents).unwrap();
            path
        };
        Self {
            ca: write("ca.pem", &ca.pem()),
            other_ca: write("other-ca.pem", &other_ca.pem()),
            client_cert: write("client.pem", &client.pem()),
            client_key: write("client.key", &client_key.serialize_pem()),
            client_name,
            server_cert: write("server.pem", &server.pem()),
            server_key_file: write("server.key", &server_key.serialize_pem()),
            ca_der: ca.der().clone(),
            server_chain: vec![server.der().clone()],
            server_key: server_key.serialize_der(),
            dir,
        }
    }

    /// Writes another file into the directory.
    pub(crate) fn write(&self, name: &str, contents: &str) -> PathBuf {
        let path = self.dir.join(name);
        std::fs::write(&path, contents).unwrap();
        path
    }

    /// A path in the directory that does not exist.
    pub(crate) fn missing(&self, name: &str) -> PathBuf {
        let path = self.dir.join(name);
        assert!(!path.exists());
        path
    }

    fn server_config(&self, options: ProxyOptions) -> rustls::ServerConfig {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider));
        let builder = if options.tls12_only {
            builder.with_protocol_versions(&[&rustls::version::TLS12])
        } else {
            builder.with_safe_default_protocol_versions()
        }
        .unwrap();
        let builder = if options.client_auth {
            let mut roots = rustls::RootCertStore::empty();
            roots.add(self.ca_der.clone()).unwrap();
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .unwrap();
            builder.with_client_cert_verifier(verifier)
        } else {
            builder.with_no_client_auth()
        };
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.server_key.clone()));
        builder
            .with_single_cert(self.server_chain.clone(), key)
            .unwrap()
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn new_ca(name: &str) -> (Certificate, KeyPair) {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    // Distinct subjects: the client must fail for want of an issuer, not a bad signature.
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    (params.self_signed(&key).unwrap(), key)
}

fn leaf(
    names: &[&str],
    common_name: &str,
    usage: ExtendedKeyUsagePurpose,
    issuer: &Certificate,
    issuer_key: &KeyPair,
) -> (Certificate, KeyPair) {
    let key = KeyPair::generate().unwrap();
    let names: Vec<String> = names.iter().map(|n| (*n).to_string()).collect();
    let mut params = CertificateParams::new(names).unwrap();
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![usage];
    (params.signed_by(&key, issuer, issuer_key).unwrap(), key)
}

/// How the proxy's TLS server behaves.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct ProxyOptions {
    /// Require a client certificate signed by the test CA.
    pub(crate) client_auth: bool,
    /// Speak TLS 1.2 only (client certificates are then checked inside the handshake).
    pub(crate) tls12_only: bool,
}

/// What the proxy saw, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Event {
    /// A handshake completed; the SNI the client sent, if any.
    Handshake { sni: Option<String> },
    /// A handshake failed, with rustls' reason.
    HandshakeFailed(String),
    /// The client ended its side: with a TLS `close_notify`, or by dropping the socket (or
    /// breaking the stream) without one.
    ClientClosed { close_notify: bool },
}

/// A running TLS-terminating proxy; dropped, it stops accepting and drops its connections.
pub(crate) struct TlsProxy {
    pub(crate) addr: SocketAddr,
    events: Arc<Mutex<Vec<Event>>>,
    task: tokio::task::JoinHandle<()>,
}

impl TlsProxy {
    /// Listens on 127.0.0.1 and forwards to the test broker.
    pub(crate) async fn start(pki: &Pki, options: ProxyOptions) -> Self {
        Self::start_on("127.0.0.1:0", pki, options).await.unwrap()
    }

    /// Listens on `bind` (such as `[::1]:0`) and forwards to the test broker.
    pub(crate) async fn start_on(
        bind: &str,
        pki: &Pki,
        options: ProxyOptions,
    ) -> std::io::Result<Self> {
        let listener = TcpListener::bind(bind).await?;
        let addr = listener.local_addr()?;
        let acceptor = TlsAcceptor::from(Arc::new(pki.server_config(options)));
        let events = Arc::new(Mutex::new(Vec::new()));
        let log = Arc::clone(&events);
        let upstream = broker_addr();
        let task = tokio::spawn(async move {
            // Owned here, so aborting the accept loop also ends every forwarded connection.
            let mut connections = JoinSet::new();
            while let Ok((client, _)) = listener.accept().await {
                let _ = client.set_nodelay(true);
                connections.spawn(serve(acceptor.clone(), client, upstream, Arc::clone(&log)));
                while connections.try_join_next().is_some() {}
            }
        });
        Ok(Self { addr, events, task })
    }

    pub(crate) fn events(&self) -> Vec<Event> {
        self.events.lock().unwrap().clone()
    }

    /// The SNI of every completed handshake, in order.
    pub(crate) fn snis(&self) -> Vec<Option<String>> {
        self.events()
            .into_iter()
            .filter_map(|e| match e {
                Event::Handshake { sni } => Some(sni),
                _ => None,
            })
            .collect()
    }

    /// Waits (up to 3 s) for an event matching `want`, and returns it.
    pub(crate) async fn wait_for(&self, want: impl Fn(&Event) -> bool) -> Event {
        let started = Instant::now();
        loop {
            if let Some(e) = self.events().into_iter().find(|e| want(e)) {
                return e;
            }
            assert!(
                started.elapsed() < Duration::from_secs(3),
                "the proxy never saw the expected event; it saw {:?}",
                self.events()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

impl Drop for TlsProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve(
    acceptor: TlsAcceptor,
    client: TcpStream,
    upstream: SocketAddr,
    log: Arc<Mutex<Vec<Event>>>,
) {
    let record = |e: Event| log.lock().unwrap().push(e);
    let tls = match acceptor.accept(client).await {
        Ok(tls) => tls,
        Err(e) => {
            let reason = match e
                .get_ref()
                .and_then(|inner| inner.downcast_ref::<rustls::Error>())
            {
                Some(tls_error) => tls_error.to_string(),
                None => e.to_string(),
            };
            return record(Event::HandshakeFailed(reason));
        }
    };
    record(Event::Handshake {
        sni: tls.get_ref().1.server_name().map(str::to_owned),
    });
    let Ok(server) = TcpStream::connect(upstream).await else {
        return;
    };
    let _ = server.set_nodelay(true);
    let (client_read, client_write) = tokio::io::split(tls);
    let (server_read, server_write) = server.into_split();
    tokio::join!(
        async {
            let close_notify = pump(client_read, server_write).await;
            record(Event::ClientClosed { close_notify });
        },
        // When the broker closes, the client gets a close_notify.
        pump(server_read, client_write),
    );
}

/// Copies until the source ends; true when it ended cleanly (for TLS: with `close_notify`;
/// rustls reports a bare TCP close as an `UnexpectedEof` error).
async fn pump(mut from: impl AsyncRead + Unpin, mut to: impl AsyncWrite + Unpin) -> bool {
    let mut buf = vec![0u8; 64 * 1024];
    let clean = loop {
        match from.read(&mut buf).await {
            Ok(0) => break true,
            Ok(n) => {
                let read = buf.get(..n).unwrap_or_default();
                if to.write_all(read).await.is_err() {
                    break false;
                }
            }
            Err(_) => break false,
        }
    };
    let _ = to.shutdown().await;
    clean
}

/// `path` for a URI query value: percent-encoded except for the usual path characters.
pub(crate) fn uri_path(path: &Path) -> String {
    const KEEP: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
        .remove(b'/')
        .remove(b'.')
        .remove(b'-')
        .remove(b'_');
    percent_encoding::utf8_percent_encode(path.to_str().unwrap(), KEEP).to_string()
}
