//! Trace context through message headers (the `otel` feature), with OpenTelemetry's SDK
//! exporting to memory: a publish injects W3C `traceparent` into the message, and the
//! delivery's process span continues that trace as the publish span's child, also for a
//! message another client published with its own `traceparent`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod support;

use lepus::{BasicConsumeOptions, BasicProperties, BasicPublishOptions, FieldTable, ShortStr};
use opentelemetry::trace::{SpanKind, TraceContextExt, TracerProvider as _};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::prelude::*;

#[tokio::test]
async fn a_trace_goes_from_the_publisher_through_the_broker_to_the_consumer() {
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    let tracer = provider.tracer("lepus-test");
    let _guard = tracing_subscriber::registry()
        .with(tracing_opentelemetry::layer().with_tracer(tracer))
        .set_default();

    let (conn, ch) = support::channel().await;
    let queue = support::exclusive_queue(&ch, "otel").await;
    ch.confirm_select().await.unwrap();

    // The application's own span, around the publish.
    let request = tracing::info_span!("handle request");
    let request_trace = request.context().span().span_context().trace_id();
    let confirm = {
        let _in = request.enter();
        ch.basic_publish(
            "",
            &queue,
            BasicPublishOptions::default(),
            &BasicProperties::default(),
            "traced",
        )
        .await
        .unwrap()
    };
    assert!(confirm.await.unwrap().is_ack());
    drop(request);

    // A message another client published in a trace of its own (as OpenTelemetry's pika
    // instrumentation writes it).
    let foreign = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    let mut headers = FieldTable::default();
    headers.insert(ShortStr::from_static("traceparent"), foreign);
    let props = BasicProperties {
        headers: Some(headers),
        ..Default::default()
    };
    ch.basic_publish(
        "",
        &queue,
        BasicPublishOptions::default(),
        &props,
        "foreign",
    )
    .await
    .unwrap()
    .await
    .unwrap();

    let mut consumer = ch
        .basic_consume(
            &queue,
            "",
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let first = consumer.recv().await.unwrap().unwrap();
    let traceparent = first
        .properties
        .headers
        .as_ref()
        .and_then(|h| h.get("traceparent"))
        .and_then(|v| v.as_str())
        .expect("the publish injected traceparent")
        .to_owned();
    drop(first);
    let second = consumer.recv().await.unwrap().unwrap();
    drop(second);
    drop(consumer);
    conn.close().await.unwrap();
    provider.force_flush().unwrap();

    let spans = exporter.get_finished_spans().unwrap();
    let publish = spans
        .iter()
        .find(|s| s.name == format!("publish {queue}") && s.span_kind == SpanKind::Producer)
        .unwrap_or_else(|| panic!("no publish span in {spans:#?}"));
    assert_eq!(publish.span_context.trace_id(), request_trace);
    assert!(publish
        .attributes
        .iter()
        .any(|kv| kv.key.as_str() == "messaging.system" && kv.value.as_str() == "rabbitmq"));
    // The header names the publish span.
    let parts: Vec<&str> = traceparent.split('-').collect();
    assert_eq!(parts[1], publish.span_context.trace_id().to_string());
    assert_eq!(parts[2], publish.span_context.span_id().to_string());

    let process: Vec<_> = spans
        .iter()
        .filter(|s| s.name.starts_with("process ") && s.span_kind == SpanKind::Consumer)
        .collect();
    assert_eq!(process.len(), 2, "{spans:#?}");
    // The first continues the publisher's trace, as the publish span's child.
    assert_eq!(process[0].span_context.trace_id(), request_trace);
    assert_eq!(process[0].parent_span_id, publish.span_context.span_id());
    // The second continues the foreign trace.
    assert_eq!(
        process[1].span_context.trace_id().to_string(),
        "0af7651916cd43dd8448eb211c80319c"
    );
    assert_eq!(process[1].parent_span_id.to_string(), "b7ad6b7169203331");
}
