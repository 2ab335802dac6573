"""pika with OpenTelemetry's pika instrumentation, for lepus's trace-context interop test.

    otel_peer.py publish --url URL --queue Q
        Publishes one message to Q (default exchange) inside a span "py-request", through
        the instrumented pika, which injects `traceparent` into the headers. Prints
        {"trace_id": <32 hex>, "span_id": <16 hex of pika's send span>}.
    otel_peer.py consume --url URL --queue Q [--timeout S]
        Consumes one message with the instrumented pika; the instrumentation's consumer span
        takes the message's context as its parent. Prints {"trace_id": ..., "parent_span_id":
        ...} of that span. Exits 2 on timeout.

Spans go to an in-memory exporter; only the printed ids matter.
"""

import argparse
import json
import sys

import pika
from opentelemetry import trace
from opentelemetry.instrumentation.pika import PikaInstrumentor
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter


def setup():
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    PikaInstrumentor().instrument()
    return exporter


def publish(args):
    exporter = setup()
    conn = pika.BlockingConnection(pika.URLParameters(args.url))
    ch = conn.channel()
    with trace.get_tracer("otel-peer").start_as_current_span("py-request") as request:
        ch.basic_publish("", args.queue, b"from python", pika.BasicProperties(headers={}))
        trace_id = format(request.get_span_context().trace_id, "032x")
    conn.close()
    sends = [s for s in exporter.get_finished_spans() if s.name.endswith(" send")]
    if not sends:
        sys.exit("otel_peer: the instrumentation made no send span")
    print(json.dumps({"trace_id": trace_id, "span_id": format(sends[0].context.span_id, "016x")}))


def consume(args):
    setup()
    conn = pika.BlockingConnection(pika.URLParameters(args.url))
    ch = conn.channel()
    seen = {}

    def on_message(channel, method, properties, body):
        span = trace.get_current_span()
        parent = getattr(span, "parent", None)
        seen["trace_id"] = format(span.get_span_context().trace_id, "032x")
        seen["parent_span_id"] = format(parent.span_id, "016x") if parent else None
        channel.basic_ack(method.delivery_tag)
        channel.stop_consuming()

    ch.basic_consume(args.queue, on_message)
    conn.call_later(args.timeout, ch.stop_consuming)
    ch.start_consuming()
    conn.close()
    if not seen:
        print("otel_peer: no message within the timeout", file=sys.stderr)
        sys.exit(2)
    print(json.dumps(seen))


def main():
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("publish", "consume"):
        p = sub.add_parser(name)
        p.add_argument("--url", required=True)
        p.add_argument("--queue", required=True)
        p.add_argument("--timeout", type=float, default=10.0)
    args = parser.parse_args()
    {"publish": publish, "consume": consume}[args.command](args)


if __name__ == "__main__":
    main()
