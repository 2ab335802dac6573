//! W3C trace context from the environment: `lepus publish` continues the trace of whatever
//! ran it (`TRACEPARENT`, `TRACESTATE`, as CI systems and `otel-cli` set them) by putting it
//! in each message's headers, where OpenTelemetry's instrumentations of kombu, pika, Celery and
//! lepus look for it.

use lepus::{BasicProperties, FieldTable, FieldValue, LongStr, ShortStr};

/// The header names, as the W3C Trace Context specification and OpenTelemetry's AMQP
/// propagation use them.
const TRACEPARENT: &str = "traceparent";
const TRACESTATE: &str = "tracestate";

/// Whether `value` is a W3C `traceparent` that may be propagated: version, 32 hex digits of
/// trace id, 16 of parent id, flags; lowercase; not the invalid all-zero ids nor version `ff`.
pub(crate) fn valid_traceparent(value: &str) -> bool {
    let parts: Vec<&str> = value.split('-').collect();
    let [version, trace, parent, flags, rest @ ..] = parts.as_slice() else {
        return false;
    };
    let hex = |s: &str, len: usize| {
        s.len() == len
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    let nonzero = |s: &str| s.bytes().any(|b| b != b'0');
    hex(version, 2)
        && *version != "ff"
        // Version 00 has exactly four fields; later versions may add more.
        && (rest.is_empty() || *version != "00")
        && hex(trace, 32)
        && nonzero(trace)
        && hex(parent, 16)
        && nonzero(parent)
        && hex(flags, 2)
}

/// Adds `traceparent` (and `tracestate`, when given) to the headers, as long strings, unless
/// the message has a `traceparent` already (set with `--header`). An invalid `traceparent` is
/// ignored, as the specification says, with the reason returned for a warning.
pub(crate) fn inject(
    props: &mut BasicProperties,
    traceparent: Option<&str>,
    tracestate: Option<&str>,
) -> Result<(), String> {
    let Some(parent) = traceparent.map(str::trim).filter(|p| !p.is_empty()) else {
        return Ok(());
    };
    if !valid_traceparent(parent) {
        return Err(format!(
            "ignoring TRACEPARENT {parent:?}: not a W3C traceparent (00-<32 hex>-<16 hex>-<2 hex>)"
        ));
    }
    let headers = props.headers.get_or_insert_with(FieldTable::default);
    if headers.contains_key(TRACEPARENT) {
        return Ok(());
    }
    headers.insert(
        ShortStr::from_static(TRACEPARENT),
        FieldValue::LongStr(LongStr::from(parent.to_owned())),
    );
    if let Some(state) = tracestate.map(str::trim).filter(|s| !s.is_empty()) {
        headers.insert(
            ShortStr::from_static(TRACESTATE),
            FieldValue::LongStr(LongStr::from(state.to_owned())),
        );
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const PARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn accepts_what_w3c_accepts() {
        assert!(valid_traceparent(PARENT));
        assert!(valid_traceparent(
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra"
        ));
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "0-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ] {
            assert!(!valid_traceparent(bad), "{bad}");
        }
    }

    #[test]
    fn injects_as_long_strings_and_keeps_an_explicit_header() {
        let mut props = BasicProperties::default();
        inject(&mut props, Some(PARENT), Some("vendor=abc")).unwrap();
        let h = props.headers.as_ref().unwrap();
        assert!(matches!(h.get("traceparent"), Some(FieldValue::LongStr(_))));
        assert_eq!(
            h.get("traceparent").and_then(FieldValue::as_str),
            Some(PARENT)
        );
        assert_eq!(
            h.get("tracestate").and_then(FieldValue::as_str),
            Some("vendor=abc")
        );

        let mut props = BasicProperties::default();
        let mut mine = FieldTable::default();
        mine.insert(ShortStr::from_static("traceparent"), "given");
        props.headers = Some(mine);
        inject(&mut props, Some(PARENT), None).unwrap();
        let h = props.headers.as_ref().unwrap();
        assert_eq!(
            h.get("traceparent").and_then(FieldValue::as_str),
            Some("given")
        );

        let mut props = BasicProperties::default();
        assert!(inject(&mut props, Some("nonsense"), None).is_err());
        assert!(props.headers.is_none());
        inject(&mut props, None, Some("x=y")).unwrap();
        assert!(props.headers.is_none());
    }
}
