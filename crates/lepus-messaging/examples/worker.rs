//! A worker service: handles jobs four at a time, publishes a result for each through the
//! worker's producer connection, and stops gracefully on Ctrl-C or SIGTERM. So that the test
//! command can run it, it also publishes five jobs to itself and stops once it has handled
//! them. Against the broker at `AMQP_URL` (default `memory://`, the in-process broker).
//!
//! ```text
//! cargo run -p lepus-messaging --example worker
//! ```

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use lepus_messaging::{HandlerErrorPolicy, Queue, Result, Worker, WorkerEvent};
use serde::{Deserialize, Serialize};

#[derive(Debug, Serialize, Deserialize)]
struct Job {
    id: u32,
    text: String,
}

/// How many jobs the example handles before it stops by itself.
const JOBS: u32 = 5;

#[tokio::main]
async fn main() -> Result<()> {
    let url = std::env::var("AMQP_URL").unwrap_or_else(|_| "memory://".to_string());
    // Transient queues, so that the example leaves nothing behind.
    let jobs = Queue::new("example.worker.jobs")
        .durable(false)
        .expires(Duration::from_secs(60));
    let results = Queue::new("example.worker.results")
        .durable(false)
        .expires(Duration::from_secs(60));

    let builder = Worker::connect(&url).await?;
    let producer = builder.producer(); // its connection opens when a handler first publishes
    let stop = builder.shutdown_handle();
    let handled = Arc::new(AtomicU32::new(0));
    let consumer = builder.consumer([jobs.clone()]);
    let worker = builder
        .concurrency(4)
        .on_error(HandlerErrorPolicy::Requeue)
        .max_attempts(3)
        .shutdown_timeout(Duration::from_secs(10))
        .stop_on_signals(true)
        .handle_typed(consumer, move |job: Job, _message| {
            let (producer, results, stop, handled) = (
                producer.clone(),
                results.clone(),
                stop.clone(),
                Arc::clone(&handled),
            );
            async move {
                tokio::time::sleep(Duration::from_millis(50)).await; // the work
                let result = job.text.to_uppercase();
                producer
                    .producer()
                    .await?
                    .publish(&result)
                    .to_queue(&results)
                    .declare(results.clone())
                    .await?;
                println!("job {}: {result}", job.id);
                if handled.fetch_add(1, Ordering::SeqCst) + 1 == JOBS {
                    stop.shutdown(); // a real service would wait for a signal instead
                }
                Ok::<_, lepus_messaging::Error>(())
            }
        })
        .build()?;

    let mut events = worker.events();
    tokio::spawn(async move {
        while let Ok(event) = events.recv().await {
            match event {
                WorkerEvent::ConsumeReady { queues } => println!("consuming from {queues:?}"),
                WorkerEvent::ConnectionLost { cause } => println!("connection lost: {cause}"),
                WorkerEvent::ConnectionRevived { address, .. } => println!("back on {address}"),
                WorkerEvent::Stopping { in_progress } => {
                    println!("stopping with {in_progress} handlers in progress")
                }
                WorkerEvent::ConsumeEnd { .. } => println!("every handler is done"),
                _ => {}
            }
        }
    });

    // Some work for the worker, from the worker's own connection.
    let conn = worker.connection().clone();
    let publisher = conn.producer().build()?;
    for id in 1..=JOBS {
        let job = Job {
            id,
            text: format!("job number {id}"),
        };
        publisher
            .publish(&job)
            .to_queue(&jobs)
            .declare(jobs.clone())
            .await?;
    }

    worker.run().await?; // until stopped; both connections are closed after
    println!("stopped");
    Ok(())
}
