//! SASL mechanisms: the bytes of the client's response, nothing more.

use std::fmt;

use bytes::BytesMut;
use lepus_wire::{FieldTable, LongStr, ShortStr};

/// How the client authenticates (`connection.start-ok`'s mechanism and response).
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Sasl {
    /// `PLAIN`: user name and password (RFC 4616). RabbitMQ's default.
    Plain {
        /// The user name.
        username: String,
        /// The password.
        password: String,
    },
    /// `AMQPLAIN`: user name and password in a field table, as some older brokers want.
    AmqPlain {
        /// The user name.
        username: String,
        /// The password.
        password: String,
    },
    /// `EXTERNAL`: the identity comes from outside AMQP, typically the TLS client certificate.
    External,
}

impl Sasl {
    /// The mechanism's name on the wire.
    pub fn mechanism(&self) -> &'static str {
        match self {
            Self::Plain { .. } => "PLAIN",
            Self::AmqPlain { .. } => "AMQPLAIN",
            Self::External => "EXTERNAL",
        }
    }

    /// The initial response sent in `connection.start-ok`.
    pub fn response(&self) -> LongStr {
        match self {
            Self::Plain { username, password } => {
                let mut r = Vec::with_capacity(2 + username.len() + password.len());
                r.push(0);
                r.extend_from_slice(username.as_bytes());
                r.push(0);
                r.extend_from_slice(password.as_bytes());
                LongStr::from(r)
            }
            Self::AmqPlain { username, password } => {
                // A table's entries without the table's own length prefix.
                let mut table = FieldTable::new();
                table.insert(ShortStr::from_static("LOGIN"), username.clone());
                table.insert(ShortStr::from_static("PASSWORD"), password.clone());
                let mut out = BytesMut::new();
                table.encode_to(&mut out);
                LongStr::from(out.freeze().slice(4..))
            }
            Self::External => LongStr::default(),
        }
    }
}

impl fmt::Debug for Sasl {
    /// Never shows the password.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Plain { username, .. } | Self::AmqPlain { username, .. } => f
                .debug_struct(self.mechanism())
                .field("username", username)
                .field("password", &"********")
                .finish(),
            Self::External => f.write_str("EXTERNAL"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_response() {
        let s = Sasl::Plain {
            username: "guest".into(),
            password: "pw".into(),
        };
        assert_eq!(s.response(), "\0guest\0pw");
        assert!(!format!("{s:?}").contains("pw\""));
    }

    #[test]
    fn amqplain_response_is_table_without_length() {
        let s = Sasl::AmqPlain {
            username: "u".into(),
            password: "p".into(),
        };
        let mut expected = vec![5];
        expected.extend_from_slice(b"LOGINS\0\0\0\x01u");
        expected.push(8);
        expected.extend_from_slice(b"PASSWORDS\0\0\0\x01p");
        assert_eq!(s.response().as_bytes(), &expected[..]);
    }
}
