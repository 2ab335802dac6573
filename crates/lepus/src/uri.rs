//! AMQP URI parsing, following RabbitMQ's URI specification
//! (<https://www.rabbitmq.com/docs/uri-spec>) and its query parameters
//! (<https://www.rabbitmq.com/docs/uri-query-parameters>).
//!
//! URIs carry credentials, so nothing here ever prints the password: not [`AmqpUri`]'s `Debug` or
//! `Display`, and not any [`UriError`] message.

use std::fmt;
use std::net::Ipv6Addr;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use percent_encoding::{percent_decode_str, utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};

/// What `Debug`/`Display` print in place of a password.
const MASK: &str = "********";

/// Stands in for a value in an error message when that value might be a fragment of the password.
const REDACTED: &str = "<redacted>";

/// A parsed `amqp://` or `amqps://` URI.
///
/// Missing parts are filled with RabbitMQ's defaults: host `localhost`, the scheme's port,
/// user and password `guest`, vhost `/`.
///
/// # The vhost
///
/// The path names the vhost, percent-encoded, so the default vhost `/` is written `%2f`:
///
/// | URI | vhost |
/// |---|---|
/// | `amqp://host` | `/` (no path: the default) |
/// | `amqp://host/%2f` | `/` |
/// | `amqp://host//` | `/`, for compatibility with kombu and Celery, which write it so |
/// | `amqp://host/orders` | `orders` |
/// | `amqp://host/` | the empty vhost, as the RabbitMQ URI spec says |
///
/// `amqp://host//` breaks the RabbitMQ URI spec (a `/` in the vhost must be `%2f`), but kombu
/// users write it everywhere and mean `/`, so lepus accepts it; no other unencoded `/` is.
/// The empty vhost rarely exists: when the broker refuses it, the connection error says that
/// the default vhost is `/`, written `%2f`.
///
/// ```
/// use lepus::uri::AmqpUri;
///
/// assert_eq!(AmqpUri::parse("amqp://host/%2f")?.vhost, "/");
/// assert_eq!(AmqpUri::parse("amqp://host//")?.vhost, "/");
/// assert_eq!(AmqpUri::parse("amqp://host/")?.vhost, "");
/// # Ok::<(), lepus::uri::UriError>(())
/// ```
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct AmqpUri {
    /// `amqp` or `amqps`.
    pub scheme: Scheme,
    /// Host name or IP address; IPv6 literals are stored without brackets.
    pub host: String,
    /// TCP port.
    pub port: u16,
    /// User name for authentication.
    pub username: String,
    /// Password for authentication; masked when printed.
    pub password: Password,
    /// Virtual host; `""` is a legitimate (if unusual) vhost distinct from `/` (see
    /// [the table above](Self#the-vhost)).
    pub vhost: String,
    /// Query parameters.
    pub query: UriQuery,
}

/// The URI scheme, which selects plain TCP or TLS.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum Scheme {
    /// `amqp://`: plain TCP.
    Amqp,
    /// `amqps://`: TLS.
    Amqps,
    /// `memory://NAME`: the in-process broker `NAME` (the process's default one when the name
    /// is empty); see [`crate::memory`]. No host or port: the name takes the host's place.
    Memory,
}

/// Query parameters recognised in an AMQP URI; `None` means "not given".
#[derive(Clone, PartialEq, Eq, Debug, Default)]
pub struct UriQuery {
    /// `heartbeat`: heartbeat timeout in seconds (0 disables heartbeats).
    pub heartbeat: Option<u16>,
    /// `connection_timeout`: TCP connect timeout (milliseconds in the URI).
    pub connection_timeout: Option<Duration>,
    /// `channel_max`: maximum channel number (0 means no limit).
    pub channel_max: Option<u16>,
    /// `frame_max`: maximum frame size in bytes (0 means no limit).
    pub frame_max: Option<u32>,
    /// `auth_mechanism`: SASL mechanisms to offer, in preference order (the key may repeat).
    pub auth_mechanism: Vec<String>,
    /// `cacertfile`: CA certificate bundle used to verify the server.
    pub cacertfile: Option<PathBuf>,
    /// `certfile`: client certificate.
    pub certfile: Option<PathBuf>,
    /// `keyfile`: client private key.
    pub keyfile: Option<PathBuf>,
    /// `verify`: whether to verify the server's certificate.
    pub verify: Option<Verify>,
    /// `server_name_indication`: TLS SNI override, or `disable`.
    pub server_name_indication: Option<ServerNameIndication>,
    /// `fail_if_no_peer_cert`: documented by RabbitMQ; meaningful for servers only.
    pub fail_if_no_peer_cert: Option<bool>,
}

/// The `verify` query parameter.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum Verify {
    /// `verify_peer`: verify the server certificate.
    Peer,
    /// `verify_none`: accept any server certificate.
    None,
}

/// The `server_name_indication` query parameter.
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub enum ServerNameIndication {
    /// `disable`: send no SNI extension.
    Disabled,
    /// Send this name instead of the URI's host.
    Name(String),
}

/// A password whose `Debug` and `Display` print `********`, so it cannot leak into logs by
/// accident; call [`Password::expose`] to get at the secret.
#[derive(Clone, PartialEq, Eq)]
pub struct Password(String);

/// Why a string is not a valid AMQP URI. No message ever contains the password, and quoted values
/// are escaped so a message stays on one line.
#[derive(Clone, PartialEq, Eq, Debug, thiserror::Error)]
#[non_exhaustive]
pub enum UriError {
    /// The scheme is well-formed but is neither `amqp` nor `amqps`.
    #[error("unsupported uri scheme {} (expected amqp, amqps or memory)", Quoted(.0))]
    UnsupportedScheme(String),
    /// The string does not start with `scheme://`.
    #[error("missing uri scheme (expected amqp://, amqps:// or memory://)")]
    MissingScheme,
    /// The port is not a number from 1 to 65535.
    #[error("invalid port {} (expected a number from 1 to 65535)", Quoted(.0))]
    InvalidPort(String),
    /// The host is malformed (bad IPv6 literal, forbidden characters).
    #[error("invalid host {}", Quoted(.0))]
    InvalidHost(String),
    /// The path holds an unencoded `/`, i.e. more than one segment.
    #[error("invalid vhost {} (a `/` inside the vhost must be encoded as %2f)", Quoted(.0))]
    InvalidVhost(String),
    /// A `%` escape is malformed or decodes to invalid UTF-8.
    #[error("invalid percent-encoding in {part}")]
    InvalidPercentEncoding {
        /// Which part of the URI: `username`, `password`, `host`, `vhost` or `query`.
        part: &'static str,
    },
    /// A query parameter that lepus does not know; rejected so typos are not silently ignored.
    #[error("unknown query parameter {}", Quoted(.0))]
    UnknownQueryParameter(String),
    /// A known query parameter with a value of the wrong form.
    #[error(
        "invalid value {} for query parameter {} (expected {expected})",
        Quoted(value),
        Quoted(key)
    )]
    InvalidQueryValue {
        /// The parameter name.
        key: String,
        /// The decoded value.
        value: String,
        /// What the value should look like.
        expected: &'static str,
    },
}

impl AmqpUri {
    /// Parses an `amqp://` or `amqps://` URI.
    pub fn parse(s: &str) -> Result<Self, UriError> {
        let (scheme, rest) = s.split_once("://").ok_or(UriError::MissingScheme)?;
        let scheme = parse_scheme(scheme)?;

        // The authority ends at the first `/` or `?` (RFC 3986). `#` is deliberately not a
        // delimiter: AMQP URIs have no fragments, and `#` is common in passwords.
        let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
        let (authority, tail) = rest.split_at_checked(authority_end).unwrap_or((rest, ""));

        // An `@` after the authority usually means the password held an unencoded `/` or `?`,
        // which cut the authority short; then host, port, vhost and query text may be pieces
        // of the password, so errors must not echo them.
        let hide = tail.contains('@');
        let (path, query) = match tail.split_once('?') {
            Some((path, query)) => (path, Some(query)),
            None => (tail, None),
        };

        // Splitting at the last `@` keeps an unencoded `@` in the password out of the host.
        let (userinfo, hostport) = match authority.rsplit_once('@') {
            Some((userinfo, hostport)) => (Some(userinfo), hostport),
            None => (None, authority),
        };
        let (username, password) = match userinfo {
            None => ("guest".to_owned(), "guest".to_owned()),
            Some(userinfo) => match userinfo.split_once(':') {
                Some((user, pass)) => (decode(user, "username")?, decode(pass, "password")?),
                None => (decode(userinfo, "username")?, "guest".to_owned()),
            },
        };

        // Without an `@`, a forgotten host turns `user:pass` into `host:port`, so host and port
        // text may be the password itself.
        let hide_authority =
            hide || (userinfo.is_none() && !hostport.starts_with('[') && hostport.contains(':'));
        let (host, port) = if scheme == Scheme::Memory {
            // The broker's name stands where the host would: any text without a port.
            (decode(hostport, "host")?, None)
        } else {
            parse_host_port(hostport, hide_authority)?
        };
        Ok(Self {
            scheme,
            host,
            port: port.unwrap_or_else(|| scheme.default_port()),
            username,
            password: Password(password),
            vhost: parse_vhost(path, hide)?,
            query: query.map_or_else(|| Ok(UriQuery::default()), |q| parse_query(q, hide))?,
        })
    }
}

impl FromStr for AmqpUri {
    type Err = UriError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl fmt::Display for AmqpUri {
    /// Renders a URI that parses back to `self` except for the password, which is masked so the
    /// output is safe to log. Port and vhost are always explicit.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://{}:{MASK}@", self.scheme, encode(&self.username))?;
        if self.host.contains(':') {
            write!(f, "[{}]", self.host)?;
        } else {
            write!(f, "{}", encode(&self.host))?;
        }
        write!(f, ":{}/{}", self.port, encode(&self.vhost))?;
        for (i, (key, value)) in self.query.pairs().enumerate() {
            let sep = if i == 0 { '?' } else { '&' };
            write!(f, "{sep}{key}={}", encode(&value))?;
        }
        Ok(())
    }
}

impl Scheme {
    /// The IANA port for the scheme: 5672 for `amqp`, 5671 for `amqps`.
    pub fn default_port(self) -> u16 {
        match self {
            Self::Amqp => 5672,
            Self::Amqps => 5671,
            Self::Memory => 0,
        }
    }
}

impl fmt::Display for Scheme {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Amqp => "amqp",
            Self::Amqps => "amqps",
            Self::Memory => "memory",
        })
    }
}

impl Password {
    /// Returns the secret itself.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl From<String> for Password {
    fn from(s: String) -> Self {
        Self(s)
    }
}

impl From<&str> for Password {
    fn from(s: &str) -> Self {
        Self(s.to_owned())
    }
}

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(MASK)
    }
}

impl fmt::Display for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(MASK)
    }
}

impl UriQuery {
    /// The parameters that are set, as URI key/value pairs in a fixed order.
    fn pairs(&self) -> impl Iterator<Item = (&'static str, String)> + '_ {
        let path = |p: &Option<PathBuf>| p.as_ref().map(|p| p.to_string_lossy().into_owned());
        let verify = self.verify.map(|v| match v {
            Verify::Peer => "verify_peer".to_owned(),
            Verify::None => "verify_none".to_owned(),
        });
        let sni = self.server_name_indication.as_ref().map(|v| match v {
            ServerNameIndication::Disabled => "disable".to_owned(),
            ServerNameIndication::Name(name) => name.clone(),
        });
        let singles = [
            ("heartbeat", self.heartbeat.map(|v| v.to_string())),
            (
                "connection_timeout",
                self.connection_timeout.map(|v| v.as_millis().to_string()),
            ),
            ("channel_max", self.channel_max.map(|v| v.to_string())),
            ("frame_max", self.frame_max.map(|v| v.to_string())),
            ("cacertfile", path(&self.cacertfile)),
            ("certfile", path(&self.certfile)),
            ("keyfile", path(&self.keyfile)),
            ("verify", verify),
            ("server_name_indication", sni),
            (
                "fail_if_no_peer_cert",
                self.fail_if_no_peer_cert.map(|v| v.to_string()),
            ),
        ];
        let mechanisms = self
            .auth_mechanism
            .iter()
            .map(|m| ("auth_mechanism", m.clone()));
        singles
            .into_iter()
            .filter_map(|(k, v)| Some((k, v?)))
            .chain(mechanisms)
    }
}

/// Everything but RFC 3986 unreserved characters gets encoded, which is valid in every URI
/// component and so keeps `Display` simple.
const COMPONENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

fn encode(s: &str) -> percent_encoding::PercentEncode<'_> {
    utf8_percent_encode(s, COMPONENT)
}

fn parse_scheme(s: &str) -> Result<Scheme, UriError> {
    // Text before `://` that is not even scheme-shaped means there was no scheme; reporting it
    // as an unsupported scheme could echo credentials (`user:pass@host/x://`).
    let mut chars = s.chars();
    let well_formed = chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
    if !well_formed {
        return Err(UriError::MissingScheme);
    }
    match s.to_ascii_lowercase().as_str() {
        "amqp" => Ok(Scheme::Amqp),
        "amqps" => Ok(Scheme::Amqps),
        "memory" => Ok(Scheme::Memory),
        _ => Err(UriError::UnsupportedScheme(s.to_owned())),
    }
}

/// Returns the decoded host (defaulted) and the port if one was given.
fn parse_host_port(hostport: &str, hide: bool) -> Result<(String, Option<u16>), UriError> {
    let bad_host = |text: &str| UriError::InvalidHost(shown(text, hide));
    let (host, port) = if let Some(bracketed) = hostport.strip_prefix('[') {
        let (addr, after) = bracketed
            .split_once(']')
            .ok_or_else(|| bad_host(hostport))?;
        addr.parse::<Ipv6Addr>().map_err(|_| bad_host(hostport))?;
        let port = match after {
            "" => None,
            after => Some(after.strip_prefix(':').ok_or_else(|| bad_host(hostport))?),
        };
        (addr.to_owned(), port)
    } else {
        let (host, port) = match hostport.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (hostport, None),
        };
        // Most likely an IPv6 literal without brackets.
        if port.is_some_and(|p| p.contains(':')) {
            return Err(bad_host(hostport));
        }
        let host = decode(host, "host")?;
        let forbidden = |c: char| c.is_control() || c.is_whitespace() || "/?#@[]:%".contains(c);
        if host.contains(forbidden) {
            return Err(bad_host(&host));
        }
        (host, port)
    };
    let port = match port {
        // RFC 3986 allows an empty port, meaning the default.
        None | Some("") => None,
        Some(p) => match number::<u16>(p) {
            Some(n) if n != 0 => Some(n),
            _ => return Err(UriError::InvalidPort(shown(p, hide))),
        },
    };
    let host = if host.is_empty() {
        "localhost".to_owned()
    } else {
        host
    };
    Ok((host, port))
}

fn parse_vhost(path: &str, hide: bool) -> Result<String, UriError> {
    // No path at all means the default vhost, but a bare `/` means the empty vhost: the spec
    // distinguishes the two, so `amqp://host/` is not `amqp://host`.
    let Some(segment) = path.strip_prefix('/') else {
        return Ok("/".to_owned());
    };
    // kombu (and so Celery) writes the default vhost as `amqp://host//`; the spec wants `%2f`.
    if segment == "/" {
        return Ok("/".to_owned());
    }
    if segment.contains('/') {
        return Err(UriError::InvalidVhost(shown(segment, hide)));
    }
    decode(segment, "vhost")
}

fn parse_query(query: &str, hide: bool) -> Result<UriQuery, UriError> {
    let mut q = UriQuery::default();
    for pair in query.split('&').filter(|pair| !pair.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        // Query strings follow the form-encoding convention (as RabbitMQ's own parser and most
        // clients do), so `+` means a space; `Display` encodes a literal `+` as `%2B`.
        let key = decode(&key.replace('+', " "), "query")?;
        let value = decode(&value.replace('+', " "), "query")?;
        let invalid = |expected| UriError::InvalidQueryValue {
            key: key.clone(),
            value: shown(&value, hide),
            expected,
        };
        let non_empty = |expected| {
            (!value.is_empty())
                .then_some(())
                .ok_or_else(|| invalid(expected))
        };
        match key.as_str() {
            "heartbeat" => q.heartbeat = Some(number(&value).ok_or_else(|| invalid(U16))?),
            "connection_timeout" => {
                let ms = number(&value).ok_or_else(|| invalid("a number of milliseconds"))?;
                q.connection_timeout = Some(Duration::from_millis(ms));
            }
            "channel_max" => q.channel_max = Some(number(&value).ok_or_else(|| invalid(U16))?),
            "frame_max" => q.frame_max = Some(number(&value).ok_or_else(|| invalid(U32))?),
            "auth_mechanism" => {
                non_empty("a mechanism name such as PLAIN")?;
                q.auth_mechanism.push(value.clone());
            }
            "cacertfile" | "certfile" | "keyfile" => {
                non_empty("a file path")?;
                let path = Some(PathBuf::from(&value));
                match key.as_str() {
                    "cacertfile" => q.cacertfile = path,
                    "certfile" => q.certfile = path,
                    _ => q.keyfile = path,
                }
            }
            "verify" => {
                q.verify = Some(match value.as_str() {
                    "verify_peer" => Verify::Peer,
                    "verify_none" => Verify::None,
                    _ => return Err(invalid("verify_peer or verify_none")),
                });
            }
            "server_name_indication" => {
                non_empty("a server name or disable")?;
                q.server_name_indication = Some(match value.as_str() {
                    "disable" => ServerNameIndication::Disabled,
                    name => ServerNameIndication::Name(name.to_owned()),
                });
            }
            "fail_if_no_peer_cert" => {
                q.fail_if_no_peer_cert = Some(match value.as_str() {
                    "true" => true,
                    "false" => false,
                    _ => return Err(invalid("true or false")),
                });
            }
            _ => return Err(UriError::UnknownQueryParameter(shown(&key, hide))),
        }
    }
    Ok(q)
}

const U16: &str = "a number from 0 to 65535";
const U32: &str = "a number from 0 to 4294967295";

/// `text` for an error message, or a placeholder when it may be part of the password.
fn shown(text: &str, hide: bool) -> String {
    if hide { REDACTED } else { text }.to_owned()
}

/// A value in an error message: in double quotes, with control characters, quotes and
/// backslashes escaped so that the message stays on one line.
struct Quoted<'a>(&'a str);

impl fmt::Display for Quoted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "\"{}\"", self.0.escape_debug())
    }
}

/// Parses plain decimal digits; unlike `str::parse` alone, rejects a leading `+`.
fn number<T: FromStr>(s: &str) -> Option<T> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// Percent-decodes `s`, rejecting malformed escapes (which `percent_decode_str` would pass
/// through unchanged, hiding a typo) and non-UTF-8 results.
fn decode(s: &str, part: &'static str) -> Result<String, UriError> {
    let well_formed = s.split('%').skip(1).all(|after| {
        let mut hex = after.chars();
        matches!((hex.next(), hex.next()), (Some(a), Some(b))
            if a.is_ascii_hexdigit() && b.is_ascii_hexdigit())
    });
    if !well_formed {
        return Err(UriError::InvalidPercentEncoding { part });
    }
    match percent_decode_str(s).decode_utf8() {
        Ok(decoded) => Ok(decoded.into_owned()),
        Err(_) => Err(UriError::InvalidPercentEncoding { part }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> AmqpUri {
        AmqpUri::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    fn err(s: &str) -> UriError {
        AmqpUri::parse(s).map_or_else(|e| e, |uri| panic!("{s} parsed as {uri:?}"))
    }

    /// Checks `user|password|host|port|vhost` for each input.
    fn check(cases: &[(&str, &str)]) {
        for &(s, expected) in cases {
            let u = parse(s);
            let (pass, vhost) = (u.password.expose(), &u.vhost);
            let got = format!("{}|{pass}|{}|{}|{vhost}", u.username, u.host, u.port);
            assert_eq!(got, expected, "{s}");
        }
    }

    #[test]
    fn spec_examples() {
        check(&[
            (
                "amqp://user:pass@host:10000/vhost",
                "user|pass|host|10000|vhost",
            ),
            (
                "amqp://user%61:%61pass@ho%61st:10000/v%2fhost",
                "usera|apass|hoast|10000|v/host",
            ),
            ("amqp://", "guest|guest|localhost|5672|/"),
            ("amqp://:@/", "||localhost|5672|"),
            ("amqp://user@", "user|guest|localhost|5672|/"),
            ("amqp://user:pass@", "user|pass|localhost|5672|/"),
            ("amqp://host", "guest|guest|host|5672|/"),
            ("amqp://:10000", "guest|guest|localhost|10000|/"),
            ("amqp:///vhost", "guest|guest|localhost|5672|vhost"),
            ("amqp://host/", "guest|guest|host|5672|"),
            ("amqp://host/%2f", "guest|guest|host|5672|/"),
            ("amqp://host/%2F", "guest|guest|host|5672|/"),
            ("amqp://[::1]", "guest|guest|::1|5672|/"),
        ]);
    }

    #[test]
    fn kombu_double_slash_is_the_default_vhost() {
        check(&[
            ("amqp://host//", "guest|guest|host|5672|/"),
            ("amqp://u:p@host:5673//", "u|p|host|5673|/"),
            ("amqp://u:p@host//?heartbeat=5", "u|p|host|5672|/"),
            ("amqp:////", "guest|guest|localhost|5672|/"),
        ]);
        assert_eq!(parse("amqp://host//?heartbeat=5").query.heartbeat, Some(5));
        // Only the bare `//`: any other unencoded `/` is still an error with the %2f hint.
        assert_eq!(
            err("amqp://host//x").to_string(),
            "invalid vhost \"/x\" (a `/` inside the vhost must be encoded as %2f)"
        );
    }

    #[test]
    fn error_texts_quote_and_escape_values() {
        let cases = [
            (
                "http://h",
                "unsupported uri scheme \"http\" (expected amqp, amqps or memory)",
            ),
            (
                "amqp://u@h:99999",
                "invalid port \"99999\" (expected a number from 1 to 65535)",
            ),
            ("amqp://a%0Ab%22", "invalid host \"a\\nb\\\"\""),
            ("amqp://h?nope=1", "unknown query parameter \"nope\""),
            (
                "amqp://h?heartbeat=x",
                "invalid value \"x\" for query parameter \"heartbeat\" \
                 (expected a number from 0 to 65535)",
            ),
        ];
        for (uri, text) in cases {
            assert_eq!(err(uri).to_string(), text, "{uri}");
        }
    }

    #[test]
    fn other_authorities() {
        check(&[
            ("amqp://[::1]:5673/v", "guest|guest|::1|5673|v"),
            ("amqp://u:p@[2001:db8::7]:1/", "u|p|2001:db8::7|1|"),
            ("amqp://10.0.0.1:99", "guest|guest|10.0.0.1|99|/"),
            ("amqp://host:", "guest|guest|host|5672|/"),
            ("amqp://host?heartbeat=1", "guest|guest|host|5672|/"),
            ("amqp://host:1?heartbeat=1", "guest|guest|host|1|/"),
            // Unencoded `@`, `:` and `#` in a password are tolerated.
            ("amqp://u:p@ss:w#rd@host/v", "u|p@ss:w#rd|host|5672|v"),
        ]);
    }

    #[test]
    fn scheme_defaults_and_case() {
        let uri = parse("amqps://host");
        assert_eq!((uri.scheme, uri.port), (Scheme::Amqps, 5671));
        assert_eq!(parse("AMQP://host").scheme, Scheme::Amqp);
        assert_eq!(parse("AmQpS://host").port, 5671);
        assert_eq!(parse("amqps://host:5672").port, 5672);
        assert_eq!(Scheme::Amqp.default_port(), 5672);
        assert_eq!(parse("amqp://").query, UriQuery::default());
        let uri: AmqpUri = "amqps://a:b@c:1/d".parse().unwrap();
        assert_eq!(uri, parse("amqps://a:b@c:1/d"));
    }

    #[test]
    fn every_query_parameter() {
        let uri = parse(
            "amqps://host/?heartbeat=30&connection_timeout=2500&channel_max=2047\
             &frame_max=131072&auth_mechanism=EXTERNAL&auth_mechanism=PLAIN\
             &cacertfile=%2Fetc%2Fca.pem&certfile=/etc/cert.pem&keyfile=key+file.pem\
             &verify=verify_peer&server_name_indication=broker.example&fail_if_no_peer_cert=true",
        );
        let expected = UriQuery {
            heartbeat: Some(30),
            connection_timeout: Some(Duration::from_millis(2500)),
            channel_max: Some(2047),
            frame_max: Some(131_072),
            auth_mechanism: vec!["EXTERNAL".to_owned(), "PLAIN".to_owned()],
            cacertfile: Some(PathBuf::from("/etc/ca.pem")),
            certfile: Some(PathBuf::from("/etc/cert.pem")),
            keyfile: Some(PathBuf::from("key file.pem")),
            verify: Some(Verify::Peer),
            server_name_indication: Some(ServerNameIndication::Name("broker.example".into())),
            fail_if_no_peer_cert: Some(true),
        };
        assert_eq!(uri.query, expected);
        assert_eq!(uri.vhost, "");
    }

    #[test]
    fn query_value_variants() {
        let q = parse("amqp://h?verify=verify_none&server_name_indication=disable").query;
        assert_eq!(q.verify, Some(Verify::None));
        assert_eq!(
            q.server_name_indication,
            Some(ServerNameIndication::Disabled)
        );
        let q = parse("amqp://h?fail_if_no_peer_cert=false&heartbeat=0&frame_max=0").query;
        assert_eq!(q.fail_if_no_peer_cert, Some(false));
        assert_eq!((q.heartbeat, q.frame_max), (Some(0), Some(0)));
    }

    #[test]
    fn repeated_key_last_wins_and_empty_pairs_skipped() {
        assert_eq!(
            parse("amqp://h?heartbeat=5&&heartbeat=10&").query.heartbeat,
            Some(10)
        );
        assert_eq!(parse("amqp://h?%68eartbeat=%37").query.heartbeat, Some(7));
        assert_eq!(parse("amqp://h?").query, UriQuery::default());
    }

    #[test]
    fn errors() {
        use UriError::*;
        let bad = |part| InvalidPercentEncoding { part };
        let value = |key: &str, value: &str, expected| InvalidQueryValue {
            key: key.into(),
            value: value.into(),
            expected,
        };
        let cases = [
            ("http://host", UnsupportedScheme("http".into())),
            ("host:5672", MissingScheme),
            ("amqp:/host", MissingScheme),
            ("", MissingScheme),
            ("://host", MissingScheme),
            ("user:pass@host/x://y", MissingScheme),
            ("amqp://u@host:abc", InvalidPort("abc".into())),
            ("amqp://u@host:65536", InvalidPort("65536".into())),
            ("amqp://u@host:0", InvalidPort("0".into())),
            ("amqp://u@host:+1", InvalidPort("+1".into())),
            ("amqp://[::1]:x", InvalidPort("x".into())),
            ("amqp://[::1", InvalidHost("[::1".into())),
            ("amqp://[nope]", InvalidHost("[nope]".into())),
            ("amqp://[::1]x", InvalidHost("[::1]x".into())),
            ("amqp://@::1", InvalidHost("::1".into())),
            ("amqp://a%20b", InvalidHost("a b".into())),
            ("amqp://a%0Ab", InvalidHost("a\nb".into())),
            ("amqp://a]b", InvalidHost("a]b".into())),
            ("amqp://host/a/b", InvalidVhost("a/b".into())),
            ("amqp://host///", InvalidVhost("//".into())),
            ("amqp://host//x", InvalidVhost("/x".into())),
            ("amqp://us%zz@h", bad("username")),
            ("amqp://u:p%4@h", bad("password")),
            ("amqp://h%ff", bad("host")),
            ("amqp://h/v%", bad("vhost")),
            ("amqp://h?heartbeat=%c3%28", bad("query")),
            ("amqp://h?x=5", UnknownQueryParameter("x".into())),
            ("amqp://h?heartbeat=70000", value("heartbeat", "70000", U16)),
            ("amqp://h?frame_max=1.5", value("frame_max", "1.5", U32)),
        ];
        for (s, expected) in cases {
            let msg = err(s).to_string();
            assert_eq!(err(s), expected, "{s}");
            assert!(msg.starts_with(|c: char| c.is_ascii_lowercase()), "{msg}");
            assert!(!msg.ends_with('.') && !msg.contains('\n'), "{msg}");
        }
        let msg = err("amqp://h?connection_timeout=5x").to_string();
        let expected = "invalid value \"5x\" for query parameter \"connection_timeout\" \
                        (expected a number of milliseconds)";
        assert_eq!(msg, expected);
        // Redacted because, with no `@`, `user:pass` looks like `host:port`.
        assert_eq!(err("amqp://host:abc"), InvalidPort(REDACTED.into()));
    }

    #[test]
    fn invalid_query_values() {
        let queries = "heartbeat heartbeat=-1 channel_max=65536 frame_max=4294967296 \
                       connection_timeout=5x verify=yes fail_if_no_peer_cert=1 auth_mechanism= \
                       cacertfile= certfile= keyfile= server_name_indication=";
        for q in queries.split_whitespace() {
            let expected_key = q.split('=').next().unwrap_or_default();
            match err(&format!("amqp://h?{q}")) {
                UriError::InvalidQueryValue { key, .. } => assert_eq!(key, expected_key),
                e => panic!("{q}: {e:?}"),
            }
        }
    }

    #[test]
    fn password_never_printed() {
        let uri = parse("amqps://user:s3cret@host:1234/vh?heartbeat=5");
        assert_eq!(uri.password.expose(), "s3cret");
        for text in [format!("{uri}"), format!("{uri:?}"), format!("{uri:#?}")] {
            assert!(!text.contains("s3cret") && text.contains(MASK), "{text}");
        }
        assert_eq!(format!("{}", uri.password), MASK);
        assert_eq!(format!("{:?}", uri.password), MASK);
        assert_eq!(
            uri.to_string(),
            "amqps://user:********@host:1234/vh?heartbeat=5"
        );
        assert_eq!(Password::from("x"), Password::from(String::from("x")));
        assert_ne!(Password::from("x"), Password::from("y"));
    }

    #[test]
    fn errors_never_echo_password() {
        // Unencoded `/` or `?` in a password, or a forgotten `@host`, put the password where
        // host, port, vhost or query are expected.
        for s in [
            "amqp://user:s3cret@host:x",
            "amqp://user:s3cret@[::1",
            "amqp://user:s3cret@host/a/b",
            "amqp://user:s3cret@host?bogus=1",
            "amqp://user:s3cret@host?heartbeat=x",
            "amqp://user:s3cret%zz@host",
            "amqp://user:s3/cret@host",
            "amqp://user:s3cret/x/y@host",
            "amqp://user:s3?cret@host",
            "amqp://user:s3?cret=1@host",
            "amqp://user:s3?heartbeat=s3cret@host",
            "amqp://s3cret@host:x/a@b",
            "amqp://user:pa/s3cret:x@host",
            "amqp://user:s3cret:x/y@host",
            "amqp://user:s3cret",
            "amqp://user:s3cret/vhost",
            "amqp://user:s3:cret",
            "amqp://us%20er:s3cret",
            "http://user:s3cret@host",
            "user:s3cret@host/x://y",
        ] {
            let e = err(s);
            for text in [e.to_string(), format!("{e:?}")] {
                assert!(!text.contains("s3cret"), "{s}: {text}");
            }
        }
    }

    #[test]
    fn display_round_trips_except_password() {
        for s in [
            "amqp://",
            "amqp://:@/",
            "amqps://us%40er:pw@[::1]:99/v%2fhost",
            "amqp://h%c3%a9st/%20x?auth_mechanism=PLAIN&auth_mechanism=EXTERNAL",
            "amqps://h/?heartbeat=1&connection_timeout=2&channel_max=3&frame_max=4\
             &cacertfile=a%2Bb&certfile=c+d&keyfile=%26&verify=verify_none\
             &server_name_indication=disable&fail_if_no_peer_cert=false",
            "amqps://h?server_name_indication=sni.example&verify=verify_peer",
        ] {
            let mut uri = parse(s);
            let rendered = uri.to_string();
            uri.password = Password::from(MASK);
            assert_eq!(parse(&rendered), uri, "{s} -> {rendered}");
        }
        let shown = |s| parse(s).to_string();
        assert_eq!(shown("amqp://"), "amqp://guest:********@localhost:5672/%2F");
        assert_eq!(shown("amqp://h/"), "amqp://guest:********@h:5672/");
    }
}
