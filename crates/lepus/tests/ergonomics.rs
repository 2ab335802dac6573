//! Everyday use of the library against a real RabbitMQ: names lepus hands out go back in as
//! they are, properties come from a builder, header values from ordinary Rust values, and every
//! error reads as one plain line.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod support;

use std::time::Duration;

use lepus::uri::AmqpUri;
use lepus::{
    AsShortStr, BasicConsumeOptions, BasicProperties, BasicPropertiesBuilder, BasicPublishOptions,
    BindOptions, Channel, Close, Connection, ConnectionError, DeliveryMode, EncodeError, Error,
    ExchangeKind, FieldTable, FieldValue, LongStr, QueueDeclareOptions, QueueDeleteOptions,
    ReplyCode, ShortStr,
};
use support::{channel, unique};

/// A server-named queue only this connection may use.
async fn server_named_queue(ch: &Channel) -> String {
    let options = QueueDeclareOptions {
        exclusive: true,
        ..Default::default()
    };
    ch.queue_declare("", options).await.unwrap().name
}

/// Asserts that an error message is one plain line: no `Debug` forms, no trailing period.
fn assert_plain(text: &str) {
    for debug in [
        "Some(",
        "None",
        "ReplyCode(",
        "Close {",
        "ServerClosed(",
        "\\n",
    ] {
        assert!(!text.contains(debug), "{debug} in {text}");
    }
    assert!(!text.contains('\n') && !text.ends_with('.'), "{text}");
}

// ---- names lepus hands out go back in without conversion ----

/// The calls of the issue, exactly: a consumer tag to `basic_cancel`, a declared queue's name
/// to `queue_bind`, a delivery's exchange and routing key back into `basic_publish`.
#[tokio::test]
async fn names_from_lepus_are_accepted_as_they_are() {
    let (conn, ch) = channel().await;
    let q = ch
        .queue_declare(
            "",
            QueueDeclareOptions {
                exclusive: true,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let key = unique("forward");
    ch.queue_bind(&q.name, "amq.direct", &key, BindOptions::default())
        .await
        .unwrap();
    let mut consumer = ch
        .basic_consume(&q.name, "", BasicConsumeOptions::default())
        .await
        .unwrap();
    let props = BasicProperties::default();
    ch.basic_publish(
        "amq.direct",
        key.as_str(),
        BasicPublishOptions::default(),
        &props,
        "one",
    )
    .await
    .unwrap();
    let first = consumer.recv().await.unwrap().unwrap();
    assert_eq!(first.exchange, "amq.direct");
    assert_eq!(first.routing_key, key.as_str());

    // Back to where it came from, by reference and by value.
    ch.basic_publish(
        &first.exchange,
        &first.routing_key,
        BasicPublishOptions::default(),
        &first.properties,
        "two",
    )
    .await
    .unwrap();
    ch.basic_publish(
        first.exchange.clone(),
        first.routing_key.clone(),
        BasicPublishOptions::default(),
        &first.properties,
        "three",
    )
    .await
    .unwrap();
    first.ack().unwrap();
    for body in ["two", "three"] {
        let d = tokio::time::timeout(Duration::from_secs(5), consumer.recv())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(&d.body[..], body.as_bytes());
        d.ack().unwrap();
    }

    ch.basic_cancel(consumer.tag()).await.unwrap();
    assert!(consumer.recv().await.is_none(), "cancelled stream ends");
    ch.queue_unbind(&q.name, "amq.direct", &key, FieldTable::new())
        .await
        .unwrap();
    ch.queue_delete(&q.name, QueueDeleteOptions::default())
        .await
        .unwrap();
    conn.close().await.unwrap();
}

#[tokio::test]
async fn a_short_str_that_is_not_utf8_is_refused_by_publish_before_sending() {
    let (conn, ch) = channel().await;
    let key = ShortStr::from_bytes(vec![b'k', 0xff]).unwrap();
    let err = ch
        .basic_publish(
            "",
            &key,
            BasicPublishOptions::default(),
            &BasicProperties::default(),
            "x",
        )
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "invalid argument: the routing key is not UTF-8"
    );
    assert!(ch.is_open(), "nothing was sent, so the channel stays open");
    conn.close().await.unwrap();
}

#[test]
fn blocking_api_takes_names_from_lepus_too() {
    let conn = lepus::blocking::Connection::connect_with(support::options()).unwrap();
    let ch = conn.open_channel().unwrap();
    let q = ch
        .queue_declare(
            "",
            QueueDeclareOptions {
                exclusive: true,
                ..Default::default()
            },
        )
        .unwrap();
    let consumer = ch
        .basic_consume_iter(&q.name, "", BasicConsumeOptions::default())
        .unwrap();
    let tag = consumer.tag().clone();
    ch.basic_publish(
        "",
        &q.name,
        BasicPublishOptions::default(),
        &BasicProperties::default(),
        "x",
    )
    .unwrap();
    ch.basic_cancel(&tag).unwrap();
    let got = ch.basic_get(&q.name, true).unwrap();
    let delivered = consumer.count();
    assert_eq!(
        delivered + usize::from(got.is_some()),
        1,
        "the message went to the consumer or stayed in the queue"
    );
    conn.close().unwrap();
}

// ---- properties and header values ----

#[tokio::test]
async fn built_properties_and_borrowed_header_values_reach_the_broker() {
    let (conn, ch) = channel().await;
    let q = server_named_queue(&ch).await;
    let user = format!("user-{}", std::process::id());
    let count: u64 = 1 << 40;
    let props = BasicProperties::builder()
        .content_type("application/json")
        .delivery_mode(DeliveryMode::Persistent)
        .correlation_id(&user)
        .reply_to(&q)
        .expiration(Duration::from_secs(60))
        .header("user", user.as_str())
        .header("raw", vec![0u8, 0xff])
        .header("count", FieldValue::try_from(count).unwrap())
        .build()
        .unwrap();
    ch.basic_publish("", &q, BasicPublishOptions::default(), &props, "{}")
        .await
        .unwrap();
    let got = support::get_eventually(&ch, &q, true).await.delivery;
    assert_eq!(got.properties, props);
    let headers = got.properties.headers.as_ref().unwrap();
    assert_eq!(
        headers.get("user"),
        Some(&FieldValue::LongStr(LongStr::from(user)))
    );
    assert_eq!(
        headers.get("raw").and_then(FieldValue::as_bytes),
        Some(&[0u8, 0xff][..])
    );
    assert_eq!(headers.get("count"), Some(&FieldValue::I64(1 << 40)));
    assert!(got.properties.is_persistent());
    conn.close().await.unwrap();
}

#[tokio::test]
async fn an_over_long_property_is_an_error_not_a_panic() {
    let (conn, ch) = channel().await;
    let long = "application/".to_owned() + &"x".repeat(300);
    let built: Result<BasicProperties, EncodeError> = BasicPropertiesBuilder::default()
        .content_type(&long)
        .build();
    assert_eq!(
        built,
        Err(EncodeError::PropertyTooLong {
            property: "content-type",
            len: 312
        })
    );
    // Through `?` into the client's error, as application code meets it.
    async fn publish(ch: &Channel, content_type: &str) -> Result<(), Error> {
        let props = BasicProperties::builder()
            .content_type(content_type)
            .build()?;
        ch.basic_publish("", "", BasicPublishOptions::default(), &props, "x")
            .await?;
        Ok(())
    }
    let err = publish(&ch, &long).await.unwrap_err();
    assert_eq!(
        err.to_string(),
        "invalid argument: content-type of 312 bytes exceeds 255 bytes"
    );
    assert!(ch.is_open());
    conn.close().await.unwrap();
}

#[test]
fn exchange_kind_round_trips_through_text() {
    let kind: ExchangeKind = "headers".parse().unwrap();
    assert_eq!(kind, ExchangeKind::Headers);
    assert_eq!(format!("{kind}"), "headers");
    let err = "".parse::<ExchangeKind>().unwrap_err();
    assert_eq!(
        err.to_string(),
        "exchange type is empty (expected direct, fanout, topic, headers or a plugin's type)"
    );
}

/// Every name the re-exported types' doc examples use is at the crate root of `lepus`, so the
/// examples (written `use lepus::…`) compile for a user of `lepus` alone.
#[test]
fn doc_example_names_are_reexported() {
    fn takes(_: impl AsShortStr) {}
    takes(ShortStr::from_static("a"));
    let _: Option<(
        FieldTable,
        FieldValue,
        LongStr,
        ReplyCode,
        BasicPropertiesBuilder,
    )> = None;
    let _ = lepus::uri::UriError::MissingScheme;
}

// ---- error texts ----

#[tokio::test]
async fn consumer_cancelled_by_the_broker_says_why() {
    let (conn, ch) = channel().await;
    let q = server_named_queue(&ch).await;
    let mut consumer = ch
        .basic_consume(&q, "", BasicConsumeOptions::default())
        .await
        .unwrap();
    ch.queue_delete(&q, QueueDeleteOptions::default())
        .await
        .unwrap();
    let err = tokio::time::timeout(Duration::from_secs(5), consumer.recv())
        .await
        .unwrap()
        .unwrap()
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "consumer {} was cancelled by the broker: the queue was deleted, its node went \
             down, or an ack timed out",
            consumer.tag()
        )
    );
    conn.close().await.unwrap();
}

#[tokio::test]
async fn broker_errors_read_as_one_plain_line() {
    let (conn, ch) = channel().await;

    // 404 on a channel.
    let missing = unique("missing");
    let vhost = AmqpUri::parse(&support::url()).unwrap().vhost;
    let err = ch.queue_declare_passive(&missing).await.unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "channel closed by broker: 404 NOT_FOUND - no queue '{missing}' in vhost '{vhost}' \
             (queue.declare)"
        )
    );
    assert_eq!(err.reply_code(), Some(ReplyCode::NOT_FOUND));

    // 403 on a channel: a second consumer on a queue held by an exclusive one.
    let ch = conn.open_channel().await.unwrap();
    let q = server_named_queue(&ch).await;
    let exclusive = BasicConsumeOptions {
        exclusive: true,
        ..Default::default()
    };
    let _held = ch.basic_consume(&q, "", exclusive).await.unwrap();
    let ch2 = conn.open_channel().await.unwrap();
    let err = ch2
        .basic_consume(&q, "", BasicConsumeOptions::default())
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(
        text.starts_with("channel closed by broker: 403 ACCESS_REFUSED - ")
            && text.ends_with(" (basic.consume)"),
        "{text}"
    );
    assert_plain(&text);

    // A hard error closes the connection: an exchange type the broker does not have.
    let name = unique("badtype");
    let err = ch
        .exchange_declare(
            &name,
            ExchangeKind::Custom("x-lepus-no-such-type".into()),
            Default::default(),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, Error::ConnectionClosed(_)), "{err}");
    assert_eq!(
        err.to_string(),
        "connection closed by server: 503 COMMAND_INVALID - unknown exchange type \
         'x-lepus-no-such-type' (exchange.declare)"
    );
}

#[tokio::test]
async fn refused_credentials_read_as_one_plain_line() {
    let mut options = support::options();
    options.credentials("guest", "not-the-password");
    let err = Connection::connect_with(options).await.unwrap_err();
    let text = err.to_string();
    assert!(
        text.starts_with("authentication failed: 403 ACCESS_REFUSED - "),
        "{text}"
    );
    assert_eq!(err.reply_code(), Some(ReplyCode::ACCESS_REFUSED));
    assert_eq!(
        err.reply_code().map(|c| c.to_string()).as_deref(),
        Some("403 ACCESS_REFUSED")
    );
    // The message itself is RabbitMQ's, which ends with a period; nothing of lepus's is Debug.
    for debug in ["Some(", "ReplyCode(", "Close {"] {
        assert!(!text.contains(debug), "{text}");
    }
}

#[test]
fn client_errors_read_as_one_plain_line() {
    let close = |code, text: &str, class_id, method_id| Close {
        code,
        text: text.into(),
        class_id,
        method_id,
    };
    let cases = [
        (
            Error::ChannelClosed(close(
                ReplyCode::ACCESS_REFUSED,
                "ACCESS_REFUSED - queue 'q' in vhost '/' in exclusive use",
                60,
                20,
            )),
            "channel closed by broker: 403 ACCESS_REFUSED - queue 'q' in vhost '/' in \
             exclusive use (basic.consume)",
        ),
        (
            Error::ConnectionClosed(ConnectionError::ServerClosed(close(
                ReplyCode::CONNECTION_FORCED,
                "CONNECTION_FORCED - broker forced connection closure with reason 'shutdown'",
                0,
                0,
            ))),
            "connection closed by server: 320 CONNECTION_FORCED - broker forced connection \
             closure with reason 'shutdown'",
        ),
        (
            Error::AuthenticationFailed(close(
                ReplyCode::ACCESS_REFUSED,
                "ACCESS_REFUSED - Login was refused",
                0,
                0,
            )),
            "authentication failed: 403 ACCESS_REFUSED - Login was refused",
        ),
        (
            Error::Timeout {
                what: "queue.declare-ok",
                after: Duration::from_secs(30),
            },
            "timed out after 30 s waiting for queue.declare-ok",
        ),
        (
            Error::Timeout {
                what: "AMQP handshake",
                after: Duration::from_millis(1500),
            },
            "timed out after 1.5 s waiting for AMQP handshake",
        ),
        (
            Error::Timeout {
                what: "channel.close-ok",
                after: Duration::from_millis(250),
            },
            "timed out after 250 ms waiting for channel.close-ok",
        ),
        (
            Error::Timeout {
                what: "TCP connect",
                after: Duration::from_micros(500),
            },
            "timed out after 500 µs waiting for TCP connect",
        ),
        (
            Error::ConsumerCancelled(ShortStr::from_static("amq.ctag-1")),
            "consumer amq.ctag-1 was cancelled by the broker: the queue was deleted, its node \
             went down, or an ack timed out",
        ),
    ];
    for (err, text) in cases {
        assert_eq!(err.to_string(), text);
        assert_plain(&err.to_string());
    }
}

// ---- URIs ----

/// The test broker's URI with its path replaced by `path`.
fn with_path(path: &str) -> String {
    let url = support::url();
    let uri = AmqpUri::parse(&url).unwrap();
    let after_scheme = url.find("://").unwrap() + 3;
    let authority_end = url[after_scheme..]
        .find(['/', '?'])
        .map_or(url.len(), |i| i + after_scheme);
    assert_eq!(
        AmqpUri::parse(&url[..authority_end]).unwrap().host,
        uri.host
    );
    format!("{}{path}", &url[..authority_end])
}

#[tokio::test]
async fn kombu_double_slash_connects_to_the_default_vhost() {
    let conn = Connection::connect(&with_path("//")).await.unwrap();
    let ch = conn.open_channel().await.unwrap();
    // `amq.direct` exists in every vhost; the point is that the vhost was opened at all.
    ch.exchange_declare_passive("amq.direct").await.unwrap();
    conn.close().await.unwrap();
}

#[tokio::test]
async fn the_empty_vhost_is_refused_with_a_hint() {
    let err = Connection::connect(&with_path("/")).await.unwrap_err();
    assert_eq!(
        err.to_string(),
        "connection closed by server: 530 NOT_ALLOWED - vhost  not found (connection.open); \
         the default vhost is \"/\", written %2f"
    );
}
