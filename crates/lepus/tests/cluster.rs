//! Failover across brokers: two independent nodes, and a three-node RabbitMQ cluster with a
//! quorum queue, on extra nodes of this machine (`scripts/rabbitmq-nodes.sh`, ports
//! 5681–5685; the main broker on 5672 is never touched). Each test starts its nodes and
//! stops them again, even when it fails; they are `#[ignore]`d here and run one at a time by
//! `scripts/test.sh` after everything else. Run them alone with
//! `cargo test -p lepus --test cluster -- --ignored --test-threads=1`.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    missing_docs
)]

mod support;

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use lepus::{
    BasicConsumeOptions, BasicProperties, BasicPublishOptions, Connection, ConnectionEvent,
    FieldTable, QueueDeclareOptions, RecoveryPolicy,
};
use support::zero_loss::zero_loss_run;

/// The nodes script of the repository.
fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../scripts/rabbitmq-nodes.sh")
}

fn nodes(args: &[&str]) {
    let out = Command::new("bash")
        .arg(script())
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "rabbitmq-nodes.sh {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Extra nodes, stopped and removed when dropped.
struct Nodes(&'static [(&'static str, u16)]);

impl Nodes {
    fn cluster() -> Self {
        // Built first, so that a failed start still stops whatever did start.
        let started = Self(&[("rabbitA", 5681), ("rabbitB", 5682), ("rabbitC", 5683)]);
        nodes(&["cluster"]);
        started
    }

    fn pair() -> Self {
        let started = Self(&[("rabbitD", 5684), ("rabbitE", 5685)]);
        nodes(&["pair"]);
        started
    }

    /// Every node's URL, as one `;`-separated list.
    fn url(&self) -> String {
        self.0
            .iter()
            .map(|(_, port)| format!("amqp://guest:guest@127.0.0.1:{port}/%2f"))
            .collect::<Vec<_>>()
            .join(";")
    }

    /// The node listening on `address` (`host:port`).
    fn at(&self, address: &str) -> &'static str {
        self.0
            .iter()
            .find(|(_, port)| address.ends_with(&format!(":{port}")))
            .map(|(name, _)| *name)
            .unwrap_or_else(|| panic!("no node at {address}"))
    }
}

impl Drop for Nodes {
    fn drop(&mut self) {
        let mut args = vec!["stop"];
        args.extend(self.0.iter().map(|(name, _)| *name));
        let _ = Command::new("bash").arg(script()).args(&args).output();
    }
}

/// Stops a node's application; starts it again when dropped.
struct Down(&'static str);

impl Down {
    fn stop(node: &'static str) -> Self {
        nodes(&["ctl", node, "stop_app"]);
        Self(node)
    }
}

impl Drop for Down {
    fn drop(&mut self) {
        let _ = Command::new("bash")
            .arg(script())
            .args(["ctl", self.0, "start_app"])
            .output();
    }
}

/// Options for `url`'s brokers, named `name`, recovering quickly.
fn quick_recovery(name: &str, url: &str) -> lepus::ConnectionOptions {
    let mut o = lepus::ConnectionOptions::from_uri(url).unwrap();
    let mut policy = RecoveryPolicy::new();
    policy.initial_delay(Duration::from_millis(100));
    o.connection_name(name)
        .rpc_timeout(Duration::from_secs(30))
        .handshake_timeout(Duration::from_secs(10))
        .recovery(policy);
    o
}

#[tokio::test]
#[ignore = "starts a three-node cluster and stops one node; run serially by scripts/test.sh"]
async fn a_node_loss_in_a_cluster_loses_no_confirmed_message_of_a_quorum_queue() {
    let cluster = Nodes::cluster();
    let name = support::unique("cluster");
    let conn = Connection::connect_with(quick_recovery(&name, &cluster.url()))
        .await
        .unwrap();
    let first = conn.address();
    let queue = support::unique("cluster-quorum");
    {
        let ch = conn.open_channel().await.unwrap();
        ch.queue_declare(
            &queue,
            QueueDeclareOptions {
                durable: true,
                arguments: FieldTable::new().with("x-queue-type", "quorum"),
                ..Default::default()
            },
        )
        .await
        .unwrap();
        ch.close().await.unwrap();
    }
    let mut events = conn.events();
    let node = cluster.at(&first);
    let mut down = None;
    let run = zero_loss_run(&conn, &queue, 3000, async {
        down = Some(
            tokio::task::spawn_blocking(move || Down::stop(node))
                .await
                .unwrap(),
        );
    })
    .await;
    assert_eq!(run.missing(), Vec::<usize>::new(), "{run:?}");
    assert_ne!(conn.address(), first, "still on the stopped node");
    assert_eq!(conn.stats().recoveries, 1);
    let mut saw = Vec::new();
    while let Ok(e) = events.try_recv() {
        saw.push(e);
    }
    assert!(
        saw.iter()
            .any(|e| matches!(e, ConnectionEvent::Recovered { .. })),
        "{saw:?}"
    );
    eprintln!(
        "cluster: {} → {}, republished {}, duplicates {}",
        first,
        conn.address(),
        run.republished,
        run.duplicates()
    );
    drop(down);
    let ch = conn.open_channel().await.unwrap();
    ch.queue_delete(&queue, Default::default()).await.unwrap();
    conn.close().await.unwrap();
}

#[tokio::test]
#[ignore = "starts two extra nodes and stops one; run serially by scripts/test.sh"]
async fn a_client_moves_to_the_other_broker_redeclares_its_topology_and_stays_there() {
    let pair = Nodes::pair();
    let name = support::unique("pair");
    let conn = Connection::connect_with(quick_recovery(&name, &pair.url()))
        .await
        .unwrap();
    let first = conn.address();
    assert!(first.ends_with(":5684"), "{first}");
    let queue = support::unique("pair-q");
    let ch = conn.open_channel().await.unwrap();
    ch.queue_declare(
        &queue,
        QueueDeclareOptions {
            durable: true,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    ch.confirm_select().await.unwrap();
    let mut consumer = ch
        .basic_consume(&queue, "", BasicConsumeOptions::default())
        .await
        .unwrap();
    let publish = |n: usize| {
        let ch = ch.clone();
        let queue = queue.clone();
        async move {
            let confirm = ch
                .basic_publish(
                    "",
                    &queue,
                    BasicPublishOptions::default(),
                    &BasicProperties::default(),
                    n.to_string(),
                )
                .await
                .unwrap();
            confirm.await.unwrap()
        }
    };
    for n in 0..100 {
        assert!(publish(n).await.is_ack());
        let d = consumer.recv().await.unwrap().unwrap();
        d.ack().unwrap();
    }

    let down = tokio::task::spawn_blocking(|| Down::stop("rabbitD"))
        .await
        .unwrap();
    // The queue did not exist on the second broker: recovery declared it there, and the
    // consumer goes on from it.
    for n in 100..300 {
        loop {
            match publish(n).await {
                c if c.is_ack() => break,
                lepus::Confirmation::Uncertain => continue,
                other => panic!("{other:?}"),
            }
        }
    }
    let mut seen = std::collections::HashSet::new();
    while seen.len() < 200 {
        let d = tokio::time::timeout(Duration::from_secs(30), consumer.recv())
            .await
            .expect("the consumer did not go on on the other broker")
            .unwrap()
            .unwrap();
        let n: usize = std::str::from_utf8(&d.body).unwrap().parse().unwrap();
        if n >= 100 {
            seen.insert(n);
        }
        let _ = d.ack();
    }
    assert!(conn.address().ends_with(":5685"), "{}", conn.address());
    assert_eq!(conn.stats().recoveries, 1);

    // The first broker comes back: nothing flaps.
    drop(down);
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(conn.address().ends_with(":5685"));
    assert_eq!(conn.stats().recoveries, 1);
    assert!(publish(300).await.is_ack());
    drop(consumer);
    ch.queue_delete(&queue, Default::default()).await.unwrap();
    conn.close().await.unwrap();
}
