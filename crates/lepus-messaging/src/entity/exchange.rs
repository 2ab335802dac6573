//! [`Exchange`]: an exchange as a value.

use lepus::{
    BindOptions, Channel, DeliveryMode, ExchangeDeclareOptions, ExchangeDeleteOptions,
    ExchangeKind, FieldTable, FieldValue, ShortStr,
};

use crate::error::Result;

/// An exchange, described as a value and declared when used (kombu's `Exchange`).
///
/// Defaults as kombu's: type `direct`, durable, not auto-delete. Declaring it is a no-op for
/// the default exchange (`""`), for the broker's own `amq.*` exchanges and when
/// [`no_declare`](Self::no_declare) is set.
///
/// # Examples
///
/// ```
/// use lepus::ExchangeKind;
/// use lepus_messaging::Exchange;
///
/// let orders = Exchange::new("orders").kind(ExchangeKind::Topic).transient();
/// assert_eq!(orders.name(), "orders");
/// assert!(!orders.is_durable());
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct Exchange {
    name: String,
    kind: ExchangeKind,
    durable: bool,
    auto_delete: bool,
    internal: bool,
    delivery_mode: Option<DeliveryMode>,
    arguments: FieldTable,
    no_declare: bool,
}

impl Default for Exchange {
    /// The default exchange (`""`).
    fn default() -> Self {
        Self::new("")
    }
}

impl Exchange {
    /// A durable direct exchange of this name.
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            kind: ExchangeKind::Direct,
            durable: true,
            auto_delete: false,
            internal: false,
            delivery_mode: None,
            arguments: FieldTable::default(),
            no_declare: false,
        }
    }

    /// A durable exchange of this name and type.
    pub fn with_kind(name: impl Into<String>, kind: ExchangeKind) -> Self {
        Self::new(name).kind(kind)
    }

    /// The default exchange, which routes to the queue named by the routing key.
    pub fn default_exchange() -> Self {
        Self::new("")
    }

    /// Its type.
    #[must_use]
    pub fn kind(mut self, kind: ExchangeKind) -> Self {
        self.kind = kind;
        self
    }

    /// Whether it survives a broker restart (default `true`).
    #[must_use]
    pub fn durable(mut self, durable: bool) -> Self {
        self.durable = durable;
        self
    }

    /// Not durable, and messages published to it are transient (kombu's
    /// `Exchange(durable=False, delivery_mode='transient')`).
    #[must_use]
    pub fn transient(mut self) -> Self {
        self.durable = false;
        self.delivery_mode = Some(DeliveryMode::Transient);
        self
    }

    /// Whether the broker deletes it when its last binding goes (default `false`).
    #[must_use]
    pub fn auto_delete(mut self, auto_delete: bool) -> Self {
        self.auto_delete = auto_delete;
        self
    }

    /// Whether clients may not publish to it directly, only other exchanges (default `false`).
    #[must_use]
    pub fn internal(mut self, internal: bool) -> Self {
        self.internal = internal;
        self
    }

    /// The delivery mode of messages published to it, unless the publish says otherwise
    /// (unset: persistent, as kombu).
    #[must_use]
    pub fn delivery_mode(mut self, mode: DeliveryMode) -> Self {
        self.delivery_mode = Some(mode);
        self
    }

    /// Where messages that it cannot route go (`alternate-exchange`).
    #[must_use]
    pub fn alternate_exchange(self, exchange: impl AsRef<str>) -> Self {
        self.argument("alternate-exchange", exchange.as_ref())
    }

    /// One declaration argument, such as a plugin's `x-*` setting. Keys not known until run
    /// time go through [`arguments`](Self::arguments) and [`FieldTable::try_insert`].
    ///
    /// # Panics
    ///
    /// If `key` is longer than 255 bytes (a literal of that length is a bug).
    #[must_use]
    pub fn argument(mut self, key: &'static str, value: impl Into<FieldValue>) -> Self {
        self.arguments.insert(ShortStr::from_static(key), value);
        self
    }

    /// Replaces all declaration arguments.
    #[must_use]
    pub fn arguments(mut self, arguments: FieldTable) -> Self {
        self.arguments = arguments;
        self
    }

    /// Never declare it: it exists already, or the user may not declare it.
    #[must_use]
    pub fn no_declare(mut self, no_declare: bool) -> Self {
        self.no_declare = no_declare;
        self
    }

    /// Its name (empty for the default exchange).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its type.
    pub fn exchange_kind(&self) -> &ExchangeKind {
        &self.kind
    }

    /// Whether it is durable.
    pub fn is_durable(&self) -> bool {
        self.durable
    }

    /// Whether it is auto-delete.
    pub fn is_auto_delete(&self) -> bool {
        self.auto_delete
    }

    /// Whether it is internal.
    pub fn is_internal(&self) -> bool {
        self.internal
    }

    /// The delivery mode for messages published to it, if set.
    pub fn default_delivery_mode(&self) -> Option<DeliveryMode> {
        self.delivery_mode
    }

    /// Its declaration arguments.
    pub fn declaration_arguments(&self) -> &FieldTable {
        &self.arguments
    }

    /// Whether [`declare`](Self::declare) sends anything: not for the default exchange, the
    /// `amq.*` ones, or with [`no_declare`](Self::no_declare).
    pub fn needs_declare(&self) -> bool {
        !(self.no_declare || self.name.is_empty() || self.name.starts_with("amq."))
    }

    /// Whether a [`maybe_declare`](crate::Connection::maybe_declare) may remember it as
    /// declared: not when it is auto-delete (it may be gone by the next use).
    pub fn can_cache_declaration(&self) -> bool {
        !self.auto_delete
    }

    /// Declares it on `channel` (see [`needs_declare`](Self::needs_declare)).
    ///
    /// # Errors
    ///
    /// 406 PRECONDITION_FAILED (the channel closes) when it exists with other settings, and
    /// connection errors.
    pub async fn declare(&self, channel: &Channel) -> Result<()> {
        if !self.needs_declare() {
            return Ok(());
        }
        channel
            .exchange_declare(
                self.name.as_str(),
                self.kind.clone(),
                ExchangeDeclareOptions {
                    durable: self.durable,
                    auto_delete: self.auto_delete,
                    internal: self.internal,
                    arguments: self.arguments.clone(),
                    ..Default::default()
                },
            )
            .await?;
        Ok(())
    }

    /// Binds it to a `source` exchange: messages `source` routes with `routing_key` come here
    /// (an exchange-to-exchange binding).
    ///
    /// # Errors
    ///
    /// 404 when either exchange is missing, and connection errors.
    pub async fn bind_to(
        &self,
        channel: &Channel,
        source: &str,
        routing_key: &str,
        arguments: FieldTable,
    ) -> Result<()> {
        channel
            .exchange_bind(
                self.name.as_str(),
                source,
                routing_key,
                BindOptions {
                    arguments,
                    ..Default::default()
                },
            )
            .await?;
        Ok(())
    }

    /// Removes a binding made by [`bind_to`](Self::bind_to).
    ///
    /// # Errors
    ///
    /// Connection errors, and 404 on brokers that check.
    pub async fn unbind_from(
        &self,
        channel: &Channel,
        source: &str,
        routing_key: &str,
        arguments: FieldTable,
    ) -> Result<()> {
        channel
            .exchange_unbind(
                self.name.as_str(),
                source,
                routing_key,
                BindOptions {
                    arguments,
                    ..Default::default()
                },
            )
            .await?;
        Ok(())
    }

    /// Deletes it; with `if_unused`, only when nothing is bound to it.
    ///
    /// # Errors
    ///
    /// 406 with `if_unused` when it is in use, and connection errors.
    pub async fn delete(&self, channel: &Channel, if_unused: bool) -> Result<()> {
        channel
            .exchange_delete(
                self.name.as_str(),
                ExchangeDeleteOptions {
                    if_unused,
                    ..Default::default()
                },
            )
            .await?;
        Ok(())
    }
}

impl From<&str> for Exchange {
    /// A durable direct exchange of this name, as kombu makes of a string.
    fn from(name: &str) -> Self {
        Self::new(name)
    }
}

impl From<String> for Exchange {
    /// A durable direct exchange of this name, as kombu makes of a string.
    fn from(name: String) -> Self {
        Self::new(name)
    }
}
