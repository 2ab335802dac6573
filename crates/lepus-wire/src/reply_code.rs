//! Reply codes, as sent in `connection.close`, `channel.close` and `basic.return`.

use std::fmt;

/// An AMQP reply code.
///
/// An open set: codes lepus does not know round-trip unchanged. The constants are the codes the
/// AMQP 0-9-1 specification defines; [`is_soft`](Self::is_soft) and [`is_hard`](Self::is_hard)
/// say whether a code closes only the channel or the whole connection (spec §1.2, "Constants").
///
/// # Examples
///
/// ```
/// # use lepus_wire as lepus;
/// use lepus::ReplyCode;
///
/// let code = ReplyCode(404);
/// assert_eq!(code, ReplyCode::NOT_FOUND);
/// assert!(code.is_soft());
/// assert_eq!(code.to_string(), "404 NOT_FOUND");
/// ```
#[derive(Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ReplyCode(pub u16);

macro_rules! reply_codes {
    ($($(#[$doc:meta])* $name:ident = $value:literal, $class:ident;)*) => {
        impl ReplyCode {
            $($(#[$doc])* pub const $name: Self = Self($value);)*

            /// The code's name in the spec, such as `NOT_FOUND`, if it is a known code.
            pub fn name(self) -> Option<&'static str> {
                match self.0 {
                    $($value => Some(stringify!($name)),)*
                    _ => None,
                }
            }

            fn class(self) -> Option<ErrorClass> {
                match self.0 {
                    $($value => reply_codes!(@class $class),)*
                    _ => None,
                }
            }
        }

        #[cfg(test)]
        pub(crate) const ALL: &[(&str, u16, Option<&str>)] = &[
            $((stringify!($name), $value, reply_codes!(@spec $class)),)*
        ];
    };
    (@class soft) => { Some(ErrorClass::Soft) };
    (@class hard) => { Some(ErrorClass::Hard) };
    (@class none) => { None };
    (@spec soft) => { Some("soft-error") };
    (@spec hard) => { Some("hard-error") };
    (@spec none) => { None };
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum ErrorClass {
    Soft,
    Hard,
}

reply_codes! {
    /// 200: success; used in a normal close.
    REPLY_SUCCESS = 200, none;
    /// 311: the message was too large for the server to accept (soft).
    CONTENT_TOO_LARGE = 311, soft;
    /// 312: a mandatory message could not be routed to any queue (soft; sent in basic.return).
    NO_ROUTE = 312, soft;
    /// 313: an immediate message had no consumer to take it (soft).
    NO_CONSUMERS = 313, soft;
    /// 320: an operator closed the connection (hard).
    CONNECTION_FORCED = 320, hard;
    /// 402: the virtual host does not exist or is not allowed (hard).
    INVALID_PATH = 402, hard;
    /// 403: the user lacks permission, or authentication failed (soft on a channel).
    ACCESS_REFUSED = 403, soft;
    /// 404: the named queue or exchange does not exist (soft).
    NOT_FOUND = 404, soft;
    /// 405: the resource is exclusively used by another connection (soft).
    RESOURCE_LOCKED = 405, soft;
    /// 406: the request conflicts with the resource's state or settings (soft).
    PRECONDITION_FAILED = 406, soft;
    /// 501: a malformed frame was received (hard).
    FRAME_ERROR = 501, hard;
    /// 502: a frame held an illegal field value (hard).
    SYNTAX_ERROR = 502, hard;
    /// 503: an invalid sequence of frames or methods (hard).
    COMMAND_INVALID = 503, hard;
    /// 504: a channel was used before opening or after closing (hard).
    CHANNEL_ERROR = 504, hard;
    /// 505: a frame arrived that was not expected at that point (hard).
    UNEXPECTED_FRAME = 505, hard;
    /// 506: the server ran out of a resource (hard).
    RESOURCE_ERROR = 506, hard;
    /// 530: the request is not allowed by the server (hard).
    NOT_ALLOWED = 530, hard;
    /// 540: the server does not implement the requested feature (hard).
    NOT_IMPLEMENTED = 540, hard;
    /// 541: the server hit an internal error (hard).
    INTERNAL_ERROR = 541, hard;
}

impl ReplyCode {
    /// Whether the code is a soft error, which closes only the channel.
    pub fn is_soft(self) -> bool {
        self.class() == Some(ErrorClass::Soft)
    }

    /// Whether the code is a hard error, which closes the whole connection.
    ///
    /// Unknown error codes (other than 200) count as hard, the safe reading.
    pub fn is_hard(self) -> bool {
        match self.class() {
            Some(class) => class == ErrorClass::Hard,
            None => self != Self::REPLY_SUCCESS,
        }
    }
}

impl fmt::Display for ReplyCode {
    /// `404 NOT_FOUND`, or the bare number for an unknown code.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(name) => write!(f, "{} {name}", self.0),
            None => write!(f, "{}", self.0),
        }
    }
}

impl fmt::Debug for ReplyCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ReplyCode({self})")
    }
}

impl From<u16> for ReplyCode {
    fn from(code: u16) -> Self {
        Self(code)
    }
}

impl From<ReplyCode> for u16 {
    fn from(code: ReplyCode) -> Self {
        code.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classification() {
        assert!(ReplyCode::NOT_FOUND.is_soft());
        assert!(!ReplyCode::NOT_FOUND.is_hard());
        assert!(ReplyCode::CONNECTION_FORCED.is_hard());
        assert!(!ReplyCode::REPLY_SUCCESS.is_hard());
        assert!(!ReplyCode::REPLY_SUCCESS.is_soft());
        assert!(ReplyCode(599).is_hard());
        assert_eq!(ReplyCode(599).to_string(), "599");
    }
}
