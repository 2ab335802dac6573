//! The CLI's errors: what is printed (one line, `lepus: error: ...`) and the exit code.

use std::fmt;

use lepus::{Close, Error};

use crate::signal::Signal;

/// Exit code for a runtime or broker error.
pub(crate) const EXIT_FAILURE: u8 = 1;
/// Exit code for a usage error, found before connecting.
pub(crate) const EXIT_USAGE: u8 = 2;

/// A failed command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum CliError {
    /// Bad arguments; exit code 2, reported before anything was sent.
    Usage(String),
    /// The broker refused, the network failed, or a check failed; exit code 1.
    Failed(String),
    /// Stopped early by a signal; exit code 128 plus the signal's number. Not an error as such:
    /// the message says what was done before stopping.
    Stopped {
        /// The signal that stopped the command.
        signal: Signal,
        /// What was done, such as `12 messages published, 12 confirmed`.
        summary: String,
    },
}

impl CliError {
    /// A runtime failure with this message.
    pub(crate) fn failed(msg: impl Into<String>) -> Self {
        Self::Failed(msg.into())
    }

    /// The process exit code for this error.
    pub(crate) fn exit_code(&self) -> u8 {
        match self {
            Self::Usage(_) => EXIT_USAGE,
            Self::Failed(_) => EXIT_FAILURE,
            Self::Stopped { signal, .. } => signal.exit_code(),
        }
    }

    /// The line printed on stderr after `lepus: `: `error: <message>`, or for a command
    /// stopped by a signal, `stopped by SIGTERM: <summary>`.
    pub(crate) fn line(&self) -> String {
        match self {
            Self::Usage(_) | Self::Failed(_) => format!("error: {}", self.one_line()),
            Self::Stopped { .. } => self.one_line(),
        }
    }

    /// The message with every line break and control character replaced by a space, so that
    /// whatever the broker sent, the error stays one line.
    pub(crate) fn one_line(&self) -> String {
        one_line(&self.to_string())
    }
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Usage(m) | Self::Failed(m) => f.write_str(m),
            Self::Stopped { signal, summary } => {
                write!(f, "stopped by {}: {summary}", signal.name())
            }
        }
    }
}

/// Replaces control characters (newlines included) with spaces and trims the ends.
pub(crate) fn one_line(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect::<String>()
        .trim()
        .to_string()
}

/// `404 NOT_FOUND - no queue 'q' in vhost '/'`: the reply code, its name and the broker's text.
///
/// RabbitMQ's text already starts with the code's name, which is then not repeated.
pub(crate) fn reply(close: &Close) -> String {
    let text = close.text.as_str();
    match close.code.name() {
        Some(name) if text.starts_with(name) => format!("{} {text}", close.code.0),
        _ if text.is_empty() => close.code.to_string(),
        _ => format!("{} - {text}", close.code),
    }
}

/// Describes a library error; a channel closed by the broker reads
/// `queue.declare on channel 1 refused: 404 NOT_FOUND - no queue 'nope' in vhost '/'`.
pub(crate) fn describe(err: &Error, channel: Option<u16>) -> String {
    match err {
        Error::ChannelClosed(close) => {
            let on = channel
                .map(|c| format!(" on channel {c}"))
                .unwrap_or_default();
            let id = channel.map(|c| format!(" {c}")).unwrap_or_default();
            match close.method_name() {
                Some(method) => format!("{method}{on} refused: {}", reply(close)),
                None => format!("channel{id} closed by the broker: {}", reply(close)),
            }
        }
        other => other.to_string(),
    }
}

impl From<Error> for CliError {
    fn from(e: Error) -> Self {
        Self::Failed(describe(&e, None))
    }
}

/// Adds the channel to a library error's message.
pub(crate) trait OnChannel<T> {
    /// Maps the error with [`describe`], naming channel `id`.
    fn on(self, id: u16) -> Result<T, CliError>;
}

impl<T> OnChannel<T> for Result<T, Error> {
    fn on(self, id: u16) -> Result<T, CliError> {
        self.map_err(|e| CliError::Failed(describe(&e, Some(id))))
    }
}

/// Settling a delivery (ack, nack, reject), where one that came over a link lost since is
/// not an error: the broker requeued it and delivers it again.
pub(crate) trait Settled {
    /// Maps the error as [`OnChannel::on`] does, except a stale delivery.
    fn settled(self, id: u16) -> Result<(), CliError>;
}

impl Settled for Result<(), Error> {
    fn settled(self, id: u16) -> Result<(), CliError> {
        match self {
            Err(Error::StaleDelivery { .. }) => Ok(()),
            other => other.on(id),
        }
    }
}

#[cfg(test)]
mod tests {
    use lepus::ReplyCode;

    use super::*;

    fn close(code: u16, text: &str, class_id: u16, method_id: u16) -> Close {
        Close {
            code: ReplyCode(code),
            text: text.into(),
            class_id,
            method_id,
        }
    }

    #[test]
    fn channel_refusal_names_method_channel_code_and_text() {
        let e = Error::ChannelClosed(close(
            404,
            "NOT_FOUND - no queue 'nope' in vhost '/'",
            50,
            10,
        ));
        assert_eq!(
            describe(&e, Some(1)),
            "queue.declare on channel 1 refused: 404 NOT_FOUND - no queue 'nope' in vhost '/'"
        );
    }

    #[test]
    fn refusal_without_method_or_name() {
        let e = Error::ChannelClosed(close(406, "PRECONDITION_FAILED - x", 0, 0));
        assert_eq!(
            describe(&e, Some(3)),
            "channel 3 closed by the broker: 406 PRECONDITION_FAILED - x"
        );
        assert_eq!(reply(&close(999, "odd", 0, 0)), "999 - odd");
        assert_eq!(reply(&close(404, "", 0, 0)), "404 NOT_FOUND");
        assert_eq!(reply(&close(404, "gone", 0, 0)), "404 NOT_FOUND - gone");
    }

    #[test]
    fn messages_are_one_line() {
        let e = CliError::failed("line one\nline two\r\n\tend\n");
        assert_eq!(e.one_line(), "line one line two   end");
        assert_eq!(e.exit_code(), 1);
        assert_eq!(CliError::Usage("x".into()).exit_code(), 2);
        assert_eq!(e.line(), "error: line one line two   end");
    }

    #[test]
    fn a_stop_by_signal_is_not_an_error_line() {
        let e = CliError::Stopped {
            signal: Signal::Terminate,
            summary: "3 messages published, 3 confirmed".into(),
        };
        assert_eq!(
            e.line(),
            "stopped by SIGTERM: 3 messages published, 3 confirmed"
        );
        assert_eq!(e.exit_code(), 143);
    }
}
