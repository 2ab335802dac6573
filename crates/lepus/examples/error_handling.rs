//! What errors look like: a soft error closes one channel, the connection carries on; a bad
//! password and an unreachable broker fail to connect with a clear message.
//!
//! `cargo run -p lepus --example error_handling` (broker from `AMQP_URL`, default local).
#![allow(missing_docs)]

use lepus::{Connection, ConnectionOptions, Error, ReplyCode};

#[tokio::main]
async fn main() -> Result<(), lepus::Error> {
    let url = std::env::var("AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into());
    let conn = Connection::connect(&url).await?;
    let ch = conn.open_channel().await?;

    match ch
        .queue_declare_passive("lepus.example.does-not-exist")
        .await
    {
        Err(Error::ChannelClosed(close)) if close.code == ReplyCode::NOT_FOUND => {
            println!("soft error, channel closed: {close}");
        }
        other => println!("unexpected: {other:?}"),
    }
    let ch = conn.open_channel().await?; // the connection is still fine
    println!("new channel {} on the same connection", ch.id());

    let mut wrong = ConnectionOptions::from_uri(&url)?;
    wrong.credentials("guest", "not-the-password");
    if let Err(e) = Connection::connect_with(wrong).await {
        println!("bad password: {e} (reply code {:?})", e.reply_code());
    }
    let mut nowhere = ConnectionOptions::new();
    nowhere.address("127.0.0.1", 1);
    if let Err(e) = Connection::connect_with(nowhere).await {
        println!("unreachable: {e}");
    }
    conn.close().await
}
