//! Printing messages for `consume` and `get`: one JSON object per line, or the raw body;
//! with `--decode`, the decoded payload too (see [`crate::codec`]).

use std::borrow::Cow;
use std::io::{self, BufWriter, Write};

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use lepus::Delivery;
use lepus_messaging::Payload;
use serde::Serialize;

use crate::cli::Output;
use crate::codec::PayloadJson;
use crate::error::CliError;
use crate::properties::PropertiesJson;

/// One message in the JSON output format.
///
/// Field order is the documented one; `message_count` is present only for `get`, `payload`
/// only with `--decode`.
#[derive(Serialize)]
struct MessageJson<'a> {
    exchange: Cow<'a, str>,
    routing_key: Cow<'a, str>,
    redelivered: bool,
    delivery_tag: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    message_count: Option<u32>,
    properties: PropertiesJson<'a>,
    body: Cow<'a, str>,
    body_encoding: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    payload: Option<PayloadJson<'a>>,
}

/// Renders a delivery, and its decoded payload if given, as one line of JSON (without the
/// newline).
pub(crate) fn message_json(
    d: &Delivery,
    message_count: Option<u32>,
    payload: Option<&Payload>,
) -> String {
    let (body, body_encoding) = match std::str::from_utf8(&d.body) {
        Ok(text) => (Cow::Borrowed(text), "utf8"),
        Err(_) => (Cow::Owned(BASE64.encode(&d.body)), "base64"),
    };
    let message = MessageJson {
        exchange: d.exchange.to_string_lossy(),
        routing_key: d.routing_key.to_string_lossy(),
        redelivered: d.redelivered,
        delivery_tag: d.delivery_tag,
        message_count,
        properties: PropertiesJson(&d.properties),
        body,
        body_encoding,
        payload: payload.map(PayloadJson),
    };
    // Serializing these types cannot fail: every map key is a string and floats that JSON
    // cannot hold are written as tagged values.
    serde_json::to_string(&message).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
}

/// Writes messages to stdout, flushing after each so that a pipe sees them at once.
pub(crate) struct Printer {
    out: BufWriter<io::Stdout>,
    format: Output,
}

impl Printer {
    /// A printer for `format`.
    pub(crate) fn new(format: Output) -> Self {
        Self {
            out: BufWriter::new(io::stdout()),
            format,
        }
    }

    /// Prints one message. With `--output body`, a decoded payload is printed instead of the
    /// body: a value as one line of JSON, text and bytes as they are.
    ///
    /// # Errors
    ///
    /// [`CliError::Failed`] when stdout cannot be written, such as when the reading end of a
    /// pipe went away (the message is then not acknowledged).
    pub(crate) fn print(
        &mut self,
        d: &Delivery,
        message_count: Option<u32>,
        payload: Option<&Payload>,
    ) -> Result<(), CliError> {
        let result = match (self.format, payload) {
            (Output::Json, _) => writeln!(self.out, "{}", message_json(d, message_count, payload)),
            (Output::Body, None) => self
                .out
                .write_all(&d.body)
                .and_then(|()| self.out.write_all(b"\n")),
            (Output::Body, Some(Payload::Value(v))) => writeln!(self.out, "{v}"),
            (Output::Body, Some(Payload::Text(t))) => writeln!(self.out, "{t}"),
            (Output::Body, Some(Payload::Bytes(b))) => self
                .out
                .write_all(b)
                .and_then(|()| self.out.write_all(b"\n")),
        };
        result.and_then(|()| self.out.flush()).map_err(stdout_error)
    }
}

/// Writes one line to stdout.
///
/// # Errors
///
/// As [`Printer::print`].
pub(crate) fn print_line(line: &str) -> Result<(), CliError> {
    let mut out = io::stdout().lock();
    writeln!(out, "{line}")
        .and_then(|()| out.flush())
        .map_err(stdout_error)
}

/// Maps a failed write to stdout.
fn stdout_error(e: io::Error) -> CliError {
    if e.kind() == io::ErrorKind::BrokenPipe {
        CliError::failed("stdout was closed (broken pipe)")
    } else {
        CliError::failed(format!("writing to stdout: {e}"))
    }
}
