//! kombu's formats: publish --serializer/--compression, consume and get --decode/--accept.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    missing_docs
)]

mod support;

use std::io::Write;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use lepus_messaging::serializer::{Accept, Payload, Registry};
use lepus_messaging::{compression, Error};
use serde_json::{json, Value};
use support::{bodies, fails, json_lines, lepus, one_error_line, TempQueue};

/// Every compression method, and none.
const COMPRESSIONS: [Option<(&str, &str)>; 6] = [
    None,
    Some(("zlib", "application/x-gzip")),
    Some(("bzip2", "application/x-bz2")),
    Some(("lzma", "application/x-lzma")),
    Some(("brotli", "application/x-brotli")),
    Some(("zstd", "application/zstd")),
];

/// `lepus get --count 100 --requeue` with extra args: the messages, left in the queue.
fn peek(q: &TempQueue, extra: &[&str]) -> Vec<Value> {
    let mut args = vec!["get", "--queue", q.name(), "--count", "100", "--requeue"];
    args.extend_from_slice(extra);
    support::lepus_lines(&args)
}

/// The wire body of a JSON output line.
fn wire_body(m: &Value) -> Vec<u8> {
    let body = m["body"].as_str().unwrap();
    match m["body_encoding"].as_str().unwrap() {
        "utf8" => body.as_bytes().to_vec(),
        _ => BASE64.decode(body).unwrap(),
    }
}

/// What lepus-messaging itself makes of a message printed by a plain `get`: inflated per its
/// compression header, decoded per its content type.
fn library_payload(m: &Value) -> Payload {
    let props = &m["properties"];
    let mut body = wire_body(m);
    if let Some(method) = props["headers"]["compression"].as_str() {
        body = compression::decompress(method, &body, 1 << 20).unwrap();
    }
    Registry::default()
        .decode_payload(
            &body,
            props["content_type"].as_str(),
            props["content_encoding"].as_str(),
            &Accept::any(),
        )
        .unwrap()
}

#[test]
fn every_serializer_and_compression_round_trips_through_get_decode() {
    let value = r#"{"order": 7, "items": ["book", "pen"], "total": 12.5, "gift": false,
                    "note": null, "name": "Zoë"}"#;
    let parsed: Value = serde_json::from_str(value).unwrap();
    // (serializer, input, payload printed, content type, content encoding)
    let cases = [
        ("json", value, parsed.clone(), "application/json", "utf-8"),
        (
            "msgpack",
            value,
            parsed.clone(),
            "application/x-msgpack",
            "binary",
        ),
        ("yaml", value, parsed.clone(), "application/x-yaml", "utf-8"),
        (
            "raw",
            r#""plain Zoë""#,
            json!("plain Zoë"),
            "application/data",
            "utf-8",
        ),
        (
            "raw",
            r#"{"__type__": "base64", "__value__": "AP8="}"#,
            json!({"__type__": "base64", "__value__": "AP8="}),
            "application/data",
            "binary",
        ),
        (
            "text",
            r#""line\ttext""#,
            json!("line\ttext"),
            "text/plain",
            "utf-8",
        ),
    ];
    for (serializer, input, payload, content_type, content_encoding) in cases {
        let q = TempQueue::new(serializer);
        for compression in COMPRESSIONS {
            let mut publish = lepus();
            publish.args(["publish", "--routing-key", q.name(), "--body", input]);
            publish.args(["--serializer", serializer]);
            if let Some((name, _)) = compression {
                publish.args(["--compression", name]);
            }
            publish.assert().success().stdout("").stderr("");
        }
        let what = format!("--serializer {serializer} {input}");
        let decoded = peek(&q, &["--decode", "--accept", serializer]);
        let plain = peek(&q, &[]);
        assert_eq!(decoded.len(), COMPRESSIONS.len(), "{what}");
        assert_eq!(plain.len(), COMPRESSIONS.len(), "{what}");
        for ((m, d), compression) in plain.iter().zip(&decoded).zip(COMPRESSIONS) {
            let what = format!("{what} --compression {compression:?}");
            assert_eq!(d["payload"], payload, "{what}");
            // kombu's properties and header, and nothing else.
            let mut expected = json!({
                "content_type": content_type,
                "content_encoding": content_encoding,
            });
            if let Some((_, mime)) = compression {
                expected["headers"] = json!({ "compression": mime });
            }
            assert_eq!(m["properties"], expected, "{what}");
            // The library reads the wire body the same way.
            let library = library_payload(m);
            match (&library, serializer) {
                (Payload::Value(v), "json" | "msgpack" | "yaml") => assert_eq!(v, &payload),
                (Payload::Text(t), "raw" | "text") => assert_eq!(json!(t), payload),
                (Payload::Bytes(b), "raw") => assert_eq!(&b[..], b"\x00\xff"),
                other => panic!("{what}: {other:?}"),
            }
            assert!(m.get("payload").is_none(), "{what}");
        }
    }
}

#[test]
fn json_is_sent_compact_with_its_keys_in_order() {
    let q = TempQueue::new("json-order");
    lepus()
        .args(["publish", "--routing-key", q.name(), "--serializer", "json"])
        .args([
            "--body",
            "{\"z\": 1,\n \"a\": [true, {\"y\": null, \"b\": 2}]}",
        ])
        .assert()
        .success();
    assert_eq!(
        bodies(&q.drain()),
        [r#"{"z":1,"a":[true,{"y":null,"b":2}]}"#]
    );
}

#[test]
fn lines_with_a_serializer_publish_one_message_per_line() {
    let q = TempQueue::new("lines");
    let lines = "{\"n\": 1}\n[2]\n\"three\"\n";
    // From --body and --file, read before connecting, and from stdin, as it is read.
    let mut file = tempfile::NamedTempFile::new().unwrap();
    file.write_all(lines.as_bytes()).unwrap();
    let sources: [&[&str]; 2] = [
        &["--body", lines],
        &["--file", file.path().to_str().unwrap()],
    ];
    for source in sources {
        lepus()
            .args(["publish", "--routing-key", q.name(), "--lines"])
            .args(["--serializer", "msgpack", "--compression", "zlib"])
            .args(source)
            .assert()
            .success();
    }
    lepus()
        .args(["publish", "--routing-key", q.name(), "--lines"])
        .args(["--serializer", "msgpack", "--compression", "zlib"])
        .write_stdin(lines)
        .assert()
        .success();
    let got = peek(&q, &["--decode", "--accept", "msgpack"]);
    let payloads: Vec<&Value> = got.iter().map(|m| &m["payload"]).collect();
    let once = [json!({"n": 1}), json!([2]), json!("three")];
    let expected: Vec<&Value> = once.iter().cycle().take(9).collect();
    assert_eq!(payloads, expected);
    assert!(got
        .iter()
        .all(|m| m["properties"]["content_type"] == "application/x-msgpack"));
}

#[test]
fn invalid_json_names_its_line() {
    let q = TempQueue::new("bad-json");
    // Found before connecting: a usage error, nothing sent.
    let line = fails(
        lepus()
            .args(["publish", "--routing-key", q.name(), "--lines"])
            .args(["--serializer", "json", "--body", "1\n2\n{oops\n4"]),
        2,
    );
    assert_eq!(
        line,
        "lepus: error: line 3 of --body: not valid JSON: key must be a string at column 2"
    );
    let line = fails(
        lepus().args(["publish", "--routing-key", q.name()]).args([
            "--serializer",
            "yaml",
            "--body",
            "{\"a\":\n",
        ]),
        2,
    );
    assert!(
        line.starts_with("lepus: error: --body: not valid JSON: EOF"),
        "{line}"
    );
    let line = fails(
        lepus().args(["publish", "--routing-key", q.name()]).args([
            "--serializer",
            "text",
            "--body",
            "[1]",
        ]),
        2,
    );
    assert_eq!(
        line,
        "lepus: error: --body: --serializer text takes a JSON string, not an array"
    );
    assert_eq!(q.depth(), 0);
    // From stdin, line by line: the lines before are published (and confirmed), then exit 1.
    let line = fails(
        lepus()
            .args(["publish", "--routing-key", q.name(), "--lines"])
            .args(["--serializer", "json", "--count", "2"])
            .write_stdin("1\n2\nnope\n4\n"),
        1,
    );
    assert_eq!(
        line,
        "lepus: error: line 3 of stdin: not valid JSON: expected ident at column 2 (4 messages \
         published before it)"
    );
    assert_eq!(bodies(&q.drain()), ["1", "1", "2", "2"]);
}

#[test]
fn compression_alone_keeps_the_body_and_sets_only_the_header() {
    let q = TempQueue::new("compress-only");
    let body: Vec<u8> = (0..=255u8).cycle().take(5000).collect();
    let mut file = tempfile::NamedTempFile::new().unwrap();
    file.write_all(&body).unwrap();
    lepus()
        .args([
            "publish",
            "--routing-key",
            q.name(),
            "--compression",
            "zstd",
        ])
        .args(["--content-type", "application/octet-stream", "--file"])
        .arg(file.path())
        .assert()
        .success();
    let plain = peek(&q, &[]);
    assert_eq!(
        plain[0]["properties"],
        json!({
            "content_type": "application/octet-stream",
            "headers": {"compression": "application/zstd"},
        })
    );
    let wire = wire_body(&plain[0]);
    assert!(wire.len() < body.len());
    assert_eq!(
        compression::decompress("application/zstd", &wire, 1 << 20).unwrap(),
        body
    );
    // A content type no serializer decodes, accepted by name: bytes (no content encoding:
    // UTF-8 if it is, else bytes), shown as kombu's base64 marker.
    let decoded = peek(&q, &["--decode", "--accept", "application/octet-stream"]);
    assert_eq!(
        decoded[0]["payload"],
        json!({"__type__": "base64", "__value__": BASE64.encode(&body)})
    );
    // --output body prints the inflated body.
    let out = lepus()
        .args(["get", "--queue", q.name(), "--decode", "--output", "body"])
        .args(["--accept", "application/octet-stream"])
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(out.stdout, [&body[..], b"\n"].concat());
}

#[test]
fn publish_usage_errors() {
    let cases: [(&[&str], &str); 6] = [
        (
            &["--serializer", "json", "--content-type", "x/y"],
            "cannot be used with '--content-type <T>'",
        ),
        (
            &["--serializer", "json", "--property", "content_encoding=x"],
            "--serializer sets content_type and content_encoding",
        ),
        (
            &["--compression", "zlib", "--header", "compression=x"],
            "--compression sets the compression header",
        ),
        (
            &[
                "--compression",
                "zlib",
                "--headers-json",
                r#"{"compression": 1}"#,
            ],
            "--compression sets the compression header",
        ),
        (&["--serializer", "pickle"], "unknown serializer 'pickle'"),
        (
            &["--compression", "snappy"],
            "unknown compression method 'snappy'",
        ),
    ];
    for (args, expected) in cases {
        let line = fails(
            lepus()
                .args(["publish", "--routing-key", "k", "--body", "1"])
                .args(args),
            2,
        );
        assert!(line.contains(expected), "{args:?}: {line}");
    }
    for command in ["get", "consume"] {
        let line = fails(
            lepus().args([command, "--queue", "q", "--accept", "json"]),
            2,
        );
        assert!(line.contains("--decode"), "{line}");
        let line = fails(
            lepus().args([command, "--queue", "q", "--decode", "--accept", "nope"]),
            2,
        );
        assert!(line.contains("unknown serializer 'nope'"), "{line}");
    }
}

/// Publishes `json, json, msgpack, json`: the msgpack one is outside the default accept list.
fn publish_with_a_msgpack_third(q: &TempQueue) {
    for (serializer, body) in [
        ("json", "1"),
        ("json", "2"),
        ("msgpack", "3"),
        ("json", "4"),
    ] {
        lepus()
            .args(["publish", "--routing-key", q.name(), "--body", body])
            .args(["--serializer", serializer])
            .assert()
            .success();
    }
}

const REFUSED: &str = "lepus: error: refusing to decode content of type application/x-msgpack: \
                       it is not in the accept list (the message was requeued)";

#[test]
fn a_message_outside_the_accept_list_is_requeued_and_exits_1() {
    // (extra consume flags, messages left: the refused one and the one after it, plus with
    // --requeue the two printed before)
    let modes: [(&[&str], &[&str]); 7] = [
        (&[], &["3", "4"]),
        (&["--count", "10"], &["3", "4"]),
        (&["--count", "3", "--prefetch", "1"], &["3", "4"]),
        (&["--no-ack"], &["3", "4"]),
        (&["--no-ack", "--count", "10"], &["3", "4"]),
        (&["--reject"], &["3", "4"]),
        (&["--requeue"], &["1", "2", "3", "4"]),
    ];
    for (extra, left) in modes {
        let q = TempQueue::new("refused");
        publish_with_a_msgpack_third(&q);
        let out = lepus()
            .args([
                "consume",
                "--queue",
                q.name(),
                "--decode",
                "--idle-timeout",
                "5",
            ])
            .args(extra)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "{extra:?}");
        assert_eq!(one_error_line(&out.stderr), REFUSED, "{extra:?}");
        // The messages before it were printed (and settled as the mode says).
        let printed = json_lines(&out.stdout);
        let payloads: Vec<&Value> = printed.iter().map(|m| &m["payload"]).collect();
        assert_eq!(payloads, [&json!(1), &json!(2)], "{extra:?}");
        let rest = q.drain();
        let mut rest_payloads: Vec<String> = rest
            .iter()
            .map(library_payload)
            .map(|p| match p {
                Payload::Value(v) => v.to_string(),
                other => panic!("{other:?}"),
            })
            .collect();
        rest_payloads.sort();
        assert_eq!(rest_payloads, left, "{extra:?}");
        let refused = rest
            .iter()
            .find(|m| m["properties"]["content_type"] == "application/x-msgpack")
            .unwrap();
        assert_eq!(refused["redelivered"], true, "{extra:?}");
    }
}

#[test]
fn get_requeues_a_refused_message() {
    let q = TempQueue::new("get-refused");
    publish_with_a_msgpack_third(&q);
    for (extra, left) in [(&["--requeue"][..], 4), (&[][..], 2)] {
        let out = lepus()
            .args(["get", "--queue", q.name(), "--decode", "--count", "10"])
            .args(extra)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "{extra:?}");
        assert_eq!(one_error_line(&out.stderr), REFUSED);
        let printed = json_lines(&out.stdout);
        assert_eq!(printed.len(), 2, "{extra:?}");
        assert_eq!(q.depth(), left, "{extra:?}");
    }
    // The refused message is first again; accepted, it decodes.
    let got = peek(&q, &["--decode", "--accept", "json", "--accept", "msgpack"]);
    let payloads: Vec<&Value> = got.iter().map(|m| &m["payload"]).collect();
    assert_eq!(payloads, [&json!(3), &json!(4)]);
}

#[test]
fn a_body_that_does_not_decode_is_requeued() {
    let q = TempQueue::new("undecodable");
    lepus()
        .args(["publish", "--routing-key", q.name(), "--body", "{nope"])
        .args(["--content-type", "application/json"])
        .assert()
        .success();
    lepus()
        .args(["publish", "--routing-key", q.name(), "--body", "not zlib"])
        .args(["--content-type", "application/json", "--header"])
        .arg("compression=application/x-gzip")
        .assert()
        .success();
    for command in [&["get"][..], &["consume", "--idle-timeout", "5"]] {
        let line = fails(
            lepus()
                .args(command)
                .args(["--queue", q.name(), "--decode"]),
            1,
        );
        assert!(
            line.starts_with(
                "lepus: error: cannot decode the application/json body: key must be a string"
            ),
            "{line}"
        );
        assert!(line.ends_with("(the message was requeued)"), "{line}");
        assert_eq!(q.depth(), 2);
    }
    // Take the first one off: the second does not inflate.
    lepus()
        .args(["get", "--queue", q.name()])
        .assert()
        .success();
    let line = fails(lepus().args(["get", "--queue", q.name(), "--decode"]), 1);
    assert!(
        line.starts_with("lepus: error: cannot decompress the body with application/x-gzip"),
        "{line}"
    );
    assert_eq!(q.depth(), 1);
}

/// A zlib stream that inflates to `mib` MiB of zeros from about a thousandth of that: after a
/// full flush, deflate blocks stand alone, so one flushed block of 1 MiB of zeros can be
/// repeated. The stream is never finished: the decompression limit must stop the reader.
fn zlib_bomb(mib: usize) -> Vec<u8> {
    use flate2::{Compress, Compression, FlushCompress};
    let zeros = vec![0_u8; 1 << 20];
    let mut c = Compress::new(Compression::new(9), true);
    let mut first = Vec::with_capacity(1 << 16);
    c.compress_vec(&zeros, &mut first, FlushCompress::Full)
        .unwrap();
    let mut block = Vec::with_capacity(1 << 16);
    c.compress_vec(&zeros, &mut block, FlushCompress::Full)
        .unwrap();
    assert_eq!(c.total_in(), 2 << 20, "the encoder took all the input");
    let mut out = first;
    for _ in 1..mib {
        out.extend_from_slice(&block);
    }
    out
}

/// A body that inflates to 2 GiB is refused at the 128 MiB limit, by a process allowed 1 GiB
/// of address space in all, and stays in the queue.
#[cfg(target_os = "linux")]
#[test]
fn a_zlib_bomb_is_refused_within_bounded_memory() {
    let q = TempQueue::new("bomb");
    let bomb = zlib_bomb(2048);
    assert!(bomb.len() < 3 << 20, "{}", bomb.len());
    let mut file = tempfile::NamedTempFile::new().unwrap();
    file.write_all(&bomb).unwrap();
    lepus()
        .args(["publish", "--routing-key", q.name(), "--file"])
        .arg(file.path())
        .args(["--content-type", "application/json", "--header"])
        .arg("compression=application/x-gzip")
        .assert()
        .success();
    for command in ["get", "consume"] {
        // `ulimit -v` caps the address space (KiB); one malloc arena per thread would reserve
        // 64 MiB each, so keep them few.
        let mut capped = std::process::Command::new("sh");
        capped
            .args(["-c", "ulimit -v 1048576 && exec \"$@\"", "sh"])
            .arg(support::lepus_path())
            .args([
                "--url",
                &support::url(),
                command,
                "--queue",
                q.name(),
                "--decode",
            ])
            .env("MALLOC_ARENA_MAX", "2")
            .env_remove("AMQP_URL");
        let out = capped.output().unwrap();
        assert_eq!(
            out.status.code(),
            Some(1),
            "{command}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.stdout.is_empty());
        assert_eq!(
            one_error_line(&out.stderr),
            "lepus: error: the application/x-gzip body inflates beyond the limit of 134217728 \
             bytes (the message was requeued)",
            "{command}"
        );
        assert_eq!(q.depth(), 1, "{command}");
    }
    // The same body through the library, without the cap: refused at its limit as well.
    let err = compression::decompress("zlib", &bomb, 128 << 20).unwrap_err();
    assert!(matches!(err, Error::DecompressedTooLarge { .. }), "{err}");
}
