//! Dead-lettering: the `x-death` history RabbitMQ keeps in a message's headers.

use std::sync::Arc;

use lepus_wire::{FieldTable, FieldValue, LongStr, ShortStr};

use super::queue::{Content, Entry};

/// Why a message was dead-lettered, as the `reason` field of `x-death` says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reason {
    Rejected,
    Expired,
    MaxLen,
    DeliveryLimit,
}

impl Reason {
    fn as_str(self) -> &'static str {
        match self {
            Self::Rejected => "rejected",
            Self::Expired => "expired",
            Self::MaxLen => "maxlen",
            Self::DeliveryLimit => "delivery_limit",
        }
    }
}

/// A message on its way to a dead-letter exchange.
#[derive(Debug)]
pub(crate) struct DeadLetter {
    pub(crate) vhost: String,
    pub(crate) exchange: String,
    pub(crate) routing_keys: Vec<String>,
    pub(crate) entry: Entry,
}

/// The routing keys a message was published with: its key, then its `CC` header's.
pub(crate) fn routing_keys(routing_key: &str, headers: Option<&FieldTable>) -> Vec<String> {
    let mut keys = vec![routing_key.to_owned()];
    if let Some(cc) = headers
        .and_then(|h| h.get("CC"))
        .and_then(FieldValue::as_array)
    {
        keys.extend(cc.iter().filter_map(FieldValue::as_str).map(str::to_owned));
    }
    keys
}

/// Rewrites `entry` as RabbitMQ 3.10 dead-letters it from queue `queue`: an `x-death` entry for
/// (queue, reason) is added at the front or counted up and moved there, `x-first-death-*` is
/// set once, and a per-message expiration moves into the entry as `original-expiration`.
/// Returns `None` when the queue has no dead-letter exchange (the message is dropped).
pub(crate) fn dead_letter(
    vhost: &str,
    queue: &str,
    dlx: Option<&str>,
    dlrk: Option<&str>,
    mut entry: Entry,
    reason: Reason,
    unix_time: u64,
) -> Option<DeadLetter> {
    let dlx = dlx?;
    let mut properties = entry.content.properties();
    let mut headers = properties.headers.take().unwrap_or_default();
    let keys = routing_keys(
        entry.content.routing_key.as_str().unwrap_or_default(),
        Some(&headers),
    );
    let mut deaths: Vec<FieldValue> = headers
        .get("x-death")
        .and_then(FieldValue::as_array)
        .map(<[FieldValue]>::to_vec)
        .unwrap_or_default();
    let had_history = !deaths.is_empty();
    let same = |d: &FieldValue| {
        d.as_table().is_some_and(|t| {
            t.get("queue").and_then(FieldValue::as_str) == Some(queue)
                && t.get("reason").and_then(FieldValue::as_str) == Some(reason.as_str())
        })
    };
    let record = if let Some(at) = deaths.iter().position(same) {
        let old = deaths.remove(at);
        let mut table = old.as_table().cloned().unwrap_or_default();
        let count = table.get("count").and_then(FieldValue::as_i64).unwrap_or(0);
        table.insert(ShortStr::from_static("count"), FieldValue::I64(count + 1));
        table.insert(
            ShortStr::from_static("time"),
            FieldValue::Timestamp(unix_time),
        );
        table
    } else {
        let mut table = FieldTable::new()
            .with("count", FieldValue::I64(1))
            .with("reason", long(reason.as_str()))
            .with("queue", long(queue))
            .with("time", FieldValue::Timestamp(unix_time))
            .with(
                "exchange",
                FieldValue::LongStr(LongStr::from(entry.content.exchange.to_bytes())),
            )
            .with(
                "routing-keys",
                FieldValue::Array(keys.iter().map(|k| long(k)).collect()),
            );
        if let Some(exp) = &properties.expiration {
            table.insert(
                ShortStr::from_static("original-expiration"),
                FieldValue::LongStr(LongStr::from(exp.to_bytes())),
            );
        }
        table
    };
    properties.expiration = None;
    // RabbitMQ writes a message's first x-death entry in this order, and sorts the keys of an
    // entry it adds to (or counts up in) an existing history.
    let record = if deaths.is_empty() && !had_history {
        record
    } else {
        let mut pairs: Vec<(ShortStr, FieldValue)> =
            record.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        pairs.sort_by(|a, b| a.0.cmp(&b.0));
        let mut sorted = FieldTable::new();
        for (k, v) in pairs {
            sorted.insert(k, v);
        }
        sorted
    };
    deaths.insert(0, FieldValue::Table(record));
    headers.insert(ShortStr::from_static("x-death"), FieldValue::Array(deaths));
    if !headers.contains_key("x-first-death-reason") {
        headers.insert(
            ShortStr::from_static("x-first-death-reason"),
            long(reason.as_str()),
        );
        headers.insert(ShortStr::from_static("x-first-death-queue"), long(queue));
        headers.insert(
            ShortStr::from_static("x-first-death-exchange"),
            FieldValue::LongStr(LongStr::from(entry.content.exchange.to_bytes())),
        );
    }
    properties.headers = Some(headers);
    entry.redelivered = false;
    let routing_keys = match dlrk {
        Some(k) => vec![k.to_owned()],
        None => keys,
    };
    // Delivered from the dead-letter exchange with the key it was routed with.
    let name = |s: &str| ShortStr::try_from(s).unwrap_or_default();
    entry.content = Arc::new(Content::new(
        &properties,
        entry.content.body.clone(),
        name(dlx),
        routing_keys.first().map(|k| name(k)).unwrap_or_default(),
    ));
    Some(DeadLetter {
        vhost: vhost.to_owned(),
        exchange: dlx.to_owned(),
        routing_keys,
        entry,
    })
}

impl super::queue::Queue {
    /// Dead-letters `entry` from this queue (see [`dead_letter`]).
    pub(crate) fn dead_letter(
        &self,
        vhost: &str,
        entry: Entry,
        reason: Reason,
        unix_time: u64,
    ) -> Option<DeadLetter> {
        dead_letter(
            vhost,
            &self.name,
            self.args.dead_letter_exchange.as_deref(),
            self.args.dead_letter_routing_key.as_deref(),
            entry,
            reason,
            unix_time,
        )
    }
}

/// Whether delivering a dead-lettered message to `queue` would close a cycle RabbitMQ drops:
/// the queue is already in its history and no step of it was a rejection.
pub(crate) fn is_cycle(entry: &Entry, queue: &str) -> bool {
    let properties = entry.content.properties();
    let Some(deaths) = properties
        .headers
        .as_ref()
        .and_then(|h| h.get("x-death"))
        .and_then(FieldValue::as_array)
    else {
        return false;
    };
    let tables = || deaths.iter().filter_map(FieldValue::as_table);
    let seen = tables().any(|t| t.get("queue").and_then(FieldValue::as_str) == Some(queue));
    let rejected =
        tables().any(|t| t.get("reason").and_then(FieldValue::as_str) == Some("rejected"));
    seen && !rejected
}

fn long(s: &str) -> FieldValue {
    FieldValue::LongStr(LongStr::from(s.to_owned()))
}
