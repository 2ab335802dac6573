//! Request and reply: an `RpcServer` answers on one connection, an `RpcClient` calls it over
//! RabbitMQ's direct reply-to from another, with many calls in flight at once. Against the
//! broker at `AMQP_URL` (default `memory://`, the in-process broker).
//!
//! ```text
//! cargo run -p lepus-messaging --example rpc
//! ```

use std::time::Duration;

use lepus_messaging::{Connection, Error, Queue, RpcClient, RpcServer};
use serde::{Deserialize, Serialize};

#[derive(Debug, Serialize, Deserialize)]
struct Add {
    a: i64,
    b: i64,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::var("AMQP_URL").unwrap_or_else(|_| "memory://".to_string());

    // The server, on a connection of its own; its queue expires once unused.
    let server_conn = Connection::connect(&url).await?;
    let queue = Queue::new("example.rpc-adder").expires(Duration::from_secs(60));
    server_conn.maybe_declare(queue.clone()).await?;
    let server = RpcServer::builder(&server_conn, queue.clone())
        .concurrency(16)
        .build()?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn(async move {
        server
            .serve_until(
                |add: Add, _request| async move {
                    if add.a == i64::MAX {
                        // No reply: the request is rejected, the caller times out.
                        return Err("overflow".to_owned());
                    }
                    Ok(add.a + add.b)
                },
                async move {
                    let _ = stopped.await;
                },
            )
            .await
    });

    // The client: one channel, a hundred calls in flight at once.
    let conn = Connection::connect(&url).await?;
    let client = RpcClient::new(&conn).await?;
    let calls: Vec<_> = (0..100i64)
        .map(|i| {
            let client = client.clone();
            let queue = queue.clone();
            tokio::spawn(async move {
                let sum: i64 = client
                    .call(&queue, &Add { a: i, b: i }, Duration::from_secs(5))
                    .await?;
                Ok::<_, Error>((i, sum))
            })
        })
        .collect();
    let mut total = 0;
    for call in calls {
        let (i, sum) = call.await??;
        assert_eq!(sum, 2 * i);
        total += sum;
    }
    println!("100 calls answered; the sums add up to {total}");

    // The errors a caller sees.
    match client
        .call::<_, i64>(
            &queue,
            &Add { a: i64::MAX, b: 1 },
            Duration::from_millis(300),
        )
        .await
    {
        Err(Error::Timeout(after)) => println!("no reply within {after:?} (the handler failed)"),
        other => println!("unexpected: {other:?}"),
    }
    match client
        .call::<_, i64>(
            "example.nobody-serves-this",
            &Add { a: 1, b: 1 },
            Duration::from_secs(1),
        )
        .await
    {
        Err(Error::Returned(returned)) => println!(
            "no route: {} {}",
            returned.reply_code.0, returned.reply_text
        ),
        other => println!("unexpected: {other:?}"),
    }

    let _ = stop.send(());
    serving.await??;
    conn.close().await?;
    server_conn.close().await?;
    Ok(())
}
