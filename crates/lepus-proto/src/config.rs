//! What the client asks for when it opens a connection.

use lepus_wire::{FieldTable, FieldValue, ShortStr};

use crate::auth::Sasl;

/// The default and recommended frame_max: 128 KiB, RabbitMQ's own default.
pub const DEFAULT_FRAME_MAX: u32 = 131_072;
/// The smallest frame_max lepus accepts; RabbitMQ 4.1 and later refuse anything smaller.
pub const MIN_FRAME_MAX: u32 = 8192;
/// The default channel_max lepus asks for, RabbitMQ's own default.
pub const DEFAULT_CHANNEL_MAX: u16 = 2047;
/// The default largest incoming message body, RabbitMQ's default `max_message_size` (128 MiB).
pub const DEFAULT_MAX_MESSAGE_SIZE: u64 = 128 * 1024 * 1024;

/// How the heartbeat interval is chosen during `connection.tune`.
///
/// AMQP clients disagree about what a heartbeat of 0 means (py-amqp and pika treat the client's
/// 0 as "take the server's value", the Java client as "off"), so lepus names the three choices:
///
/// | value | lepus sends in `tune-ok` |
/// |---|---|
/// | `ServerDefault` | the server's proposal (RabbitMQ: 60 s) |
/// | `Disabled` | 0: neither side sends heartbeats; a dead peer is found only by TCP |
/// | `Secs(n)` | `n`, whatever the server proposed (RabbitMQ accepts the client's value) |
///
/// With an interval of `n` seconds, lepus sends a heartbeat when it has sent nothing for `n`
/// seconds and declares the server dead after `2 * n` seconds without receiving a byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Heartbeat {
    /// Use the interval the server proposes.
    #[default]
    ServerDefault,
    /// No heartbeats.
    Disabled,
    /// This many seconds; `Secs(0)` is the same as `Disabled`.
    Secs(u16),
}

/// Settings for [`Connection::new`](crate::Connection::new).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Config {
    /// How to authenticate.
    pub sasl: Sasl,
    /// The virtual host to open.
    pub vhost: String,
    /// The locale to ask for.
    pub locale: String,
    /// The highest channel number lepus will use; the server's limit applies when lower.
    /// 0 means no limit of lepus's own: the server's applies, and when the server sets none
    /// either, lepus uses [`DEFAULT_CHANNEL_MAX`].
    pub channel_max: u16,
    /// The largest frame lepus will send or accept; the server's limit applies when lower.
    /// 0 means no limit of lepus's own (the server's then applies).
    pub frame_max: u32,
    /// The heartbeat rule.
    pub heartbeat: Heartbeat,
    /// Properties sent in `connection.start-ok`; see [`Config::default_client_properties`].
    pub client_properties: FieldTable,
    /// The largest message body lepus accepts from the server before closing the connection.
    pub max_message_size: u64,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            sasl: Sasl::Plain {
                username: "guest".into(),
                password: "guest".into(),
            },
            vhost: "/".into(),
            locale: "en_US".into(),
            channel_max: DEFAULT_CHANNEL_MAX,
            frame_max: DEFAULT_FRAME_MAX,
            heartbeat: Heartbeat::ServerDefault,
            client_properties: Self::default_client_properties(),
            max_message_size: DEFAULT_MAX_MESSAGE_SIZE,
        }
    }
}

impl Config {
    /// The client properties lepus sends by default: product, version, platform, and every
    /// capability lepus implements, so that RabbitMQ enables the matching extensions.
    pub fn default_client_properties() -> FieldTable {
        let mut capabilities = FieldTable::new();
        for cap in [
            "publisher_confirms",
            "exchange_exchange_bindings",
            "basic.nack",
            "consumer_cancel_notify",
            "connection.blocked",
            "consumer_priorities",
            "authentication_failure_close",
            "per_consumer_qos",
            "direct_reply_to",
        ] {
            capabilities.insert(ShortStr::from_static(cap), true);
        }
        FieldTable::new()
            .with("product", "lepus")
            .with("version", env!("CARGO_PKG_VERSION"))
            .with("platform", "Rust")
            .with("capabilities", FieldValue::Table(capabilities))
    }
}
