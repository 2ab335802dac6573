//! Trace context between lepus (the `otel` feature) and Python's pika with OpenTelemetry's
//! pika instrumentation, both ways, against the broker: pika's traced publish continues in a
//! lepus consumer's process span, and lepus's traced publish continues in pika's consumer
//! span. The Python environment is the one `scripts/python-env.sh` makes for the interop
//! tests. (One test: see `tests/telemetry.rs` on `tracing`'s process-wide interest.)
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

use lepus::{BasicConsumeOptions, BasicProperties, BasicPublishOptions, QueueDeclareOptions};
use opentelemetry::trace::{SpanKind, TraceContextExt, TracerProvider as _};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider};
use serde_json::Value;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::prelude::*;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Runs the pika peer in the test environment's Python and returns its JSON line.
fn peer(args: &[&str]) -> Value {
    let env = Command::new("bash")
        .arg(repo().join("scripts/python-env.sh"))
        .output()
        .unwrap();
    assert!(
        env.status.success(),
        "scripts/python-env.sh: {}",
        String::from_utf8_lossy(&env.stderr)
    );
    let python = String::from_utf8(env.stdout).unwrap().trim().to_owned();
    let out = Command::new(python)
        .arg(repo().join("crates/lepus/tests/interop/otel_peer.py"))
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "otel_peer.py {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traces_cross_between_lepus_and_pikas_instrumentation() {
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    let _guard = tracing_subscriber::registry()
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("lepus-test")))
        .set_default();

    let (conn, ch) = support::channel().await;
    let url = support::url();
    let queue = support::unique("otel-interop");
    ch.queue_declare(
        &queue,
        QueueDeclareOptions {
            auto_delete: false,
            ..Default::default()
        },
    )
    .await
    .unwrap();

    // pika publishes in a trace; the lepus consumer's process span continues it.
    let url2 = url.clone();
    let queue2 = queue.clone();
    let published =
        tokio::task::spawn_blocking(move || peer(&["publish", "--url", &url2, "--queue", &queue2]))
            .await
            .unwrap();
    let mut consumer = ch
        .basic_consume(&queue, "", BasicConsumeOptions::default())
        .await
        .unwrap();
    let delivery = consumer.recv().await.unwrap().unwrap();
    assert_eq!(&delivery.body[..], b"from python");
    let process_trace = delivery.span().context().span().span_context().trace_id();
    delivery.ack().unwrap();
    drop(delivery);
    ch.basic_cancel(consumer.tag()).await.unwrap();
    drop(consumer);
    assert_eq!(
        process_trace.to_string(),
        published["trace_id"].as_str().unwrap()
    );
    provider.force_flush().unwrap();
    let spans = exporter.get_finished_spans().unwrap();
    let process = spans
        .iter()
        .find(|s| s.span_kind == SpanKind::Consumer && s.name.starts_with("process "))
        .unwrap_or_else(|| panic!("no process span in {spans:#?}"));
    assert_eq!(
        process.parent_span_id.to_string(),
        published["span_id"].as_str().unwrap(),
        "the process span is the child of pika's send span"
    );

    // lepus publishes in a trace; pika's instrumented consumer continues it.
    let request = tracing::info_span!("lepus request");
    let confirm = {
        let _in = request.enter();
        ch.basic_publish(
            "",
            &queue,
            BasicPublishOptions::default(),
            &BasicProperties::default(),
            "from lepus",
        )
        .await
        .unwrap()
    };
    let _ = confirm.await;
    let lepus_trace = request.context().span().span_context().trace_id();
    drop(request);
    provider.force_flush().unwrap();
    let publish_span = exporter
        .get_finished_spans()
        .unwrap()
        .into_iter()
        .find(|s| s.span_kind == SpanKind::Producer)
        .expect("a publish span");
    let url2 = url.clone();
    let queue2 = queue.clone();
    let consumed =
        tokio::task::spawn_blocking(move || peer(&["consume", "--url", &url2, "--queue", &queue2]))
            .await
            .unwrap();
    assert_eq!(
        consumed["trace_id"].as_str().unwrap(),
        lepus_trace.to_string()
    );
    assert_eq!(
        consumed["parent_span_id"].as_str().unwrap(),
        publish_span.span_context.span_id().to_string(),
        "pika's consumer span is the child of lepus's publish span"
    );
    ch.queue_delete(&queue, Default::default()).await.unwrap();
    conn.close().await.unwrap();
}
