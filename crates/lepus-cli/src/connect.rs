//! Which broker to talk to and how: `--url`, `$AMQP_URL`, the default, and the connection
//! options from the global flags.

use std::time::Duration;

use lepus::uri::AmqpUri;
use lepus::{Channel, Connection, ConnectionOptions, Heartbeat};

use crate::cli::{Global, DEFAULT_URL};
use crate::error::CliError;

/// Seconds allowed to connect when neither `--connect-timeout` nor the URL says.
const DEFAULT_CONNECT_TIMEOUT: f64 = 10.0;
/// How long closing a connection may take; `publish` also waits this long for outstanding
/// confirms when it is interrupted.
pub(crate) const CLOSE_TIMEOUT: Duration = Duration::from_secs(10);

/// Where and how to connect, resolved from the global flags before anything is sent.
#[derive(Debug, Clone)]
pub(crate) struct Target {
    options: ConnectionOptions,
    /// Long-running commands recover a lost connection (unless `--no-recover`).
    recover: bool,
    /// `host:port`, for error messages (the URL may hold a password, so it is not shown).
    address: String,
}

impl Target {
    /// Resolves the URL (`--url`, else a non-empty `$AMQP_URL`, else the default) and applies
    /// `--connect-timeout`, `--rpc-timeout` and `--heartbeat`.
    ///
    /// # Errors
    ///
    /// A usage error when the URL does not parse; it says where the URL came from.
    pub(crate) fn resolve(global: &Global, env_url: Option<String>) -> Result<Self, CliError> {
        let flag = (!global.url.is_empty()).then(|| global.url.join(";"));
        let (url, source) = pick_url(flag, env_url);
        let invalid = |e: &dyn std::fmt::Display| {
            CliError::Usage(match source {
                UrlSource::Env => format!("invalid URL in $AMQP_URL: {e}"),
                UrlSource::Flag | UrlSource::Default => format!("invalid URL: {e}"),
            })
        };
        let mut options = ConnectionOptions::from_uri(&url).map_err(|e| invalid(&e))?;
        // The first broker's URL carries the settings that are not per broker.
        let first = url.split(';').map(str::trim).find(|u| !u.is_empty());
        let uri: AmqpUri = first.unwrap_or_default().parse().map_err(|e| invalid(&e))?;
        let timeout = match (global.connect_timeout, uri.query.connection_timeout) {
            (Some(secs), _) => Duration::from_secs_f64(secs),
            (None, Some(from_url)) => from_url,
            (None, None) => Duration::from_secs_f64(DEFAULT_CONNECT_TIMEOUT),
        };
        options
            .connect_timeout(timeout)
            .handshake_timeout(timeout)
            .rpc_timeout(Duration::from_secs_f64(global.rpc_timeout))
            .close_timeout(CLOSE_TIMEOUT);
        if let Some(h) = global.heartbeat {
            options.heartbeat(if h == 0 {
                Heartbeat::Disabled
            } else {
                Heartbeat::Secs(h)
            });
        }
        Ok(Self {
            address: options.hosts().join(", "),
            recover: !global.no_recover,
            options,
        })
    }

    /// The same target with another close timeout.
    pub(crate) fn with_close_timeout(&self, timeout: Duration) -> Self {
        let mut target = self.clone();
        target.options.close_timeout(timeout);
        target
    }

    /// Opens a connection named `lepus <what>` (shown in the management UI).
    ///
    /// # Errors
    ///
    /// When the broker cannot be reached or refuses (bad credentials mention
    /// `403 ACCESS_REFUSED`).
    pub(crate) async fn connect(&self, what: &str) -> Result<Connection, CliError> {
        let mut options = self.options.clone();
        // Short commands fail at once: an error says more than a silent wait.
        options.no_recovery();
        self.open(what, options).await
    }

    /// Like [`connect`](Self::connect), for the long-running commands (publish, consume,
    /// perf): a lost connection is recovered (unless `--no-recover`), and each loss and
    /// recovery is told on stderr in one line.
    pub(crate) async fn connect_recovering(&self, what: &str) -> Result<Connection, CliError> {
        let mut options = self.options.clone();
        if !self.recover {
            options.no_recovery();
        }
        let conn = self.open(what, options).await?;
        tokio::spawn(tell_recoveries(conn.events()));
        Ok(conn)
    }

    async fn open(
        &self,
        what: &str,
        mut options: ConnectionOptions,
    ) -> Result<Connection, CliError> {
        options.connection_name(format!("lepus {what}"));
        tracing::debug!(address = %self.address, "connecting");
        Connection::connect_with(options)
            .await
            .map_err(|e| match e {
                // Already names the address.
                lepus::Error::Connect { .. } | lepus::Error::AllHostsFailed(_) => CliError::from(e),
                other => CliError::failed(format!("connecting to {}: {}", self.address, other)),
            })
    }

    /// Connects and opens one channel.
    ///
    /// # Errors
    ///
    /// As [`connect`](Self::connect), or when the channel cannot be opened.
    pub(crate) async fn channel(&self, what: &str) -> Result<(Connection, Channel), CliError> {
        let conn = self.connect(what).await?;
        Self::open_channel(conn).await
    }

    /// Like [`channel`](Self::channel), on a recovering connection.
    pub(crate) async fn channel_recovering(
        &self,
        what: &str,
    ) -> Result<(Connection, Channel), CliError> {
        let conn = self.connect_recovering(what).await?;
        Self::open_channel(conn).await
    }

    async fn open_channel(conn: Connection) -> Result<(Connection, Channel), CliError> {
        let ch = conn
            .open_channel()
            .await
            .map_err(|e| CliError::failed(format!("opening a channel: {e}")))?;
        Ok((conn, ch))
    }
}

/// Tells on stderr, one line each, when the connection is lost and when it is back.
async fn tell_recoveries(mut events: tokio::sync::broadcast::Receiver<lepus::ConnectionEvent>) {
    use lepus::ConnectionEvent as E;
    use tokio::sync::broadcast::error::RecvError;
    loop {
        let line = match events.recv().await {
            Ok(E::Disconnected { cause, .. }) => format!("connection lost: {cause}; reconnecting"),
            Ok(E::Recovered { address, took }) => {
                format!("reconnected to {address} after {:.1} s", took.as_secs_f64())
            }
            Ok(E::TopologyFailed { entity, error }) => {
                format!("could not restore {entity} after reconnecting: {error}")
            }
            Ok(E::RecoveryFailed { error }) => format!("giving up reconnecting: {error}"),
            Ok(E::Closed(_)) | Err(RecvError::Closed) => return,
            Ok(_) | Err(RecvError::Lagged(_)) => continue,
        };
        eprintln!("lepus: {line}");
    }
}

/// Where the URL came from, for error messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum UrlSource {
    /// `--url`.
    Flag,
    /// `$AMQP_URL`.
    Env,
    /// [`DEFAULT_URL`].
    Default,
}

/// `--url` wins over `$AMQP_URL` (when set and not empty), which wins over the default.
fn pick_url(flag: Option<String>, env: Option<String>) -> (String, UrlSource) {
    match (flag, env.filter(|e| !e.is_empty())) {
        (Some(url), _) => (url, UrlSource::Flag),
        (None, Some(url)) => (url, UrlSource::Env),
        (None, None) => (DEFAULT_URL.to_string(), UrlSource::Default),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn global(url: Option<&str>) -> Global {
        Global {
            url: url.map(str::to_string).into_iter().collect(),
            connect_timeout: None,
            rpc_timeout: 30.0,
            heartbeat: None,
            no_recover: false,
            verbose: 0,
        }
    }

    #[test]
    fn url_precedence() {
        let s = |v: &str| Some(v.to_string());
        let url = |flag, env| pick_url(flag, env).0;
        assert_eq!(url(s("amqp://flag"), s("amqp://env")), "amqp://flag");
        assert_eq!(url(None, s("amqp://env")), "amqp://env");
        assert_eq!(url(None, s("")), DEFAULT_URL);
        assert_eq!(url(None, None), DEFAULT_URL);
    }

    #[test]
    fn bad_url_is_a_usage_error() {
        let e = Target::resolve(&global(Some("http://x")), None).unwrap_err();
        assert!(matches!(e, CliError::Usage(_)), "{e:?}");
        assert!(e.to_string().starts_with("invalid URL: "), "{e}");
    }

    #[test]
    fn bad_amqp_url_names_the_variable() {
        let e = Target::resolve(&global(None), Some("http://x".into())).unwrap_err();
        assert!(matches!(e, CliError::Usage(_)), "{e:?}");
        assert!(
            e.to_string().starts_with("invalid URL in $AMQP_URL: "),
            "{e}"
        );
        // --url wins: a broken $AMQP_URL is not even parsed.
        assert!(Target::resolve(&global(Some("amqp://h")), Some("http://x".into())).is_ok());
    }

    #[test]
    fn address_is_shown_without_password() {
        let t = Target::resolve(
            &global(Some("amqp://u:secret@example.invalid:5673/v")),
            None,
        )
        .unwrap();
        assert_eq!(t.address, "example.invalid:5673");
        assert!(!format!("{t:?}").contains("secret"));
    }
}
