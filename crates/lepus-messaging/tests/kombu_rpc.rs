//! RPC between kombu and lepus-messaging, both ways, against RabbitMQ: a lepus [`RpcClient`]
//! calls a kombu server that answers with `kombu.common.send_reply`, and a lepus
//! [`RpcServer`] answers a kombu client that publishes with `reply_to` and `correlation_id`
//! (see `tests/interop/kombu_peer.py`, subcommands `rpc-serve` and `rpc-call`, run in the
//! virtual environment `scripts/python-env.sh` makes).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod support;

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use lepus_messaging::{Queue, RpcClient, RpcServer};
use serde_json::{json, Value};
use support::{connect, unique};

/// A queue the broker deletes when unused for a minute.
fn scratch(prefix: &str) -> Queue {
    Queue::new(unique(prefix)).expires(Duration::from_secs(60))
}

const COUNT: u32 = 5;

#[tokio::test]
async fn lepus_client_calls_a_kombu_server() {
    let url = support::url();
    let conn = connect().await;
    let q = scratch("kombu-rpc-serve");
    conn.maybe_declare(q.clone()).await.unwrap();
    let count = COUNT.to_string();
    let server = tokio::spawn({
        let args: Vec<String> = [
            "rpc-serve",
            "--url",
            url.as_str(),
            "--queue",
            q.name(),
            "--count",
            count.as_str(),
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
        async move {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            support::kombu::peer(&args).await
        }
    });

    // All calls at once, on one client; the requests wait in the queue until kombu starts.
    let client = RpcClient::new(&conn).await.unwrap();
    let calls = (0..COUNT).map(|n| {
        let client = client.clone();
        let q = q.clone();
        tokio::spawn(async move {
            let reply = client
                .call_message(&q, &json!({"n": n}), Duration::from_secs(30))
                .await
                .unwrap();
            (n, reply)
        })
    });
    let mut reply_ids = BTreeSet::new();
    for call in calls.collect::<Vec<_>>() {
        let (n, reply) = call.await.unwrap();
        // kombu's send_reply: the request's serializer and correlation id.
        assert_eq!(reply.content_type(), Some("application/json"));
        assert_eq!(reply.decode::<Value>().unwrap(), json!({"echo": {"n": n}}));
        let id = reply
            .properties()
            .correlation_id
            .as_ref()
            .and_then(|s| s.as_str())
            .expect("a correlation id")
            .to_owned();
        reply_ids.insert(id);
    }

    let served = server.await.unwrap();
    assert_eq!(served.len(), COUNT as usize);
    let request_ids: BTreeSet<String> = served
        .iter()
        .map(|line| line["correlation_id"].as_str().unwrap().to_owned())
        .collect();
    // Each reply carried the correlation id of its own request.
    assert_eq!(reply_ids, request_ids);
    let requests: BTreeSet<u64> = served
        .iter()
        .map(|line| line["request"]["n"].as_u64().unwrap())
        .collect();
    assert_eq!(requests, (0..u64::from(COUNT)).collect());
}

#[tokio::test]
async fn lepus_server_answers_a_kombu_client() {
    let url = support::url();
    let conn = connect().await;
    let q = scratch("kombu-rpc-call");
    conn.maybe_declare(q.clone()).await.unwrap();
    let server = RpcServer::builder(&conn, q.clone())
        .concurrency(4)
        .build()
        .unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn(async move {
        server
            .serve_until(
                |body: Value, _request| async move { Ok::<_, String>(json!({"echo": body})) },
                async move {
                    let _ = stopped.await;
                },
            )
            .await
    });

    let count = COUNT.to_string();
    let lines = support::kombu::peer(&[
        "rpc-call",
        "--url",
        url.as_str(),
        "--queue",
        q.name(),
        "--count",
        count.as_str(),
    ])
    .await;
    assert_eq!(lines.len(), COUNT as usize);
    let mut seen = HashMap::new();
    for line in &lines {
        // The request kombu sent with this correlation id: the reply echoes exactly it.
        let request = &line["request"];
        assert!(
            request.is_object(),
            "a reply with an unknown correlation id: {line}"
        );
        assert_eq!(line["reply"], json!({"echo": request}));
        seen.insert(
            line["correlation_id"].as_str().unwrap().to_owned(),
            request["n"].as_u64().unwrap(),
        );
    }
    assert_eq!(seen.len(), COUNT as usize, "distinct correlation ids");
    let mut ns: Vec<u64> = seen.into_values().collect();
    ns.sort_unstable();
    assert_eq!(ns, (0..u64::from(COUNT)).collect::<Vec<_>>());

    stop.send(()).unwrap();
    serving.await.unwrap().unwrap();
}

#[tokio::test]
async fn lepus_server_answers_kombu_in_its_serializer() {
    let url = support::url();
    let conn = connect().await;
    let q = scratch("kombu-rpc-msgpack");
    conn.maybe_declare(q.clone()).await.unwrap();
    let server = RpcServer::builder(&conn, q.clone())
        .accept(lepus_messaging::Accept::new(conn.registry(), ["msgpack"]).unwrap())
        .build()
        .unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn(async move {
        server
            .serve_until(
                |body: Value, _request| async move { Ok::<_, String>(json!({"echo": body})) },
                async move {
                    let _ = stopped.await;
                },
            )
            .await
    });
    // kombu's consumer accepts msgpack only: a JSON reply would be refused.
    let lines = support::kombu::peer(&[
        "rpc-call",
        "--url",
        url.as_str(),
        "--queue",
        q.name(),
        "--count",
        "2",
        "--serializer",
        "msgpack",
    ])
    .await;
    assert_eq!(lines.len(), 2);
    for line in &lines {
        assert_eq!(line["reply"], json!({"echo": line["request"]}));
    }
    stop.send(()).unwrap();
    serving.await.unwrap().unwrap();
}
