//! TLS against a local TLS-terminating proxy in front of the broker: verification, host names,
//! client certificates, SNI, and the file-based settings (options and URI).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use lepus::{
    BasicProperties, BasicPublishOptions, Connection, ConnectionOptions, Error,
    QueueDeclareOptions, TlsOptions,
};
use support::tls_proxy::{uri_path, Event, Pki, ProxyOptions, TlsProxy};
use support::unique;

/// Options for `host` at the proxy's port over TLS, with short limits: nothing here may wait
/// for the 30 s defaults.
fn options(proxy: &TlsProxy, host: &str, tls: &TlsOptions) -> ConnectionOptions {
    let mut o = support::options();
    o.address(host, proxy.addr.port())
        .tls(tls.clone())
        .connect_timeout(Duration::from_secs(4))
        .handshake_timeout(Duration::from_secs(4));
    o
}

fn amqps(proxy: &TlsProxy, host: &str, query: &str) -> String {
    format!(
        "amqps://guest:guest@{host}:{}/%2f?connection_timeout=4000&{query}",
        proxy.addr.port()
    )
}

/// Connecting must end (either way) well before the client's own limits would fire.
async fn connect(o: ConnectionOptions) -> Result<Connection, Error> {
    tokio::time::timeout(Duration::from_secs(5), Connection::connect_with(o))
        .await
        .expect("connect hung")
}

async fn connect_uri(uri: &str) -> Result<Connection, Error> {
    tokio::time::timeout(Duration::from_secs(5), Connection::connect(uri))
        .await
        .expect("connect hung")
}

/// The message of an `Error::Tls`, checked to be one line.
fn tls_message(result: Result<Connection, Error>) -> String {
    match result {
        Err(Error::Tls(msg)) => {
            assert!(!msg.contains('\n'), "not one line: {msg:?}");
            msg
        }
        Err(other) => panic!("expected a TLS error, got {other:?} ({other})"),
        Ok(conn) => panic!("expected a TLS error, but connected: {conn:?}"),
    }
}

/// Declares an exclusive queue, publishes with a confirm, gets the message back, closes the
/// channel and the connection.
async fn round_trip(conn: Connection) {
    let ch = conn.open_channel().await.unwrap();
    let q = unique("tls");
    ch.queue_declare(
        &q,
        QueueDeclareOptions {
            exclusive: true,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    ch.confirm_select().await.unwrap();
    let confirm = ch
        .basic_publish(
            "",
            &q,
            BasicPublishOptions::default(),
            &BasicProperties::default(),
            "over tls",
        )
        .await
        .unwrap();
    assert!(confirm.await.unwrap().is_ack());
    let got = ch.basic_get(&q, true).await.unwrap().expect("a message");
    assert_eq!(&got.delivery.body[..], b"over tls");
    assert_eq!(got.message_count, 0);
    ch.close().await.unwrap();
    conn.close().await.unwrap();
    assert!(!conn.is_open());
}

/// `round_trip`, then checks the client ended the TLS stream with a `close_notify`.
async fn round_trip_and_clean_close(conn: Connection, proxy: &TlsProxy) {
    round_trip(conn).await;
    let closed = proxy
        .wait_for(|e| matches!(e, Event::ClientClosed { .. }))
        .await;
    assert_eq!(closed, Event::ClientClosed { close_notify: true });
}

#[tokio::test]
async fn good_certificate_from_a_ca_file() {
    let pki = Pki::generate();
    let proxy = TlsProxy::start(&pki, ProxyOptions::default()).await;
    let mut tls = TlsOptions::new();
    tls.ca_file(&pki.ca);
    let conn = connect(options(&proxy, "localhost", &tls)).await.unwrap();
    assert!(conn.is_open());
    round_trip_and_clean_close(conn, &proxy).await;
    assert_eq!(proxy.snis(), [Some("localhost".to_string())]);
}

#[tokio::test]
async fn good_certificate_from_an_amqps_uri() {
    let pki = Pki::generate();
    let proxy = TlsProxy::start(&pki, ProxyOptions::default()).await;
    let uri = amqps(
        &proxy,
        "localhost",
        &format!("cacertfile={}", uri_path(&pki.ca)),
    );
    let conn = connect_uri(&uri).await.unwrap();
    round_trip_and_clean_close(conn, &proxy).await;
    assert_eq!(proxy.snis(), [Some("localhost".to_string())]);
}

#[tokio::test]
async fn ip_address_host_is_verified_against_the_ip_san() {
    let pki = Pki::generate();
    let proxy = TlsProxy::start(&pki, ProxyOptions::default()).await;
    let mut tls = TlsOptions::new();
    tls.ca_file(&pki.ca);
    let conn = connect(options(&proxy, "127.0.0.1", &tls)).await.unwrap();
    round_trip(conn).await;
    // An IP address is never sent as SNI.
    assert_eq!(proxy.snis(), [None]);
}

#[tokio::test]
async fn ipv6_host_in_an_amqps_uri() {
    let pki = Pki::generate();
    let Ok(proxy) = TlsProxy::start_on("[::1]:0", &pki, ProxyOptions::default()).await else {
        eprintln!("no IPv6 loopback here; skipped");
        return;
    };
    let uri = amqps(
        &proxy,
        "[::1]",
        &format!("cacertfile={}", uri_path(&pki.ca)),
    );
    let conn = connect_uri(&uri).await.unwrap();
    round_trip(conn).await;
}

#[tokio::test]
async fn unknown_ca_is_a_tls_error() {
    let pki = Pki::generate();
    let proxy = TlsProxy::start(&pki, ProxyOptions::default()).await;
    let mut tls = TlsOptions::new();
    tls.ca_file(&pki.other_ca);
    let msg = tls_message(connect(options(&proxy, "localhost", &tls)).await);
    assert!(msg.contains("invalid peer certificate"), "{msg}");
    assert!(msg.contains("UnknownIssuer"), "{msg}");
    assert!(msg.contains(&proxy.addr.port().to_string()), "{msg}");
    // The client refused the server, and told it so.
    let seen = proxy
        .wait_for(|e| matches!(e, Event::HandshakeFailed(_)))
        .await;
    assert!(format!("{seen:?}").contains("UnknownCA"), "{seen:?}");

    // The same through the URI.
    let uri = amqps(
        &proxy,
        "localhost",
        &format!("cacertfile={}", uri_path(&pki.other_ca)),
    );
    let msg = tls_message(connect_uri(&uri).await);
    assert!(msg.contains("UnknownIssuer"), "{msg}");
}

#[tokio::test]
async fn wrong_server_name_is_a_tls_error() {
    let pki = Pki::generate();
    let proxy = TlsProxy::start(&pki, ProxyOptions::default()).await;
    let mut tls = TlsOptions::new();
    tls.ca_file(&pki.ca).server_name("other.example");
    let msg = tls_message(connect(options(&proxy, "127.0.0.1", &tls)).await);
    // rustls: CertificateError::NotValidForName(Context), shown as
    // `certificate not valid for name "other.example"; certificate is only valid for ...`.
    assert!(msg.contains("not valid for name"), "{msg}");
    assert!(msg.contains("other.example"), "{msg}");
    // The name to check is also the one sent as SNI.
    assert_eq!(proxy.snis(), []);

    // The URI's `server_name_indication` overrides the name the same way.
    let uri = amqps(
        &proxy,
        "127.0.0.1",
        &format!(
            "cacertfile={}&server_name_indication=other.example",
            uri_path(&pki.ca)
        ),
    );
    let msg = tls_message(connect_uri(&uri).await);
    assert!(msg.contains("not valid for name"), "{msg}");
}

#[tokio::test]
async fn server_name_override_to_a_valid_name_connects() {
    let pki = Pki::generate();
    let proxy = TlsProxy::start(&pki, ProxyOptions::default()).await;
    let uri = amqps(
        &proxy,
        "127.0.0.1",
        &format!(
            "cacertfile={}&server_name_indication=localhost",
            uri_path(&pki.ca)
        ),
    );
    let conn = connect_uri(&uri).await.unwrap();
    round_trip(conn).await;
    assert_eq!(proxy.snis(), [Some("localhost".to_string())]);
}

#[tokio::test]
async fn disabled_verification_accepts_an_untrusted_server() {
    let pki = Pki::generate();
    let proxy = TlsProxy::start(&pki, ProxyOptions::default()).await;
    let mut tls = TlsOptions::new();
    tls.ca_file(&pki.other_ca)
        .server_name("other.example")
        .danger_disable_verification();
    let conn = connect(options(&proxy, "127.0.0.1", &tls)).await.unwrap();
    round_trip(conn).await;

    let uri = amqps(
        &proxy,
        "localhost",
        &format!("cacertfile={}&verify=verify_none", uri_path(&pki.other_ca)),
    );
    let conn = connect_uri(&uri).await.unwrap();
    round_trip(conn).await;
}

#[tokio::test]
async fn verify_peer_in_a_uri_still_verifies() {
    let pki = Pki::generate();
    let proxy = TlsProxy::start(&pki, ProxyOptions::default()).await;
    let uri = amqps(
        &proxy,
        "localhost",
        &format!("cacertfile={}&verify=verify_peer", uri_path(&pki.other_ca)),
    );
    let msg = tls_message(connect_uri(&uri).await);
    assert!(msg.contains("UnknownIssuer"), "{msg}");
}

#[tokio::test]
async fn default_tls_options_verify_the_server() {
    let pki = Pki::generate();
    let proxy = TlsProxy::start(&pki, ProxyOptions::default()).await;
    let mut tls = TlsOptions::default();
    tls.ca_file(&pki.other_ca);
    let msg = tls_message(connect(options(&proxy, "localhost", &tls)).await);
    assert!(msg.contains("UnknownIssuer"), "{msg}");
}

#[tokio::test]
async fn client_certificate_required_and_missing() {
    let pki = Pki::generate();
    let proxy = TlsProxy::start(
        &pki,
        ProxyOptions {
            client_auth: true,
            ..Default::default()
        },
    )
    .await;
    let mut tls = TlsOptions::new();
    tls.ca_file(&pki.ca);
    let started = Instant::now();
    let err = connect(options(&proxy, "localhost", &tls))
        .await
        .unwrap_err();
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "took {:?}",
        started.elapsed()
    );
    assert!(!matches!(err, Error::Timeout { .. }), "{err}");
    assert!(err.is_connection_error(), "{err:?}");
    // TLS 1.3: the client's handshake completes before the server checks the (empty)
    // certificate; the server's alert arrives while the AMQP handshake reads.
    let seen = proxy
        .wait_for(|e| matches!(e, Event::HandshakeFailed(_)))
        .await;
    assert_eq!(
        seen,
        Event::HandshakeFailed("peer sent no certificates".into())
    );
}

#[tokio::test]
async fn client_certificate_required_and_missing_over_tls12() {
    let pki = Pki::generate();
    let proxy = TlsProxy::start(
        &pki,
        ProxyOptions {
            client_auth: true,
            tls12_only: true,
        },
    )
    .await;
    let mut tls = TlsOptions::new();
    tls.ca_file(&pki.ca);
    // TLS 1.2: the server refuses inside the handshake, so the client reports a TLS error.
    let msg = tls_message(connect(options(&proxy, "localhost", &tls)).await);
    assert!(msg.contains("alert"), "{msg}");
}

#[tokio::test]
async fn client_certificate_required_and_presented() {
    let pki = Pki::generate();
    let proxy = TlsProxy::start(
        &pki,
        ProxyOptions {
            client_auth: true,
            ..Default::default()
        },
    )
    .await;
    let mut tls = TlsOptions::new();
    tls.ca_file(&pki.ca)
        .client_cert(&pki.client_cert, &pki.client_key);
    let conn = connect(options(&proxy, "localhost", &tls)).await.unwrap();
    round_trip_and_clean_close(conn, &proxy).await;

    // The same from a URI, and over TLS 1.2.
    let uri = amqps(
        &proxy,
        "localhost",
        &format!(
            "cacertfile={}&certfile={}&keyfile={}",
            uri_path(&pki.ca),
            uri_path(&pki.client_cert),
            uri_path(&pki.client_key)
        ),
    );
    round_trip(connect_uri(&uri).await.unwrap()).await;
    let tls12 = TlsProxy::start(
        &pki,
        ProxyOptions {
            client_auth: true,
            tls12_only: true,
        },
    )
    .await;
    round_trip(connect(options(&tls12, "localhost", &tls)).await.unwrap()).await;
    assert!(
        !proxy
            .events()
            .iter()
            .chain(tls12.events().iter())
            .any(|e| matches!(e, Event::HandshakeFailed(_))),
        "{:?}",
        proxy.events()
    );
}

#[tokio::test]
async fn unusable_files_are_tls_errors() {
    let pki = Pki::generate();
    let proxy = TlsProxy::start(&pki, ProxyOptions::default()).await;
    let connect_ca = |ca: std::path::PathBuf| {
        let mut tls = TlsOptions::new();
        tls.ca_file(ca);
        connect(options(&proxy, "localhost", &tls))
    };

    let missing = pki.missing("nowhere.pem");
    let msg = tls_message(connect_ca(missing.clone()).await);
    assert!(msg.contains(missing.to_str().unwrap()), "{msg}");

    // A PEM file without a certificate in it (here: a private key), and an empty one.
    for empty in [
        pki.client_key.clone(),
        pki.write("empty.pem", ""),
        pki.write("text.pem", "not a certificate\n"),
    ] {
        let msg = tls_message(connect_ca(empty.clone()).await);
        assert!(msg.contains("no certificate"), "{msg}");
        assert!(msg.contains(empty.to_str().unwrap()), "{msg}");
    }

    // A PEM block whose contents are not base64.
    let broken = pki.write(
        "broken.pem",
        "-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n",
    );
    let msg = tls_message(connect_ca(broken.clone()).await);
    assert!(msg.contains(broken.to_str().unwrap()), "{msg}");

    // A client key file that does not exist.
    let mut tls = TlsOptions::new();
    tls.ca_file(&pki.ca)
        .client_cert(&pki.client_cert, pki.missing("nowhere.key"));
    let msg = tls_message(connect(options(&proxy, "localhost", &tls)).await);
    assert!(msg.contains("nowhere.key"), "{msg}");

    // A client certificate with somebody else's key.
    let other_key = pki.write(
        "other.key",
        &rcgen::KeyPair::generate().unwrap().serialize_pem(),
    );
    let mut tls = TlsOptions::new();
    tls.ca_file(&pki.ca)
        .client_cert(&pki.client_cert, &other_key);
    let msg = tls_message(connect(options(&proxy, "localhost", &tls)).await);
    assert!(msg.contains("client certificate"), "{msg}");

    // The proxy never completed a handshake: every error came before one.
    assert_eq!(proxy.snis(), []);
}

#[tokio::test]
async fn certfile_without_keyfile_in_a_uri_is_an_error() {
    let pki = Pki::generate();
    let proxy = TlsProxy::start(&pki, ProxyOptions::default()).await;
    for query in [
        format!(
            "cacertfile={}&certfile={}",
            uri_path(&pki.ca),
            uri_path(&pki.client_cert)
        ),
        format!(
            "cacertfile={}&keyfile={}",
            uri_path(&pki.ca),
            uri_path(&pki.client_key)
        ),
    ] {
        let err = connect_uri(&amqps(&proxy, "localhost", &query))
            .await
            .unwrap_err();
        // Refused when the URI is read or when the TLS settings are built: either way, it says
        // both files are needed, and it is not a network failure.
        let msg = match &err {
            Error::Tls(msg) | Error::InvalidArgument(msg) => msg.clone(),
            Error::Uri(e) => e.to_string(),
            other => panic!("{other:?}"),
        };
        assert!(msg.contains("key"), "{msg}");
        assert!(msg.contains("certificate"), "{msg}");
    }
    assert_eq!(proxy.snis(), []);
}

#[tokio::test]
async fn sni_is_sent_unless_disabled() {
    let pki = Pki::generate();
    let proxy = TlsProxy::start(&pki, ProxyOptions::default()).await;
    let mut tls = TlsOptions::new();
    tls.ca_file(&pki.ca);
    round_trip(connect(options(&proxy, "localhost", &tls)).await.unwrap()).await;

    tls.disable_sni();
    round_trip(connect(options(&proxy, "localhost", &tls)).await.unwrap()).await;

    let uri = amqps(
        &proxy,
        "localhost",
        &format!(
            "cacertfile={}&server_name_indication=disable",
            uri_path(&pki.ca)
        ),
    );
    round_trip(connect_uri(&uri).await.unwrap()).await;

    assert_eq!(proxy.snis(), [Some("localhost".to_string()), None, None]);
}

#[tokio::test]
async fn rustls_config_replaces_the_file_settings() {
    let pki = Pki::generate();
    let proxy = TlsProxy::start(&pki, ProxyOptions::default()).await;
    let mut roots = rustls::RootCertStore::empty();
    roots.add(pki.ca_der.clone()).unwrap();
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let mut tls = TlsOptions::new();
    // The file would fail; the complete configuration wins.
    tls.ca_file(pki.missing("ignored.pem"))
        .rustls_config(Arc::new(config));
    round_trip(connect(options(&proxy, "localhost", &tls)).await.unwrap()).await;
}
