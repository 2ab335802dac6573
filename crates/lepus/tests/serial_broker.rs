//! Tests that change broker-wide state: a memory alarm (connection.blocked) and an operator
//! closing connections. They must not run beside other tests, so they are `#[ignore]`d here and
//! run one at a time by `scripts/test.sh` (`--ignored --test-threads=1`) after everything else.
//! Each puts the broker back as it was, even when it fails.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod support;

use std::process::Command;
use std::time::Duration;

use lepus::{
    BasicConsumeOptions, BasicProperties, BasicPublishOptions, Connection, ConnectionError,
    ConnectionEvent, Error, ReplyCode,
};
use support::unique;

use support::broker::{rabbitmqctl, tool};

/// Restores the memory watermark when dropped, also when the test panics.
struct Watermark;

impl Watermark {
    fn alarm() -> Self {
        rabbitmqctl(&["set_vm_memory_high_watermark", "0"]);
        Self
    }
}

impl Drop for Watermark {
    fn drop(&mut self) {
        let _ = Command::new("rabbitmqctl")
            .args(["set_vm_memory_high_watermark", "0.4"])
            .output();
    }
}

async fn next_event(
    events: &mut tokio::sync::broadcast::Receiver<ConnectionEvent>,
) -> ConnectionEvent {
    tokio::time::timeout(Duration::from_secs(20), events.recv())
        .await
        .expect("no connection event within 20 s")
        .unwrap()
}

#[tokio::test]
#[ignore = "changes broker-wide state; run serially by scripts/test.sh"]
async fn memory_alarm_blocks_publishers_until_cleared() {
    let mut o = support::options();
    o.blocked_publish_timeout(Some(Duration::from_millis(500)));
    let conn = Connection::connect_with(o).await.unwrap();
    let mut events = conn.events();
    let ch = conn.open_channel().await.unwrap();
    let q = support::exclusive_queue(&ch, "blocked").await;
    let props = BasicProperties::default();

    let alarm = Watermark::alarm();
    // RabbitMQ blocks a connection when it next publishes during an alarm.
    ch.basic_publish("", &q, BasicPublishOptions::default(), &props, "before")
        .await
        .unwrap();
    let ConnectionEvent::Blocked(reason) = next_event(&mut events).await else {
        panic!("expected Blocked");
    };
    assert!(reason.contains("memory"), "{reason}");
    assert!(conn.blocked().is_some());
    let err = ch
        .basic_publish(
            "",
            &q,
            BasicPublishOptions::default(),
            &props,
            "while blocked",
        )
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Timeout { .. }), "{err}");

    drop(alarm);
    assert_eq!(next_event(&mut events).await, ConnectionEvent::Unblocked);
    assert!(conn.blocked().is_none());
    ch.basic_publish("", &q, BasicPublishOptions::default(), &props, "after")
        .await
        .unwrap();
    conn.close().await.unwrap();
}

#[tokio::test]
#[ignore = "closes connections from the broker side; run serially by scripts/test.sh"]
async fn operator_closing_the_connection_fails_everything_with_320() {
    let name = unique("forced");
    let mut o = support::options();
    // Fail-fast: without recovery, everything ends with the broker's 320.
    o.connection_name(name.clone()).no_recovery();
    let conn = Connection::connect_with(o).await.unwrap();
    let ch = conn.open_channel().await.unwrap();
    let q = support::exclusive_queue(&ch, "forced-q").await;
    ch.confirm_select().await.unwrap();
    let mut consumer = ch
        .basic_consume(&q, "", BasicConsumeOptions::default())
        .await
        .unwrap();

    // Close it as an operator would.
    support::broker::close_connection_named(&name, "closed by the lepus test suite").await;

    let item = tokio::time::timeout(Duration::from_secs(10), consumer.recv())
        .await
        .unwrap();
    let err = item.unwrap().unwrap_err();
    let Error::ConnectionClosed(ConnectionError::ServerClosed(close)) = &err else {
        panic!("{err}");
    };
    assert_eq!(close.code, ReplyCode::CONNECTION_FORCED);
    assert!(
        close.text.contains("closed by the lepus test suite"),
        "{}",
        close.text
    );
    assert_eq!(err.reply_code(), Some(ReplyCode::CONNECTION_FORCED));
    assert!(!conn.is_open());
    let after = ch.queue_declare_passive(&q).await.unwrap_err();
    assert!(after.is_connection_error(), "{after}");
}

fn rabbitmq_eval(expr: &str) -> String {
    rabbitmqctl(&["eval", expr])
}

/// Puts the broker into a state where it accepts SASL EXTERNAL over TLS, and back on drop:
/// the `rabbitmq_auth_mechanism_ssl` plugin, `EXTERNAL` among the offered mechanisms, the
/// user name taken from the certificate's common name, a user of that name, and a TLS
/// listener that requires a client certificate from the test CA.
struct ExternalAuth {
    port: u16,
    user: &'static str,
    plugin_was_enabled: bool,
    saved_env: Vec<(&'static str, String)>,
}

impl ExternalAuth {
    fn enable(pki: &support::tls_proxy::Pki) -> Self {
        let plugin_was_enabled = rabbitmq_plugins(&["list", "-e", "-m"])
            .lines()
            .any(|l| l.trim() == "rabbitmq_auth_mechanism_ssl");
        let saved_env = ["auth_mechanisms", "ssl_cert_login_from", "ssl_options"]
            .into_iter()
            .map(|key| {
                let value = rabbitmq_eval(&format!("application:get_env(rabbit, {key})."));
                (key, value.trim().to_string())
            })
            .collect();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        // Built before anything changes, so that a failure below still restores it all.
        let guard = Self {
            port,
            user: pki.client_name,
            plugin_was_enabled,
            saved_env,
        };
        if !plugin_was_enabled {
            rabbitmq_plugins(&["enable", "rabbitmq_auth_mechanism_ssl"]);
        }
        rabbitmq_eval(
            "application:set_env(rabbit, auth_mechanisms, ['PLAIN', 'AMQPLAIN', 'EXTERNAL']), \
             application:set_env(rabbit, ssl_cert_login_from, common_name).",
        );
        rabbitmqctl(&["add_user", guard.user, &unique("unused-password")]);
        rabbitmqctl(&["set_permissions", "-p", "/", guard.user, ".*", ".*", ".*"]);
        // The mechanism trusts a certificate only when the broker's TLS options demand one.
        let ssl_options = format!(
            "[{{cacertfile, \"{ca}\"}}, {{certfile, \"{cert}\"}}, {{keyfile, \"{key}\"}}, \
             {{verify, verify_peer}}, {{fail_if_no_peer_cert, true}}]",
            ca = pki.ca.display(),
            cert = pki.server_cert.display(),
            key = pki.server_key_file.display(),
        );
        rabbitmq_eval(&format!(
            "application:set_env(rabbit, ssl_options, {ssl_options})."
        ));
        let started = rabbitmq_eval(&format!(
            "rabbit_networking:start_ssl_listener({{\"127.0.0.1\", {port}}}, {ssl_options}, 1)."
        ));
        assert_eq!(
            started.trim(),
            "ok",
            "TLS listener did not start: {started}"
        );
        guard
    }
}

impl Drop for ExternalAuth {
    fn drop(&mut self) {
        let _ = Command::new("rabbitmqctl")
            .args([
                "eval",
                &format!(
                    "rabbit_networking:stop_tcp_listener({{\"127.0.0.1\", {}}}).",
                    self.port
                ),
            ])
            .output();
        for (key, saved) in &self.saved_env {
            let _ = Command::new("rabbitmqctl")
                .args([
                    "eval",
                    &format!(
                        "case {saved} of {{ok, V}} -> application:set_env(rabbit, {key}, V); \
                         undefined -> application:unset_env(rabbit, {key}) end."
                    ),
                ])
                .output();
        }
        let _ = Command::new("rabbitmqctl")
            .args(["delete_user", self.user])
            .output();
        if !self.plugin_was_enabled {
            let _ = Command::new("rabbitmq-plugins")
                .args(["disable", "rabbitmq_auth_mechanism_ssl"])
                .output();
        }
    }
}

fn rabbitmq_plugins(args: &[&str]) -> String {
    tool("rabbitmq-plugins", args)
}

#[tokio::test]
#[ignore = "adds a TLS listener, a plugin and a user to the broker; run serially by scripts/test.sh"]
async fn external_auth_logs_in_as_the_certificate_common_name() {
    let pki = support::tls_proxy::Pki::generate();
    let external = ExternalAuth::enable(&pki);
    let path = support::tls_proxy::uri_path;
    let url = format!(
        "amqps://127.0.0.1:{}/%2f?auth_mechanism=external&cacertfile={}&certfile={}&keyfile={}",
        external.port,
        path(&pki.ca),
        path(&pki.client_cert),
        path(&pki.client_key),
    );

    let name = unique("external");
    let mut o = lepus::ConnectionOptions::from_uri(&url).unwrap();
    o.connection_name(name.clone());
    let conn = Connection::connect_with(o).await.unwrap();
    let ch = conn.open_channel().await.unwrap();
    let q = support::exclusive_queue(&ch, "external").await;
    ch.basic_publish(
        "",
        &q,
        BasicPublishOptions::default(),
        &BasicProperties::default(),
        "x",
    )
    .await
    .unwrap();
    assert_eq!(
        support::get_eventually(&ch, &q, true).await.delivery.body,
        "x"
    );
    // The broker names the user after the certificate and the mechanism EXTERNAL.
    let listing = rabbitmqctl(&[
        "list_connections",
        "user",
        "auth_mechanism",
        "client_properties",
    ]);
    let line = listing
        .lines()
        .find(|l| l.contains(&name))
        .unwrap_or_else(|| panic!("connection not listed: {listing}"));
    assert!(line.starts_with(pki.client_name), "{line}");
    assert!(line.contains("EXTERNAL"), "{line}");
    conn.close().await.unwrap();

    // Without a user of that name, the broker refuses the login: a typed error.
    rabbitmqctl(&["delete_user", pki.client_name]);
    let err = Connection::connect(&url).await.unwrap_err();
    assert!(matches!(err, Error::AuthenticationFailed(_)), "{err}");
    drop(external);
}
