//! Publishes orders as JSON to a topic exchange and consumes them with a typed handler, the
//! way a kombu service would, against `AMQP_URL` (default `memory://`, the in-process broker).
//!
//! ```text
//! cargo run -p lepus-messaging --example orders
//! ```

use std::time::Duration;

use lepus::ExchangeKind;
use lepus_messaging::{Connection, Exchange, Queue, Result};
use serde::{Deserialize, Serialize};

#[derive(Debug, Serialize, Deserialize)]
struct Order {
    id: u64,
    item: String,
    quantity: u32,
}

#[tokio::main]
async fn main() -> Result<()> {
    let url = std::env::var("AMQP_URL").unwrap_or_else(|_| "memory://".to_string());
    let conn = Connection::connect(&url).await?;

    // Entities as values; this example's are transient so that it leaves nothing behind.
    let shop = Exchange::with_kind("example.shop", ExchangeKind::Topic).auto_delete(true);
    let orders = Queue::new("example.orders")
        .exchange(shop.clone())
        .routing_key("order.*")
        .durable(false)
        .auto_delete(true)
        .message_ttl(Duration::from_secs(60));

    // Subscribe first (declaring the exchange, the queue and the binding).
    let mut consumer = conn.consumer([orders]).prefetch(10).consume().await?;

    // Publish three orders: JSON, persistent, each confirmed by the broker.
    let producer = conn.producer().exchange(shop).build()?;
    for id in 1..=3 {
        let order = Order {
            id,
            item: format!("book #{id}"),
            quantity: 1,
        };
        producer
            .publish(&order)
            .routing_key("order.created")
            .await?;
        println!("published order {id}");
    }

    // Handle them: Ok acks, an error would reject the message (to a dead-letter exchange).
    let mut handled = 0;
    let (done, stop) = tokio::sync::oneshot::channel::<()>();
    let mut done = Some(done);
    consumer
        .run_until(
            |message| {
                let order = message.decode::<Order>();
                handled += 1;
                if handled == 3 {
                    done.take().map(|d| d.send(()));
                }
                async move {
                    let order = order?;
                    println!(
                        "handled order {}: {} x {}",
                        order.id, order.quantity, order.item
                    );
                    Ok::<_, lepus_messaging::Error>(())
                }
            },
            async {
                let _ = stop.await;
            },
        )
        .await?;
    consumer.cancel().await?;
    conn.close().await?;
    Ok(())
}
