//! Several brokers for one connection: connecting tries each in turn, and says where it got.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod support;

use std::time::Duration;

use lepus::{Connection, ConnectionOptions, Error, FailoverStrategy};
use support::proxy::broker_addr;

/// A local port nothing listens on.
fn dead_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

/// The test broker's URL with its address replaced by `127.0.0.1:port`.
fn url_at(port: u16) -> String {
    format!("amqp://guest:guest@127.0.0.1:{port}/%2f?connection_timeout=2000")
}

fn live_url() -> String {
    url_at(broker_addr().port())
}

#[tokio::test]
async fn connecting_skips_a_broker_that_cannot_be_reached() {
    let dead = dead_port();
    let live = broker_addr().port();
    for uri in [
        format!("{};{}", url_at(dead), live_url()),
        format!("{};{}", live_url(), url_at(dead)),
    ] {
        let conn = Connection::connect(&uri).await.unwrap();
        assert_eq!(conn.address(), format!("127.0.0.1:{live}"), "{uri}");
        let ch = conn.open_channel().await.unwrap();
        support::exclusive_queue(&ch, "failover").await;
        conn.close().await.unwrap();
    }
}

#[tokio::test]
async fn each_broker_keeps_its_own_credentials_and_vhost() {
    // The first broker is reachable but refuses these credentials; the second accepts.
    let live = broker_addr().port();
    let uri =
        format!("amqp://guest:wrong@127.0.0.1:{live}/%2f;amqp://guest:guest@127.0.0.1:{live}/%2f");
    let conn = Connection::connect(&uri).await.unwrap();
    assert!(conn.is_open());
    conn.close().await.unwrap();
}

#[tokio::test]
async fn when_no_broker_answers_every_failure_is_reported() {
    let (a, b) = (dead_port(), dead_port());
    let err = Connection::connect(&format!("{};{}", url_at(a), url_at(b)))
        .await
        .unwrap_err();
    let Error::AllHostsFailed(failures) = &err else {
        panic!("expected AllHostsFailed, got {err}");
    };
    let tried: Vec<&str> = failures.iter().map(|(addr, _)| addr.as_str()).collect();
    assert_eq!(tried, [format!("127.0.0.1:{a}"), format!("127.0.0.1:{b}")]);
    assert!(err.is_connection_error());
    let text = err.to_string();
    assert!(
        text.starts_with("no broker could be reached: cannot connect to 127.0.0.1:"),
        "{text}"
    );
    assert_eq!(text.matches("cannot connect to").count(), 2, "{text}");
    assert!(!text.contains('\n'));

    // With a single broker the error is that broker's, as before.
    let err = Connection::connect(&url_at(a)).await.unwrap_err();
    assert!(matches!(err, Error::Connect { .. }), "{err}");
}

#[tokio::test]
async fn shuffled_brokers_are_all_tried() {
    let dead = dead_port();
    let live = broker_addr().port();
    let mut options =
        ConnectionOptions::from_uri(&format!("{};{};{}", url_at(dead), url_at(dead), live_url()))
            .unwrap();
    options
        .failover_strategy(FailoverStrategy::Shuffle)
        .connect_timeout(Duration::from_secs(2));
    for _ in 0..5 {
        let conn = Connection::connect_with(options.clone()).await.unwrap();
        assert_eq!(conn.address(), format!("127.0.0.1:{live}"));
        conn.close().await.unwrap();
    }
}

#[tokio::test]
async fn the_initial_connect_is_retried_when_asked_until_a_broker_answers() {
    let port = dead_port();
    let url = url_at(port);
    // The broker appears (through a proxy on that port) half a second from now.
    let late = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let listen = format!("127.0.0.1:{port}").parse().unwrap();
        support::proxy::Proxy::start_at(listen, broker_addr()).await
    });
    let mut options = ConnectionOptions::from_uri(&url).unwrap();
    let mut policy = lepus::RecoveryPolicy::new();
    policy
        .initial_delay(Duration::from_millis(100))
        .max_delay(Duration::from_millis(200))
        .retry_initial_connect(true);
    options.recovery(policy.clone());
    let started = std::time::Instant::now();
    let conn = Connection::connect_with(options).await.unwrap();
    assert!(started.elapsed() >= Duration::from_millis(400));
    let _proxy = late.await.unwrap();
    conn.close().await.unwrap();

    // Without the flag, connecting fails at once; with it, a refusal is not retried.
    let err = Connection::connect(&url_at(dead_port())).await.unwrap_err();
    assert!(matches!(err, Error::Connect { .. }), "{err}");
    let live = broker_addr().port();
    let mut refused =
        ConnectionOptions::from_uri(&format!("amqp://guest:wrong@127.0.0.1:{live}/%2f")).unwrap();
    refused.recovery(policy);
    let started = std::time::Instant::now();
    let err = Connection::connect_with(refused).await.unwrap_err();
    assert!(matches!(err, Error::AuthenticationFailed(_)), "{err}");
    assert!(started.elapsed() < Duration::from_secs(2));

    // Its limits hold.
    let mut limited = ConnectionOptions::from_uri(&url_at(dead_port())).unwrap();
    let mut policy = lepus::RecoveryPolicy::new();
    policy
        .initial_delay(Duration::from_millis(10))
        .max_attempts(Some(3))
        .retry_initial_connect(true);
    limited.recovery(policy);
    let err = Connection::connect_with(limited).await.unwrap_err();
    assert!(matches!(err, Error::Connect { .. }), "{err}");
}
