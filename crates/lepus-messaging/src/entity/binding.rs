//! [`Binding`]: one binding of a queue or an exchange to an exchange.

use lepus::{Channel, FieldTable};

use super::Exchange;
use crate::error::Result;

/// A binding to an exchange with a routing key and arguments (kombu's `binding`).
///
/// A [`Queue`](crate::Queue) takes a list of them to be bound to several exchanges or with
/// several keys; [`bind_exchange`](Self::bind_exchange) binds an exchange the same way.
///
/// # Examples
///
/// ```
/// use lepus::ExchangeKind;
/// use lepus_messaging::{Binding, Exchange, Queue};
///
/// let logs = Exchange::with_kind("logs", ExchangeKind::Topic);
/// let errors = Queue::new("errors")
///     .binding(Binding::new(logs.clone()).routing_key("*.error"))
///     .binding(Binding::new(logs).routing_key("*.critical"));
/// assert_eq!(errors.bindings().len(), 2);
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct Binding {
    exchange: Exchange,
    routing_key: String,
    arguments: FieldTable,
}

impl Binding {
    /// A binding to `exchange` with an empty routing key.
    pub fn new(exchange: impl Into<Exchange>) -> Self {
        Self {
            exchange: exchange.into(),
            routing_key: String::new(),
            arguments: FieldTable::default(),
        }
    }

    /// The routing key (or pattern, for a topic exchange).
    #[must_use]
    pub fn routing_key(mut self, routing_key: impl Into<String>) -> Self {
        self.routing_key = routing_key.into();
        self
    }

    /// The binding's arguments (for a headers exchange: the headers to match and `x-match`).
    #[must_use]
    pub fn arguments(mut self, arguments: FieldTable) -> Self {
        self.arguments = arguments;
        self
    }

    /// The exchange bound to.
    pub fn exchange(&self) -> &Exchange {
        &self.exchange
    }

    /// The routing key.
    pub fn key(&self) -> &str {
        &self.routing_key
    }

    /// The binding's arguments.
    pub fn binding_arguments(&self) -> &FieldTable {
        &self.arguments
    }

    /// Declares the exchange bound to (kombu's `binding.declare`).
    ///
    /// # Errors
    ///
    /// As [`Exchange::declare`].
    pub async fn declare(&self, channel: &Channel) -> Result<()> {
        self.exchange.declare(channel).await
    }

    /// Binds the queue named `queue` with this binding.
    ///
    /// # Errors
    ///
    /// 404 when the queue or the exchange is missing, and connection errors.
    pub async fn bind_queue(&self, channel: &Channel, queue: &str) -> Result<()> {
        channel
            .queue_bind(
                queue,
                self.exchange.name(),
                self.routing_key.as_str(),
                lepus::BindOptions {
                    arguments: self.arguments.clone(),
                    ..Default::default()
                },
            )
            .await?;
        Ok(())
    }

    /// Removes this binding of the queue named `queue`.
    ///
    /// # Errors
    ///
    /// Connection errors.
    pub async fn unbind_queue(&self, channel: &Channel, queue: &str) -> Result<()> {
        channel
            .queue_unbind(
                queue,
                self.exchange.name(),
                self.routing_key.as_str(),
                self.arguments.clone(),
            )
            .await?;
        Ok(())
    }

    /// Binds the exchange `destination` with this binding (exchange to exchange).
    ///
    /// # Errors
    ///
    /// 404 when either exchange is missing, and connection errors.
    pub async fn bind_exchange(&self, channel: &Channel, destination: &Exchange) -> Result<()> {
        destination
            .bind_to(
                channel,
                self.exchange.name(),
                &self.routing_key,
                self.arguments.clone(),
            )
            .await
    }
}
