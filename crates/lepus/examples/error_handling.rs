//! What errors look like: a soft error closes one channel and the connection carries on; a name
//! too long is refused before anything is sent; a consumer whose queue is deleted ends saying
//! so; a bad password, an unknown vhost and an unreachable broker fail to connect with a clear
//! message. Every error prints as one line, through `Display`.
//!
//! `cargo run -p lepus --example error_handling` (broker from `AMQP_URL`, default `memory://`, the in-process broker).
#![allow(missing_docs)]

use lepus::{
    BasicConsumeOptions, Connection, ConnectionOptions, Error, QueueDeclareOptions,
    QueueDeleteOptions, ReplyCode,
};

#[tokio::main]
async fn main() -> Result<(), lepus::Error> {
    let url = std::env::var("AMQP_URL").unwrap_or_else(|_| "memory://".into());
    let conn = Connection::connect(&url).await?;
    let ch = conn.open_channel().await?;

    match ch
        .queue_declare_passive("lepus.example.does-not-exist")
        .await
    {
        Err(Error::ChannelClosed(close)) if close.code == ReplyCode::NOT_FOUND => {
            println!("soft error, channel closed: {close}");
        }
        Err(e) => println!("unexpected error: {e}"),
        Ok(q) => println!("unexpected: queue {} exists", q.name),
    }
    let ch = conn.open_channel().await?; // the connection is still fine
    println!("new channel {} on the same connection", ch.id());

    let long = "x".repeat(300);
    if let Err(e) = ch
        .queue_declare(&long, QueueDeclareOptions::default())
        .await
    {
        println!("name too long: {e}");
    }

    let exclusive = QueueDeclareOptions {
        exclusive: true,
        ..Default::default()
    };
    let q = ch.queue_declare("", exclusive).await?;
    let mut consumer = ch
        .basic_consume(&q.name, "", BasicConsumeOptions::default())
        .await?;
    ch.queue_delete(&q.name, QueueDeleteOptions::default())
        .await?;
    if let Some(Err(e)) = consumer.recv().await {
        println!("consumer ended: {e}");
    }

    let mut wrong = ConnectionOptions::from_uri(&url)?;
    wrong.credentials("guest", "not-the-password");
    match Connection::connect_with(wrong).await {
        Err(e) if e.reply_code() == Some(ReplyCode::ACCESS_REFUSED) => {
            println!("bad password: {e}");
        }
        Err(e) => println!("unexpected error: {e}"),
        Ok(_) => println!("unexpected: the wrong password was accepted"),
    }
    // What `amqp://host/` asks for: the empty vhost, not the default `/`.
    let mut empty_vhost = ConnectionOptions::from_uri(&url)?;
    empty_vhost.vhost("");
    if let Err(e) = Connection::connect_with(empty_vhost).await {
        println!("empty vhost: {e}");
    }
    let mut nowhere = ConnectionOptions::new();
    nowhere.address("127.0.0.1", 1);
    if let Err(e) = Connection::connect_with(nowhere).await {
        println!("unreachable: {e}");
    }
    conn.close().await
}
