//! The topology a connection declared, recorded so that recovery can declare it again.
//!
//! Recorded from every successful declare, bind and consume (passive declares are not), and
//! forgotten on delete, unbind and cancel, and where the broker deletes an entity itself: an
//! auto-delete queue when this client cancels its last consumer, an auto-delete exchange when
//! this client removes its last binding from it. Entries keep the order they were declared in.

use std::sync::Arc;

use lepus_wire::{FieldTable, ShortStr};

use crate::consumer::ConsumerQueue;
use crate::options::{
    BasicConsumeOptions, ExchangeDeclareOptions, ExchangeKind, QueueDeclareOptions,
};

/// One entity recovery may declare again, as a [recovery filter](crate::RecoveryPolicy::filter)
/// sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum TopologyEntity<'a> {
    /// An exchange, by name.
    Exchange(&'a str),
    /// A queue, by its current name (`server_named` when the broker chose it).
    Queue {
        /// The name.
        name: &'a str,
        /// The broker chose the name; recovery declares it with an empty name again.
        server_named: bool,
    },
    /// A binding of a queue to an exchange.
    QueueBinding {
        /// The queue.
        queue: &'a str,
        /// The exchange.
        exchange: &'a str,
        /// The routing key.
        routing_key: &'a str,
    },
    /// A binding of exchange `destination` to exchange `source`.
    ExchangeBinding {
        /// The exchange receiving messages.
        destination: &'a str,
        /// The exchange messages come from.
        source: &'a str,
        /// The routing key.
        routing_key: &'a str,
    },
    /// A consumer, by channel and tag.
    Consumer {
        /// The channel id.
        channel: u16,
        /// The consumer tag.
        tag: &'a str,
        /// The queue it consumes from.
        queue: &'a str,
    },
}

#[derive(Debug, Clone)]
pub(crate) struct RecordedExchange {
    pub(crate) name: String,
    pub(crate) kind: ExchangeKind,
    pub(crate) options: ExchangeDeclareOptions,
}

#[derive(Debug, Clone)]
pub(crate) struct RecordedQueue {
    /// The current name (for a server-named queue, the latest the broker gave).
    pub(crate) name: String,
    pub(crate) server_named: bool,
    pub(crate) options: QueueDeclareOptions,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct RecordedBinding {
    /// Queue or destination exchange.
    pub(crate) destination: String,
    /// Exchange (source).
    pub(crate) source: String,
    pub(crate) routing_key: String,
    pub(crate) arguments: FieldTable,
}

#[derive(Clone)]
pub(crate) struct RecordedConsumer {
    pub(crate) channel: u16,
    pub(crate) tag: ShortStr,
    pub(crate) queue: String,
    pub(crate) options: BasicConsumeOptions,
    /// The stream the application reads; it goes on after recovery.
    pub(crate) stream: Arc<ConsumerQueue>,
}

/// Everything recorded for one connection.
#[derive(Default)]
pub(crate) struct Topology {
    pub(crate) exchanges: Vec<RecordedExchange>,
    pub(crate) queues: Vec<RecordedQueue>,
    pub(crate) queue_bindings: Vec<RecordedBinding>,
    pub(crate) exchange_bindings: Vec<RecordedBinding>,
    pub(crate) consumers: Vec<RecordedConsumer>,
}

impl Topology {
    pub(crate) fn exchange_declared(
        &mut self,
        name: &str,
        kind: &ExchangeKind,
        options: &ExchangeDeclareOptions,
    ) {
        // The default exchange and the predeclared `amq.*` ones need no declaring.
        if name.is_empty() || name.starts_with("amq.") {
            return;
        }
        let recorded = RecordedExchange {
            name: name.to_string(),
            kind: kind.clone(),
            options: options.clone(),
        };
        match self.exchanges.iter_mut().find(|e| e.name == name) {
            Some(existing) => *existing = recorded,
            None => self.exchanges.push(recorded),
        }
    }

    pub(crate) fn exchange_deleted(&mut self, name: &str) {
        self.exchanges.retain(|e| e.name != name);
        self.queue_bindings.retain(|b| b.source != name);
        self.exchange_bindings
            .retain(|b| b.source != name && b.destination != name);
    }

    /// Records a queue declared as `requested` (empty: the broker named it `name`).
    pub(crate) fn queue_declared(
        &mut self,
        requested: &str,
        name: &str,
        options: &QueueDeclareOptions,
    ) {
        let recorded = RecordedQueue {
            name: name.to_string(),
            server_named: requested.is_empty(),
            options: options.clone(),
        };
        match self.queues.iter_mut().find(|q| q.name == name) {
            Some(existing) => *existing = recorded,
            None => self.queues.push(recorded),
        }
    }

    pub(crate) fn queue_deleted(&mut self, name: &str) {
        self.queues.retain(|q| q.name != name);
        self.queue_bindings.retain(|b| b.destination != name);
        self.consumers.retain(|c| c.queue != name);
    }

    pub(crate) fn queue_bound(&mut self, binding: RecordedBinding) {
        if !self.queue_bindings.contains(&binding) {
            self.queue_bindings.push(binding);
        }
    }

    pub(crate) fn queue_unbound(&mut self, binding: &RecordedBinding) {
        self.queue_bindings.retain(|b| b != binding);
        self.forget_unbound_auto_delete_exchange(&binding.source);
    }

    pub(crate) fn exchange_bound(&mut self, binding: RecordedBinding) {
        if !self.exchange_bindings.contains(&binding) {
            self.exchange_bindings.push(binding);
        }
    }

    pub(crate) fn exchange_unbound(&mut self, binding: &RecordedBinding) {
        self.exchange_bindings.retain(|b| b != binding);
        self.forget_unbound_auto_delete_exchange(&binding.source);
    }

    pub(crate) fn consumer_started(&mut self, consumer: RecordedConsumer) {
        self.consumers
            .retain(|c| !(c.channel == consumer.channel && c.tag == consumer.tag));
        self.consumers.push(consumer);
    }

    /// A consumer ended: cancelled by this client (`by_client`), or by the broker. An
    /// auto-delete queue whose last consumer this client cancelled is gone too.
    pub(crate) fn consumer_ended(&mut self, channel: u16, tag: &ShortStr, by_client: bool) {
        let Some(at) = self
            .consumers
            .iter()
            .position(|c| c.channel == channel && &c.tag == tag)
        else {
            return;
        };
        let ended = self.consumers.remove(at);
        if !by_client || self.consumers.iter().any(|c| c.queue == ended.queue) {
            return;
        }
        let auto_delete = self
            .queues
            .iter()
            .any(|q| q.name == ended.queue && q.options.auto_delete);
        if auto_delete {
            self.queue_deleted(&ended.queue);
        }
    }

    /// Every consumer of a channel that closed.
    pub(crate) fn channel_closed(&mut self, channel: u16) {
        self.consumers.retain(|c| c.channel != channel);
    }

    /// Declaring queue `name` again was refused: it is no longer declared, but its bindings
    /// and consumers are still tried (the queue may well exist, with other settings).
    pub(crate) fn queue_refused(&mut self, name: &str) {
        self.queues.retain(|q| q.name != name);
    }

    /// Declaring exchange `name` again was refused, as [`Topology::queue_refused`].
    pub(crate) fn exchange_refused(&mut self, name: &str) {
        self.exchanges.retain(|e| e.name != name);
    }

    /// A server-named queue came back under a new name: bindings and consumers follow.
    pub(crate) fn queue_renamed(&mut self, old: &str, new: &str) {
        for q in self.queues.iter_mut().filter(|q| q.name == old) {
            q.name = new.to_string();
        }
        for b in self
            .queue_bindings
            .iter_mut()
            .filter(|b| b.destination == old)
        {
            b.destination = new.to_string();
        }
        for c in self.consumers.iter_mut().filter(|c| c.queue == old) {
            c.queue = new.to_string();
        }
    }

    fn forget_unbound_auto_delete_exchange(&mut self, exchange: &str) {
        let still_bound = self.queue_bindings.iter().any(|b| b.source == exchange)
            || self.exchange_bindings.iter().any(|b| b.source == exchange);
        if !still_bound {
            self.exchanges
                .retain(|e| !(e.name == exchange && e.options.auto_delete));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn binding(destination: &str, source: &str, key: &str) -> RecordedBinding {
        RecordedBinding {
            destination: destination.into(),
            source: source.into(),
            routing_key: key.into(),
            arguments: FieldTable::new(),
        }
    }

    fn consumer(channel: u16, tag: &str, queue: &str) -> RecordedConsumer {
        RecordedConsumer {
            channel,
            tag: ShortStr::try_from(tag).unwrap_or_default(),
            queue: queue.into(),
            options: BasicConsumeOptions::default(),
            stream: ConsumerQueue::new(1, false),
        }
    }

    fn names(t: &Topology) -> (Vec<&str>, Vec<&str>, usize, usize, usize) {
        (
            t.exchanges.iter().map(|e| e.name.as_str()).collect(),
            t.queues.iter().map(|q| q.name.as_str()).collect(),
            t.queue_bindings.len(),
            t.exchange_bindings.len(),
            t.consumers.len(),
        )
    }

    #[test]
    fn declares_are_kept_in_order_and_deletes_forget_what_depends_on_them() {
        let mut t = Topology::default();
        let options = ExchangeDeclareOptions::default();
        t.exchange_declared("orders", &ExchangeKind::Topic, &options);
        t.exchange_declared("audit", &ExchangeKind::Fanout, &options);
        t.exchange_declared("", &ExchangeKind::Direct, &options);
        t.exchange_declared("amq.topic", &ExchangeKind::Topic, &options);
        // Declaring again keeps one entry, in its first place.
        t.exchange_declared("orders", &ExchangeKind::Topic, &options);
        t.queue_declared("eu", "eu", &QueueDeclareOptions::default());
        t.queue_bound(binding("eu", "orders", "eu.#"));
        t.queue_bound(binding("eu", "orders", "eu.#"));
        t.exchange_bound(binding("audit", "orders", "#"));
        t.consumer_started(consumer(1, "c1", "eu"));
        assert_eq!(names(&t), (vec!["orders", "audit"], vec!["eu"], 1, 1, 1));

        t.exchange_deleted("orders");
        assert_eq!(names(&t), (vec!["audit"], vec!["eu"], 0, 0, 1));
        t.queue_deleted("eu");
        assert_eq!(names(&t), (vec!["audit"], vec![], 0, 0, 0));
    }

    #[test]
    fn auto_delete_entities_go_with_their_last_consumer_or_binding() {
        let mut t = Topology::default();
        let auto = QueueDeclareOptions {
            auto_delete: true,
            ..Default::default()
        };
        t.queue_declared("jobs", "jobs", &auto);
        t.consumer_started(consumer(1, "a", "jobs"));
        t.consumer_started(consumer(2, "b", "jobs"));
        let (a, b) = (ShortStr::from_static("a"), ShortStr::from_static("b"));
        t.consumer_ended(1, &a, true);
        assert_eq!(t.queues.len(), 1, "one consumer is left");
        t.consumer_ended(2, &b, true);
        assert!(
            t.queues.is_empty(),
            "the broker deleted it with its last consumer"
        );

        // A consumer the broker cancelled does not say the queue is gone.
        t.queue_declared("jobs", "jobs", &auto);
        t.consumer_started(consumer(1, "a", "jobs"));
        t.consumer_ended(1, &a, false);
        assert_eq!(t.queues.len(), 1);

        let auto_exchange = ExchangeDeclareOptions {
            auto_delete: true,
            ..Default::default()
        };
        t.exchange_declared("events", &ExchangeKind::Fanout, &auto_exchange);
        t.queue_bound(binding("jobs", "events", ""));
        t.exchange_bound(binding("other", "events", ""));
        t.queue_unbound(&binding("jobs", "events", ""));
        assert_eq!(t.exchanges.len(), 1, "still bound to an exchange");
        t.exchange_unbound(&binding("other", "events", ""));
        assert!(t.exchanges.is_empty());
    }

    #[test]
    fn a_renamed_queue_takes_its_bindings_and_consumers_along() {
        let mut t = Topology::default();
        t.queue_declared("", "amq.gen-1", &QueueDeclareOptions::default());
        t.queue_bound(binding("amq.gen-1", "orders", "a"));
        t.queue_bound(binding("amq.gen-1", "orders", "b"));
        t.queue_bound(binding("other", "orders", "c"));
        t.consumer_started(consumer(1, "c1", "amq.gen-1"));
        assert!(t.queues.first().is_some_and(|q| q.server_named));
        t.queue_renamed("amq.gen-1", "amq.gen-2");
        assert_eq!(t.queues.first().map(|q| q.name.as_str()), Some("amq.gen-2"));
        let destinations: Vec<&str> = t
            .queue_bindings
            .iter()
            .map(|b| b.destination.as_str())
            .collect();
        assert_eq!(destinations, ["amq.gen-2", "amq.gen-2", "other"]);
        assert_eq!(
            t.consumers.first().map(|c| c.queue.as_str()),
            Some("amq.gen-2")
        );
    }

    #[test]
    fn a_closed_channel_takes_its_consumers_along() {
        let mut t = Topology::default();
        t.consumer_started(consumer(1, "a", "q"));
        t.consumer_started(consumer(2, "b", "q"));
        t.consumer_started(consumer(1, "c", "q"));
        t.channel_closed(1);
        let left: Vec<u16> = t.consumers.iter().map(|c| c.channel).collect();
        assert_eq!(left, [2]);
    }
}
