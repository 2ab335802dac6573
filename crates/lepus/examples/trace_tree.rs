//! A request crossing a lepus producer, RabbitMQ and a lepus consumer, traced with
//! OpenTelemetry (the `otel` feature): the spans are exported to memory and printed as a
//! tree, as a Jaeger-style view would show them.
//!
//! ```text
//! cargo run -p lepus --features otel --example trace_tree
//! ```

use std::collections::HashMap;
use std::time::Duration;

use lepus::{BasicConsumeOptions, BasicProperties, BasicPublishOptions, Connection};
use opentelemetry::trace::{SpanId, TracerProvider as _};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use tracing::Instrument;
use tracing_subscriber::prelude::*;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    tracing_subscriber::registry()
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("orders-service")))
        .init();

    let url = std::env::var("AMQP_URL").unwrap_or_else(|_| "memory://".to_string());
    let conn = Connection::connect(&url).await?;
    let ch = conn.open_channel().await?;
    ch.exchange_declare(
        "example.shop",
        lepus::ExchangeKind::Topic,
        lepus::ExchangeDeclareOptions {
            auto_delete: true,
            ..Default::default()
        },
    )
    .await?;
    let queue = ch
        .queue_declare(
            "example.orders",
            lepus::QueueDeclareOptions {
                exclusive: true,
                ..Default::default()
            },
        )
        .await?
        .name;
    ch.queue_bind(
        &queue,
        "example.shop",
        "order.*",
        lepus::BindOptions::default(),
    )
    .await?;
    ch.confirm_select().await?;

    // The producer side: an HTTP handler, say, that publishes an order.
    async {
        let props = BasicProperties::builder()
            .message_id("order-42")
            .correlation_id("req-7")
            .build()?;
        let confirm = ch
            .basic_publish(
                "example.shop",
                "order.created",
                BasicPublishOptions::default(),
                &props,
                "order 42",
            )
            .await?;
        confirm.await?;
        Ok::<_, Box<dyn std::error::Error>>(())
    }
    .instrument(tracing::info_span!("POST /orders"))
    .await?;

    // The consumer side: the work on the message runs in its process span.
    let mut consumer = ch
        .basic_consume(&queue, "", BasicConsumeOptions::default())
        .await?;
    if let Some(delivery) = consumer.recv().await {
        let delivery = delivery?;
        async {
            tokio::time::sleep(Duration::from_millis(2)).await; // the work
        }
        .instrument(tracing::info_span!(parent: delivery.span(), "store order"))
        .await;
        delivery.ack()?;
    }
    drop(consumer);
    conn.close().await?;
    provider.force_flush()?;

    print_tree(&exporter.get_finished_spans()?);
    Ok(())
}

/// Prints the spans of each trace as a tree: name, kind, duration, the messaging attributes.
fn print_tree(spans: &[SpanData]) {
    let mut children: HashMap<SpanId, Vec<&SpanData>> = HashMap::new();
    for s in spans {
        children.entry(s.parent_span_id).or_default().push(s);
    }
    for list in children.values_mut() {
        list.sort_by_key(|s| s.start_time);
    }
    let ids: std::collections::HashSet<SpanId> =
        spans.iter().map(|s| s.span_context.span_id()).collect();
    let mut roots: Vec<&SpanData> = spans
        .iter()
        .filter(|s| !ids.contains(&s.parent_span_id))
        .collect();
    roots.sort_by_key(|s| s.start_time);
    for root in roots {
        println!("trace {}", root.span_context.trace_id());
        print_span(root, &children, "", true);
    }
}

fn print_span(s: &SpanData, children: &HashMap<SpanId, Vec<&SpanData>>, prefix: &str, last: bool) {
    let took = s.end_time.duration_since(s.start_time).unwrap_or_default();
    let attrs: Vec<String> = s
        .attributes
        .iter()
        .filter(|kv| {
            let k = kv.key.as_str();
            k == "messaging.destination.name"
                || k.ends_with("delivery_tag")
                || k == "messaging.message.id"
        })
        .map(|kv| format!("{}={}", kv.key, kv.value))
        .collect();
    println!(
        "{prefix}{} {} [{:?}] {:.2} ms  {}",
        if last { "└─" } else { "├─" },
        s.name,
        s.span_kind,
        took.as_secs_f64() * 1e3,
        attrs.join(" ")
    );
    let next = format!("{prefix}{}", if last { "   " } else { "│  " });
    if let Some(kids) = children.get(&s.span_context.span_id()) {
        for (i, kid) in kids.iter().enumerate() {
            print_span(kid, children, &next, i + 1 == kids.len());
        }
    }
}
