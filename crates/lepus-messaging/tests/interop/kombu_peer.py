#!/usr/bin/env python3
"""kombu side of the kombu <-> lepus-messaging interop tests.

Run by the Rust tests as a subprocess with the interpreter printed by scripts/python-env.sh.
See README.md beside this file for the contract. Subcommands:

  cases
      Print the case table as JSON: {name: {"value": repr, "serializers": [...]}} in table order.
  publish --url URL --queue Q --serializer S [--compression C] [--case NAME ...]
      Publish one message per case valid for S (all, or the named ones, in table order) to the
      default exchange with routing key Q, header case=NAME. Prints {"case": NAME} per message.
  consume --url URL --queue Q --count N [--accept NAME ...] [--timeout SECS]
      Consume N messages from Q through kombu's decode path, ack each, print one JSON line each:
      {"case", "ok": true} | {"case", "ok": false, "got", "expected"} | {"case", "error", "message"}.
      Exit 0 after N messages, 2 on timeout.
  rpc-serve --url URL --queue Q --count N [--accept NAME ...] [--timeout SECS]
      An RPC server: consume requests from Q (not declared), answer each with
      kombu.common.send_reply(exchange='', req=message, msg={"echo": <decoded body>}, producer=...)
      and ack it. Prints {"correlation_id": ID, "request": <decoded body>} per request.
      Exit 0 after N requests, 2 on timeout.
  rpc-call --url URL --queue Q --count N [--serializer S] [--timeout SECS]
      An RPC client: declare an exclusive reply queue, publish N requests {"n": i} to Q through the
      default exchange with reply_to=<reply queue> and a fresh correlation id, consume the replies.
      Prints {"correlation_id": ID, "reply": <decoded>, "request": <the request sent with ID, or
      null>} per reply. Exit 0 after N replies, 2 on timeout.
  rpc-bench --url URL --n N --inflight K
      RPC round trips with send_reply/collect_replies: a server thread on its own connection
      answers {"echo": body}; the client keeps K requests in flight until N are answered. Prints
      {"client": "kombu", "inflight", "n", "requests_per_s", "lat_p50_us", "lat_p99_us",
      "lat_max_us"}.
"""

import argparse
import json
import math
import socket
import sys
import threading
import time as _time
from collections import deque
from datetime import date, datetime, time, timezone
from decimal import Decimal
from uuid import UUID

from kombu import Connection, Consumer, Producer, Queue
from kombu.common import collect_replies, send_reply, uuid

# Pseudo-serializers of this peer besides kombu's registered names (json, msgpack, yaml, pickle):
#   raw  -> Producer.publish(bytes, serializer='raw'): content_type application/data, encoding
#           binary, body unchanged; kombu decodes it (always trusted) to the same bytes.
#   text -> Producer.publish(str) with no serializer: content_type text/plain, encoding utf-8;
#           kombu decodes it (no decoder registered for text/plain) to str via the charset.
#           Not in kombu's trusted set: a consumer with an explicit accept list must list
#           'text/plain'.
ALL = frozenset({"json", "msgpack", "yaml", "pickle"})
# msgpack (packb(use_bin_type=True) / unpackb(raw=False), no default= hook): datetime, date, time,
# Decimal and UUID raise TypeError -> kombu EncodeError, so they are not msgpack cases. bytes
# travel as bin and come back as bytes.
NO_MSGPACK = frozenset({"json", "yaml", "pickle"})
# yaml (safe_dump / safe_load): bytes become `!!binary` tagged scalars; date and datetime become
# YAML timestamps that safe_load turns back into date/datetime but that a plain (serde) YAML
# parser reads as strings; time, Decimal and UUID have no safe representer (RepresenterError ->
# EncodeError). So yaml carries only plain data.
NO_YAML = frozenset({"json", "msgpack", "pickle"})
PLAIN_ONLY = frozenset({"json", "pickle"})  # json markers (kombu/utils/json.py) or pickle only
BYTES_CASE = frozenset({"json", "msgpack", "pickle"})  # json: {"__type__": "bytes"|"base64"}

CASES = {
    "nested": ({"a": [1, 2, {"b": None, "c": True}], "d": {"e": "f", "g": -1.5}}, ALL),
    "unicode": ("héllo wörld ✓ 日本 🐇", ALL),
    "big_uint": (2**64 - 1, ALL),
    "min_int": (-(2**63), ALL),
    "float": (3.141592653589793, ALL),
    "big_float": (1e300, ALL),
    "list": ([1, "two", 3.5, None, False], ALL),
    "datetime_utc": (datetime(2024, 5, 6, 7, 8, 9, 123456, tzinfo=timezone.utc), PLAIN_ONLY),
    "datetime_naive": (datetime(2024, 5, 6, 7, 8, 9, 123456), PLAIN_ONLY),
    "date": (date(2024, 2, 29), PLAIN_ONLY),
    "time": (time(13, 14, 15, 500000), PLAIN_ONLY),
    "decimal": (Decimal("12345.678901234567890"), PLAIN_ONLY),
    "uuid": (UUID("5f0c2f6e-8a55-4f6a-9d8e-1b2c3d4e5f60"), PLAIN_ONLY),
    "bytes_utf8": (b"plain bytes", BYTES_CASE),
    "bytes_binary": (b"\x00\xff\x10binary", BYTES_CASE),
    "raw": (bytes(range(256)), frozenset({"raw"})),
    "text": ("plain text ✓", frozenset({"text"})),
}
SERIALIZERS = ("json", "msgpack", "yaml", "raw", "text", "pickle")


def emit(obj):
    sys.stdout.write(json.dumps(obj, ensure_ascii=False) + "\n")
    sys.stdout.flush()


def same(got, expected):
    """Exact equality: same types all the way down (bool is not int, bytes is not str, ...)."""
    if type(got) is not type(expected):
        return False
    if isinstance(expected, dict):
        return got.keys() == expected.keys() and all(same(got[k], expected[k]) for k in expected)
    if isinstance(expected, (list, tuple)):
        return len(got) == len(expected) and all(same(g, e) for g, e in zip(got, expected))
    if isinstance(expected, float):
        return got == expected or (math.isnan(got) and math.isnan(expected))
    if isinstance(expected, (datetime, time)):
        # == between aware and naive values is False (datetime) or raises (time); also require
        # the same UTC offset, not just the same instant.
        return (
            (got.tzinfo is None) == (expected.tzinfo is None)
            and got.utcoffset() == expected.utcoffset()
            and got == expected
        )
    return got == expected


def cmd_cases(_args):
    print(
        json.dumps(
            {
                name: {
                    "value": repr(value),
                    "serializers": [s for s in SERIALIZERS if s in valid],
                }
                for name, (value, valid) in CASES.items()
            },
            ensure_ascii=False,
            indent=2,
        )
    )
    return 0


def cmd_publish(args):
    s = args.serializer
    if args.case:
        for name in args.case:
            if name not in CASES:
                sys.exit(f"kombu_peer: unknown case {name!r}")
            if s not in CASES[name][1]:
                sys.exit(f"kombu_peer: case {name!r} is not valid for serializer {s!r}")
        wanted = set(args.case)
        names = [n for n in CASES if n in wanted]
    else:
        names = [n for n, (_, valid) in CASES.items() if s in valid]
    # 'text' is not a kombu serializer: a str body with serializer None is sent as text/plain.
    serializer = None if s == "text" else s
    # Publisher confirms: every message is on the queue before we report it and exit.
    with Connection(args.url, transport_options={"confirm_publish": True}) as conn:
        producer = Producer(conn)
        for name in names:
            value = CASES[name][0]
            producer.publish(
                value,
                exchange="",
                routing_key=args.queue,
                serializer=serializer,
                compression=args.compression,
                headers={"case": name},
            )
            emit({"case": name})
    return 0


def cmd_consume(args):
    done = 0

    def case_of(message):
        name = (message.headers or {}).get("case")
        if isinstance(name, (bytes, bytearray)):
            name = bytes(name).decode("utf-8", "replace")
        return name

    def on_body(body, message):
        # kombu has decompressed (headers['compression']) and decoded (loads with accept).
        nonlocal done
        name = case_of(message)
        if name is None:
            emit({"case": None, "error": "NoCase", "message": "message has no 'case' header"})
        elif name not in CASES:
            emit({"case": name, "error": "UnknownCase", "message": f"no case named {name!r}"})
        else:
            expected = CASES[name][0]
            if same(body, expected):
                emit({"case": name, "ok": True})
            else:
                emit({"case": name, "ok": False, "got": repr(body), "expected": repr(expected)})
        message.ack()
        done += 1

    def on_decode_error(message, exc):
        # Decompression failures and loads() failures (ContentDisallowed, DecodeError, ...).
        nonlocal done
        name = case_of(message)
        if name is None:
            emit({"case": None, "error": "NoCase",
                  "message": f"message has no 'case' header; {type(exc).__name__}: {exc}"})
        else:
            emit({"case": name, "error": type(exc).__name__, "message": str(exc)})
        message.ack()
        done += 1

    deadline = _time.monotonic() + args.timeout
    with Connection(args.url) as conn:
        channel = conn.channel()
        consumer = Consumer(
            channel,
            queues=[Queue(args.queue, no_declare=True)],
            accept=args.accept or None,
            callbacks=[on_body],
            on_decode_error=on_decode_error,
            prefetch_count=max(1, min(args.count, 100)),
        )
        with consumer:
            while done < args.count:
                remaining = deadline - _time.monotonic()
                if remaining <= 0:
                    break
                try:
                    conn.drain_events(timeout=remaining)
                except socket.timeout:
                    break
    if done < args.count:
        print(
            f"kombu_peer: timeout after {args.timeout}s: {done} of {args.count} messages",
            file=sys.stderr,
        )
        return 2
    return 0


def drain_until(conn, done, deadline):
    """Drains events until done() or the deadline; returns whether done()."""
    while not done():
        remaining = deadline - _time.monotonic()
        if remaining <= 0:
            return False
        try:
            conn.drain_events(timeout=remaining)
        except socket.timeout:
            return done()
    return True


def text(value):
    return bytes(value).decode("utf-8", "replace") if isinstance(value, (bytes, bytearray)) else value


def cmd_rpc_serve(args):
    served = 0

    deadline = _time.monotonic() + args.timeout
    with Connection(args.url) as conn:
        producer = Producer(conn.channel())

        def on_request(body, message):
            nonlocal served
            send_reply("", message, {"echo": body}, producer=producer)
            message.ack()
            emit({"correlation_id": text(message.properties.get("correlation_id")), "request": body})
            served += 1

        consumer = Consumer(
            conn.channel(),
            queues=[Queue(args.queue, no_declare=True)],
            accept=args.accept or None,
            callbacks=[on_request],
            prefetch_count=max(1, min(args.count, 100)),
        )
        with consumer:
            finished = drain_until(conn, lambda: served >= args.count, deadline)
    if not finished:
        print(f"kombu_peer: timeout after {args.timeout}s: served {served} of {args.count}",
              file=sys.stderr)
        return 2
    return 0


def cmd_rpc_call(args):
    received = 0
    sent = {}

    deadline = _time.monotonic() + args.timeout
    with Connection(args.url) as conn:
        channel = conn.channel()
        reply_queue = Queue(uuid(), durable=False, exclusive=True, auto_delete=True)(channel)
        reply_queue.declare()

        def on_reply(body, message):
            nonlocal received
            cid = text(message.properties.get("correlation_id"))
            emit({"correlation_id": cid, "reply": body, "request": sent.pop(cid, None)})
            received += 1

        consumer = Consumer(
            channel,
            queues=[reply_queue],
            no_ack=True,
            accept=[args.serializer],
            callbacks=[on_reply],
        )
        producer = Producer(channel)
        with consumer:
            for i in range(args.count):
                cid = uuid()
                sent[cid] = {"n": i}
                producer.publish(
                    {"n": i},
                    exchange="",
                    routing_key=args.queue,
                    serializer=args.serializer,
                    reply_to=reply_queue.name,
                    correlation_id=cid,
                )
            finished = drain_until(conn, lambda: received >= args.count, deadline)
    if not finished:
        print(f"kombu_peer: timeout after {args.timeout}s: {received} of {args.count} replies",
              file=sys.stderr)
        return 2
    return 0


def nearest_rank(sorted_values, q):
    if not sorted_values:
        return 0
    rank = min(max(math.ceil(q * len(sorted_values)), 1), len(sorted_values))
    return sorted_values[rank - 1]


def cmd_rpc_bench(args):
    n, inflight = max(1, args.n), max(1, args.inflight)
    queue_name = f"kombu-peer.rpc-bench.{uuid()}"
    ready, stop = threading.Event(), threading.Event()
    failure = []

    def server():
        try:
            with Connection(args.url) as conn:
                producer = Producer(conn.channel())

                def on_request(body, message):
                    send_reply("", message, {"echo": body}, producer=producer)
                    message.ack()

                queue = Queue(queue_name, expires=60)
                with Consumer(conn.channel(), queues=[queue], callbacks=[on_request],
                              prefetch_count=min(inflight, 1000)):
                    ready.set()
                    while not stop.is_set():
                        try:
                            conn.drain_events(timeout=0.1)
                        except socket.timeout:
                            pass
        except Exception as exc:  # reported by the main thread
            failure.append(exc)
            ready.set()

    thread = threading.Thread(target=server, daemon=True)
    thread.start()
    if not ready.wait(30) or failure:
        print(f"kombu_peer: the server did not start: {failure}", file=sys.stderr)
        return 1

    with Connection(args.url) as conn:
        channel = conn.channel()
        reply_queue = Queue(uuid(), durable=False, exclusive=True, auto_delete=True)(channel)
        reply_queue.declare()
        producer = Producer(channel)
        # collect_replies yields at most one body per drain_events, and one drain_events can
        # deliver several replies: the rest would wait in its buffer for the next event. Its
        # `callbacks` see every reply as it arrives, so they are what is counted; the
        # generator only drives the event loop.
        arrived = deque()
        replies = collect_replies(
            conn,
            channel,
            reply_queue,
            limit=None,
            timeout=1,
            callbacks=[lambda body, _message: arrived.append((_time.perf_counter(), body))],
        )
        sent_at = {}
        next_n = 0

        def send():
            nonlocal next_n
            sent_at[next_n] = _time.perf_counter()
            producer.publish(
                {"n": next_n},
                exchange="",
                routing_key=queue_name,
                reply_to=reply_queue.name,
                correlation_id=uuid(),
            )
            next_n += 1

        # Ten untimed round trips first (connections warm, the server subscribed).
        for _ in range(10):
            send()
            while not arrived:
                next(replies)
            arrived.clear()
        sent_at.clear()
        next_n = 0
        latencies = []
        start = _time.perf_counter()
        for _ in range(min(inflight, n)):
            send()
        while len(latencies) < n:
            next(replies)
            while arrived:
                at, body = arrived.popleft()
                latencies.append(at - sent_at.pop(body["echo"]["n"]))
                if next_n < n:
                    send()
        elapsed = _time.perf_counter() - start
        replies.close()
    stop.set()
    thread.join(5)
    trips = sorted(int(t * 1e6) for t in latencies)
    emit({
        "client": "kombu",
        "inflight": inflight,
        "n": n,
        "requests_per_s": round(n / elapsed, 1),
        "lat_p50_us": nearest_rank(trips, 0.50),
        "lat_p99_us": nearest_rank(trips, 0.99),
        "lat_max_us": trips[-1],
    })
    return 0


def main(argv=None):
    p = argparse.ArgumentParser(prog="kombu_peer.py", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("cases", help="print the case table as JSON")
    pub = sub.add_parser("publish", help="publish the cases of one serializer")
    pub.add_argument("--url", required=True)
    pub.add_argument("--queue", required=True)
    pub.add_argument("--serializer", required=True, choices=SERIALIZERS)
    pub.add_argument("--compression")
    pub.add_argument("--case", action="extend", nargs="+")
    con = sub.add_parser("consume", help="consume and check N messages")
    con.add_argument("--url", required=True)
    con.add_argument("--queue", required=True)
    con.add_argument("--count", required=True, type=int)
    con.add_argument("--accept", action="extend", nargs="+")
    con.add_argument("--timeout", type=float, default=20.0)
    srv = sub.add_parser("rpc-serve", help="answer N RPC requests with send_reply")
    srv.add_argument("--url", required=True)
    srv.add_argument("--queue", required=True)
    srv.add_argument("--count", required=True, type=int)
    srv.add_argument("--accept", action="extend", nargs="+")
    srv.add_argument("--timeout", type=float, default=20.0)
    call = sub.add_parser("rpc-call", help="send N RPC requests and collect the replies")
    call.add_argument("--url", required=True)
    call.add_argument("--queue", required=True)
    call.add_argument("--count", required=True, type=int)
    call.add_argument("--serializer", default="json", choices=("json", "msgpack", "yaml"))
    call.add_argument("--timeout", type=float, default=20.0)
    bench = sub.add_parser("rpc-bench", help="RPC round trips with send_reply/collect_replies")
    bench.add_argument("--url", required=True)
    bench.add_argument("--n", required=True, type=int)
    bench.add_argument("--inflight", type=int, default=1)
    args = p.parse_args(argv)
    return {
        "cases": cmd_cases,
        "publish": cmd_publish,
        "consume": cmd_consume,
        "rpc-serve": cmd_rpc_serve,
        "rpc-call": cmd_rpc_call,
        "rpc-bench": cmd_rpc_bench,
    }[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())
