//! `lepus publish`.
//!
//! # Noticing a refused publish
//!
//! `basic.publish` has no reply: when the broker refuses one (missing exchange, access refused)
//! it closes the channel, possibly after lepus has queued many more. To see that before
//! exiting, the channel is always put in confirm mode. The broker confirms messages in order,
//! so once the confirm of the last message arrives, every message before it was routed (or
//! returned, which comes first) and the channel is known to be open; if the broker closed the
//! channel instead, the pending confirm (or the next publish) fails with its reason (reply code
//! and text). Without `--confirm` only the latest confirm is kept, and nacks are not counted.
//!
//! Closing the channel would report a refusal too (`Channel::close` returns the broker's
//! reason), but only the confirms say that the broker has processed every message, and they
//! give `publish` something to wait for when a signal stops it.
//!
//! # Stopping on a signal
//!
//! On SIGINT or SIGTERM, `publish` stops reading its input and publishing, waits (at most
//! [`CLOSE_TIMEOUT`], closing included) for the confirms of what it sent, and reports how many
//! messages were published and confirmed in a [`CliError::Stopped`] (exit code 130 or 143).
//!
//! # kombu's formats
//!
//! With `--serializer`, each body (each line with `--lines`) is read as one JSON value and
//! serialized as kombu does, which sets `content_type` and `content_encoding`; `--compression`
//! then compresses it and sets the `compression` header (see [`crate::codec`]). Bodies read
//! before connecting (`--body`, `--file`, stdin without `--lines`) are all encoded first, so a
//! bad one is a usage error and nothing is sent; stdin with `--lines` is encoded line by line
//! as it is read, and a bad line stops `publish` there (exit 1), after the lines before it
//! were published and confirmed.

use std::borrow::Cow;
use std::collections::VecDeque;
use std::io::{IsTerminal, Write};
use std::path::Path;
use std::sync::Arc;

use lepus::bytes::Bytes;
use lepus::{
    BasicProperties, BasicPublishOptions, Channel, Confirmation, FieldTable, PublisherConfirm,
    ReturnedMessage, ShortStr,
};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::time::Instant;

use crate::cli::PublishArgs;
use crate::codec::{EncodeError, Encoder, COMPRESSION_HEADER};
use crate::commands::finish;
use crate::connect::{Target, CLOSE_TIMEOUT};
use crate::error::{self, CliError, OnChannel};
use crate::properties::Property;
use crate::signal::{Signal, Stop};

/// Most unconfirmed messages with `--confirm`; the oldest is awaited when there are more.
const CONFIRM_WINDOW: usize = 1000;

/// Where the messages come from.
enum Bodies {
    /// Everything read (and encoded) already: one message, or one per line with `--lines`.
    Ready(Vec<Message>),
    /// `--lines` from stdin: published as they are read, so `tail -f | lepus publish --lines`
    /// works.
    StdinLines(BufReader<tokio::io::Stdin>),
}

/// One message to publish: its body and its properties, shared between messages (they differ
/// only where `--serializer raw` sets content encoding `utf-8` for a string and `binary` for
/// bytes).
#[derive(Debug, Clone)]
struct Message {
    body: Bytes,
    props: Arc<BasicProperties>,
}

/// Turns bodies as read into messages: as they are, or through `--serializer` and
/// `--compression`.
struct Prepare {
    encoder: Option<Encoder>,
    /// The properties asked for, with the `compression` header.
    base: Arc<BasicProperties>,
    /// `base` with each content type and encoding the serializer has set so far.
    by_content: Vec<(Cow<'static, str>, Cow<'static, str>, Arc<BasicProperties>)>,
}

/// Publishes the message(s) and waits until the broker has processed them all.
///
/// # Errors
///
/// A file or stdin that cannot be read; with `--serializer`, a body that is not JSON (a usage
/// error when found before connecting); connection errors; the broker closing the channel
/// (missing exchange: 404); with `--mandatory`, any message returned (`312 NO_ROUTE`); with
/// `--confirm`, any message nacked; [`CliError::Stopped`] after SIGINT or SIGTERM.
pub(crate) async fn run(
    args: PublishArgs,
    target: &Target,
    mut stop: Stop,
) -> Result<(), CliError> {
    let mut prepare = Prepare::new(&args)?;
    if let Some(hint) = stdin_hint(&args, std::io::stdin().is_terminal()) {
        let _ = writeln!(std::io::stderr().lock(), "lepus: {hint}");
    }
    let setup = async {
        let bodies = bodies(&args, &mut prepare).await?;
        let (conn, ch) = target.channel_recovering("publish").await?;
        let returns = ch.returns().on(ch.id())?;
        ch.confirm_select().await.on(ch.id())?;
        Ok::<_, CliError>((bodies, conn, ch, returns))
    };
    // Reading stdin or connecting can take long: a signal stops them, before anything is sent.
    let (mut bodies, conn, ch, mut returns) = tokio::select! {
        biased;
        signal = stop.wait() => {
            let summary = "0 messages published, 0 confirmed".to_string();
            return Err(CliError::Stopped { signal, summary });
        }
        setup = setup => setup?,
    };

    let mut publisher = Publisher {
        ch: &ch,
        exchange: &args.exchange,
        routing_key: &args.routing_key,
        options: BasicPublishOptions {
            mandatory: args.mandatory,
        },
        count: args.count,
        wait_for_each: args.confirm,
        stop: stop.clone(),
        pending: VecDeque::new(),
        published: 0,
        acked: 0,
        nacked: 0,
        republished: 0,
    };
    // A line of stdin that does not encode: publishing stops there.
    let mut bad_line = None;
    let stopped_by = match &mut bodies {
        Bodies::Ready(list) => {
            let mut stopped_by = None;
            for message in list.iter() {
                stopped_by = publisher.publish(message).await?;
                if stopped_by.is_some() {
                    break;
                }
            }
            stopped_by
        }
        Bodies::StdinLines(reader) => {
            let mut line = Vec::new();
            let mut number = 0u64;
            loop {
                line.clear();
                let n = tokio::select! {
                    biased;
                    signal = stop.wait() => break Some(signal),
                    n = reader.read_until(b'\n', &mut line) => {
                        n.map_err(|e| CliError::failed(format!("reading stdin: {e}")))?
                    }
                };
                if n == 0 {
                    break None;
                }
                if line.last() == Some(&b'\n') {
                    line.pop();
                }
                number += 1;
                let message = match prepare.message(Bytes::copy_from_slice(&line)) {
                    Ok(message) => message,
                    Err(e) => {
                        bad_line = Some(format!("line {number} of stdin: {}", e.describe(true)));
                        break None;
                    }
                };
                if let Some(signal) = publisher.publish(&message).await? {
                    break Some(signal);
                }
            }
        }
    };
    if let Some(signal) = stopped_by {
        let deadline = Instant::now() + CLOSE_TIMEOUT;
        let mut summary = publisher.drain_until(deadline).await?;
        let returned = count_returns(&mut returns).0;
        if returned > 0 {
            summary.push_str(&format!(", {returned} returned"));
        }
        // Within what is left of the same deadline; past it, exiting drops the connection.
        let _ = tokio::time::timeout_at(deadline, conn.close()).await;
        return Err(CliError::Stopped { signal, summary });
    }
    publisher.drain().await?;
    let (published, nacked) = (publisher.published, publisher.nacked);
    let republished = publisher.republished;
    if conn.stats().recoveries > 0 && !args.confirm {
        return Err(CliError::failed(
            "the connection was lost while publishing and recovered; without --confirm lepus \
             cannot tell which messages reached the broker (with --confirm it publishes again \
             those whose confirm was lost)",
        ));
    }

    // Returns precede the confirm of the message they belong to, so all are in by now.
    let (returned, first_return) = count_returns(&mut returns);
    tracing::debug!(published, nacked, returned, republished, "publish done");
    let mut problems = Vec::new();
    if let Some(bad) = bad_line {
        problems.push(format!(
            "{bad} ({} published before it)",
            messages(published)
        ));
    }
    if let Some(r) = &first_return {
        problems.push(format!(
            "{returned} of {published} messages returned by the broker: {}",
            describe_return(r)
        ));
    }
    if nacked > 0 {
        problems.push(format!(
            "{nacked} of {published} messages nacked by the broker"
        ));
    }
    if !problems.is_empty() {
        return Err(CliError::failed(problems.join("; ")));
    }
    finish(conn).await
}

/// The line printed on stderr before reading the body from a terminal, where lepus would
/// otherwise seem to hang; `None` when the body does not come from stdin or stdin is not a
/// terminal.
fn stdin_hint(args: &PublishArgs, stdin_is_terminal: bool) -> Option<&'static str> {
    if args.body.is_some() || args.file.is_some() || !stdin_is_terminal {
        return None;
    }
    Some(if args.lines {
        "reading messages from standard input, one per line (end with Ctrl-D)"
    } else {
        "reading the message body from standard input (end with Ctrl-D)"
    })
}

/// The messages returned so far, and the first of them.
fn count_returns(
    returns: &mut tokio::sync::mpsc::UnboundedReceiver<ReturnedMessage>,
) -> (u64, Option<ReturnedMessage>) {
    let mut returned = 0u64;
    let mut first = None;
    while let Ok(r) = returns.try_recv() {
        returned += 1;
        first.get_or_insert(r);
    }
    (returned, first)
}

/// Publishes and keeps track of confirms.
struct Publisher<'a> {
    ch: &'a Channel,
    exchange: &'a str,
    routing_key: &'a str,
    options: BasicPublishOptions,
    /// Times to publish each message.
    count: u64,
    /// `--confirm`: await every confirm and count nacks; otherwise only the latest is kept.
    wait_for_each: bool,
    /// Checked before each publish and while waiting.
    stop: Stop,
    /// Confirms not awaited yet, each with its message, to publish it again if its confirm is
    /// lost with the connection.
    pending: VecDeque<(PublisherConfirm, Message)>,
    published: u64,
    /// Acks counted: all of them with `--confirm`, else at most the latest.
    acked: u64,
    /// Nacks counted: all of them with `--confirm`, else at most the latest.
    nacked: u64,
    /// Messages published again because their confirm was lost in a recovery.
    republished: u64,
}

impl Publisher<'_> {
    /// Publishes `message` `count` times; returns the signal that stopped it early, if one
    /// did.
    async fn publish(&mut self, message: &Message) -> Result<Option<Signal>, CliError> {
        for _ in 0..self.count {
            if let Some(signal) = self.stop.signal() {
                return Ok(Some(signal));
            }
            // A publish waits while the broker blocks publishers (a memory alarm, say); a
            // signal must still stop it. Dropping the publish while it waits sends nothing.
            let published = tokio::select! {
                biased;
                signal = self.stop.wait() => return Ok(Some(signal)),
                published = self.ch.basic_publish(
                    self.exchange,
                    self.routing_key,
                    self.options,
                    &message.props,
                    message.body.clone(),
                ) => published,
            };
            // On a channel the broker has closed, the error carries its reason.
            let confirm = published.map_err(|e| fail(self.ch, e))?;
            self.published += 1;
            if !self.wait_for_each {
                self.pending.clear();
            }
            self.pending.push_back((confirm, message.clone()));
            while self.pending.len() > CONFIRM_WINDOW {
                let Some((oldest, _)) = self.pending.front_mut() else {
                    break;
                };
                let confirmed = tokio::select! {
                    biased;
                    // The oldest stays pending, for the wait after the signal.
                    signal = self.stop.wait() => return Ok(Some(signal)),
                    confirmed = oldest => confirmed,
                };
                if let Some((_, message)) = self.pending.pop_front() {
                    self.count(confirmed, message).await?;
                }
            }
        }
        Ok(None)
    }

    /// Waits for every kept confirm (and for those of what it publishes again).
    async fn drain(&mut self) -> Result<(), CliError> {
        while let Some((confirm, message)) = self.pending.pop_front() {
            let confirmed = confirm.await;
            self.count(confirmed, message).await?;
        }
        Ok(())
    }

    /// After a signal: waits until `deadline` for the confirms of everything published, and
    /// says how many messages were published and confirmed (acked or nacked).
    ///
    /// # Errors
    ///
    /// When the broker closed the channel (a refused publish) or the connection failed.
    async fn drain_until(&mut self, deadline: Instant) -> Result<String, CliError> {
        let published = self.published;
        let within = CLOSE_TIMEOUT.as_secs();
        if self.wait_for_each {
            while let Some((oldest, _)) = self.pending.front_mut() {
                let Ok(confirmed) = tokio::time::timeout_at(deadline, oldest).await else {
                    break;
                };
                if let Some((_, message)) = self.pending.pop_front() {
                    self.count(confirmed, message).await?;
                }
            }
            let confirmed = self.acked + self.nacked;
            let mut summary = format!("{} published, {confirmed} confirmed", messages(published));
            if self.nacked > 0 {
                summary.push_str(&format!(" ({} of them nacked)", self.nacked));
            }
            if confirmed < published {
                summary.push_str(&format!(
                    ", no confirm for the other {} within {within} s",
                    published - confirmed
                ));
            }
            return Ok(summary);
        }
        // Only the latest confirm was kept: ask the channel about all of them.
        self.pending.clear();
        let left = deadline.saturating_duration_since(Instant::now());
        Ok(match self.ch.wait_for_confirms(left).await {
            Ok(all_acked) => format!(
                "{} published, {published} confirmed{}",
                messages(published),
                if all_acked {
                    ""
                } else {
                    " (some of them nacked)"
                }
            ),
            Err(lepus::Error::Timeout { .. }) => format!(
                "{} published, not all confirmed within {within} s",
                messages(published)
            ),
            Err(e) => return Err(fail(self.ch, e)),
        })
    }

    /// Counts one confirm, or fails with the broker's reason for closing the channel. With
    /// `--confirm`, a confirm lost with the connection publishes `message` again (at least
    /// once: the first copy may have reached the broker).
    async fn count(
        &mut self,
        confirmed: lepus::Result<Confirmation>,
        message: Message,
    ) -> Result<(), CliError> {
        match confirmed {
            Err(e) if e.is_retryable() && self.wait_for_each => return self.again(message).await,
            other => match other.map_err(|e| fail(self.ch, e))? {
                Confirmation::Nack(_) => self.nacked += 1,
                Confirmation::Ack(_) => self.acked += 1,
                Confirmation::Uncertain if self.wait_for_each => return self.again(message).await,
                // Without --confirm only the latest is kept; the caller checks recoveries.
                _ => {}
            },
        }
        Ok(())
    }

    /// Publishes `message` again, its first confirm lost in a recovery.
    async fn again(&mut self, message: Message) -> Result<(), CliError> {
        self.republished += 1;
        tracing::info!(
            republished = self.republished,
            "publishing a message again: its confirm was lost with the connection"
        );
        let confirm = self
            .ch
            .basic_publish(
                self.exchange,
                self.routing_key,
                self.options,
                &message.props,
                message.body.clone(),
            )
            .await
            .map_err(|e| fail(self.ch, e))?;
        self.pending.push_back((confirm, message));
        Ok(())
    }
}

/// `1 message`, `2 messages`.
fn messages(n: u64) -> String {
    if n == 1 {
        "1 message".to_string()
    } else {
        format!("{n} messages")
    }
}

/// A failed publish: a refusal by the broker names the method, channel, code and text.
fn fail(ch: &Channel, e: lepus::Error) -> CliError {
    CliError::failed(error::describe(&e, Some(ch.id())))
}

/// `312 NO_ROUTE (exchange 'x', routing key 'k')`.
fn describe_return(r: &ReturnedMessage) -> String {
    let close = lepus::Close {
        code: r.reply_code,
        text: r.reply_text.clone(),
        class_id: 0,
        method_id: 0,
    };
    format!(
        "{} (exchange '{}', routing key '{}')",
        error::reply(&close),
        r.exchange,
        r.routing_key
    )
}

/// The properties asked for, and no others: `--property` entries, then the dedicated flags.
fn properties(args: &PublishArgs) -> BasicProperties {
    let mut props = BasicProperties::default();
    for p in &args.properties {
        p.apply(&mut props);
    }
    if let Some(v) = &args.content_type {
        props.content_type = Some(v.clone());
    }
    if let Some(v) = &args.content_encoding {
        props.content_encoding = Some(v.clone());
    }
    if args.persistent {
        props.delivery_mode = Some(2);
    }
    if let Some(v) = args.priority {
        props.priority = Some(v);
    }
    if let Some(ms) = args.expiration {
        // At most 20 digits: always a valid short string.
        props.expiration = ShortStr::try_from(ms.to_string()).ok();
    }
    if args.headers_json.is_some() || !args.headers.is_empty() {
        props.headers = Some(crate::table::merge(
            args.headers_json.clone(),
            &args.headers,
        ));
    }
    props
}

/// Reads `--body`, `--file` or stdin (stdin with `--lines` is read as it is published) and
/// makes messages of what it read.
///
/// # Errors
///
/// A file or stdin that cannot be read; a body (a line with `--lines`) that `--serializer`
/// cannot encode, which is a [`CliError::Usage`]: nothing was sent.
async fn bodies(args: &PublishArgs, prepare: &mut Prepare) -> Result<Bodies, CliError> {
    let (whole, source) = match (&args.body, &args.file) {
        (Some(text), _) => (
            Bytes::from(text.clone().into_bytes()),
            Cow::Borrowed("--body"),
        ),
        (None, Some(path)) => (read_file(path)?, Cow::Owned(path.display().to_string())),
        (None, None) if args.lines => {
            return Ok(Bodies::StdinLines(BufReader::new(tokio::io::stdin())))
        }
        (None, None) => {
            let mut buf = Vec::new();
            tokio::io::stdin()
                .read_to_end(&mut buf)
                .await
                .map_err(|e| CliError::failed(format!("reading stdin: {e}")))?;
            (Bytes::from(buf), Cow::Borrowed("stdin"))
        }
    };
    let inputs = if args.lines {
        split_lines(&whole)
    } else {
        vec![whole]
    };
    let mut messages = Vec::with_capacity(inputs.len());
    for (i, input) in inputs.into_iter().enumerate() {
        let message = prepare.message(input).map_err(|e| {
            CliError::Usage(if args.lines {
                format!("line {} of {source}: {}", i + 1, e.describe(true))
            } else {
                format!("{source}: {}", e.describe(false))
            })
        })?;
        messages.push(message);
    }
    Ok(Bodies::Ready(messages))
}

impl Prepare {
    /// Checks `--serializer` and `--compression` against the other flags, and sets the
    /// properties asked for and the `compression` header.
    ///
    /// # Errors
    ///
    /// [`CliError::Usage`] when `--property` sets what `--serializer` sets (content type or
    /// encoding), or `--header`/`--headers-json` the header `--compression` sets.
    fn new(args: &PublishArgs) -> Result<Self, CliError> {
        let mut props = properties(args);
        let env = |name: &str| std::env::var(name).ok();
        if let Err(warning) = crate::trace::inject(
            &mut props,
            env("TRACEPARENT").as_deref(),
            env("TRACESTATE").as_deref(),
        ) {
            eprintln!("lepus: warning: {warning}");
        }
        let sets_content =
            |p: &Property| matches!(p, Property::ContentType(_) | Property::ContentEncoding(_));
        if args.serializer.is_some() && args.properties.iter().any(sets_content) {
            return Err(CliError::Usage(
                "--serializer sets content_type and content_encoding: they cannot be given with \
                 --property too"
                    .into(),
            ));
        }
        if let Some(mime) = args.compression {
            let headers = props.headers.get_or_insert_with(FieldTable::default);
            if headers.contains_key(COMPRESSION_HEADER) {
                return Err(CliError::Usage(
                    "--compression sets the compression header: it cannot be given with \
                     --header or --headers-json too"
                        .into(),
                ));
            }
            headers.insert(ShortStr::from_static(COMPRESSION_HEADER), mime);
        }
        Ok(Self {
            encoder: Encoder::new(args.serializer.clone(), args.compression),
            base: Arc::new(props),
            by_content: Vec::new(),
        })
    }

    /// The message for one body as read: the same bytes without `--serializer` and
    /// `--compression` (no copy), else the body they make.
    fn message(&mut self, input: Bytes) -> Result<Message, EncodeError> {
        let Some(encoder) = &self.encoder else {
            return Ok(Message {
                body: input,
                props: Arc::clone(&self.base),
            });
        };
        let encoded = encoder.encode(&input)?;
        let props = match encoded.content {
            None => Arc::clone(&self.base),
            Some((content_type, content_encoding)) => {
                self.props_for(content_type, content_encoding)
            }
        };
        Ok(Message {
            body: encoded.body,
            props,
        })
    }

    /// The properties with this content type and encoding, made once.
    fn props_for(
        &mut self,
        content_type: Cow<'static, str>,
        content_encoding: Cow<'static, str>,
    ) -> Arc<BasicProperties> {
        let known = self
            .by_content
            .iter()
            .find(|(t, e, _)| *t == content_type && *e == content_encoding);
        if let Some((_, _, props)) = known {
            return Arc::clone(props);
        }
        let mut props = BasicProperties::clone(&self.base);
        // The registry's content types and encodings are short constants (`application/json`,
        // `binary`): never past a short string's 255 bytes.
        props.content_type = ShortStr::try_from(content_type.as_ref()).ok();
        props.content_encoding = ShortStr::try_from(content_encoding.as_ref()).ok();
        let props = Arc::new(props);
        self.by_content
            .push((content_type, content_encoding, Arc::clone(&props)));
        props
    }
}

fn read_file(path: &Path) -> Result<Bytes, CliError> {
    std::fs::read(path)
        .map(Bytes::from)
        .map_err(|e| CliError::failed(format!("reading {}: {e}", path.display())))
}

/// Splits at each `\n` (which is dropped); a final newline does not make an empty last line,
/// empty lines in between are empty messages. No copy: each line shares `bytes`.
fn split_lines(bytes: &Bytes) -> Vec<Bytes> {
    let mut lines = Vec::new();
    let mut start = 0;
    for (i, b) in bytes.iter().enumerate() {
        if *b == b'\n' {
            lines.push(bytes.slice(start..i));
            start = i + 1;
        }
    }
    if start < bytes.len() {
        lines.push(bytes.slice(start..));
    }
    lines
}

#[cfg(test)]
mod tests {
    use clap::Parser;
    use lepus::{FieldValue, LongStr};

    use super::*;
    use crate::cli::{Cli, Command};

    fn lines(s: &str) -> Vec<String> {
        split_lines(&Bytes::from(s.to_string()))
            .iter()
            .map(|b| String::from_utf8(b.to_vec()).unwrap())
            .collect()
    }

    fn props(args: &[&str]) -> BasicProperties {
        properties(&publish_args(args))
    }

    fn publish_args(args: &[&str]) -> PublishArgs {
        let cli = Cli::try_parse_from(["lepus", "publish"].into_iter().chain(args.iter().copied()))
            .unwrap();
        let Command::Publish(p) = cli.command else {
            panic!("not publish")
        };
        p
    }

    #[test]
    fn stdin_hint_only_when_reading_a_terminal() {
        let hint = |args: &[&str], terminal| stdin_hint(&publish_args(args), terminal);
        assert_eq!(
            hint(&[], true),
            Some("reading the message body from standard input (end with Ctrl-D)")
        );
        assert_eq!(
            hint(&["--lines"], true),
            Some("reading messages from standard input, one per line (end with Ctrl-D)")
        );
        assert_eq!(hint(&[], false), None);
        assert_eq!(hint(&["--lines"], false), None);
        assert_eq!(hint(&["--body", "x"], true), None);
        assert_eq!(hint(&["--file", "f", "--lines"], true), None);
    }

    #[test]
    fn message_counts_read_well() {
        assert_eq!(messages(0), "0 messages");
        assert_eq!(messages(1), "1 message");
        assert_eq!(messages(2), "2 messages");
    }

    #[test]
    fn line_splitting() {
        assert_eq!(lines("a\nb\n"), ["a", "b"]);
        assert_eq!(lines("a\nb"), ["a", "b"]);
        assert_eq!(lines("a\n\nb\n"), ["a", "", "b"]);
        assert_eq!(lines("\n"), [""]);
        assert_eq!(lines(""), Vec::<String>::new());
        assert_eq!(lines("a\r\n"), ["a\r"]);
    }

    #[test]
    fn no_property_unless_asked() {
        assert_eq!(props(&[]), BasicProperties::default());
    }

    #[test]
    fn flags_become_properties() {
        let p = props(&[
            "--content-type",
            "text/plain",
            "--persistent",
            "--priority",
            "7",
            "--expiration",
            "1500",
            "--header",
            "a=1",
            "--headers-json",
            r#"{"a": 2, "b": 3}"#,
            "--property",
            "content_type=ignored/by-flag",
            "--property",
            "app_id=me",
        ]);
        assert_eq!(p.content_type, Some(ShortStr::from_static("text/plain")));
        assert_eq!(p.delivery_mode, Some(2));
        assert_eq!(p.priority, Some(7));
        assert_eq!(p.expiration, Some(ShortStr::from_static("1500")));
        assert_eq!(p.app_id, Some(ShortStr::from_static("me")));
        let h = p.headers.unwrap();
        assert_eq!(h.get("a"), Some(&FieldValue::LongStr(LongStr::from("1"))));
        assert_eq!(h.get("b"), Some(&FieldValue::I32(3)));
    }
}
