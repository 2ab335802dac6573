//! Declares an exchange and a queue, binds them, publishes a few messages and consumes them
//! with manual acknowledgements.
//!
//! `cargo run -p lepus --example consume_acks` (broker from `AMQP_URL`, default `memory://`, the in-process broker).
#![allow(missing_docs)]

use lepus::{
    BasicConsumeOptions, BasicProperties, BasicPublishOptions, BasicQosOptions, BindOptions,
    Connection, ExchangeDeclareOptions, ExchangeDeleteOptions, ExchangeKind, QueueDeclareOptions,
    QueueDeleteOptions, ShortStr,
};

#[tokio::main]
async fn main() -> Result<(), lepus::Error> {
    let url = std::env::var("AMQP_URL").unwrap_or_else(|_| "memory://".into());
    let conn = Connection::connect(&url).await?;
    let ch = conn.open_channel().await?;

    ch.exchange_declare(
        "lepus.example.logs",
        ExchangeKind::Topic,
        ExchangeDeclareOptions::default(),
    )
    .await?;
    let q = ch
        .queue_declare(
            "",
            QueueDeclareOptions {
                exclusive: true,
                ..Default::default()
            },
        )
        .await?;
    ch.queue_bind(
        &q.name,
        "lepus.example.logs",
        "app.*.error",
        BindOptions::default(),
    )
    .await?;
    ch.basic_qos(10, BasicQosOptions::default()).await?;

    let props = BasicProperties {
        content_type: Some(ShortStr::from_static("text/plain")),
        ..Default::default()
    };
    for (key, text) in [
        ("app.web.error", "timeout"),
        ("app.web.info", "ignored"),
        ("app.db.error", "deadlock"),
    ] {
        ch.basic_publish(
            "lepus.example.logs",
            key,
            BasicPublishOptions::default(),
            &props,
            text,
        )
        .await?;
    }

    let mut consumer = ch
        .basic_consume(&q.name, "", BasicConsumeOptions::default())
        .await?;
    for _ in 0..2 {
        let Some(delivery) = consumer.recv().await else {
            break;
        };
        let delivery = delivery?;
        println!(
            "{}: {}",
            delivery.routing_key,
            String::from_utf8_lossy(&delivery.body)
        );
        delivery.ack()?;
    }
    ch.basic_cancel(&consumer.tag().to_string()).await?;
    ch.queue_delete(&q.name, QueueDeleteOptions::default())
        .await?;
    ch.exchange_delete("lepus.example.logs", ExchangeDeleteOptions::default())
        .await?;
    conn.close().await
}
