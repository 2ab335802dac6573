//! Command-line arguments (clap derive). Everything here is checked before connecting: a bad
//! value is a usage error (exit 2) and nothing is sent.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};
use lepus::{FieldTable, FieldValue, ShortStr};

use crate::properties::{parse_property, Property};
use crate::table::{parse_arg, parse_header, parse_json_table};

/// The URL used when neither `--url` nor `$AMQP_URL` gives one.
pub(crate) const DEFAULT_URL: &str = "amqp://guest:guest@localhost:5672/%2f";

/// lepus: publish, consume and manage RabbitMQ entities from a shell, and measure throughput.
///
/// Exit codes: 0 on success, 1 on a runtime or broker error, 2 on a usage error.
#[derive(Debug, Parser)]
#[command(
    name = "lepus",
    version,
    propagate_version = true,
    max_term_width = 100
)]
pub(crate) struct Cli {
    /// Connection settings, accepted before or after the subcommand.
    #[command(flatten)]
    pub(crate) global: Global,
    /// What to do.
    #[command(subcommand)]
    pub(crate) command: Command,
}

/// Options every command takes.
#[derive(Debug, Args)]
pub(crate) struct Global {
    /// Broker URL, amqp[s]://user:pass@host:port/vhost; several brokers as URLs separated by
    /// `;`, or with --url repeated (all before or all after the subcommand): connecting tries
    /// each in turn [default: $AMQP_URL, else amqp://guest:guest@localhost:5672/%2f]
    #[arg(
        long,
        global = true,
        value_name = "URL",
        help_heading = "Global options"
    )]
    pub(crate) url: Vec<String>,
    /// Seconds allowed for the TCP connection and the AMQP handshake each [default: 10, or the
    /// URL's connection_timeout]
    #[arg(long, global = true, value_name = "SECS", value_parser = parse_secs,
          help_heading = "Global options")]
    pub(crate) connect_timeout: Option<f64>,
    /// Seconds to wait for the broker's reply to each request (declare, purge, delete, bind,
    /// qos, consume, cancel, get, ...); raise it for slow operations such as purging or deleting
    /// a queue of millions of messages
    #[arg(long, global = true, value_name = "SECS", default_value = "30",
          value_parser = parse_positive_secs, help_heading = "Global options")]
    pub(crate) rpc_timeout: f64,
    /// Heartbeat interval to ask for, in seconds (0 turns heartbeats off) [default: the
    /// broker's]
    #[arg(
        long,
        global = true,
        value_name = "SECS",
        help_heading = "Global options"
    )]
    pub(crate) heartbeat: Option<u16>,
    /// Do not reconnect when the connection to the broker is lost: publish, consume and perf
    /// then exit 1 at once, as the other commands always do
    #[arg(long, global = true, help_heading = "Global options")]
    pub(crate) no_recover: bool,
    /// Log to stderr (-v debug, -vv trace)
    #[arg(short, long, global = true, action = clap::ArgAction::Count,
          help_heading = "Global options")]
    pub(crate) verbose: u8,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Publish messages (body from --body, --file or stdin)
    ///
    /// On Ctrl-C (SIGINT) or SIGTERM, publish stops reading input, waits for the broker to
    /// confirm what was sent (at most 10 s), prints on stderr how many messages were published
    /// and confirmed, and exits 130 (SIGINT) or 143 (SIGTERM).
    Publish(PublishArgs),
    /// Consume messages from a queue and print them
    ///
    /// Ctrl-C (SIGINT) and SIGTERM stop consume cleanly: the consumer is cancelled, the
    /// messages printed are settled, and it exits 0.
    Consume(ConsumeArgs),
    /// Fetch messages with basic.get and print them
    Get(GetArgs),
    /// Declare a queue or an exchange
    #[command(subcommand)]
    Declare(Declare),
    /// Bind a queue or an exchange to an exchange
    #[command(subcommand)]
    Bind(Bind),
    /// Remove a binding
    #[command(subcommand)]
    Unbind(Bind),
    /// Delete a queue or an exchange
    #[command(subcommand)]
    Delete(Delete),
    /// Remove every ready message from a queue and print how many there were
    Purge(PurgeArgs),
    /// Load generator: publish and consume as fast as possible and report rates and latency
    ///
    /// Ctrl-C (SIGINT) and SIGTERM end the run early; the summary is printed as usual.
    Perf(PerfArgs),
}

/// `lepus publish`.
#[derive(Debug, Args)]
pub(crate) struct PublishArgs {
    /// Routing key (fanout and headers exchanges need none)
    #[arg(long, value_name = "K", default_value = "")]
    pub(crate) routing_key: String,
    /// Exchange to publish to (empty: the default exchange)
    #[arg(long, value_name = "E", default_value = "")]
    pub(crate) exchange: String,
    /// Message body [default: read stdin until end of file (Ctrl-D on a terminal)]
    #[arg(long, value_name = "TEXT", conflicts_with = "file")]
    pub(crate) body: Option<String>,
    /// Read the body from this file, byte for byte
    #[arg(long, value_name = "PATH")]
    pub(crate) file: Option<PathBuf>,
    /// Each line is one message (without its newline); a final newline adds no empty message
    #[arg(long)]
    pub(crate) lines: bool,
    /// Publish each message this many times
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub(crate) count: u64,
    /// content_type property
    #[arg(long, value_name = "T", value_parser = short_str)]
    pub(crate) content_type: Option<ShortStr>,
    /// content_encoding property
    #[arg(long, value_name = "E", value_parser = short_str)]
    pub(crate) content_encoding: Option<ShortStr>,
    /// Serialize the body, read as one JSON value (one per line with --lines), as kombu does:
    /// json, msgpack, yaml, raw (a JSON string, or a bytes marker) or text (a JSON string);
    /// sets content_type and content_encoding, which may then not be given
    #[arg(long, value_name = "NAME", value_parser = crate::codec::parse_serializer,
          conflicts_with_all = ["content_type", "content_encoding"])]
    pub(crate) serializer: Option<String>,
    /// Compress the body (after --serializer) as kombu does: zlib, bzip2, lzma, brotli or
    /// zstd; sets the `compression` header to the method's MIME type
    #[arg(long, value_name = "METHOD", value_parser = crate::codec::parse_compression)]
    pub(crate) compression: Option<&'static str>,
    /// A header, always sent as a string; splits at the first '=' (repeatable)
    #[arg(long = "header", value_name = "KEY=VALUE", value_parser = parse_header)]
    pub(crate) headers: Vec<(ShortStr, FieldValue)>,
    /// Headers as a JSON object (see the JSON mapping in the README); --header entries win
    #[arg(long, value_name = "JSON", value_parser = json_table)]
    pub(crate) headers_json: Option<FieldTable>,
    /// A basic property by snake-case name: content_type, content_encoding, delivery_mode,
    /// priority, correlation_id, reply_to, expiration, message_id, timestamp, type, user_id,
    /// app_id, cluster_id (repeatable; the dedicated flags win)
    #[arg(long = "property", value_name = "NAME=VALUE", value_parser = parse_property)]
    pub(crate) properties: Vec<Property>,
    /// delivery_mode 2: the broker writes the message to disk in a durable queue
    #[arg(long)]
    pub(crate) persistent: bool,
    /// priority property
    #[arg(long, value_name = "N")]
    pub(crate) priority: Option<u8>,
    /// Per-message TTL in milliseconds (the expiration property)
    #[arg(long, value_name = "MS")]
    pub(crate) expiration: Option<u64>,
    /// Ask the broker to return unroutable messages; exit 1 if any was returned
    #[arg(long)]
    pub(crate) mandatory: bool,
    /// Wait for publisher confirms; exit 1 if any message was nacked
    #[arg(long)]
    pub(crate) confirm: bool,
}

/// How `consume` and `get` print a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum Output {
    /// One JSON object per line
    Json,
    /// The raw body followed by a newline
    Body,
}

/// `lepus consume`.
#[derive(Debug, Args)]
pub(crate) struct ConsumeArgs {
    /// Queue to consume from
    #[arg(long, value_name = "Q")]
    pub(crate) queue: String,
    /// Exit after this many messages; never takes more than N off the queue
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub(crate) count: Option<u64>,
    /// Most unacknowledged messages in flight (basic.qos; 0: no limit; with --count at most N)
    #[arg(long, value_name = "N", default_value_t = 100)]
    pub(crate) prefetch: u16,
    /// Consume without acknowledgements (with --count, lepus acks on receipt instead, so that
    /// the broker's prefetch limit holds)
    #[arg(long, conflicts_with_all = ["reject", "requeue"])]
    pub(crate) no_ack: bool,
    /// Reject each message after printing it (dropped or dead-lettered) instead of acking
    #[arg(long)]
    pub(crate) reject: bool,
    /// Put every message back, in order, when the consumer stops (each is shown once; at most
    /// --count messages, or without it --prefetch)
    #[arg(long)]
    pub(crate) requeue: bool,
    /// Exit 0 after this many seconds without a message
    #[arg(long, value_name = "SECS", value_parser = parse_secs)]
    pub(crate) idle_timeout: Option<f64>,
    /// Output format
    #[arg(long, value_enum, default_value_t = Output::Json)]
    pub(crate) output: Output,
    /// Decoding kombu messages.
    #[command(flatten)]
    pub(crate) decode: DecodeArgs,
}

/// `lepus get`.
#[derive(Debug, Args)]
pub(crate) struct GetArgs {
    /// Queue to fetch from
    #[arg(long, value_name = "Q")]
    pub(crate) queue: String,
    /// Fetch up to this many messages (stops early when the queue is empty)
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub(crate) count: u64,
    /// Put the messages back, in their original order, after fetching them all
    #[arg(long)]
    pub(crate) requeue: bool,
    /// Output format
    #[arg(long, value_enum, default_value_t = Output::Json)]
    pub(crate) output: Output,
    /// Decoding kombu messages.
    #[command(flatten)]
    pub(crate) decode: DecodeArgs,
}

/// `--decode` and `--accept`, for `consume` and `get`.
#[derive(Debug, Args)]
pub(crate) struct DecodeArgs {
    /// Decode each body as a kombu consumer does (inflate it per its compression header, check
    /// its content type against --accept, deserialize it) and add it as "payload" to the JSON
    /// line (--output body prints it instead of the body); a message that is refused or does
    /// not decode is requeued, and lepus exits 1
    #[arg(long)]
    pub(crate) decode: bool,
    /// A serializer name (json, msgpack, yaml, ...) or content type --decode decodes
    /// (repeatable) [default: json]; raw and text bodies are always decoded, pickle never
    #[arg(long, value_name = "NAME_OR_TYPE", requires = "decode",
          value_parser = crate::codec::parse_accept)]
    pub(crate) accept: Vec<String>,
}

/// Entity arguments shared by declare and bind: `--arg` and `--args-json`.
#[derive(Debug, Args)]
pub(crate) struct TableArgs {
    /// An argument: integers and true/false are sent typed, anything else as a string
    /// (repeatable; wins over --args-json)
    #[arg(long = "arg", value_name = "KEY=VALUE", value_parser = parse_arg)]
    pub(crate) args: Vec<(ShortStr, FieldValue)>,
    /// Arguments as a JSON object (see the JSON mapping in the README)
    #[arg(long, value_name = "JSON", value_parser = json_table)]
    pub(crate) args_json: Option<FieldTable>,
}

impl TableArgs {
    /// The arguments table: `--args-json` with every `--arg` applied over it.
    pub(crate) fn table(&self) -> FieldTable {
        crate::table::merge(self.args_json.clone(), &self.args)
    }
}

/// `lepus declare`.
#[derive(Debug, Subcommand)]
pub(crate) enum Declare {
    /// Declare a queue; prints its name, message count and consumer count, tab-separated
    Queue(DeclareQueue),
    /// Declare an exchange
    Exchange(DeclareExchange),
}

/// `lepus declare queue`.
#[derive(Debug, Args)]
pub(crate) struct DeclareQueue {
    /// Queue name (empty: the broker picks one)
    pub(crate) name: String,
    /// Survive a broker restart
    #[arg(long)]
    pub(crate) durable: bool,
    /// Only this connection may use it (and it goes when lepus exits)
    #[arg(long)]
    pub(crate) exclusive: bool,
    /// Deleted when its last consumer goes
    #[arg(long)]
    pub(crate) auto_delete: bool,
    /// Only check that it exists (404 otherwise) and print its counts; --durable,
    /// --exclusive, --auto-delete and arguments are then accepted but not sent, as RabbitMQ
    /// ignores them on a passive declare
    #[arg(long)]
    pub(crate) passive: bool,
    /// Queue arguments.
    #[command(flatten)]
    pub(crate) table: TableArgs,
}

/// `lepus declare exchange`.
#[derive(Debug, Args)]
pub(crate) struct DeclareExchange {
    /// Exchange name
    pub(crate) name: String,
    /// Exchange type: direct, fanout, topic, headers, or a plugin's type
    #[arg(
        long = "type",
        value_name = "TYPE",
        required_unless_present = "passive"
    )]
    pub(crate) kind: Option<String>,
    /// Survive a broker restart
    #[arg(long)]
    pub(crate) durable: bool,
    /// Deleted when its last binding goes
    #[arg(long)]
    pub(crate) auto_delete: bool,
    /// Clients cannot publish to it directly
    #[arg(long)]
    pub(crate) internal: bool,
    /// Only check that it exists (404 otherwise); --type, --durable, --auto-delete,
    /// --internal and arguments are then accepted but not sent, as RabbitMQ ignores them on a
    /// passive declare
    #[arg(long)]
    pub(crate) passive: bool,
    /// Exchange arguments.
    #[command(flatten)]
    pub(crate) table: TableArgs,
}

/// `lepus bind` and `lepus unbind`.
#[derive(Debug, Subcommand)]
pub(crate) enum Bind {
    /// A queue to an exchange
    Queue(BindQueue),
    /// An exchange (the destination) to another exchange (the source)
    Exchange(BindExchange),
}

/// `lepus bind queue`.
#[derive(Debug, Args)]
pub(crate) struct BindQueue {
    /// Queue name
    pub(crate) queue: String,
    /// Exchange name
    #[arg(long, value_name = "E")]
    pub(crate) exchange: String,
    /// Routing key (binding key)
    #[arg(long, value_name = "K", default_value = "")]
    pub(crate) routing_key: String,
    /// Binding arguments.
    #[command(flatten)]
    pub(crate) table: TableArgs,
}

/// `lepus bind exchange`.
#[derive(Debug, Args)]
pub(crate) struct BindExchange {
    /// Destination exchange
    pub(crate) destination: String,
    /// Source exchange
    #[arg(long, value_name = "SRC")]
    pub(crate) source: String,
    /// Routing key (binding key)
    #[arg(long, value_name = "K", default_value = "")]
    pub(crate) routing_key: String,
    /// Binding arguments.
    #[command(flatten)]
    pub(crate) table: TableArgs,
}

/// `lepus delete`.
#[derive(Debug, Subcommand)]
pub(crate) enum Delete {
    /// Delete a queue; prints how many messages it held
    Queue(DeleteQueue),
    /// Delete an exchange
    Exchange(DeleteExchange),
}

/// `lepus delete queue`.
#[derive(Debug, Args)]
pub(crate) struct DeleteQueue {
    /// Queue name
    pub(crate) name: String,
    /// Only if it has no consumers (406 otherwise)
    #[arg(long)]
    pub(crate) if_unused: bool,
    /// Only if it holds no messages (406 otherwise)
    #[arg(long)]
    pub(crate) if_empty: bool,
}

/// `lepus delete exchange`.
#[derive(Debug, Args)]
pub(crate) struct DeleteExchange {
    /// Exchange name
    pub(crate) name: String,
    /// Only if it has no bindings (406 otherwise)
    #[arg(long)]
    pub(crate) if_unused: bool,
}

/// `lepus purge`.
#[derive(Debug, Args)]
pub(crate) struct PurgeArgs {
    /// Queue name (or give it with --queue)
    #[arg(
        value_name = "NAME",
        required_unless_present = "queue",
        conflicts_with = "queue"
    )]
    pub(crate) name: Option<String>,
    /// Queue name, as for get and consume
    #[arg(long, value_name = "Q")]
    pub(crate) queue: Option<String>,
}

impl PurgeArgs {
    /// The queue to purge, given positionally or with `--queue` (clap requires one of them).
    pub(crate) fn queue(&self) -> &str {
        self.name
            .as_deref()
            .or(self.queue.as_deref())
            .unwrap_or_default()
    }
}

/// `lepus perf`.
#[derive(Debug, Args)]
pub(crate) struct PerfArgs {
    /// Producers, each on its own connection
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub(crate) producers: u32,
    /// Consumers, each on its own connection (0: measure publishing alone)
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub(crate) consumers: u32,
    /// Message size in bytes (at least 24: a marker, the send timestamp, the producer and the
    /// message's number)
    #[arg(long, value_name = "BYTES", default_value_t = 24,
          value_parser = clap::value_parser!(u32).range(i64::from(crate::perf::MIN_SIZE)..))]
    pub(crate) size: u32,
    /// Publish this many messages in total, then stop when all are consumed
    #[arg(long, value_name = "N", conflicts_with = "time",
          value_parser = clap::value_parser!(u64).range(1..))]
    pub(crate) count: Option<u64>,
    /// Publish for this many seconds, then stop when all are consumed [default: until Ctrl-C or
    /// SIGTERM]
    #[arg(long, value_name = "SECS", value_parser = parse_secs)]
    pub(crate) time: Option<f64>,
    /// Publisher confirms, with at most WINDOW unconfirmed messages per producer
    #[arg(long, value_name = "WINDOW", value_parser = clap::value_parser!(u32).range(1..))]
    pub(crate) confirm: Option<u32>,
    /// Most messages per second, per producer
    #[arg(long, value_name = "MSGS_PER_SEC", value_parser = parse_rate)]
    pub(crate) rate: Option<f64>,
    /// Consumer prefetch (basic.qos; 0: no limit)
    #[arg(long, value_name = "N", default_value_t = 1000)]
    pub(crate) prefetch: u16,
    /// Acknowledge every N messages at once (basic.ack multiple); at most --prefetch
    #[arg(long, value_name = "N", default_value_t = 1,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub(crate) multi_ack: u32,
    /// Use this existing queue (created if missing, never deleted) instead of a fresh one
    #[arg(long, value_name = "NAME")]
    pub(crate) queue: Option<String>,
    /// Persistent messages on a durable queue (a fresh queue is declared durable), so that a
    /// run survives a broker restart: with --confirm, the summary's "missing" stays 0
    #[arg(long)]
    pub(crate) persistent: bool,
    /// Print the summary as one JSON object on stdout
    #[arg(long)]
    pub(crate) json: bool,
    /// At the end, write the run's metrics to this file in Prometheus text format (counters
    /// and latency summaries, named after OpenTelemetry's messaging metrics)
    #[arg(long, value_name = "PATH")]
    pub(crate) metrics_file: Option<std::path::PathBuf>,
}

/// A non-negative number of seconds.
fn parse_secs(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if (0.0..1e9).contains(&v) => Ok(v),
        _ => Err(format!("'{s}' is not a number of seconds")),
    }
}

/// A positive number of seconds.
fn parse_positive_secs(s: &str) -> Result<f64, String> {
    match parse_secs(s) {
        Ok(v) if v > 0.0 => Ok(v),
        _ => Err(format!("'{s}' is not a positive number of seconds")),
    }
}

/// A positive message rate.
fn parse_rate(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && v > 0.0 => Ok(v),
        _ => Err(format!("'{s}' is not a positive rate")),
    }
}

/// A short string (at most 255 bytes).
fn short_str(s: &str) -> Result<ShortStr, String> {
    ShortStr::try_from(s).map_err(|_| "longer than 255 bytes".to_string())
}

/// A JSON object as a field table.
fn json_table(s: &str) -> Result<FieldTable, String> {
    parse_json_table(s).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("lepus").chain(args.iter().copied()))
    }

    #[test]
    fn clap_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn url_is_global() {
        let before = parse(&["--url", "amqp://a", "purge", "q"]).unwrap();
        assert_eq!(before.global.url, ["amqp://a"]);
        let after = parse(&["purge", "q", "--url", "amqp://b"]).unwrap();
        assert_eq!(after.global.url, ["amqp://b"]);
        let nested = parse(&["declare", "queue", "q", "--url", "amqp://c"]).unwrap();
        assert_eq!(nested.global.url, ["amqp://c"]);
        // Repeated, each occurrence adds a broker.
        let several = parse(&[
            "--url",
            "amqp://a",
            "--url",
            "amqp://b;amqp://c",
            "purge",
            "q",
        ]);
        assert_eq!(
            several.unwrap().global.url,
            ["amqp://a", "amqp://b;amqp://c"]
        );
    }

    #[test]
    fn usage_errors() {
        let bad = [
            &[
                "publish",
                "--routing-key",
                "k",
                "--body",
                "x",
                "--file",
                "f",
            ][..],
            &["publish", "--routing-key", "k", "--count", "ten"],
            &["publish", "--routing-key", "k", "--property", "nope=1"],
            &["publish", "--routing-key", "k", "--headers-json", "[1]"],
            &["publish", "--routing-key", "k", "--headers-json", "{"],
            &["publish", "--routing-key", "k", "--header", "novalue"],
            &["publish", "--routing-key", "k", "--unknown"],
            &["declare", "queue", "q", "--args-json", "1"],
            &["declare", "exchange", "x"],
            &["purge"],
            &["purge", "q", "--queue", "q"],
            &["purge", "--rpc-timeout", "0", "q"],
            &["purge", "--rpc-timeout", "-1", "q"],
            &["purge", "--rpc-timeout", "soon", "q"],
            &["consume", "--queue", "q", "--count", "0"],
            &["consume", "--queue", "q", "--no-ack", "--requeue"],
            &["consume", "--queue", "q", "--idle-timeout", "-1"],
            &["perf", "--count", "1", "--time", "1"],
            &["perf", "--size", "4"],
            &["perf", "--confirm", "0"],
        ];
        for args in bad {
            assert!(parse(args).is_err(), "{args:?} parsed");
        }
    }

    #[test]
    fn publish_flags_parse() {
        let cli = parse(&[
            "publish",
            "--routing-key",
            "k",
            "--header",
            "a=1",
            "--header",
            "b=x=y",
            "--headers-json",
            r#"{"n": 2}"#,
            "--property",
            "message_id=m",
            "--persistent",
            "--priority",
            "3",
            "--expiration",
            "500",
        ])
        .unwrap();
        let Command::Publish(p) = cli.command else {
            panic!("not publish")
        };
        assert_eq!(p.headers.len(), 2);
        assert!(p.headers_json.is_some());
        assert_eq!(p.properties.len(), 1);
        assert!(p.persistent);
        assert_eq!(p.priority, Some(3));
        assert_eq!(p.expiration, Some(500));
        assert_eq!(p.count, 1);
        assert_eq!(p.exchange, "");
    }

    #[test]
    fn exchange_passive_needs_no_type() {
        assert!(parse(&["declare", "exchange", "x", "--passive"]).is_ok());
        assert!(parse(&["declare", "exchange", "x", "--type", "fanout"]).is_ok());
    }

    #[test]
    fn passive_declares_accept_the_other_flags() {
        let cli = parse(&[
            "declare",
            "exchange",
            "x",
            "--type",
            "topic",
            "--durable",
            "--auto-delete",
            "--internal",
            "--arg",
            "a=1",
            "--passive",
        ])
        .unwrap();
        let Command::Declare(Declare::Exchange(x)) = cli.command else {
            panic!("not declare exchange")
        };
        assert!(x.passive && x.durable && x.kind.as_deref() == Some("topic"));
        let cli = parse(&[
            "declare",
            "queue",
            "q",
            "--durable",
            "--exclusive",
            "--auto-delete",
            "--args-json",
            "{}",
            "--passive",
        ])
        .unwrap();
        let Command::Declare(Declare::Queue(q)) = cli.command else {
            panic!("not declare queue")
        };
        assert!(q.passive && q.durable && q.exclusive && q.auto_delete);
    }

    #[test]
    fn routing_key_defaults_to_empty() {
        let Command::Publish(p) = parse(&["publish", "--body", "x"]).unwrap().command else {
            panic!("not publish")
        };
        assert_eq!(p.routing_key, "");
    }

    #[test]
    fn purge_takes_the_queue_either_way() {
        for args in [&["purge", "q"][..], &["purge", "--queue", "q"]] {
            let Command::Purge(p) = parse(args).unwrap().command else {
                panic!("not purge")
            };
            assert_eq!(p.queue(), "q", "{args:?}");
        }
    }

    #[test]
    fn rpc_timeout_is_global_and_defaults_to_30_s() {
        assert_eq!(parse(&["purge", "q"]).unwrap().global.rpc_timeout, 30.0);
        let before = parse(&["--rpc-timeout", "600", "purge", "q"]).unwrap();
        assert_eq!(before.global.rpc_timeout, 600.0);
        let after = parse(&["declare", "queue", "q", "--rpc-timeout", "0.5"]).unwrap();
        assert_eq!(after.global.rpc_timeout, 0.5);
    }
}
