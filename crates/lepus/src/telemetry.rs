//! Spans after OpenTelemetry's semantic conventions for messaging (RabbitMQ), through the
//! `tracing` crate.
//!
//! | operation | span (`otel.name`) | kind | where |
//! |---|---|---|---|
//! | publish | `publish {destination}` | producer | [`Channel::basic_publish`](crate::Channel::basic_publish) |
//! | process | `process {destination}` | consumer | each [`Delivery`](crate::Delivery) a [`Consumer`](crate::Consumer) hands over, until it is dropped ([`Delivery::span`](crate::Delivery::span)) |
//! | receive | `receive {queue}` | client | [`Channel::basic_get`](crate::Channel::basic_get) |
//! | settle | `ack`, `nack`, `reject` `{destination}` | client | [`Delivery::ack`](crate::Delivery::ack) and the like |
//!
//! Every span is at `INFO` level under the target `lepus::messaging`, named after the
//! operation (`publish`, `process`, `receive`, `settle`), with the conventions' attributes as
//! fields: `otel.name`, `otel.kind`, `messaging.system = "rabbitmq"`,
//! `messaging.operation.name`, `messaging.operation.type`, `messaging.destination.name`,
//! `messaging.rabbitmq.destination.routing_key`, `messaging.rabbitmq.message.delivery_tag`,
//! `messaging.message.id`, `messaging.message.conversation_id`,
//! `messaging.message.body.size`, `server.address`, `server.port` and, on failure,
//! `error.type`. `tracing-opentelemetry` turns them into OpenTelemetry spans as they are.
//!
//! The destination is `{exchange}:{routing key}` for a publish (the routing key alone on the
//! default exchange, `amq.default` when both are empty) and `{exchange}:{routing key}:{queue}`
//! for a delivery, empty parts left out.
//!
//! With no subscriber interested, creating a span is one check of a cached flag: nothing is
//! formatted or allocated on the hot path.
//!
//! # Trace context in messages (the `otel` cargo feature)
//!
//! With the `otel` feature, lepus carries the trace across the broker: a publish injects its
//! span's OpenTelemetry context into the message's headers with the global propagator (W3C
//! `traceparent` and `tracestate` as long strings with `TraceContextPropagator`, as
//! OpenTelemetry's pika and Celery instrumentations and the Java and .NET clients write
//! them), unless the headers carry the propagator's fields already; and each delivery's
//! process span takes the context its message carries as its parent, so a consumer's work
//! continues the publisher's trace, whichever client published. It needs
//! `tracing-opentelemetry`'s layer on the subscriber and a propagator:
//!
//! ```ignore
//! use opentelemetry::trace::TracerProvider as _;
//! use tracing_subscriber::prelude::*;
//!
//! opentelemetry::global::set_text_map_propagator(
//!     opentelemetry_sdk::propagation::TraceContextPropagator::new(),
//! );
//! let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder()
//!     .with_batch_exporter(exporter) // OTLP, Jaeger, stdout, ...
//!     .build();
//! tracing_subscriber::registry()
//!     .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("my-service")))
//!     .init();
//! ```

//!
//! # Metrics (the `metrics` cargo feature)
//!
//! Through the `metrics` crate's facade: whatever
//! recorder the application installs (Prometheus, OpenTelemetry, StatsD, ...) receives them.
//!
//! Named after OpenTelemetry's messaging metrics where they exist, and `lepus.*` for what no
//! convention has yet. Every series has the label `messaging.system = "rabbitmq"`; others as
//! listed. Durations are in seconds.
//!
//! | name | kind | labels | what |
//! |---|---|---|---|
//! | `messaging.client.sent.messages` | counter | | messages published |
//! | `messaging.client.consumed.messages` | counter | `messaging.operation.name` (`process`, `receive`) | deliveries handed to the application, messages fetched by `basic.get` |
//! | `messaging.client.operation.duration` | histogram | `messaging.operation.name` (`publish`, `receive`) | a publish call (waits for a blocked broker included), a `basic.get` |
//! | `lepus.confirms` | counter | `outcome` (`ack`, `nack`, `uncertain`) | publisher confirms settled |
//! | `lepus.confirm.duration` | histogram | | from a publish to its confirm, for confirms awaited |
//! | `lepus.returns` | counter | | mandatory messages the broker returned |
//! | `lepus.redeliveries` | counter | | deliveries marked redelivered |
//! | `lepus.settles` | counter | `messaging.operation.name` (`ack`, `nack`, `reject`) | acknowledgements sent |
//! | `lepus.recovery.attempts` | counter | | reconnection attempts |
//! | `lepus.recoveries` | counter | | connections recovered |
//! | `lepus.recovery.duration` | histogram | | from the loss to the recovered connection |
//! | `lepus.recovery.skipped_entities` | counter | | recorded entities the broker refused to declare again |
//! | `lepus.connection.blocked.duration` | histogram | | how long the broker blocked publishing (`connection.blocked` to `unblocked`) |
//! | `lepus.bytes.sent`, `lepus.bytes.received` | counter | | bytes written to and read from the socket |
//! | `lepus.consumer.buffered` | gauge | `messaging.destination.name` (the queue) | deliveries a consumer took from lepus's buffer in its last batch |
//! | `messaging.process.duration` | histogram | `messaging.operation.name` (`process`), `error.type` on failure | a handler of `lepus-messaging`'s consumers and workers, with its `metrics` feature |
//!
//! Handles are registered when a connection is made: install the recorder first. The
//! per-message ones are kept, so the hot path costs what the recorder's handle costs (an
//! atomic add for the common ones), and nothing without the feature.

use lepus_wire::{BasicProperties, ShortStr};
use tracing::field::Empty;
use tracing::Span;

/// The target every lepus span is under (filter with `lepus::messaging=info`).
pub const TARGET: &str = "lepus::messaging";

/// `{exchange}:{routing key}`, the routing key alone on the default exchange, `amq.default`
/// when both are empty.
fn publish_destination(exchange: &str, routing_key: &str) -> String {
    match (exchange.is_empty(), routing_key.is_empty()) {
        (true, true) => "amq.default".to_owned(),
        (true, false) => routing_key.to_owned(),
        (false, true) => exchange.to_owned(),
        (false, false) => format!("{exchange}:{routing_key}"),
    }
}

/// `{exchange}:{routing key}:{queue}`, empty parts left out.
fn consume_destination(exchange: &str, routing_key: &str, queue: &str) -> String {
    let parts: Vec<&str> = [exchange, routing_key, queue]
        .into_iter()
        .filter(|p| !p.is_empty())
        .collect();
    if parts.is_empty() {
        "amq.default".to_owned()
    } else {
        parts.join(":")
    }
}

fn text(s: &ShortStr) -> &str {
    s.as_str().unwrap_or_default()
}

/// Records the message's id and correlation id, when it has them.
fn record_message(span: &Span, properties: &BasicProperties) {
    if let Some(id) = properties.message_id.as_ref().and_then(ShortStr::as_str) {
        span.record("messaging.message.id", id);
    }
    if let Some(id) = properties
        .correlation_id
        .as_ref()
        .and_then(ShortStr::as_str)
    {
        span.record("messaging.message.conversation_id", id);
    }
}

/// Records `host:port` as `server.address` and `server.port`.
fn record_server(span: &Span, address: &str) {
    match address.rsplit_once(':') {
        Some((host, port)) => {
            span.record("server.address", host.trim_matches(['[', ']']));
            if let Ok(port) = port.parse::<u16>() {
                span.record("server.port", port);
            }
        }
        None => {
            span.record("server.address", address);
        }
    }
}

/// The span of a publish, disabled unless a subscriber wants it. `address` is called only
/// when the span is enabled.
pub(crate) fn publish(
    exchange: &str,
    routing_key: &str,
    properties: &BasicProperties,
    body_size: usize,
    address: impl FnOnce() -> String,
) -> Span {
    let span = tracing::info_span!(
        target: TARGET,
        "publish",
        otel.name = Empty,
        otel.kind = "producer",
        messaging.system = "rabbitmq",
        messaging.operation.name = "publish",
        messaging.operation.type = "send",
        messaging.destination.name = Empty,
        messaging.rabbitmq.destination.routing_key = routing_key,
        messaging.message.id = Empty,
        messaging.message.conversation_id = Empty,
        messaging.message.body.size = body_size,
        server.address = Empty,
        server.port = Empty,
        error.type = Empty,
    );
    if !span.is_disabled() {
        let destination = publish_destination(exchange, routing_key);
        span.record("otel.name", format!("publish {destination}").as_str());
        span.record("messaging.destination.name", destination.as_str());
        record_message(&span, properties);
        record_server(&span, &address());
    }
    span
}

/// What a delivery span needs to know about the message.
pub(crate) struct Delivered<'a> {
    pub(crate) exchange: &'a ShortStr,
    pub(crate) routing_key: &'a ShortStr,
    pub(crate) queue: &'a str,
    pub(crate) delivery_tag: u64,
    pub(crate) properties: &'a BasicProperties,
    pub(crate) body_size: usize,
}

/// The span of a delivery handed to the application (`process`), or of a `basic.get`
/// (`receive`).
pub(crate) fn delivered(
    operation: &'static str,
    d: &Delivered<'_>,
    address: impl FnOnce() -> String,
) -> Span {
    let kind = if operation == "process" {
        "consumer"
    } else {
        "client"
    };
    let span = tracing::info_span!(
        target: TARGET,
        "deliver",
        otel.name = Empty,
        otel.kind = kind,
        messaging.system = "rabbitmq",
        messaging.operation.name = operation,
        messaging.operation.type = operation,
        messaging.destination.name = Empty,
        messaging.rabbitmq.destination.routing_key = text(d.routing_key),
        messaging.rabbitmq.message.delivery_tag = d.delivery_tag,
        messaging.message.id = Empty,
        messaging.message.conversation_id = Empty,
        messaging.message.body.size = d.body_size,
        server.address = Empty,
        server.port = Empty,
        error.type = Empty,
    );
    if !span.is_disabled() {
        let destination = consume_destination(text(d.exchange), text(d.routing_key), d.queue);
        span.record("otel.name", format!("{operation} {destination}").as_str());
        span.record("messaging.destination.name", destination.as_str());
        record_message(&span, d.properties);
        record_server(&span, &address());
    }
    span
}

/// The span of a `basic.get` on `queue` (`receive`); the message's attributes are recorded by
/// [`record_received`] once it came.
pub(crate) fn receive(queue: &str, address: impl FnOnce() -> String) -> Span {
    let span = tracing::info_span!(
        target: TARGET,
        "receive",
        otel.name = Empty,
        otel.kind = "client",
        messaging.system = "rabbitmq",
        messaging.operation.name = "receive",
        messaging.operation.type = "receive",
        messaging.destination.name = Empty,
        messaging.rabbitmq.destination.routing_key = Empty,
        messaging.rabbitmq.message.delivery_tag = Empty,
        messaging.message.id = Empty,
        messaging.message.conversation_id = Empty,
        messaging.message.body.size = Empty,
        messaging.batch.message_count = Empty,
        server.address = Empty,
        server.port = Empty,
        error.type = Empty,
    );
    if !span.is_disabled() {
        span.record("otel.name", format!("receive {queue}").as_str());
        record_server(&span, &address());
    }
    span
}

/// Records the message a `basic.get` brought (or that the queue was empty) on its span.
pub(crate) fn record_received(span: &Span, d: Option<&Delivered<'_>>) {
    if span.is_disabled() {
        return;
    }
    let Some(d) = d else {
        span.record("messaging.batch.message_count", 0u64);
        return;
    };
    let destination = consume_destination(text(d.exchange), text(d.routing_key), d.queue);
    span.record("messaging.destination.name", destination.as_str());
    span.record(
        "messaging.rabbitmq.destination.routing_key",
        text(d.routing_key),
    );
    span.record("messaging.rabbitmq.message.delivery_tag", d.delivery_tag);
    span.record("messaging.message.body.size", d.body_size);
    record_message(span, d.properties);
}

/// The span of an acknowledgement (`ack`, `nack` or `reject`) of one delivery, a child of
/// the delivery's own span.
pub(crate) fn settle(
    operation: &'static str,
    parent: &Span,
    exchange: &ShortStr,
    routing_key: &ShortStr,
    delivery_tag: u64,
) -> Span {
    let span = tracing::info_span!(
        target: TARGET,
        parent: parent,
        "settle",
        otel.name = Empty,
        otel.kind = "client",
        messaging.system = "rabbitmq",
        messaging.operation.name = operation,
        messaging.operation.type = "settle",
        messaging.destination.name = Empty,
        messaging.rabbitmq.message.delivery_tag = delivery_tag,
        error.type = Empty,
    );
    if !span.is_disabled() {
        let destination = consume_destination(text(exchange), text(routing_key), "");
        span.record("otel.name", format!("{operation} {destination}").as_str());
        span.record("messaging.destination.name", destination.as_str());
    }
    span
}

/// Records a failure's kind on `span` as `error.type`.
pub(crate) fn record_error(span: &Span, error: &crate::Error) {
    if !span.is_disabled() {
        span.record("error.type", error_type(error));
    }
}

/// A low-cardinality name for an error, as `error.type` wants it: the AMQP reply code's name
/// when the broker gave one, else the error's kind.
pub(crate) fn error_type(error: &crate::Error) -> &'static str {
    use crate::Error as E;
    if let Some(code) = error.reply_code() {
        if let Some(name) = code.name() {
            return name;
        }
    }
    match error {
        E::Timeout { .. } => "timeout",
        E::ConnectionLost(_) => "connection_lost",
        E::ConnectionClosed(_) => "connection_closed",
        E::ChannelClosed(_) | E::ChannelNotOpen(_) => "channel_closed",
        E::InvalidArgument(_) => "invalid_argument",
        E::Unsent { .. } => "unsent",
        _ => "_OTHER",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn destinations_follow_the_conventions() {
        assert_eq!(publish_destination("", ""), "amq.default");
        assert_eq!(publish_destination("", "jobs"), "jobs");
        assert_eq!(publish_destination("logs", ""), "logs");
        assert_eq!(publish_destination("logs", "app.web"), "logs:app.web");
        assert_eq!(
            consume_destination("logs", "app.web", "q"),
            "logs:app.web:q"
        );
        assert_eq!(consume_destination("", "jobs", "jobs"), "jobs:jobs");
        assert_eq!(consume_destination("", "", ""), "amq.default");
    }
}

/// Trace-context propagation through message headers, with the `otel` feature.
#[cfg(feature = "otel")]
pub(crate) mod otel {
    use lepus_wire::{BasicProperties, FieldTable, FieldValue, LongStr, ShortStr};
    use opentelemetry::propagation::{Extractor, Injector};
    use tracing::Span;
    use tracing_opentelemetry::OpenTelemetrySpanExt;

    /// Writes propagation fields into AMQP headers as long strings, as OpenTelemetry's pika
    /// instrumentation and the other AMQP clients' do.
    struct Headers<'a>(&'a mut FieldTable);

    impl Injector for Headers<'_> {
        fn set(&mut self, key: &str, value: String) {
            if let Ok(key) = ShortStr::try_from(key) {
                self.0
                    .insert(key, FieldValue::LongStr(LongStr::from(value)));
            }
        }
    }

    /// Reads propagation fields from AMQP headers (long strings, or byte arrays of UTF-8).
    struct Reader<'a>(&'a FieldTable);

    impl Extractor for Reader<'_> {
        fn get(&self, key: &str) -> Option<&str> {
            self.0.get(key).and_then(FieldValue::as_str)
        }

        fn keys(&self) -> Vec<&str> {
            self.0.iter().filter_map(|(k, _)| k.as_str()).collect()
        }
    }

    /// The properties with the publish span's context injected into the headers, unless the
    /// span carries no context (no OpenTelemetry layer) or the caller set the propagator's
    /// fields already.
    pub(crate) fn inject(span: &Span, properties: &BasicProperties) -> Option<BasicProperties> {
        let cx = span.context();
        let mut headers = properties.headers.clone().unwrap_or_default();
        let before = headers.len();
        opentelemetry::global::get_text_map_propagator(|p| {
            if p.fields().any(|f| headers.contains_key(f)) {
                return;
            }
            p.inject_context(&cx, &mut Headers(&mut headers));
        });
        if headers.len() == before {
            return None;
        }
        let mut with = properties.clone();
        with.headers = Some(headers);
        Some(with)
    }

    /// Makes the context a delivery carries the parent of its span.
    pub(crate) fn continue_from(span: &Span, properties: &BasicProperties) {
        let Some(headers) = &properties.headers else {
            return;
        };
        let cx = opentelemetry::global::get_text_map_propagator(|p| p.extract(&Reader(headers)));
        let _ = span.set_parent(cx);
    }
}
