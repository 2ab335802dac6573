//! Exchanges, queues and bindings as values (kombu's `kombu.entity`).

mod binding;
mod exchange;
mod queue;

pub use binding::Binding;
pub use exchange::Exchange;
pub use queue::{Overflow, Queue, QueueType};
