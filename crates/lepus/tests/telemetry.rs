//! The spans lepus emits, recorded by a subscriber of the test's own against the real broker:
//! names, OpenTelemetry attributes, parents, and failures. (One test: `tracing`'s callsite
//! interest is process-wide, and a test without a subscriber running beside it would race.
//! That spans cost nothing without a subscriber is `tests/allocations.rs`'s business: it
//! counts every allocation per published and consumed message, spans compiled in.)
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod support;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use lepus::{
    BasicConsumeOptions, BasicProperties, BasicPublishOptions, QueueDeclareOptions,
    QueueDeleteOptions,
};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::Subscriber;
use tracing_subscriber::layer::{Context, Layer};
use tracing_subscriber::prelude::*;
use tracing_subscriber::registry::LookupSpan;

/// One span as recorded: its name, fields (as text), parent and whether it closed.
#[derive(Debug, Clone, Default)]
struct Recorded {
    id: u64,
    name: &'static str,
    fields: BTreeMap<String, String>,
    parent: Option<u64>,
    closed: bool,
}

#[derive(Clone, Default)]
struct Recorder(Arc<Mutex<Vec<Recorded>>>, Arc<Mutex<Vec<String>>>);

struct Fields<'a>(&'a mut BTreeMap<String, String>);

impl Visit for Fields<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0.insert(field.name().to_owned(), format!("{value:?}"));
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_owned(), value.to_owned());
    }
}

impl<S: Subscriber + for<'a> LookupSpan<'a>> Layer<S> for Recorder {
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let mut r = Recorded {
            id: id.into_u64(),
            name: attrs.metadata().name(),
            ..Default::default()
        };
        attrs.record(&mut Fields(&mut r.fields));
        r.parent = ctx
            .span(id)
            .and_then(|s| s.parent())
            .map(|p| p.id().into_u64());
        self.0.lock().unwrap().push(r);
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, _ctx: Context<'_, S>) {
        let mut spans = self.0.lock().unwrap();
        if let Some(r) = spans.iter_mut().rev().find(|r| r.id == id.into_u64()) {
            values.record(&mut Fields(&mut r.fields));
        }
    }

    fn on_event(&self, event: &tracing::Event<'_>, _ctx: Context<'_, S>) {
        let mut fields = BTreeMap::new();
        event.record(&mut Fields(&mut fields));
        if let Some(message) = fields.remove("message") {
            self.1.lock().unwrap().push(message);
        }
    }

    fn on_close(&self, id: Id, _ctx: Context<'_, S>) {
        let mut spans = self.0.lock().unwrap();
        if let Some(r) = spans.iter_mut().rev().find(|r| r.id == id.into_u64()) {
            r.closed = true;
        }
    }
}

impl Recorder {
    fn named(&self, name: &str) -> Vec<Recorded> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .filter(|r| r.name == name)
            .cloned()
            .collect()
    }
}

fn field<'a>(r: &'a Recorded, name: &str) -> &'a str {
    r.fields
        .get(name)
        .map(String::as_str)
        .unwrap_or_else(|| panic!("{name} missing in {r:?}"))
}

#[tokio::test]
async fn publish_process_settle_and_receive_spans_carry_the_conventions() {
    let recorder = Recorder::default();
    let _guard = tracing_subscriber::registry()
        .with(recorder.clone())
        .set_default();

    drop(tracing::info_span!("probe"));
    assert_eq!(recorder.named("probe").len(), 1, "the recorder sees spans");
    let (conn, ch) = support::channel().await;
    let queue = support::unique("spans");
    ch.queue_declare(&queue, QueueDeclareOptions::default())
        .await
        .unwrap();
    let props = BasicProperties::builder()
        .message_id("m-1")
        .correlation_id("c-1")
        .build()
        .unwrap();
    ch.confirm_select().await.unwrap();
    let confirm = ch
        .basic_publish("", &queue, BasicPublishOptions::default(), &props, "hello")
        .await
        .unwrap();
    assert!(confirm.await.unwrap().is_ack());

    let publish = recorder.named("publish");
    assert_eq!(publish.len(), 1, "{publish:?}");
    let p = &publish[0];
    assert_eq!(field(p, "otel.name"), format!("publish {queue}"));
    assert_eq!(field(p, "otel.kind"), "producer");
    assert_eq!(field(p, "messaging.system"), "rabbitmq");
    assert_eq!(field(p, "messaging.operation.type"), "send");
    assert_eq!(field(p, "messaging.destination.name"), queue);
    assert_eq!(
        field(p, "messaging.rabbitmq.destination.routing_key"),
        queue
    );
    assert_eq!(field(p, "messaging.message.id"), "m-1");
    assert_eq!(field(p, "messaging.message.conversation_id"), "c-1");
    assert_eq!(field(p, "messaging.message.body.size"), "5");
    assert_eq!(field(p, "server.address"), "127.0.0.1");
    assert_eq!(field(p, "server.port"), "5672");
    assert!(p.closed);

    // Consumed: a process span per delivery handed over, the ack its child.
    let mut consumer = ch
        .basic_consume(&queue, "", BasicConsumeOptions::default())
        .await
        .unwrap();
    let delivery = consumer.recv().await.unwrap().unwrap();
    let process = recorder.named("deliver");
    assert_eq!(process.len(), 1, "{process:?}");
    let d = &process[0];
    assert_eq!(field(d, "otel.name"), format!("process {queue}:{queue}"));
    assert_eq!(field(d, "otel.kind"), "consumer");
    assert_eq!(field(d, "messaging.operation.type"), "process");
    assert_eq!(
        field(d, "messaging.rabbitmq.message.delivery_tag"),
        delivery.delivery_tag.to_string()
    );
    assert_eq!(field(d, "messaging.message.id"), "m-1");
    assert!(!d.closed, "open while the application holds the delivery");
    delivery.ack().unwrap();
    let settle = recorder.named("settle");
    assert_eq!(settle.len(), 1);
    assert_eq!(field(&settle[0], "otel.name"), format!("ack {queue}"));
    assert_eq!(settle[0].parent, Some(d.id));
    drop(delivery);
    assert!(recorder.named("deliver")[0].closed);
    ch.basic_cancel(consumer.tag()).await.unwrap();

    // basic.get: a receive span, with what came or that nothing did.
    ch.basic_publish("", &queue, BasicPublishOptions::default(), &props, "again")
        .await
        .unwrap()
        .await
        .unwrap();
    support::depth_eventually(&ch, &queue, 1, std::time::Duration::from_secs(5)).await;
    let got = ch.basic_get(&queue, true).await.unwrap().unwrap();
    assert!(ch.basic_get(&queue, true).await.unwrap().is_none());
    let receive = recorder.named("receive");
    assert_eq!(receive.len(), 2, "{receive:?}");
    assert_eq!(field(&receive[0], "otel.name"), format!("receive {queue}"));
    assert_eq!(
        field(&receive[0], "messaging.rabbitmq.message.delivery_tag"),
        got.delivery.delivery_tag.to_string()
    );
    assert_eq!(field(&receive[0], "messaging.message.body.size"), "5");
    assert_eq!(field(&receive[1], "messaging.batch.message_count"), "0");

    // A failure is recorded as error.type: publishing to a closed channel.
    ch.queue_delete(&queue, QueueDeleteOptions::default())
        .await
        .unwrap();
    ch.close().await.unwrap();
    let _ = ch
        .basic_publish("", &queue, BasicPublishOptions::default(), &props, "x")
        .await
        .unwrap_err();
    let failed = recorder.named("publish");
    assert_eq!(
        field(failed.last().unwrap(), "error.type"),
        "channel_closed"
    );
    conn.close().await.unwrap();
}
