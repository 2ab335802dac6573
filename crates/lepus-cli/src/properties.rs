//! Basic properties: `--property NAME=VALUE` on the way in, the `properties` JSON object on the
//! way out.
//!
//! Names are the spec's property names in snake case. `headers` has its own flags
//! (`--header`, `--headers-json`), so `--property` does not take it.

use lepus::{BasicProperties, ShortStr};
use serde::ser::{Serialize, SerializeMap, Serializer};

use crate::table::TableJson;

/// The property names `--property` accepts, in the spec's order.
pub(crate) const NAMES: [&str; 13] = [
    "content_type",
    "content_encoding",
    "delivery_mode",
    "priority",
    "correlation_id",
    "reply_to",
    "expiration",
    "message_id",
    "timestamp",
    "type",
    "user_id",
    "app_id",
    "cluster_id",
];

/// One checked `--property NAME=VALUE`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Property {
    /// `content_type`.
    ContentType(ShortStr),
    /// `content_encoding`.
    ContentEncoding(ShortStr),
    /// `delivery_mode` (1 transient, 2 persistent).
    DeliveryMode(u8),
    /// `priority`.
    Priority(u8),
    /// `correlation_id`.
    CorrelationId(ShortStr),
    /// `reply_to`.
    ReplyTo(ShortStr),
    /// `expiration`, milliseconds as a decimal string.
    Expiration(ShortStr),
    /// `message_id`.
    MessageId(ShortStr),
    /// `timestamp`, seconds since the Unix epoch.
    Timestamp(u64),
    /// `type`.
    Type(ShortStr),
    /// `user_id`.
    UserId(ShortStr),
    /// `app_id`.
    AppId(ShortStr),
    /// `cluster_id`.
    ClusterId(ShortStr),
}

impl Property {
    /// Sets this property on `props`.
    pub(crate) fn apply(&self, props: &mut BasicProperties) {
        match self {
            Self::ContentType(v) => props.content_type = Some(v.clone()),
            Self::ContentEncoding(v) => props.content_encoding = Some(v.clone()),
            Self::DeliveryMode(v) => props.delivery_mode = Some(*v),
            Self::Priority(v) => props.priority = Some(*v),
            Self::CorrelationId(v) => props.correlation_id = Some(v.clone()),
            Self::ReplyTo(v) => props.reply_to = Some(v.clone()),
            Self::Expiration(v) => props.expiration = Some(v.clone()),
            Self::MessageId(v) => props.message_id = Some(v.clone()),
            Self::Timestamp(v) => props.timestamp = Some(*v),
            Self::Type(v) => props.kind = Some(v.clone()),
            Self::UserId(v) => props.user_id = Some(v.clone()),
            Self::AppId(v) => props.app_id = Some(v.clone()),
            Self::ClusterId(v) => props.cluster_id = Some(v.clone()),
        }
    }
}

/// Parses `NAME=VALUE` for `--property`.
///
/// # Errors
///
/// An unknown name, a non-numeric `delivery_mode`/`priority`/`timestamp`/`expiration`, or a
/// value longer than 255 bytes.
pub(crate) fn parse_property(s: &str) -> Result<Property, String> {
    let Some((name, value)) = s.split_once('=') else {
        return Err(format!("'{s}' is not NAME=VALUE"));
    };
    let short = || {
        ShortStr::try_from(value)
            .map_err(|_| format!("the value of {name} is longer than 255 bytes"))
    };
    let octet = || {
        value
            .parse::<u8>()
            .map_err(|_| format!("{name} takes a number from 0 to 255, not '{value}'"))
    };
    Ok(match name {
        "content_type" => Property::ContentType(short()?),
        "content_encoding" => Property::ContentEncoding(short()?),
        "delivery_mode" => Property::DeliveryMode(octet()?),
        "priority" => Property::Priority(octet()?),
        "correlation_id" => Property::CorrelationId(short()?),
        "reply_to" => Property::ReplyTo(short()?),
        "expiration" => {
            value
                .parse::<u64>()
                .map_err(|_| format!("expiration takes milliseconds, not '{value}'"))?;
            Property::Expiration(short()?)
        }
        "message_id" => Property::MessageId(short()?),
        "timestamp" => Property::Timestamp(
            value
                .parse()
                .map_err(|_| format!("timestamp takes seconds since the epoch, not '{value}'"))?,
        ),
        "type" => Property::Type(short()?),
        "user_id" => Property::UserId(short()?),
        "app_id" => Property::AppId(short()?),
        "cluster_id" => Property::ClusterId(short()?),
        other => {
            return Err(format!(
                "unknown property '{other}' (one of: {})",
                NAMES.join(", ")
            ))
        }
    })
}

/// Serializes the properties that are present as a JSON object, in the spec's order, under the
/// snake-case names. `timestamp` is a plain integer of seconds, `expiration` a string,
/// `delivery_mode` and `priority` numbers, `headers` an object (see [`crate::table`]). Short
/// strings that are not UTF-8 are shown with U+FFFD replacements.
pub(crate) struct PropertiesJson<'a>(pub(crate) &'a BasicProperties);

impl Serialize for PropertiesJson<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let p = self.0;
        let mut map = s.serialize_map(None)?;
        short_entry(&mut map, "content_type", &p.content_type)?;
        short_entry(&mut map, "content_encoding", &p.content_encoding)?;
        if let Some(h) = &p.headers {
            map.serialize_entry("headers", &TableJson(h))?;
        }
        if let Some(v) = p.delivery_mode {
            map.serialize_entry("delivery_mode", &v)?;
        }
        if let Some(v) = p.priority {
            map.serialize_entry("priority", &v)?;
        }
        short_entry(&mut map, "correlation_id", &p.correlation_id)?;
        short_entry(&mut map, "reply_to", &p.reply_to)?;
        short_entry(&mut map, "expiration", &p.expiration)?;
        short_entry(&mut map, "message_id", &p.message_id)?;
        if let Some(v) = p.timestamp {
            map.serialize_entry("timestamp", &v)?;
        }
        short_entry(&mut map, "type", &p.kind)?;
        short_entry(&mut map, "user_id", &p.user_id)?;
        short_entry(&mut map, "app_id", &p.app_id)?;
        short_entry(&mut map, "cluster_id", &p.cluster_id)?;
        map.end()
    }
}

/// Writes `name: "value"` when the short-string property is present.
fn short_entry<M: SerializeMap>(
    map: &mut M,
    name: &str,
    v: &Option<ShortStr>,
) -> Result<(), M::Error> {
    match v {
        Some(v) => map.serialize_entry(name, &v.to_string_lossy()),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use lepus::FieldTable;

    use super::*;

    fn s(v: &'static str) -> Option<ShortStr> {
        Some(ShortStr::from_static(v))
    }

    #[test]
    fn every_name_parses_and_applies() {
        let mut props = BasicProperties::default();
        for (name, value) in [
            ("content_type", "text/plain"),
            ("content_encoding", "gzip"),
            ("delivery_mode", "2"),
            ("priority", "5"),
            ("correlation_id", "c1"),
            ("reply_to", "replies"),
            ("expiration", "60000"),
            ("message_id", "m1"),
            ("timestamp", "1700000000"),
            ("type", "order.created"),
            ("user_id", "guest"),
            ("app_id", "lepus"),
            ("cluster_id", "c"),
        ] {
            parse_property(&format!("{name}={value}"))
                .unwrap()
                .apply(&mut props);
        }
        let expected = BasicProperties {
            content_type: s("text/plain"),
            content_encoding: s("gzip"),
            headers: None,
            delivery_mode: Some(2),
            priority: Some(5),
            correlation_id: s("c1"),
            reply_to: s("replies"),
            expiration: s("60000"),
            message_id: s("m1"),
            timestamp: Some(1_700_000_000),
            kind: s("order.created"),
            user_id: s("guest"),
            app_id: s("lepus"),
            cluster_id: s("c"),
        };
        assert_eq!(props, expected);
        assert_eq!(NAMES.len(), 13);
    }

    #[test]
    fn bad_properties_are_refused() {
        assert!(parse_property("nope=1")
            .unwrap_err()
            .contains("unknown property 'nope'"));
        assert!(parse_property("headers=1")
            .unwrap_err()
            .contains("unknown property"));
        assert!(parse_property("contentType=x")
            .unwrap_err()
            .contains("unknown property"));
        assert!(parse_property("priority")
            .unwrap_err()
            .contains("NAME=VALUE"));
        assert!(parse_property("priority=high").is_err());
        assert!(parse_property("priority=256").is_err());
        assert!(parse_property("delivery_mode=-1").is_err());
        assert!(parse_property("timestamp=yesterday").is_err());
        assert!(parse_property("expiration=1.5").is_err());
        assert!(parse_property(&format!("message_id={}", "x".repeat(256))).is_err());
    }

    #[test]
    fn value_may_contain_equals() {
        assert_eq!(
            parse_property("correlation_id=a=b").unwrap(),
            Property::CorrelationId(ShortStr::from_static("a=b"))
        );
    }

    #[test]
    fn json_holds_only_present_properties_in_spec_order() {
        let props = BasicProperties {
            timestamp: Some(1_700_000_000),
            expiration: s("1000"),
            priority: Some(3),
            delivery_mode: Some(2),
            headers: Some(FieldTable::new().with("x", 1.0f64)),
            content_type: s("text/plain"),
            kind: s("t"),
            ..Default::default()
        };
        assert_eq!(
            serde_json::to_string(&PropertiesJson(&props)).unwrap(),
            r#"{"content_type":"text/plain","headers":{"x":1.0},"delivery_mode":2,"priority":3,"expiration":"1000","timestamp":1700000000,"type":"t"}"#
        );
        assert_eq!(
            serde_json::to_string(&PropertiesJson(&BasicProperties::default())).unwrap(),
            "{}"
        );
    }
}
