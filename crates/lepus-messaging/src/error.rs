//! The messaging layer's error type.

use lepus::ReturnedMessage;

/// A boxed error from a serializer or a compression codec.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// What can go wrong in the messaging layer.
///
/// Each variant reads as one line for a person; match on it to react. Errors of the client
/// underneath (a closed channel, a lost connection, a refused declaration) come through as
/// [`Error::Amqp`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A message's content type is not in the consumer's accept list (kombu's
    /// `ContentDisallowed`).
    #[error("refusing to decode content of type {content_type}: it is not in the accept list")]
    ContentDisallowed {
        /// The refused content type, as the message carried it.
        content_type: String,
    },
    /// No serializer of that name or content type is registered (kombu's
    /// `SerializerNotInstalled`).
    #[error("no serializer named or typed {0:?} is installed")]
    SerializerNotInstalled(String),
    /// A value could not be serialized.
    #[error("cannot encode the value with {serializer}: {source}")]
    Encode {
        /// The serializer's name.
        serializer: String,
        /// What the serializer said.
        #[source]
        source: BoxError,
    },
    /// A body could not be deserialized (kombu's `DecodeError`).
    #[error("cannot decode the {content_type} body: {source}")]
    Decode {
        /// The message's content type.
        content_type: String,
        /// What the serializer said.
        #[source]
        source: BoxError,
    },
    /// No compression method of that name or MIME type is compiled in.
    #[error("no compression method named or typed {0:?} is installed (is its cargo feature on?)")]
    CompressionNotInstalled(String),
    /// A body could not be compressed or decompressed.
    #[error("cannot {operation} the body with {method}: {source}")]
    Compression {
        /// `"compress"` or `"decompress"`.
        operation: &'static str,
        /// The method's MIME type.
        method: String,
        /// What the codec said.
        #[source]
        source: BoxError,
    },
    /// A compressed body would inflate beyond the limit: refused before it is allocated.
    #[error("the {method} body inflates beyond the limit of {limit} bytes")]
    DecompressedTooLarge {
        /// The method's MIME type.
        method: String,
        /// The limit, in bytes.
        limit: usize,
    },
    /// A message was settled (acked, rejected, requeued) twice (kombu's `MessageStateError`).
    #[error("the message was already settled: {0}")]
    MessageState(crate::message::MessageState),
    /// An entity's definition is one RabbitMQ would refuse; refused here instead.
    #[error("invalid {entity}: {reason}")]
    InvalidDeclaration {
        /// The entity, such as `queue 'jobs'`.
        entity: String,
        /// Why.
        reason: String,
    },
    /// The broker nacked a published message: it did not take responsibility for it.
    #[error(
        "the broker nacked the message published to {exchange:?} with routing key {routing_key:?}"
    )]
    Nacked {
        /// The exchange it was published to.
        exchange: String,
        /// Its routing key.
        routing_key: String,
    },
    /// A mandatory message could not be routed and came back (`basic.return`).
    #[error("the broker returned the message: {} {} (exchange {:?}, routing key {:?})",
        .0.reply_code.0, .0.reply_text, .0.exchange.as_str(), .0.routing_key.as_str())]
    Returned(Box<ReturnedMessage>),
    /// The connection was lost before the broker confirmed the message, and recovery could
    /// not publish it again: it may or may not have reached the broker.
    #[error("the connection was lost before the broker confirmed the message published to {exchange:?} with routing key {routing_key:?}: it may or may not have arrived")]
    Uncertain {
        /// The exchange it was published to.
        exchange: String,
        /// Its routing key.
        routing_key: String,
    },
    /// The publish's retry policy ran out of attempts; the last error is attached.
    #[error("gave up publishing after {attempts} attempts: {last}")]
    RetriesExhausted {
        /// Attempts made.
        attempts: u32,
        /// The last attempt's error.
        #[source]
        last: Box<Error>,
    },
    /// A consumer ended because the broker cancelled it (the queue was deleted, or it failed
    /// over) or its channel closed.
    #[error("the consumer of {queue:?} ended: {reason}")]
    ConsumerEnded {
        /// The queue it consumed from.
        queue: String,
        /// Why.
        reason: String,
    },
    /// A handler panicked; the message was settled per the consumer's policy.
    #[error("the handler panicked: {0}")]
    HandlerPanicked(String),
    /// No message arrived within the time asked for.
    #[error("timed out after {0:?}")]
    Timeout(std::time::Duration),
    /// The client underneath failed: a closed channel or connection, or a refused command.
    #[error(transparent)]
    Amqp(#[from] lepus::Error),
}

impl Error {
    /// Whether retrying the same operation later (on a new or recovered connection) can
    /// succeed: a lost connection, not a refused declaration or a bad value.
    pub fn is_recoverable(&self) -> bool {
        match self {
            Self::Amqp(e) => amqp_recoverable(e),
            Self::Uncertain { .. } => true,
            _ => false,
        }
    }
}

/// A connection-level failure or a transient channel error (kombu's
/// `recoverable_connection_errors` and py-amqp's 311/313/405 channel errors): not a 403, 404
/// or 406, which would fail the same way again.
pub(crate) fn amqp_recoverable(e: &lepus::Error) -> bool {
    use lepus::ReplyCode;
    match e {
        lepus::Error::ChannelClosed(close) => matches!(
            close.code,
            ReplyCode::CONTENT_TOO_LARGE | ReplyCode::NO_CONSUMERS | ReplyCode::RESOURCE_LOCKED
        ),
        lepus::Error::AuthenticationFailed(_)
        | lepus::Error::Uri(_)
        | lepus::Error::InvalidArgument(_)
        | lepus::Error::InvalidState(_)
        | lepus::Error::NotAmqp { .. } => false,
        lepus::Error::ConnectionClosed(_) => !matches!(
            e.reply_code(),
            Some(ReplyCode::ACCESS_REFUSED | ReplyCode::NOT_ALLOWED | ReplyCode::COMMAND_INVALID)
        ),
        other => {
            other.is_retryable()
                || other.is_connection_error()
                || matches!(other, lepus::Error::ChannelNotOpen(_))
        }
    }
}

/// The messaging layer's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
