//! `lepus publish`.
//!
//! # Noticing a refused publish
//!
//! `basic.publish` has no reply: when the broker refuses one (missing exchange, access refused)
//! it closes the channel, possibly after lepus has queued many more. To see that before
//! exiting, the channel is always put in confirm mode. The broker confirms messages in order,
//! so once the confirm of the last message arrives, every message before it was routed (or
//! returned, which comes first) and the channel is known to be open; if the broker closed the
//! channel instead, the pending confirms fail with its reason (reply code and text). Without
//! `--confirm` only the latest confirm is kept, and nacks are not counted.
//!
//! Two library behaviours make this the way to do it (see the notes in the README): a publish
//! (or any call) on a channel the broker has closed fails with "channel N is closed", without
//! the broker's reason, and `Channel::close` returns `Ok` even when the broker closed the
//! channel with an error, so "close and check the outcome" cannot tell.

use std::collections::VecDeque;
use std::path::Path;

use lepus::bytes::Bytes;
use lepus::{
    BasicProperties, BasicPublishOptions, Channel, Confirmation, PublisherConfirm, ReturnedMessage,
    ShortStr,
};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};

use crate::cli::PublishArgs;
use crate::commands::finish;
use crate::connect::Target;
use crate::error::{self, CliError, OnChannel};

/// Most unconfirmed messages with `--confirm`; the oldest is awaited when there are more.
const CONFIRM_WINDOW: usize = 1000;

/// Where the message bodies come from.
enum Bodies {
    /// Everything read already: one body, or its lines with `--lines`.
    Ready(Vec<Bytes>),
    /// `--lines` from stdin: published as they are read, so `tail -f | lepus publish --lines`
    /// works.
    StdinLines(BufReader<tokio::io::Stdin>),
}

/// Publishes the message(s) and waits until the broker has processed them all.
///
/// # Errors
///
/// A file or stdin that cannot be read; connection errors; the broker closing the channel
/// (missing exchange: 404); with `--mandatory`, any message returned (`312 NO_ROUTE`); with
/// `--confirm`, any message nacked.
pub(crate) async fn run(args: PublishArgs, target: &Target) -> Result<(), CliError> {
    let props = properties(&args);
    let mut bodies = bodies(&args).await?;
    let (conn, ch) = target.channel("publish").await?;
    let mut returns = ch.returns().on(ch.id())?;
    ch.confirm_select().await.on(ch.id())?;

    let mut publisher = Publisher {
        ch: &ch,
        exchange: &args.exchange,
        routing_key: &args.routing_key,
        options: BasicPublishOptions {
            mandatory: args.mandatory,
        },
        props: &props,
        count: args.count,
        wait_for_each: args.confirm,
        pending: VecDeque::new(),
        published: 0,
        nacked: 0,
    };
    match &mut bodies {
        Bodies::Ready(list) => {
            for body in list.iter() {
                publisher.publish(body).await?;
            }
        }
        Bodies::StdinLines(reader) => {
            let mut line = Vec::new();
            loop {
                line.clear();
                let n = reader
                    .read_until(b'\n', &mut line)
                    .await
                    .map_err(|e| CliError::failed(format!("reading stdin: {e}")))?;
                if n == 0 {
                    break;
                }
                if line.last() == Some(&b'\n') {
                    line.pop();
                }
                publisher.publish(&Bytes::copy_from_slice(&line)).await?;
            }
        }
    }
    publisher.drain().await?;
    let (published, nacked) = (publisher.published, publisher.nacked);

    // Returns precede the confirm of the message they belong to, so all are in by now.
    let mut returned = 0u64;
    let mut first_return = None;
    while let Ok(r) = returns.try_recv() {
        returned += 1;
        first_return.get_or_insert(r);
    }
    tracing::debug!(published, nacked, returned, "publish done");
    let mut problems = Vec::new();
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

/// Publishes and keeps track of confirms.
struct Publisher<'a> {
    ch: &'a Channel,
    exchange: &'a str,
    routing_key: &'a str,
    options: BasicPublishOptions,
    props: &'a BasicProperties,
    /// Times to publish each body.
    count: u64,
    /// `--confirm`: await every confirm and count nacks; otherwise only the latest is kept.
    wait_for_each: bool,
    pending: VecDeque<PublisherConfirm>,
    published: u64,
    nacked: u64,
}

impl Publisher<'_> {
    /// Publishes `body` `count` times.
    async fn publish(&mut self, body: &Bytes) -> Result<(), CliError> {
        for _ in 0..self.count {
            let published = self
                .ch
                .basic_publish(
                    self.exchange,
                    self.routing_key,
                    self.options,
                    self.props,
                    body.clone(),
                )
                .await;
            let confirm = match published {
                Ok(confirm) => confirm,
                // The broker closed the channel: a pending confirm knows why.
                Err(e) => {
                    return Err(self
                        .closed_reason()
                        .await
                        .unwrap_or_else(|| fail(self.ch, e)))
                }
            };
            self.published += 1;
            if !self.wait_for_each {
                self.pending.clear();
            }
            self.pending.push_back(confirm);
            if self.pending.len() > CONFIRM_WINDOW {
                if let Some(oldest) = self.pending.pop_front() {
                    self.settle(oldest).await?;
                }
            }
        }
        Ok(())
    }

    /// Waits for every kept confirm.
    async fn drain(&mut self) -> Result<(), CliError> {
        while let Some(confirm) = self.pending.pop_front() {
            self.settle(confirm).await?;
        }
        Ok(())
    }

    async fn settle(&mut self, confirm: PublisherConfirm) -> Result<(), CliError> {
        match confirm.await {
            Ok(Confirmation::Nack(_)) => self.nacked += 1,
            Ok(_) => {}
            Err(e) => return Err(fail(self.ch, e)),
        }
        Ok(())
    }

    /// The broker's reason for closing the channel, from the newest pending confirm.
    async fn closed_reason(&mut self) -> Option<CliError> {
        let newest = self.pending.pop_back()?;
        self.pending.clear();
        newest.await.err().map(|e| fail(self.ch, e))
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

/// Reads `--body`, `--file` or stdin (stdin with `--lines` is read as it is published).
async fn bodies(args: &PublishArgs) -> Result<Bodies, CliError> {
    let whole = match (&args.body, &args.file) {
        (Some(text), _) => Bytes::from(text.clone().into_bytes()),
        (None, Some(path)) => read_file(path)?,
        (None, None) if args.lines => {
            return Ok(Bodies::StdinLines(BufReader::new(tokio::io::stdin())))
        }
        (None, None) => {
            let mut buf = Vec::new();
            tokio::io::stdin()
                .read_to_end(&mut buf)
                .await
                .map_err(|e| CliError::failed(format!("reading stdin: {e}")))?;
            Bytes::from(buf)
        }
    };
    Ok(Bodies::Ready(if args.lines {
        split_lines(&whole)
    } else {
        vec![whole]
    }))
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
        let cli = Cli::try_parse_from(
            ["lepus", "publish", "--routing-key", "k"]
                .into_iter()
                .chain(args.iter().copied()),
        )
        .unwrap();
        let Command::Publish(p) = cli.command else {
            panic!("not publish")
        };
        properties(&p)
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
