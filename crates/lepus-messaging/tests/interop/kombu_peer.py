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
"""

import argparse
import json
import math
import socket
import sys
import time as _time
from datetime import date, datetime, time, timezone
from decimal import Decimal
from uuid import UUID

from kombu import Connection, Consumer, Producer, Queue

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
    args = p.parse_args(argv)
    return {"cases": cmd_cases, "publish": cmd_publish, "consume": cmd_consume}[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())
