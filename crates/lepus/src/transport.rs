//! Opening the byte stream: TCP, optionally wrapped in TLS (rustls).

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::TcpStream;

use crate::config::{ConnectionOptions, TlsOptions};
use crate::error::{Error, Result};

pub(crate) type BoxRead = Box<dyn AsyncRead + Unpin + Send>;
pub(crate) type BoxWrite = Box<dyn AsyncWrite + Unpin + Send>;

/// The write side of a plain TCP connection, shared by the writer task and threads that write
/// queued output themselves when the writer is idle (see `Shared::flush_inline`).
pub(crate) type SharedTcp = Arc<TcpWriteHalf>;

/// Unsent bytes the kernel may hold for the socket before it stops taking more
/// (`TCP_NOTSENT_LOWAT`, Linux). Without a limit the kernel grows its buffer to megabytes:
/// what lepus counts as written would then sit in the kernel for seconds, and writes would
/// report progress only in megabyte steps, so a close could not tell a slowly draining link
/// from a dead one. 64 KiB keeps the link busy at loopback speeds and shows progress every
/// 32 KiB.
const NOTSENT_LOWAT: u32 = 64 * 1024;

/// A TCP write half that can be told, before it is dropped, to leave the connection open:
/// dropping an `OwnedWriteHalf` sends FIN, and RabbitMQ drops the bytes it has not read yet
/// when it sees one while it is busy. A connection handed over to finish its close elsewhere
/// (see `driver::linger`) keeps its socket open that way.
pub(crate) struct TcpWriteHalf {
    half: Option<OwnedWriteHalf>,
    keep_open: std::sync::atomic::AtomicBool,
}

impl TcpWriteHalf {
    /// The stream, for non-blocking writes and socket options.
    pub(crate) fn stream(&self) -> &TcpStream {
        match &self.half {
            Some(half) => half.as_ref(),
            // Only `drop` takes the half out.
            None => unreachable!("the write half is present until drop"),
        }
    }

    /// Leave the connection open when dropped (no FIN): a duplicate of the socket finishes it.
    pub(crate) fn keep_open(&self) {
        self.keep_open
            .store(true, std::sync::atomic::Ordering::Release);
    }
}

impl Drop for TcpWriteHalf {
    fn drop(&mut self) {
        if let Some(half) = self.half.take() {
            if self.keep_open.load(std::sync::atomic::Ordering::Acquire) {
                half.forget();
            }
        }
    }
}

/// The streams of a new connection: read side, write side for the writer task, and for plain
/// TCP the same write side once more for inline writes.
pub(crate) type Streams = (BoxRead, BoxWrite, Option<SharedTcp>);

/// [`AsyncWrite`] over a [`SharedTcp`]: readiness and non-blocking writes only need `&self`.
struct SharedTcpWrite(SharedTcp);

impl AsyncWrite for SharedTcpWrite {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_write_vectored(cx, &[IoSlice::new(buf)])
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let stream = self.0.stream();
        loop {
            ready!(stream.poll_write_ready(cx))?;
            match stream.try_write_vectored(bufs) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                done => return Poll::Ready(done),
            }
        }
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        // Shutting the write side down needs no waiting, and no exclusive access.
        let _ = socket2::SockRef::from(self.0.stream()).shutdown(std::net::Shutdown::Write);
        Poll::Ready(Ok(()))
    }
}

/// Connects TCP (and TLS when configured) within the connect timeout.
pub(crate) async fn connect(options: &ConnectionOptions) -> Result<Streams> {
    #[cfg(feature = "memory")]
    if options.memory {
        return crate::memory::connect(options).await;
    }
    // Bad TLS settings (a missing CA file) are reported before any network traffic.
    let tls_config = options.tls.as_ref().map(client_config).transpose()?;
    let addr = format!("{}:{}", options.host, options.port);
    let tcp = tokio::time::timeout(options.connect_timeout, TcpStream::connect(addr.as_str()))
        .await
        .map_err(|_| Error::Timeout {
            what: "TCP connect",
            after: options.connect_timeout,
        })?
        .map_err(|e| Error::Connect {
            addr: addr.clone(),
            source: Arc::new(e),
        })?;
    // Frames are written in batches already; Nagle's algorithm would only add latency.
    let _ = tcp.set_nodelay(true);
    limit_unsent(&tcp);
    let (Some(tls), Some(config)) = (&options.tls, tls_config) else {
        let (r, w) = tcp.into_split();
        let w = Arc::new(TcpWriteHalf {
            half: Some(w),
            keep_open: std::sync::atomic::AtomicBool::new(false),
        });
        return Ok((
            Box::new(r),
            Box::new(SharedTcpWrite(Arc::clone(&w))),
            Some(w),
        ));
    };
    let name = tls
        .server_name
        .clone()
        .unwrap_or_else(|| options.host.clone());
    let server_name = ServerName::try_from(name.clone())
        .map_err(|_| Error::Tls(format!("invalid server name '{name}'")))?;
    let connector = tokio_rustls::TlsConnector::from(config);
    let stream = tokio::time::timeout(options.connect_timeout, connector.connect(server_name, tcp))
        .await
        .map_err(|_| Error::Timeout {
            what: "TLS handshake",
            after: options.connect_timeout,
        })?
        .map_err(|e| {
            match e
                .get_ref()
                .and_then(|inner| inner.downcast_ref::<rustls::Error>())
            {
                // Bytes that are not TLS records: most likely a plain AMQP (or other) port.
                Some(tls_error @ rustls::Error::InvalidMessage(_)) => Error::Tls(format!(
                    "handshake with {addr} failed: is {addr} a TLS port? ({tls_error})"
                )),
                Some(tls_error) => Error::Tls(format!("handshake with {addr} failed: {tls_error}")),
                None => Error::Tls(format!("handshake with {addr} failed: {e}")),
            }
        })?;
    let (r, w) = tokio::io::split(stream);
    Ok((Box::new(r), Box::new(w), None))
}

/// Sets [`NOTSENT_LOWAT`] where the system has it.
fn limit_unsent(tcp: &TcpStream) {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    let _ = socket2::SockRef::from(tcp).set_tcp_notsent_lowat(NOTSENT_LOWAT);
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    let _ = (tcp, NOTSENT_LOWAT);
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Whether an I/O error carries a TLS failure (an alert from the server, a bad record), and
/// the one-line text to report for it.
pub(crate) fn tls_failure(e: &std::io::Error) -> Option<String> {
    let inner = e.get_ref()?;
    inner.downcast_ref::<rustls::Error>().map(|t| t.to_string())
}

/// Builds the rustls configuration from the options.
pub(crate) fn client_config(tls: &TlsOptions) -> Result<Arc<rustls::ClientConfig>> {
    if let Some(config) = &tls.config {
        return Ok(Arc::clone(config));
    }
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Tls(e.to_string()))?;
    let builder = if tls.verify {
        let mut roots = rustls::RootCertStore::empty();
        match &tls.ca_file {
            Some(path) => {
                let certs = CertificateDer::pem_file_iter(path)
                    .and_then(|it| it.collect::<std::result::Result<Vec<_>, _>>())
                    .map_err(|e| {
                        Error::Tls(format!("cannot read CA file {}: {e}", path.display()))
                    })?;
                if certs.is_empty() {
                    return Err(Error::Tls(format!(
                        "no certificate in CA file {}",
                        path.display()
                    )));
                }
                for cert in certs {
                    roots.add(cert).map_err(|e| {
                        Error::Tls(format!("bad CA certificate in {}: {e}", path.display()))
                    })?;
                }
            }
            None => {
                let native = rustls_native_certs::load_native_certs();
                for cert in native.certs {
                    let _ = roots.add(cert);
                }
                if roots.is_empty() {
                    return Err(Error::Tls(
                        "no system root certificates found; set a CA file".into(),
                    ));
                }
            }
        }
        builder.with_root_certificates(roots)
    } else {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerification(provider())))
    };
    let mut config = match (&tls.cert_file, &tls.key_file) {
        (Some(cert), Some(key)) => {
            let chain = CertificateDer::pem_file_iter(cert)
                .and_then(|it| it.collect::<std::result::Result<Vec<_>, _>>())
                .map_err(|e| {
                    Error::Tls(format!(
                        "cannot read certificate file {}: {e}",
                        cert.display()
                    ))
                })?;
            let key = PrivateKeyDer::from_pem_file(key)
                .map_err(|e| Error::Tls(format!("cannot read key file {}: {e}", key.display())))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| Error::Tls(format!("bad client certificate or key: {e}")))?
        }
        (None, None) => builder.with_no_client_auth(),
        _ => {
            return Err(Error::Tls(
                "a client certificate needs both a certificate and a key file".into(),
            ))
        }
    };
    config.enable_sni = tls.sni;
    Ok(Arc::new(config))
}

/// Accepts any server certificate (`verify_none`). Signatures are still checked, so the
/// handshake itself stays sound; only the identity is not.
#[derive(Debug)]
struct NoVerification(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for NoVerification {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
