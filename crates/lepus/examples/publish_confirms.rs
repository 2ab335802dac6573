//! Publishes 10 000 messages with publisher confirms, pipelined, and waits for every ack.
//!
//! `cargo run -p lepus --example publish_confirms` (broker from `AMQP_URL`, default `memory://`, the in-process broker).
#![allow(missing_docs)]

use lepus::{
    BasicProperties, BasicPublishOptions, Connection, QueueDeclareOptions, QueueDeleteOptions,
};

#[tokio::main]
async fn main() -> Result<(), lepus::Error> {
    let url = std::env::var("AMQP_URL").unwrap_or_else(|_| "memory://".into());
    let conn = Connection::connect(&url).await?;
    let ch = conn.open_channel().await?;
    let q = ch
        .queue_declare("lepus.example.confirms", QueueDeclareOptions::default())
        .await?;
    ch.confirm_select().await?;

    let props = BasicProperties {
        delivery_mode: Some(2),
        ..Default::default()
    };
    let mut confirms = Vec::new();
    for i in 0..10_000 {
        let body = format!("message {i}");
        confirms.push(
            ch.basic_publish("", &q.name, BasicPublishOptions::default(), &props, body)
                .await?,
        );
    }
    let mut acked = 0;
    for confirm in confirms {
        if confirm.await?.is_ack() {
            acked += 1;
        }
    }
    println!("{acked} of 10000 messages confirmed");
    ch.queue_delete(&q.name, QueueDeleteOptions::default())
        .await?;
    conn.close().await
}
