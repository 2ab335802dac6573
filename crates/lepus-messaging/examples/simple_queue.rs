//! kombu's `SimpleQueue` and `SimpleBuffer`: a queue used like a queue of values, against the
//! broker at `AMQP_URL` (default `memory://`, the in-process broker).
//!
//! ```text
//! cargo run -p lepus-messaging --example simple_queue
//! ```

use std::time::Duration;

use lepus_messaging::{Connection, Error, Queue, Result, SimpleBuffer, SimpleQueue};
use serde::{Deserialize, Serialize};

#[derive(Debug, Serialize, Deserialize)]
struct Job {
    id: u32,
    name: String,
}

#[tokio::main]
async fn main() -> Result<()> {
    let url = std::env::var("AMQP_URL").unwrap_or_else(|_| "memory://".to_string());
    let conn = Connection::connect(&url).await?;

    // kombu's `conn.SimpleQueue('example.jobs')` makes a durable exchange and queue of that
    // name; this example's queue expires instead, so that it leaves nothing behind.
    let jobs = Queue::new("example.simple-jobs").expires(Duration::from_secs(60));
    let queue = SimpleQueue::from_queue(&conn, jobs).build().await?;
    for id in 1..=3 {
        let job = Job {
            id,
            name: format!("resize #{id}"),
        };
        queue.put(&job).compression("zlib").await?;
    }
    println!("{} jobs queued", queue.len().await?);

    loop {
        match queue.get(Duration::from_millis(500)).await {
            Ok(message) => {
                let job: Job = message.decode()?;
                println!("got job {}: {}", job.id, job.name);
                message.ack()?; // as in kombu, the caller acknowledges
            }
            // kombu's `Empty`.
            Err(Error::Timeout(_)) => break,
            Err(e) => return Err(e),
        }
    }
    println!("empty; get_nowait says {:?}", queue.get_nowait().await?);
    queue.close().await?;

    // A SimpleBuffer: transient, exclusive to this connection, no acks; gone when closed.
    let buffer = SimpleBuffer::new(&conn, "example.simple-buffer").await?;
    buffer.put(&"progress: 50%").await?;
    let message = buffer.get(Duration::from_secs(5)).await?;
    println!("buffer: {}", message.decode::<String>()?);
    buffer.close().await?;

    conn.close().await?;
    Ok(())
}
