//! [`Broadcast`]: kombu's fanout pattern (`kombu.common.Broadcast`), where every consumer
//! gets every message.
//!
//! A broadcast is a fanout [`Exchange`] plus a recipe for queues: each consumer gets a queue
//! of its own, `bcast.<unique id>`, bound to the exchange and deleted by the broker when its
//! consumer goes (auto-delete). Publishing to the exchange copies each message into every
//! such queue.
//!
//! # Examples
//!
//! ```
//! use lepus_messaging::{Broadcast, Connection};
//!
//! # async fn demo(conn: Connection) -> lepus_messaging::Result<()> {
//! let news = Broadcast::new("news");
//! // Each consumer has a queue of its own: both get every message.
//! let mut a = news.consumer(&conn).consume().await?;
//! let mut b = news.consumer(&conn).consume().await?;
//!
//! let producer = news.producer(&conn).build()?;
//! producer.publish(&"hello, everyone").await?;
//!
//! for consumer in [&mut a, &mut b] {
//!     if let Some(message) = consumer.recv().await {
//!         let message = message?;
//!         println!("{}", message.decode::<String>()?);
//!         message.ack()?;
//!     }
//! }
//! # Ok(()) }
//! # #[tokio::main]
//! # async fn main() -> lepus_messaging::Result<()> {
//! # let conn = lepus_messaging::Connection::connect("memory://").await?;
//! # demo(conn).await
//! # }
//! ```

use lepus::ExchangeKind;

use crate::connection::Connection;
use crate::consumer::ConsumerBuilder;
use crate::entity::{Exchange, Queue};
use crate::producer::ProducerBuilder;
use crate::rpc::unique_id;

/// kombu's `Broadcast(name, queue=None, unique=False, auto_delete=True, exchange=None)`: a
/// fanout exchange, and for each consumer a queue of its own bound to it.
///
/// The exchange is `Exchange(name, type='fanout')` (durable, as kombu's) unless
/// [`exchange`](Self::exchange) gives another. Each [`new_queue`](Self::new_queue) (and so
/// each [`consumer`](Self::consumer)) is named:
///
/// | settings | queue name |
/// |---|---|
/// | default | `bcast.<unique id>` |
/// | [`queue`](Self::queue)`("q")` | `q`: the same queue each time, so consumers of it share the messages (as kombu) |
/// | `queue("q")` + [`unique`](Self::unique)`(true)` | `q.<unique id>` |
///
/// Queues are auto-delete by default: the broker deletes each when its consumer goes. The
/// unique id has the form of a UUID.
#[derive(Debug, Clone, PartialEq)]
pub struct Broadcast {
    exchange: Exchange,
    queue: Option<String>,
    unique: bool,
    auto_delete: bool,
}

impl Broadcast {
    /// A broadcast over the fanout exchange `name`.
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            exchange: Exchange::with_kind(name, ExchangeKind::Fanout),
            queue: None,
            unique: false,
            auto_delete: true,
        }
    }

    /// Another exchange instead of `Exchange(name, type='fanout')`, such as a transient or
    /// auto-delete one (it should be a fanout exchange for every queue to get every
    /// message).
    #[must_use]
    pub fn exchange(mut self, exchange: impl Into<Exchange>) -> Self {
        self.exchange = exchange.into();
        self
    }

    /// The queue name (kombu's `queue=`): used as it is, unless [`unique`](Self::unique)
    /// adds a unique id to it.
    #[must_use]
    pub fn queue(mut self, name: impl Into<String>) -> Self {
        self.queue = Some(name.into());
        self
    }

    /// Whether each queue gets a unique name even when [`queue`](Self::queue) names one
    /// (default `false`).
    #[must_use]
    pub fn unique(mut self, on: bool) -> Self {
        self.unique = on;
        self
    }

    /// Whether the broker deletes each queue when its consumer goes (default `true`).
    #[must_use]
    pub fn auto_delete(mut self, on: bool) -> Self {
        self.auto_delete = on;
        self
    }

    /// The fanout exchange.
    pub fn broadcast_exchange(&self) -> &Exchange {
        &self.exchange
    }

    /// A queue for one more consumer, bound to the exchange, named as the table in the type's
    /// docs says.
    pub fn new_queue(&self) -> Queue {
        let name = match (&self.queue, self.unique) {
            (None, _) => format!("bcast.{}", unique_id()),
            (Some(prefix), true) => format!("{prefix}.{}", unique_id()),
            (Some(name), false) => name.clone(),
        };
        Queue::new(name)
            .exchange(self.exchange.clone())
            .auto_delete(self.auto_delete)
    }

    /// A producer that publishes to the exchange (every consumer gets each message).
    pub fn producer(&self, conn: &Connection) -> ProducerBuilder {
        conn.producer().exchange(self.exchange.clone())
    }

    /// A consumer of a [new queue](Self::new_queue): it gets every message published after
    /// it subscribed. The queue (and the exchange) are declared when it starts consuming.
    pub fn consumer(&self, conn: &Connection) -> ConsumerBuilder {
        conn.consumer([self.new_queue()])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_names_follow_kombu() {
        let b = Broadcast::new("news");
        assert_eq!(b.broadcast_exchange().name(), "news");
        assert_eq!(
            b.broadcast_exchange().exchange_kind(),
            &ExchangeKind::Fanout
        );
        let q1 = b.new_queue();
        let q2 = b.new_queue();
        assert!(q1.name().starts_with("bcast."));
        assert_ne!(q1.name(), q2.name());
        assert!(q1.is_auto_delete());
        assert_eq!(q1.bound_exchange().map(Exchange::name), Some("news"));

        let shared = Broadcast::new("news").queue("workers");
        assert_eq!(shared.new_queue().name(), "workers");
        let unique = shared.unique(true);
        assert!(unique.new_queue().name().starts_with("workers."));
    }
}
