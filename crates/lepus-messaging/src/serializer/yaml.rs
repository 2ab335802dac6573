//! YAML encoding that Python's PyYAML (kombu's `yaml.safe_load`, YAML 1.1) reads back as the
//! same values.
//!
//! serde_norway writes YAML 1.2, whose plain scalars PyYAML resolves differently: the strings
//! `yes`, `no`, `on`, `off`, `2024-01-01`, `1:20` and `1_000` come out of PyYAML as booleans,
//! dates and integers, and floats such as `1e-7` or `1e16` as strings. So the body is written
//! as a YAML flow document instead (JSON with YAML's additions), through serde_json with a
//! formatter that:
//!
//! * double-quotes every string (so no string is resolved as another type), escaping the
//!   characters PyYAML does not accept raw or folds as line breaks (DEL, C1 controls, U+0085,
//!   U+2028, U+2029, U+FFFE, U+FFFF);
//! * writes floats as PyYAML's resolver expects them: with a `.` and a signed exponent
//!   (`1.0e-7`, `1.0e+16`);
//! * writes byte strings as `!!binary "<base64>"`, which PyYAML reads as `bytes`.
//!
//! Non-finite floats become `null` (as in JSON). The output is also valid YAML 1.2, and
//! serde_norway decodes it (byte strings as their base64 text).

use std::io;

use base64::Engine as _;
use serde::Serialize;
use serde_json::ser::Formatter;

/// Serializes `value` as a YAML flow document PyYAML reads back exactly.
pub(crate) fn to_vec<T: Serialize + ?Sized>(value: &T) -> serde_json::Result<Vec<u8>> {
    let mut out = Vec::with_capacity(128);
    let mut ser = serde_json::Serializer::with_formatter(&mut out, PyYamlFormatter);
    value.serialize(&mut ser)?;
    out.push(b'\n');
    Ok(out)
}

struct PyYamlFormatter;

impl PyYamlFormatter {
    /// Rust's shortest round-trip form, made to match PyYAML 1.1's float pattern
    /// `[-+]?[0-9][0-9_]*\.[0-9_]*([eE][-+][0-9]+)?`.
    fn float(text: &str) -> String {
        let Some((mantissa, exponent)) = text.split_once('e') else {
            return text.to_owned();
        };
        let dot = if mantissa.contains('.') { "" } else { ".0" };
        let sign = if exponent.starts_with('-') { "" } else { "+" };
        format!("{mantissa}{dot}e{sign}{exponent}")
    }
}

impl Formatter for PyYamlFormatter {
    fn write_f64<W: ?Sized + io::Write>(&mut self, writer: &mut W, value: f64) -> io::Result<()> {
        writer.write_all(Self::float(&format!("{value:?}")).as_bytes())
    }

    fn write_f32<W: ?Sized + io::Write>(&mut self, writer: &mut W, value: f32) -> io::Result<()> {
        writer.write_all(Self::float(&format!("{value:?}")).as_bytes())
    }

    fn write_byte_array<W: ?Sized + io::Write>(
        &mut self,
        writer: &mut W,
        value: &[u8],
    ) -> io::Result<()> {
        writer.write_all(b"!!binary \"")?;
        writer.write_all(
            base64::engine::general_purpose::STANDARD
                .encode(value)
                .as_bytes(),
        )?;
        writer.write_all(b"\"")
    }

    fn write_string_fragment<W: ?Sized + io::Write>(
        &mut self,
        writer: &mut W,
        fragment: &str,
    ) -> io::Result<()> {
        let mut start = 0;
        for (i, c) in fragment.char_indices() {
            let escape = matches!(
                c,
                '\u{7f}'..='\u{9f}' | '\u{2028}' | '\u{2029}' | '\u{fffe}' | '\u{ffff}'
            );
            if escape {
                writer.write_all(fragment.get(start..i).unwrap_or_default().as_bytes())?;
                write!(writer, "\\u{:04x}", u32::from(c))?;
                start = i + c.len_utf8();
            }
        }
        writer.write_all(fragment.get(start..).unwrap_or_default().as_bytes())
    }

    // kombu's JSON separators, for a document people may read.
    fn begin_array_value<W: ?Sized + io::Write>(
        &mut self,
        writer: &mut W,
        first: bool,
    ) -> io::Result<()> {
        if first {
            Ok(())
        } else {
            writer.write_all(b", ")
        }
    }

    fn begin_object_key<W: ?Sized + io::Write>(
        &mut self,
        writer: &mut W,
        first: bool,
    ) -> io::Result<()> {
        if first {
            Ok(())
        } else {
            writer.write_all(b", ")
        }
    }

    fn begin_object_value<W: ?Sized + io::Write>(&mut self, writer: &mut W) -> io::Result<()> {
        writer.write_all(b": ")
    }
}

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]
mod tests {
    use std::collections::BTreeMap;

    use serde_json::{json, Value};

    use super::*;

    fn text<T: Serialize + ?Sized>(value: &T) -> String {
        String::from_utf8(to_vec(value).unwrap()).unwrap()
    }

    #[test]
    fn floats_match_pyyaml_patterns() {
        assert_eq!(
            text(&[
                0.1,
                -1.5e300,
                3.0,
                1e-7,
                1e16,
                -0.0,
                5e-324,
                123_456_789_012_345_680.0
            ]),
            "[0.1, -1.5e+300, 3.0, 1.0e-7, 1.0e+16, -0.0, 5.0e-324, 1.2345678901234568e+17]\n"
        );
        assert_eq!(text(&[1.5_f32, 1e-7_f32]), "[1.5, 1.0e-7]\n");
        assert_eq!(text(&f64::NAN), "null\n");
    }

    #[test]
    fn strings_are_quoted_and_escaped() {
        assert_eq!(text("yes"), "\"yes\"\n");
        assert_eq!(
            text("a\u{85}b\u{2028}\u{7f}\u{9f}\u{ffff}é\u{1d11e}\n\"\\"),
            "\"a\\u0085b\\u2028\\u007f\\u009f\\uffffé\u{1d11e}\\n\\\"\\\\\"\n"
        );
        let map: BTreeMap<&str, u8> = [("on", 1), ("2024-01-01", 2)].into();
        assert_eq!(text(&map), "{\"2024-01-01\": 2, \"on\": 1}\n");
    }

    #[test]
    fn bytes_are_binary_tagged() {
        assert_eq!(
            text(serde_bytes::Bytes::new(b"\xff\x00\x01\x80")),
            "!!binary \"/wABgA==\"\n"
        );
    }

    #[test]
    fn serde_norway_reads_it_back() {
        let value = json!({
            "a": [1, -2, 0.1, 1e-7, 1e300, true, null, "yes", "1:20", "=", "<<", "2024-01-01"],
            "b": {"c": "a\u{85}\u{2028}b", "d": u64::MAX, "e": i64::MIN},
            "": [],
            "nested": [{}, [[]]],
        });
        let back: Value = serde_norway::from_slice(&to_vec(&value).unwrap()).unwrap();
        assert_eq!(back, value);
        let back: (i128, u128) =
            serde_norway::from_slice(&to_vec(&(i128::MIN, u128::MAX)).unwrap()).unwrap();
        assert_eq!(back, (i128::MIN, u128::MAX));
    }
}
