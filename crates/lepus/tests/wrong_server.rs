//! Connecting to something that is not an AMQP 0-9-1 broker says what it is, in one line.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod support;

use std::time::Duration;

use lepus::{Connection, ConnectionOptions, Error, TlsOptions};
use support::proxy::broker_addr;
use support::tls_proxy::{Pki, ProxyOptions, TlsProxy};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// A server that reads the client's first bytes and answers `reply`, then closes.
async fn answering(reply: &'static [u8]) -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let mut header = [0u8; 8];
            let _ = stream.read_exact(&mut header).await;
            let _ = stream.write_all(reply).await;
        }
    });
    addr
}

/// The one-line error of connecting with `options`, which must fail within five seconds.
async fn error(options: ConnectionOptions) -> Error {
    let result = tokio::time::timeout(Duration::from_secs(5), Connection::connect_with(options))
        .await
        .expect("connect hung");
    let err = result.expect_err("connected to something that is not a broker");
    assert!(!err.to_string().contains('\n'), "{err}");
    err
}

fn at(addr: std::net::SocketAddr) -> ConnectionOptions {
    let mut o = support::options();
    o.address(addr.ip().to_string(), addr.port());
    o
}

#[tokio::test]
async fn an_http_server_is_named_for_what_it_sent() {
    let addr = answering(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n").await;
    let err = error(at(addr)).await;
    assert!(matches!(err, Error::NotAmqp { .. }), "{err:?}");
    assert_eq!(
        err.to_string(),
        format!("the server at {addr} does not speak AMQP 0-9-1 (it sent \"HTTP/1.1 400 Bad Request…\")")
    );
}

#[tokio::test]
async fn an_amqp_1_0_broker_is_named_by_its_version() {
    let addr = answering(b"AMQP\x00\x01\x00\x00").await;
    let err = error(at(addr)).await;
    assert_eq!(
        err.to_string(),
        format!("the server at {addr} speaks AMQP 1.0.0, not 0-9-1")
    );
}

#[tokio::test]
async fn tls_to_a_plain_port_asks_whether_it_is_a_tls_port() {
    let addr = broker_addr();
    let mut o = at(addr);
    let mut tls = TlsOptions::new();
    tls.danger_disable_verification();
    o.tls(tls);
    let err = error(o).await;
    assert!(matches!(err, Error::Tls(_)), "{err:?}");
    let text = err.to_string();
    assert!(text.contains(&format!("is {addr} a TLS port?")), "{text}");
}

#[tokio::test]
async fn plain_amqp_to_a_tls_port_says_to_use_amqps() {
    let pki = Pki::generate();
    let proxy = TlsProxy::start(&pki, ProxyOptions::default()).await;
    let err = error(at(proxy.addr)).await;
    assert!(matches!(err, Error::NotAmqp { .. }), "{err:?}");
    let text = err.to_string();
    assert!(text.contains("expects TLS (use amqps://)"), "{text}");
}
