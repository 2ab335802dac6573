//! Field tables as JSON, both ways, and the `KEY=VALUE` forms of `--header` and `--arg`.
//!
//! Output (`consume`, `get`), one JSON value per [`FieldValue`]:
//!
//! | field value | JSON |
//! |---|---|
//! | bool | `true` / `false` |
//! | any integer (`b B s u I i l`, and `L` as read by the decoder) | number |
//! | float `f`, double `d` | number, always with a fraction or exponent (`2.0`, `1e+20`) |
//! | long string `S` | string when valid UTF-8, else `{"$bytes": "<base64>"}` |
//! | byte array `x` | `{"$bytes": "<base64>"}`, even when the bytes are UTF-8 |
//! | array `A` | array |
//! | table `F` | object |
//! | void `V` | `null` |
//! | timestamp `T` | `{"$timestamp": <seconds>}` |
//! | decimal `D` | `{"$decimal": "<digits with point>"}`, keeping the scale: `"1.230"` |
//!
//! JSON has no NaN or infinity: such a float prints as `{"$double": "NaN"}` (or `"Infinity"`,
//! `"-Infinity"`), which the input side reads back.
//!
//! Input (`--headers-json`, `--args-json`) takes the same mapping the other way. A number with
//! a `.` or an exponent becomes a double (`d`); a plain integer becomes a signed 32-bit `I` when
//! it fits and a signed 64-bit `l` otherwise (an integer beyond 64 bits is an error, never a
//! silent double). An object is a tagged value only when it has exactly one key and that key
//! starts with `$` (`$bytes`, `$timestamp`, `$decimal`, `$double`); any other object is a
//! nested table. The top level of `--headers-json`/`--args-json` is always the table itself.
//!
//! Numbers are classified from their JSON text (through [`RawValue`]), so `2.0` stays a double
//! and `99999999999999999999` is refused instead of being rounded to a float.

use std::fmt;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use lepus::bytes::Bytes;
use lepus::lepus_wire::Decimal;
use lepus::{FieldTable, FieldValue, LongStr, ShortStr};
use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};
use serde::ser::{Serialize, SerializeMap, SerializeSeq, Serializer};
use serde_json::value::RawValue;

/// Serializes a [`FieldTable`] as a JSON object, entries in table order.
pub(crate) struct TableJson<'a>(pub(crate) &'a FieldTable);

/// Serializes one [`FieldValue`] following the module's mapping.
pub(crate) struct ValueJson<'a>(pub(crate) &'a FieldValue);

impl Serialize for TableJson<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(self.0.len()))?;
        for (key, value) in self.0 {
            map.serialize_entry(&key.to_string_lossy(), &ValueJson(value))?;
        }
        map.end()
    }
}

impl Serialize for ValueJson<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.0 {
            FieldValue::Bool(v) => s.serialize_bool(*v),
            FieldValue::I8(v) => s.serialize_i8(*v),
            FieldValue::U8(v) => s.serialize_u8(*v),
            FieldValue::I16(v) => s.serialize_i16(*v),
            FieldValue::U16(v) => s.serialize_u16(*v),
            FieldValue::I32(v) => s.serialize_i32(*v),
            FieldValue::U32(v) => s.serialize_u32(*v),
            FieldValue::I64(v) => s.serialize_i64(*v),
            FieldValue::F32(v) => serialize_float(f32_to_f64(*v), s),
            FieldValue::F64(v) => serialize_float(*v, s),
            FieldValue::Decimal(d) => tagged(s, "$decimal", &d.to_string()),
            FieldValue::LongStr(text) => match text.as_str() {
                Some(text) => s.serialize_str(text),
                None => tagged(s, "$bytes", &BASE64.encode(text.as_bytes())),
            },
            FieldValue::Bytes(b) => tagged(s, "$bytes", &BASE64.encode(b)),
            FieldValue::Array(values) => {
                let mut seq = s.serialize_seq(Some(values.len()))?;
                for v in values {
                    seq.serialize_element(&ValueJson(v))?;
                }
                seq.end()
            }
            FieldValue::Timestamp(t) => tagged(s, "$timestamp", t),
            FieldValue::Table(t) => TableJson(t).serialize(s),
            // Void, and any tag a later lepus-wire adds that has no JSON form yet.
            _ => s.serialize_unit(),
        }
    }
}

/// An `f32` as the `f64` with the same shortest decimal form, so `1.1f32` prints `1.1` and not
/// `1.100000023841858`.
fn f32_to_f64(v: f32) -> f64 {
    if !v.is_finite() {
        return f64::from(v);
    }
    v.to_string().parse().unwrap_or(f64::from(v))
}

/// A finite float as a JSON number (serde_json always writes a fraction or an exponent for
/// floats: `2.0`, `1e+20`), anything else as `{"$double": "NaN"}`.
fn serialize_float<S: Serializer>(v: f64, s: S) -> Result<S::Ok, S::Error> {
    if v.is_finite() {
        return s.serialize_f64(v);
    }
    let name = if v.is_nan() {
        "NaN"
    } else if v > 0.0 {
        "Infinity"
    } else {
        "-Infinity"
    };
    tagged(s, "$double", name)
}

fn tagged<S: Serializer, T: Serialize + ?Sized>(
    s: S,
    tag: &str,
    value: &T,
) -> Result<S::Ok, S::Error> {
    let mut map = s.serialize_map(Some(1))?;
    map.serialize_entry(tag, value)?;
    map.end()
}

// ---- JSON -> field table ----

/// Why a JSON text could not become a field table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TableError(String);

impl fmt::Display for TableError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for TableError {}

fn err(msg: impl Into<String>) -> TableError {
    TableError(msg.into())
}

/// The entries of a JSON object, in document order, each value kept as its raw JSON text.
struct RawObject(Vec<(String, Box<RawValue>)>);

impl<'de> Deserialize<'de> for RawObject {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct ObjectVisitor;
        impl<'de> Visitor<'de> for ObjectVisitor {
            type Value = RawObject;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RawObject, A::Error> {
                let mut entries = Vec::new();
                while let Some((k, v)) = map.next_entry::<String, Box<RawValue>>()? {
                    entries.push((k, v));
                }
                Ok(RawObject(entries))
            }
        }
        d.deserialize_map(ObjectVisitor)
    }
}

/// Parses a JSON object into a field table (the top level is always the table itself).
///
/// # Errors
///
/// When the text is not JSON, not an object, or holds a value with no field-table form.
pub(crate) fn parse_json_table(text: &str) -> Result<FieldTable, TableError> {
    let raw: Box<RawValue> =
        serde_json::from_str(text).map_err(|e| err(format!("invalid JSON: {e}")))?;
    if !raw.get().starts_with('{') {
        return Err(err("expected a JSON object"));
    }
    let object: RawObject =
        serde_json::from_str(raw.get()).map_err(|e| err(format!("invalid JSON: {e}")))?;
    object_to_table(object, 0)
}

/// How deep JSON input may nest; matches what lepus-wire accepts on decode.
const MAX_DEPTH: usize = lepus::lepus_wire::MAX_NESTING;

fn object_to_table(object: RawObject, depth: usize) -> Result<FieldTable, TableError> {
    let mut table = FieldTable::new();
    for (key, raw) in object.0 {
        let value = raw_to_value(&raw, depth + 1).map_err(|e| err(format!("'{key}': {e}")))?;
        table
            .try_insert(&key, value)
            .map_err(|_| err(format!("key '{key}…' is longer than 255 bytes")))?;
    }
    Ok(table)
}

fn raw_to_value(raw: &RawValue, depth: usize) -> Result<FieldValue, TableError> {
    if depth > MAX_DEPTH {
        return Err(err(format!("nested deeper than {MAX_DEPTH} levels")));
    }
    let text = raw.get();
    let parse_err = |e: serde_json::Error| err(format!("invalid JSON: {e}"));
    match text.as_bytes().first() {
        Some(b'{') => {
            let object: RawObject = serde_json::from_str(text).map_err(parse_err)?;
            match object.0.as_slice() {
                [(key, value)] if key.starts_with('$') => tagged_value(key, value),
                _ => object_to_table(object, depth).map(FieldValue::Table),
            }
        }
        Some(b'[') => {
            let items: Vec<Box<RawValue>> = serde_json::from_str(text).map_err(parse_err)?;
            let values = items
                .iter()
                .enumerate()
                .map(|(i, v)| raw_to_value(v, depth + 1).map_err(|e| err(format!("[{i}]: {e}"))))
                .collect::<Result<Vec<_>, _>>()?;
            Ok(FieldValue::Array(values))
        }
        Some(b'"') => {
            let s: String = serde_json::from_str(text).map_err(parse_err)?;
            Ok(FieldValue::LongStr(LongStr::from(s)))
        }
        Some(b't') => Ok(FieldValue::Bool(true)),
        Some(b'f') => Ok(FieldValue::Bool(false)),
        Some(b'n') => Ok(FieldValue::Void),
        _ => number(text),
    }
}

/// A JSON number from its text: a double when it has a fraction or exponent, else `I` or `l`.
fn number(text: &str) -> Result<FieldValue, TableError> {
    if text.contains(['.', 'e', 'E']) {
        let v: f64 = text
            .parse()
            .map_err(|_| err(format!("invalid number {text}")))?;
        if !v.is_finite() {
            return Err(err(format!("{text} is too large for a double")));
        }
        return Ok(FieldValue::F64(v));
    }
    integer(text).ok_or_else(|| {
        err(format!(
            "integer {text} does not fit in a signed 64-bit value"
        ))
    })
}

/// An integer as `I` when it fits in 32 bits, else `l`; `None` beyond 64 bits.
fn integer(text: &str) -> Option<FieldValue> {
    let v: i64 = text.parse().ok()?;
    Some(match i32::try_from(v) {
        Ok(small) => FieldValue::I32(small),
        Err(_) => FieldValue::I64(v),
    })
}

fn tagged_value(tag: &str, raw: &RawValue) -> Result<FieldValue, TableError> {
    let text = raw.get();
    match tag {
        "$bytes" => {
            let s: String =
                serde_json::from_str(text).map_err(|_| err("$bytes takes a base64 string"))?;
            let bytes = BASE64
                .decode(s.as_bytes())
                .map_err(|e| err(format!("$bytes: invalid base64: {e}")))?;
            Ok(FieldValue::Bytes(Bytes::from(bytes)))
        }
        "$timestamp" => {
            let seconds: u64 = text
                .parse()
                .map_err(|_| err("$timestamp takes a non-negative integer of seconds"))?;
            Ok(FieldValue::Timestamp(seconds))
        }
        "$decimal" => {
            let s: String = serde_json::from_str(text)
                .map_err(|_| err("$decimal takes a string such as \"1.230\""))?;
            parse_decimal(&s).map(FieldValue::Decimal)
        }
        "$double" => {
            if let Ok(name) = serde_json::from_str::<String>(text) {
                return match name.as_str() {
                    "NaN" => Ok(FieldValue::F64(f64::NAN)),
                    "Infinity" => Ok(FieldValue::F64(f64::INFINITY)),
                    "-Infinity" => Ok(FieldValue::F64(f64::NEG_INFINITY)),
                    _ => Err(err(
                        "$double takes a number, \"NaN\", \"Infinity\" or \"-Infinity\"",
                    )),
                };
            }
            let v: f64 = text.parse().map_err(|_| {
                err("$double takes a number, \"NaN\", \"Infinity\" or \"-Infinity\"")
            })?;
            Ok(FieldValue::F64(v))
        }
        other => Err(err(format!(
            "unknown tagged value '{other}' (known: $bytes, $timestamp, $decimal, $double)"
        ))),
    }
}

/// Parses `-?digits[.digits]` into a decimal whose scale is the number of digits after the point.
fn parse_decimal(s: &str) -> Result<Decimal, TableError> {
    let bad = || {
        err(format!(
            "$decimal: '{s}' is not a decimal such as \"1.230\" or \"-42\""
        ))
    };
    let (negative, unsigned) = match s.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, s),
    };
    let (int, frac) = match unsigned.split_once('.') {
        Some((int, frac)) => (int, frac),
        None => (unsigned, ""),
    };
    let digits_only = |p: &str| p.bytes().all(|b| b.is_ascii_digit());
    if int.is_empty()
        || !digits_only(int)
        || !digits_only(frac)
        || (unsigned.contains('.') && frac.is_empty())
    {
        return Err(bad());
    }
    let scale = u8::try_from(frac.len())
        .map_err(|_| err("$decimal: more than 255 digits after the point"))?;
    let magnitude: i64 = format!("{int}{frac}")
        .parse()
        .map_err(|_| err(format!("$decimal: '{s}' does not fit in a 32-bit decimal")))?;
    let signed = if negative { -magnitude } else { magnitude };
    let value = i32::try_from(signed)
        .map_err(|_| err(format!("$decimal: '{s}' does not fit in a 32-bit decimal")))?;
    Ok(Decimal { scale, value })
}

// ---- KEY=VALUE arguments ----

/// Splits `KEY=VALUE` at the first `=`.
///
/// # Errors
///
/// When there is no `=`, the key is empty or longer than 255 bytes.
pub(crate) fn split_key_value(s: &str) -> Result<(ShortStr, String), String> {
    let Some((key, value)) = s.split_once('=') else {
        return Err(format!("'{s}' is not KEY=VALUE"));
    };
    if key.is_empty() {
        return Err(format!("'{s}' has an empty key"));
    }
    let key =
        ShortStr::try_from(key).map_err(|_| format!("key '{key}' is longer than 255 bytes"))?;
    Ok((key, value.to_string()))
}

/// A `--header KEY=VALUE`: the value is always sent as a string.
pub(crate) fn parse_header(s: &str) -> Result<(ShortStr, FieldValue), String> {
    let (key, value) = split_key_value(s)?;
    Ok((key, FieldValue::LongStr(LongStr::from(value))))
}

/// An `--arg KEY=VALUE`: integers (`I` when they fit in 32 bits, else `l`) and `true`/`false`
/// are typed, anything else (including integers beyond 64 bits) is a string.
pub(crate) fn parse_arg(s: &str) -> Result<(ShortStr, FieldValue), String> {
    let (key, value) = split_key_value(s)?;
    let typed = match value.as_str() {
        "true" => Some(FieldValue::Bool(true)),
        "false" => Some(FieldValue::Bool(false)),
        v if is_plain_integer(v) => integer(v),
        _ => None,
    };
    Ok((
        key,
        typed.unwrap_or_else(|| FieldValue::LongStr(LongStr::from(value))),
    ))
}

/// `-?[0-9]+`: what `--arg` treats as an integer (no `+`, no spaces).
fn is_plain_integer(s: &str) -> bool {
    let digits = s.strip_prefix('-').unwrap_or(s);
    !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit())
}

/// The table of `--args-json` (or `--headers-json`) with the `--arg` (or `--header`) entries
/// applied over it, in command-line order: a key given twice keeps the last value.
pub(crate) fn merge(base: Option<FieldTable>, entries: &[(ShortStr, FieldValue)]) -> FieldTable {
    let mut table = base.unwrap_or_default();
    for (k, v) in entries {
        table.insert(k.clone(), v.clone());
    }
    table
}

#[cfg(test)]
mod tests {
    use super::*;

    fn out(v: &FieldValue) -> String {
        serde_json::to_string(&ValueJson(v)).unwrap()
    }

    fn table_out(t: &FieldTable) -> String {
        serde_json::to_string(&TableJson(t)).unwrap()
    }

    fn input(json: &str) -> FieldValue {
        parse_json_table(&format!("{{\"k\":{json}}}"))
            .unwrap()
            .get("k")
            .unwrap()
            .clone()
    }

    fn input_err(json: &str) -> String {
        parse_json_table(&format!("{{\"k\":{json}}}"))
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn scalars_to_json() {
        assert_eq!(out(&FieldValue::Bool(true)), "true");
        assert_eq!(out(&FieldValue::I8(-8)), "-8");
        assert_eq!(out(&FieldValue::U8(200)), "200");
        assert_eq!(out(&FieldValue::I16(-300)), "-300");
        assert_eq!(out(&FieldValue::U16(60000)), "60000");
        assert_eq!(out(&FieldValue::I32(-70000)), "-70000");
        assert_eq!(out(&FieldValue::U32(4_000_000_000)), "4000000000");
        assert_eq!(out(&FieldValue::I64(i64::MIN)), "-9223372036854775808");
        assert_eq!(out(&FieldValue::Void), "null");
        assert_eq!(
            out(&FieldValue::Timestamp(1_700_000_000)),
            r#"{"$timestamp":1700000000}"#
        );
    }

    #[test]
    fn doubles_always_have_a_fraction_or_exponent() {
        assert_eq!(out(&FieldValue::F64(2.0)), "2.0");
        assert_eq!(out(&FieldValue::F64(-0.5)), "-0.5");
        assert_eq!(out(&FieldValue::F64(1e20)), "1e+20");
        assert_eq!(out(&FieldValue::F32(2.0)), "2.0");
        assert_eq!(out(&FieldValue::F32(1.1)), "1.1");
        assert_eq!(out(&FieldValue::F64(f64::NAN)), r#"{"$double":"NaN"}"#);
        assert_eq!(
            out(&FieldValue::F64(f64::INFINITY)),
            r#"{"$double":"Infinity"}"#
        );
        assert_eq!(
            out(&FieldValue::F32(f32::NEG_INFINITY)),
            r#"{"$double":"-Infinity"}"#
        );
    }

    #[test]
    fn decimals_keep_their_scale() {
        let d = |scale, value| out(&FieldValue::Decimal(Decimal { scale, value }));
        assert_eq!(d(3, 1230), r#"{"$decimal":"1.230"}"#);
        assert_eq!(d(2, -5), r#"{"$decimal":"-0.05"}"#);
        assert_eq!(d(0, 42), r#"{"$decimal":"42"}"#);
    }

    #[test]
    fn strings_and_bytes() {
        assert_eq!(
            out(&FieldValue::LongStr(LongStr::from("héllo"))),
            r#""héllo""#
        );
        assert_eq!(
            out(&FieldValue::LongStr(LongStr::from(vec![0xff, 0x00]))),
            r#"{"$bytes":"/wA="}"#
        );
        // A byte array is always tagged, even when it holds UTF-8.
        assert_eq!(
            out(&FieldValue::Bytes(Bytes::from_static(b"abc"))),
            r#"{"$bytes":"YWJj"}"#
        );
    }

    #[test]
    fn nested_values_keep_order() {
        let inner = FieldTable::new().with("z", 1).with("a", FieldValue::Void);
        let t = FieldTable::new()
            .with(
                "b",
                FieldValue::Array(vec![FieldValue::Bool(false), FieldValue::F64(1.5)]),
            )
            .with("a", inner);
        assert_eq!(table_out(&t), r#"{"b":[false,1.5],"a":{"z":1,"a":null}}"#);
    }

    #[test]
    fn non_utf8_keys_are_shown_lossily() {
        let mut t = FieldTable::new();
        t.insert(ShortStr::from_bytes(vec![b'k', 0xff]).unwrap(), 1);
        assert_eq!(table_out(&t), "{\"k\u{fffd}\":1}");
    }

    #[test]
    fn integers_from_json() {
        assert_eq!(input("0"), FieldValue::I32(0));
        assert_eq!(input("-7"), FieldValue::I32(-7));
        assert_eq!(input("2147483647"), FieldValue::I32(i32::MAX));
        assert_eq!(input("-2147483648"), FieldValue::I32(i32::MIN));
        assert_eq!(input("2147483648"), FieldValue::I64(2_147_483_648));
        assert_eq!(input("-2147483649"), FieldValue::I64(-2_147_483_649));
        assert_eq!(input("9223372036854775807"), FieldValue::I64(i64::MAX));
        assert!(input_err("9223372036854775808").contains("does not fit"));
        assert!(input_err("99999999999999999999999").contains("does not fit"));
    }

    #[test]
    fn floats_from_json() {
        assert_eq!(input("2.0"), FieldValue::F64(2.0));
        assert_eq!(input("1e3"), FieldValue::F64(1000.0));
        assert_eq!(input("-2.5E-1"), FieldValue::F64(-0.25));
        assert!(input_err("1e400").contains("too large"));
    }

    #[test]
    fn other_values_from_json() {
        assert_eq!(input("true"), FieldValue::Bool(true));
        assert_eq!(input("false"), FieldValue::Bool(false));
        assert_eq!(input("null"), FieldValue::Void);
        assert_eq!(
            input(r#""a\nb""#),
            FieldValue::LongStr(LongStr::from("a\nb"))
        );
        assert_eq!(
            input(r#"[1, "x", [null]]"#),
            FieldValue::Array(vec![
                FieldValue::I32(1),
                FieldValue::LongStr(LongStr::from("x")),
                FieldValue::Array(vec![FieldValue::Void]),
            ])
        );
    }

    #[test]
    fn tagged_values_from_json() {
        assert_eq!(
            input(r#"{"$bytes":"YWJj"}"#),
            FieldValue::Bytes(Bytes::from_static(b"abc"))
        );
        assert_eq!(
            input(r#"{"$timestamp":1700000000}"#),
            FieldValue::Timestamp(1_700_000_000)
        );
        assert_eq!(
            input(r#"{"$decimal":"1.230"}"#),
            FieldValue::Decimal(Decimal {
                scale: 3,
                value: 1230
            })
        );
        assert_eq!(
            input(r#"{"$decimal":"-0.05"}"#),
            FieldValue::Decimal(Decimal {
                scale: 2,
                value: -5
            })
        );
        assert_eq!(
            input(r#"{"$decimal":"42"}"#),
            FieldValue::Decimal(Decimal {
                scale: 0,
                value: 42
            })
        );
        assert_eq!(input(r#"{"$double":2}"#), FieldValue::F64(2.0));
        assert!(matches!(input(r#"{"$double":"NaN"}"#), FieldValue::F64(v) if v.is_nan()));
        assert_eq!(
            input(r#"{"$double":"-Infinity"}"#),
            FieldValue::F64(f64::NEG_INFINITY)
        );
    }

    #[test]
    fn bad_tagged_values_are_errors() {
        assert!(input_err(r#"{"$bytes":"not base64!"}"#).contains("base64"));
        assert!(input_err(r#"{"$bytes":1}"#).contains("base64"));
        assert!(input_err(r#"{"$timestamp":-1}"#).contains("$timestamp"));
        assert!(input_err(r#"{"$timestamp":"1"}"#).contains("$timestamp"));
        assert!(input_err(r#"{"$decimal":"1."}"#).contains("$decimal"));
        assert!(input_err(r#"{"$decimal":".5"}"#).contains("$decimal"));
        assert!(input_err(r#"{"$decimal":"1e3"}"#).contains("$decimal"));
        assert!(input_err(r#"{"$decimal":"99999999999"}"#).contains("32-bit"));
        assert!(input_err(r#"{"$double":"big"}"#).contains("$double"));
        assert!(input_err(r#"{"$nope":1}"#).contains("unknown tagged value"));
    }

    #[test]
    fn only_single_dollar_key_objects_are_tagged() {
        // Two keys: a table, even though both start with `$`.
        let v = input(r#"{"$bytes":"YWJj","$x":1}"#);
        let FieldValue::Table(t) = v else {
            panic!("not a table: {v:?}")
        };
        assert_eq!(
            t.get("$bytes"),
            Some(&FieldValue::LongStr(LongStr::from("YWJj")))
        );
        // One key without `$`: a table.
        let v = input(r#"{"bytes":"YWJj"}"#);
        assert!(matches!(v, FieldValue::Table(_)), "{v:?}");
        // Empty object: an empty table.
        assert_eq!(input("{}"), FieldValue::Table(FieldTable::new()));
    }

    #[test]
    fn top_level_must_be_an_object_and_is_always_a_table() {
        assert!(parse_json_table("[1]")
            .unwrap_err()
            .to_string()
            .contains("object"));
        assert!(parse_json_table("1")
            .unwrap_err()
            .to_string()
            .contains("object"));
        assert!(parse_json_table("{")
            .unwrap_err()
            .to_string()
            .contains("invalid JSON"));
        assert!(parse_json_table("")
            .unwrap_err()
            .to_string()
            .contains("invalid JSON"));
        assert!(parse_json_table("{} x")
            .unwrap_err()
            .to_string()
            .contains("invalid JSON"));
        let t = parse_json_table(r#"{"$bytes": 1}"#).unwrap();
        assert_eq!(t.get("$bytes"), Some(&FieldValue::I32(1)));
    }

    #[test]
    fn surrounding_whitespace_is_fine() {
        let t = parse_json_table(" \n {\"a\" : [ 1 , {\"$bytes\" : \"\"} ] } \n").unwrap();
        assert_eq!(
            t.get("a"),
            Some(&FieldValue::Array(vec![
                FieldValue::I32(1),
                FieldValue::Bytes(Bytes::new())
            ]))
        );
    }

    #[test]
    fn capital_l_from_other_clients_reads_as_a_signed_64_bit_number() {
        // {"big": L 2^40, "neg": L -2}: py-amqp writes `L` for integers beyond 32 bits.
        let mut wire = vec![0, 0, 0, 0];
        for (key, value) in [(&b"big"[..], 1i64 << 40), (b"neg", -2)] {
            wire.push(key.len() as u8);
            wire.extend_from_slice(key);
            wire.push(b'L');
            wire.extend_from_slice(&value.to_be_bytes());
        }
        let len = (wire.len() - 4) as u32;
        wire[..4].copy_from_slice(&len.to_be_bytes());
        let t = FieldTable::decode_from(&mut Bytes::from(wire)).unwrap();
        assert_eq!(table_out(&t), r#"{"big":1099511627776,"neg":-2}"#);
    }

    #[test]
    fn json_keys_keep_document_order() {
        let t = parse_json_table(r#"{"b":1,"a":2,"c":3}"#).unwrap();
        let keys: Vec<_> = t.iter().map(|(k, _)| k.to_string()).collect();
        assert_eq!(keys, ["b", "a", "c"]);
    }

    #[test]
    fn long_keys_and_deep_nesting_are_errors() {
        let long = "k".repeat(256);
        assert!(parse_json_table(&format!(r#"{{"{long}":1}}"#))
            .unwrap_err()
            .to_string()
            .contains("255"));
        let deep = format!("{}{}", "[".repeat(100), "]".repeat(100));
        assert!(input_err(&deep).contains("nested deeper"));
    }

    #[test]
    fn every_output_reads_back_to_the_same_value() {
        let t = FieldTable::new()
            .with("bool", true)
            .with("int", -5i32)
            .with("long", 1i64 << 40)
            .with("double", 2.0f64)
            .with(
                "decimal",
                Decimal {
                    scale: 3,
                    value: 1230,
                },
            )
            .with("string", "text")
            .with("bytes", Bytes::from_static(b"\x00\xff"))
            .with("array", vec![FieldValue::I32(1), FieldValue::Void])
            .with("nested", FieldTable::new().with("x", "y"))
            .with("void", ())
            .with("timestamp", FieldValue::Timestamp(42));
        let json = table_out(&t);
        assert_eq!(parse_json_table(&json).unwrap(), t);
    }

    #[test]
    fn narrow_integers_read_back_as_32_bit() {
        let t = FieldTable::new()
            .with("a", 1u8)
            .with("b", -2i16)
            .with("c", 3u32);
        let back = parse_json_table(&table_out(&t)).unwrap();
        assert_eq!(back.get("a"), Some(&FieldValue::I32(1)));
        assert_eq!(back.get("b"), Some(&FieldValue::I32(-2)));
        assert_eq!(back.get("c"), Some(&FieldValue::I32(3)));
    }

    #[test]
    fn header_values_are_always_strings() {
        let (k, v) = parse_header("n=42").unwrap();
        assert_eq!(k, "n");
        assert_eq!(v, FieldValue::LongStr(LongStr::from("42")));
        // Split at the first `=` only.
        let (k, v) = parse_header("a=b=c").unwrap();
        assert_eq!(k, "a");
        assert_eq!(v, FieldValue::LongStr(LongStr::from("b=c")));
        let (_, v) = parse_header("empty=").unwrap();
        assert_eq!(v, FieldValue::LongStr(LongStr::from("")));
        assert!(parse_header("novalue").is_err());
        assert!(parse_header("=v").is_err());
        assert!(parse_header(&format!("{}=v", "k".repeat(256))).is_err());
    }

    #[test]
    fn arg_values_are_typed() {
        let v = |s: &str| parse_arg(&format!("k={s}")).unwrap().1;
        assert_eq!(v("60000"), FieldValue::I32(60000));
        assert_eq!(v("-1"), FieldValue::I32(-1));
        assert_eq!(v("5000000000"), FieldValue::I64(5_000_000_000));
        assert_eq!(v("true"), FieldValue::Bool(true));
        assert_eq!(v("false"), FieldValue::Bool(false));
        assert_eq!(v("quorum"), FieldValue::LongStr(LongStr::from("quorum")));
        assert_eq!(v("True"), FieldValue::LongStr(LongStr::from("True")));
        assert_eq!(v("+5"), FieldValue::LongStr(LongStr::from("+5")));
        assert_eq!(v("1.5"), FieldValue::LongStr(LongStr::from("1.5")));
        assert_eq!(v(""), FieldValue::LongStr(LongStr::from("")));
        assert_eq!(
            v("99999999999999999999"),
            FieldValue::LongStr(LongStr::from("99999999999999999999"))
        );
        assert_eq!(
            parse_arg("x=a=1").unwrap().1,
            FieldValue::LongStr(LongStr::from("a=1"))
        );
    }

    #[test]
    fn flags_override_json_entries() {
        let base = parse_json_table(r#"{"a":1,"b":2}"#).unwrap();
        let merged = merge(
            Some(base),
            &[parse_arg("b=3").unwrap(), parse_arg("c=x").unwrap()],
        );
        assert_eq!(merged.get("a"), Some(&FieldValue::I32(1)));
        assert_eq!(merged.get("b"), Some(&FieldValue::I32(3)));
        assert_eq!(
            merged.get("c"),
            Some(&FieldValue::LongStr(LongStr::from("x")))
        );
        assert!(merge(None, &[]).is_empty());
    }
}
