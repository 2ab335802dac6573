//! Connection settings: from an AMQP URI or built in code.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use lepus_proto::{Heartbeat, Sasl, DEFAULT_CHANNEL_MAX, DEFAULT_FRAME_MAX, MIN_FRAME_MAX};
use lepus_wire::FieldTable;

use crate::error::{Error, Result};
use crate::uri::{AmqpUri, Scheme, ServerNameIndication, Verify};

/// Everything needed to open a connection, with a setter per setting.
///
/// Build one from a URI ([`ConnectionOptions::from_uri`]) or from defaults
/// ([`ConnectionOptions::new`]: `guest`/`guest` at `localhost:5672`, vhost `/`), then adjust:
///
/// ```
/// use std::time::Duration;
/// use lepus::{ConnectionOptions, Heartbeat};
///
/// let mut options = ConnectionOptions::from_uri("amqp://app:secret@rabbit.internal/orders")?;
/// options
///     .heartbeat(Heartbeat::Secs(15))
///     .rpc_timeout(Duration::from_secs(5))
///     .connection_name("order-service");
/// assert_eq!(options.host(), "rabbit.internal");
/// assert!(!format!("{options:?}").contains("secret"));
/// # Ok::<(), lepus::Error>(())
/// ```
#[derive(Clone)]
pub struct ConnectionOptions {
    /// `memory://`: the host is the name of an in-process broker.
    pub(crate) memory: bool,
    pub(crate) host: String,
    pub(crate) port: u16,
    pub(crate) vhost: String,
    pub(crate) sasl: Sasl,
    pub(crate) tls: Option<TlsOptions>,
    pub(crate) heartbeat: Heartbeat,
    pub(crate) channel_max: u16,
    pub(crate) frame_max: u32,
    pub(crate) connect_timeout: Duration,
    pub(crate) handshake_timeout: Duration,
    pub(crate) rpc_timeout: Duration,
    pub(crate) close_timeout: Duration,
    pub(crate) blocked_publish_timeout: Option<Duration>,
    pub(crate) client_properties: FieldTable,
    pub(crate) max_message_size: u64,
    pub(crate) write_buffer_high_water: usize,
    pub(crate) write_coalescing: Duration,
    pub(crate) read_coalescing: Duration,
    /// Brokers to try after the one above, each with its own address, vhost, credentials and
    /// TLS settings.
    pub(crate) more_hosts: Vec<Endpoint>,
    pub(crate) failover: FailoverStrategy,
    pub(crate) recovery: crate::RecoveryPolicy,
}

/// The per-broker part of [`ConnectionOptions`]: where, which vhost, as whom, over what.
#[derive(Clone)]
pub(crate) struct Endpoint {
    memory: bool,
    host: String,
    port: u16,
    vhost: String,
    sasl: Sasl,
    tls: Option<TlsOptions>,
}

impl Endpoint {
    /// `host:port`, or `memory://NAME` for an in-process broker.
    pub(crate) fn address(&self) -> String {
        if self.memory {
            format!("memory://{}", self.host)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

/// In which order a connection with several brokers
/// ([`ConnectionOptions::add_host`]) tries them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum FailoverStrategy {
    /// In the order given, the first one first.
    #[default]
    RoundRobin,
    /// In a random order, drawn anew for each connect, so that many clients with the same
    /// list spread over the brokers.
    Shuffle,
}

/// TLS settings; present when the URI's scheme is `amqps` or [`ConnectionOptions::tls`] set them.
///
/// The default verifies the server against the system's roots and sends SNI.
#[derive(Clone)]
pub struct TlsOptions {
    pub(crate) ca_file: Option<PathBuf>,
    pub(crate) cert_file: Option<PathBuf>,
    pub(crate) key_file: Option<PathBuf>,
    pub(crate) verify: bool,
    pub(crate) server_name: Option<String>,
    pub(crate) sni: bool,
    pub(crate) config: Option<Arc<rustls::ClientConfig>>,
}

impl Default for TlsOptions {
    fn default() -> Self {
        Self::new()
    }
}

impl TlsOptions {
    /// Verification on, trusting the system's root certificates, SNI with the host name.
    pub fn new() -> Self {
        Self {
            ca_file: None,
            cert_file: None,
            key_file: None,
            verify: true,
            server_name: None,
            sni: true,
            config: None,
        }
    }

    /// Trust the CA certificates in this PEM file instead of the system's roots.
    pub fn ca_file(&mut self, path: impl Into<PathBuf>) -> &mut Self {
        self.ca_file = Some(path.into());
        self
    }

    /// Present this client certificate chain (PEM) and private key (PEM), for mutual TLS and
    /// the `EXTERNAL` mechanism.
    pub fn client_cert(&mut self, cert: impl Into<PathBuf>, key: impl Into<PathBuf>) -> &mut Self {
        self.cert_file = Some(cert.into());
        self.key_file = Some(key.into());
        self
    }

    /// The name to verify the server's certificate against and to send as SNI, when it differs
    /// from the host connected to.
    pub fn server_name(&mut self, name: impl Into<String>) -> &mut Self {
        self.server_name = Some(name.into());
        self
    }

    /// Send no SNI extension.
    pub fn disable_sni(&mut self) -> &mut Self {
        self.sni = false;
        self
    }

    /// Skip certificate verification. Dangerous: anyone on the path can read and change the
    /// traffic. Only for tests.
    pub fn danger_disable_verification(&mut self) -> &mut Self {
        self.verify = false;
        self
    }

    /// Use a complete rustls configuration instead of the settings above.
    pub fn rustls_config(&mut self, config: Arc<rustls::ClientConfig>) -> &mut Self {
        self.config = Some(config);
        self
    }
}

impl fmt::Debug for TlsOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsOptions")
            .field("ca_file", &self.ca_file)
            .field("cert_file", &self.cert_file)
            .field("key_file", &self.key_file)
            .field("verify", &self.verify)
            .field("server_name", &self.server_name)
            .field("sni", &self.sni)
            .field("custom_config", &self.config.is_some())
            .finish()
    }
}

impl Default for ConnectionOptions {
    fn default() -> Self {
        Self::new()
    }
}

impl ConnectionOptions {
    /// Defaults: `guest`/`guest` at `localhost:5672`, vhost `/`, the server's heartbeat,
    /// frame_max 128 KiB, 2047 channels, 30 s to connect, 30 s per request.
    pub fn new() -> Self {
        Self {
            memory: false,
            host: "localhost".into(),
            port: 5672,
            vhost: "/".into(),
            sasl: Sasl::Plain {
                username: "guest".into(),
                password: "guest".into(),
            },
            tls: None,
            heartbeat: Heartbeat::ServerDefault,
            channel_max: DEFAULT_CHANNEL_MAX,
            frame_max: DEFAULT_FRAME_MAX,
            connect_timeout: Duration::from_secs(30),
            handshake_timeout: Duration::from_secs(30),
            rpc_timeout: Duration::from_secs(30),
            close_timeout: Duration::from_secs(10),
            blocked_publish_timeout: None,
            client_properties: lepus_proto::Config::default_client_properties(),
            max_message_size: lepus_proto::DEFAULT_MAX_MESSAGE_SIZE,
            write_buffer_high_water: 1024 * 1024,
            write_coalescing: Duration::from_millis(2),
            read_coalescing: Duration::from_millis(1),
            more_hosts: Vec::new(),
            failover: FailoverStrategy::RoundRobin,
            recovery: crate::RecoveryPolicy::new(),
        }
    }

    /// Settings from an AMQP URI, following RabbitMQ's URI specification:
    /// `amqp[s]://user:pass@host:port/vhost?heartbeat=10&connection_timeout=5000&...`.
    ///
    /// Several brokers are written as kombu writes them: full URIs separated by `;`
    /// (`amqp://u:p@h1:5672/%2f;amqp://u:p@h2:5673/%2f`), each with its own credentials,
    /// vhost and TLS settings (see [`add_host`](Self::add_host)); the settings of the query
    /// that are not per broker (heartbeat, timeouts, frame and channel limits) come from the
    /// first. A `;` inside a password must then be written `%3B`.
    ///
    /// # Errors
    ///
    /// [`Error::Uri`] when a URI does not parse or names an unknown query parameter.
    ///
    /// # Examples
    ///
    /// ```
    /// let options = lepus::ConnectionOptions::from_uri(
    ///     "amqp://app:secret@rabbit-1:5672/orders;amqps://app:secret@rabbit-2:5671/orders",
    /// )?;
    /// assert_eq!(options.hosts(), ["rabbit-1:5672", "rabbit-2:5671"]);
    /// # Ok::<(), lepus::Error>(())
    /// ```
    pub fn from_uri(uri: &str) -> Result<Self> {
        let mut parts = uri
            .split(';')
            .map(str::trim)
            .filter(|part| !part.is_empty());
        let mut options = Self::from_one_uri(parts.next().unwrap_or_default())?;
        for part in parts {
            let more = Self::from_one_uri(part)?;
            options.add_host(&more);
        }
        Ok(options)
    }

    /// Settings from a single AMQP URI.
    fn from_one_uri(uri: &str) -> Result<Self> {
        let uri: AmqpUri = uri.parse()?;
        let mut o = Self::new();
        o.memory = uri.scheme == Scheme::Memory;
        if o.memory && !cfg!(feature = "memory") {
            return Err(Error::InvalidArgument(
                "memory:// needs lepus's `memory` feature".into(),
            ));
        }
        o.host = uri.host;
        o.port = uri.port;
        o.vhost = uri.vhost;
        o.sasl = Sasl::Plain {
            username: uri.username.clone(),
            password: uri.password.expose().to_string(),
        };
        let q = uri.query;
        for mechanism in &q.auth_mechanism {
            o.sasl = match mechanism.to_ascii_uppercase().as_str() {
                "PLAIN" => Sasl::Plain {
                    username: uri.username.clone(),
                    password: uri.password.expose().to_string(),
                },
                "AMQPLAIN" => Sasl::AmqPlain {
                    username: uri.username.clone(),
                    password: uri.password.expose().to_string(),
                },
                "EXTERNAL" => Sasl::External,
                other => {
                    return Err(Error::InvalidArgument(format!(
                        "unsupported auth_mechanism '{other}' (PLAIN, AMQPLAIN or EXTERNAL)"
                    )))
                }
            };
        }
        if let Some(h) = q.heartbeat {
            o.heartbeat = if h == 0 {
                Heartbeat::Disabled
            } else {
                Heartbeat::Secs(h)
            };
        }
        if let Some(t) = q.connection_timeout {
            o.connect_timeout = t;
            o.handshake_timeout = t;
        }
        if let Some(c) = q.channel_max {
            o.channel_max = c;
        }
        if let Some(f) = q.frame_max {
            o.frame_max(f);
        }
        if q.certfile.is_some() != q.keyfile.is_some() {
            return Err(Error::InvalidArgument(
                "a client certificate needs both certfile and keyfile".into(),
            ));
        }
        if uri.scheme == Scheme::Amqps {
            let mut tls = TlsOptions::new();
            tls.ca_file = q.cacertfile;
            tls.cert_file = q.certfile;
            tls.key_file = q.keyfile;
            if q.verify == Some(Verify::None) {
                tls.verify = false;
            }
            match q.server_name_indication {
                Some(ServerNameIndication::Disabled) => tls.sni = false,
                Some(ServerNameIndication::Name(n)) => tls.server_name = Some(n),
                None => {}
            }
            o.tls = Some(tls);
        }
        Ok(o)
    }

    /// The host to connect to (the first, when there are several).
    pub fn host(&self) -> &str {
        &self.host
    }

    /// Every broker the connection may use, as `host:port`, in the order given.
    pub fn hosts(&self) -> Vec<String> {
        std::iter::once(self.endpoint())
            .chain(self.more_hosts.iter().cloned())
            .map(|e| e.address())
            .collect()
    }

    /// Adds a broker to try when the ones before it cannot be reached: `other`'s address,
    /// vhost, credentials and TLS settings (its other settings are not used).
    ///
    /// Connecting tries every broker once, in the order of the
    /// [failover strategy](Self::failover_strategy), before it fails; the connection then
    /// says which one it is on ([`Connection::address`](crate::Connection::address)).
    ///
    /// # Examples
    ///
    /// ```
    /// use lepus::ConnectionOptions;
    ///
    /// let mut options = ConnectionOptions::from_uri("amqp://app:secret@rabbit-1/orders")?;
    /// let mut second = ConnectionOptions::from_uri("amqp://app:secret@rabbit-2/orders")?;
    /// second.address("10.0.0.2", 5673);
    /// options.add_host(&second);
    /// assert_eq!(options.hosts(), ["rabbit-1:5672", "10.0.0.2:5673"]);
    /// # Ok::<(), lepus::Error>(())
    /// ```
    pub fn add_host(&mut self, other: &ConnectionOptions) -> &mut Self {
        self.more_hosts.push(other.endpoint());
        self.more_hosts.extend(other.more_hosts.iter().cloned());
        self
    }

    /// How the connection recovers after losing its broker (default:
    /// [`RecoveryPolicy::new`](crate::RecoveryPolicy::new), on).
    pub fn recovery(&mut self, policy: crate::RecoveryPolicy) -> &mut Self {
        self.recovery = policy;
        self
    }

    /// No automatic recovery: a lost connection fails every handle at once with the error
    /// that ended it, as a connection without recovery does.
    pub fn no_recovery(&mut self) -> &mut Self {
        self.recovery = crate::RecoveryPolicy::disabled();
        self
    }

    /// In which order connecting tries the brokers (default: round-robin, in the order given).
    pub fn failover_strategy(&mut self, strategy: FailoverStrategy) -> &mut Self {
        self.failover = strategy;
        self
    }

    /// This broker's part of the settings.
    pub(crate) fn endpoint(&self) -> Endpoint {
        Endpoint {
            memory: self.memory,
            host: self.host.clone(),
            port: self.port,
            vhost: self.vhost.clone(),
            sasl: self.sasl.clone(),
            tls: self.tls.clone(),
        }
    }

    /// The options for connecting to each broker, in the order to try them.
    pub(crate) fn attempts(&self) -> Vec<ConnectionOptions> {
        let mut endpoints: Vec<Endpoint> = std::iter::once(self.endpoint())
            .chain(self.more_hosts.iter().cloned())
            .collect();
        if self.failover == FailoverStrategy::Shuffle {
            fastrand::shuffle(&mut endpoints);
        }
        endpoints
            .into_iter()
            .map(|e| {
                let mut o = self.clone();
                o.memory = e.memory;
                o.host = e.host;
                o.port = e.port;
                o.vhost = e.vhost;
                o.sasl = e.sasl;
                o.tls = e.tls;
                o
            })
            .collect()
    }

    /// Sets host and port.
    pub fn address(&mut self, host: impl Into<String>, port: u16) -> &mut Self {
        self.host = host.into();
        self.port = port;
        self
    }

    /// Sets the virtual host.
    pub fn vhost(&mut self, vhost: impl Into<String>) -> &mut Self {
        self.vhost = vhost.into();
        self
    }

    /// Authenticates with PLAIN and these credentials.
    pub fn credentials(
        &mut self,
        username: impl Into<String>,
        password: impl Into<String>,
    ) -> &mut Self {
        self.sasl = Sasl::Plain {
            username: username.into(),
            password: password.into(),
        };
        self
    }

    /// Sets the SASL mechanism and credentials.
    pub fn sasl(&mut self, sasl: Sasl) -> &mut Self {
        self.sasl = sasl;
        self
    }

    /// Connects over TLS with these settings.
    pub fn tls(&mut self, tls: TlsOptions) -> &mut Self {
        self.tls = Some(tls);
        self
    }

    /// Sets the heartbeat rule; see [`Heartbeat`].
    pub fn heartbeat(&mut self, heartbeat: Heartbeat) -> &mut Self {
        self.heartbeat = heartbeat;
        self
    }

    /// Sets the highest channel id to use (the broker's lower limit wins).
    pub fn channel_max(&mut self, channel_max: u16) -> &mut Self {
        self.channel_max = channel_max;
        self
    }

    /// Sets the largest frame (the broker's lower limit wins). Values below 8192 are raised to
    /// 8192, the least RabbitMQ 4.1 and later accept; 0 leaves the choice to the broker.
    pub fn frame_max(&mut self, frame_max: u32) -> &mut Self {
        self.frame_max = if frame_max == 0 {
            0
        } else {
            frame_max.max(MIN_FRAME_MAX)
        };
        self
    }

    /// Limits the TCP connect (and the TLS handshake).
    pub fn connect_timeout(&mut self, timeout: Duration) -> &mut Self {
        self.connect_timeout = timeout;
        self
    }

    /// Limits the AMQP handshake, from the protocol header to `open-ok`.
    pub fn handshake_timeout(&mut self, timeout: Duration) -> &mut Self {
        self.handshake_timeout = timeout;
        self
    }

    /// Limits every request that waits for a reply (declare, bind, qos, consume, get, ...).
    pub fn rpc_timeout(&mut self, timeout: Duration) -> &mut Self {
        self.rpc_timeout = timeout;
        self
    }

    /// How long a close may go without progress (default 10 s): without a byte written
    /// while output is queued, or without close-ok once everything is written. A close that
    /// keeps writing is never cut off, however large its backlog; see
    /// [`Connection::close`](crate::Connection::close).
    pub fn close_timeout(&mut self, timeout: Duration) -> &mut Self {
        self.close_timeout = timeout;
        self
    }

    /// Limits how long a publish waits while the broker has blocked the connection (or the
    /// write buffer is full). `None`, the default, waits until unblocked or disconnected.
    pub fn blocked_publish_timeout(&mut self, timeout: Option<Duration>) -> &mut Self {
        self.blocked_publish_timeout = timeout;
        self
    }

    /// A name for the connection, shown in RabbitMQ's management UI.
    pub fn connection_name(&mut self, name: impl Into<String>) -> &mut Self {
        self.client_properties.insert(
            lepus_wire::ShortStr::from_static("connection_name"),
            name.into(),
        );
        self
    }

    /// The client properties sent to the broker; extend them with your own.
    pub fn client_properties_mut(&mut self) -> &mut FieldTable {
        &mut self.client_properties
    }

    /// The largest message body accepted from the broker (default 128 MiB).
    pub fn max_message_size(&mut self, bytes: u64) -> &mut Self {
        self.max_message_size = bytes;
        self
    }

    /// How many bytes may wait in lepus's write buffer before publishers wait (default 1 MiB,
    /// at least 64 KiB); they go on once it drained to half.
    ///
    /// Publishing without confirms returns as soon as the message is in this buffer, so the
    /// buffer is what a failed connection can lose and what a close must still write. A
    /// smaller one keeps
    /// [`ConnectionStats::messages_written`](crate::ConnectionStats::messages_written) close to
    /// what the application published. On the development machine 1 MiB published 64-byte
    /// messages as fast as 4 MiB (91k against 83k msgs/s, medians of three runs in one
    /// invocation of the peer harness) with a peak RSS of 7 MiB instead of 17.
    pub fn write_buffer_high_water(&mut self, bytes: usize) -> &mut Self {
        self.write_buffer_high_water = bytes.max(64 * 1024);
        self
    }

    /// How long an ack, or a publish on a channel in confirm mode, may wait to be written
    /// together with other output (default 2 ms); [`Duration::ZERO`] writes each at once.
    ///
    /// Waiting saves a cross-thread wake-up per batch, the largest CPU cost of consuming and
    /// of publishing with confirms. Nothing waits that anyone waits on: a publisher awaiting
    /// its confirm writes it at once, and an ack goes out at once when the broker could be
    /// waiting for it under a prefetch limit. See [`manual`](crate::manual).
    pub fn write_coalescing(&mut self, delay: Duration) -> &mut Self {
        self.write_coalescing = delay;
        self
    }

    /// How long the reader may hold off its next read while the broker streams deliveries or
    /// confirms in small batches (default 1 ms; tokio's timer may add up to 1 ms more);
    /// [`Duration::ZERO`] always reads at once.
    ///
    /// Each read costs a wake-up of the reader and of every task it hands deliveries or
    /// confirms to, which is most of the CPU cost of consuming and of publishing with
    /// confirms. While the broker streams small batches, reading a little later brings a
    /// larger batch for the same wake-ups. At tens of thousands of messages a second this
    /// roughly halves lepus's CPU time per message (the README has the measurements), and
    /// raises throughput, since the broker then handles larger batches too.
    ///
    /// The delay only happens when it cannot slow anything down: never while a reply is
    /// awaited or after the application sent something the broker may answer (a request, a
    /// publish without confirms, or one with fewer than 64 confirms outstanding), never when
    /// a prefetch window or the confirms outstanding could run dry meanwhile, and never for
    /// a trickle of messages, whose latency stays as it is. A request made during the delay
    /// ends it at once. [`Connection::stats`](crate::Connection::stats) counts delayed reads.
    /// See [`manual`](crate::manual).
    ///
    /// Delays over 100 ms are taken as 100 ms: the reader also runs the heartbeat timer, and
    /// a batch gathered over longer would only add latency.
    pub fn read_coalescing(&mut self, delay: Duration) -> &mut Self {
        self.read_coalescing = delay.min(Duration::from_millis(100));
        self
    }

    pub(crate) fn proto_config(&self) -> lepus_proto::Config {
        let mut c = lepus_proto::Config::default();
        c.sasl = self.sasl.clone();
        c.vhost = self.vhost.clone();
        c.channel_max = self.channel_max;
        c.frame_max = self.frame_max;
        c.heartbeat = self.heartbeat;
        c.client_properties = self.client_properties.clone();
        c.max_message_size = self.max_message_size;
        c
    }
}

impl fmt::Debug for ConnectionOptions {
    /// Never shows the password.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnectionOptions")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("vhost", &self.vhost)
            .field("sasl", &self.sasl)
            .field("tls", &self.tls)
            .field("heartbeat", &self.heartbeat)
            .field("channel_max", &self.channel_max)
            .field("frame_max", &self.frame_max)
            .field("connect_timeout", &self.connect_timeout)
            .field("rpc_timeout", &self.rpc_timeout)
            .field("write_coalescing", &self.write_coalescing)
            .field("read_coalescing", &self.read_coalescing)
            .field("more_hosts", &self.hosts().get(1..).unwrap_or_default())
            .field("failover", &self.failover)
            .field("recovery", &self.recovery)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn several_brokers_in_one_uri_keep_their_own_settings() {
        let o = ConnectionOptions::from_uri(
            "amqp://a:pa@h1:5672/one?heartbeat=7 ; amqps://b:pb@h2/two;amqp://c:pc@h3:5674/%2f;",
        )
        .unwrap();
        assert_eq!(o.hosts(), ["h1:5672", "h2:5671", "h3:5674"]);
        let attempts = o.attempts();
        let hosts: Vec<_> = attempts
            .iter()
            .map(|a| (a.host.as_str(), a.vhost.as_str(), a.tls.is_some()))
            .collect();
        assert_eq!(
            hosts,
            [
                ("h1", "one", false),
                ("h2", "two", true),
                ("h3", "/", false)
            ]
        );
        for (attempt, user) in attempts.iter().zip(["a", "b", "c"]) {
            assert!(
                matches!(&attempt.sasl, Sasl::Plain { username, .. } if username == user),
                "{:?}",
                attempt.sasl
            );
            // Settings that are not per broker come from the first URI.
            assert_eq!(attempt.heartbeat, Heartbeat::Secs(7));
        }
        // No password shows, for any broker.
        let debug = format!("{o:?}");
        assert!(debug.contains("h3:5674"), "{debug}");
        for password in ["pa", "pb", "pc"] {
            assert!(!debug.contains(&format!("\"{password}\"")), "{debug}");
        }
    }

    #[test]
    fn a_bad_uri_anywhere_in_the_list_is_an_error() {
        assert!(ConnectionOptions::from_uri("amqp://h1;http://h2").is_err());
        assert!(ConnectionOptions::from_uri("amqp://h1;amqp://h2:notaport").is_err());
    }

    #[test]
    fn shuffling_tries_every_broker_once_in_varying_orders() {
        let mut o = ConnectionOptions::from_uri("amqp://h1;amqp://h2;amqp://h3;amqp://h4").unwrap();
        assert_eq!(
            o.attempts()
                .iter()
                .map(|a| a.host.clone())
                .collect::<Vec<_>>(),
            ["h1", "h2", "h3", "h4"]
        );
        o.failover_strategy(FailoverStrategy::Shuffle);
        let mut orders = std::collections::HashSet::new();
        for _ in 0..200 {
            let mut order: Vec<String> = o.attempts().into_iter().map(|a| a.host).collect();
            orders.insert(order.clone());
            order.sort();
            assert_eq!(order, ["h1", "h2", "h3", "h4"]);
        }
        assert!(orders.len() > 5, "{orders:?}");
    }
}
