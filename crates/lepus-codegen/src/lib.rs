//! Generates `lepus-wire`'s method structs and dispatch tables from RabbitMQ's machine-readable
//! AMQP 0-9-1 spec (`amqp-rabbitmq-0.9.1.json`, from rabbitmq-codegen).
//!
//! Only the mechanical part is generated: ids, argument order and types, one struct per method
//! with its encoder and decoder, the [`Method`] enum and its dispatch, and proptest strategies.
//! Every behaviour lives in hand-written code. The output is committed as
//! `crates/lepus-wire/src/method/generated.rs`; a test regenerates it in memory and compares, so
//! the two cannot drift. Regenerate with `cargo run -p lepus-codegen`.
//!
//! [`Method`]: https://docs.rs/lepus-wire/latest/lepus_wire/enum.Method.html

// Indexing a `serde_json::Value` by key returns `Null` for a missing key; it never panics.
#![allow(clippy::indexing_slicing)]

use std::fmt::{self, Write as _};

use serde_json::Value;

mod docs;

/// Why the spec could not be turned into code.
#[derive(Debug)]
pub struct Error(String);

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Error {}

fn err(msg: impl Into<String>) -> Error {
    Error(msg.into())
}

/// The primitive AMQP argument types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ty {
    Bit,
    Octet,
    Short,
    Long,
    LongLong,
    ShortStr,
    LongStr,
    Table,
    Timestamp,
}

impl Ty {
    fn parse(s: &str) -> Result<Self, Error> {
        Ok(match s {
            "bit" => Self::Bit,
            "octet" => Self::Octet,
            "short" => Self::Short,
            "long" => Self::Long,
            "longlong" => Self::LongLong,
            "shortstr" => Self::ShortStr,
            "longstr" => Self::LongStr,
            "table" => Self::Table,
            "timestamp" => Self::Timestamp,
            other => return Err(err(format!("unknown type {other}"))),
        })
    }

    fn spec_name(self) -> &'static str {
        match self {
            Self::Bit => "bit",
            Self::Octet => "octet",
            Self::Short => "short",
            Self::Long => "long",
            Self::LongLong => "longlong",
            Self::ShortStr => "shortstr",
            Self::LongStr => "longstr",
            Self::Table => "table",
            Self::Timestamp => "timestamp",
        }
    }
}

struct Arg {
    name: String,
    domain: String,
    ty: Ty,
    default: Option<Value>,
    reserved: bool,
}

impl Arg {
    fn field(&self) -> String {
        match self.name.as_str() {
            "type" => "kind".to_string(),
            other => other.replace('-', "_"),
        }
    }

    fn rust_type(&self) -> &'static str {
        if self.domain == "reply-code" || self.name == "reply-code" {
            return "ReplyCode";
        }
        match self.ty {
            Ty::Bit => "bool",
            Ty::Octet => "u8",
            Ty::Short => "u16",
            Ty::Long => "u32",
            Ty::LongLong | Ty::Timestamp => "u64",
            Ty::ShortStr => "ShortStr",
            Ty::LongStr => "LongStr",
            Ty::Table => "FieldTable",
        }
    }

    /// The Rust expression for the spec's default value (or the type's zero).
    fn default_expr(&self) -> String {
        let value = self.default.as_ref();
        match (self.ty, value) {
            (Ty::Bit, Some(Value::Bool(true))) => "true".into(),
            (Ty::Bit, _) => "false".into(),
            (Ty::ShortStr, Some(Value::String(s))) if !s.is_empty() => {
                format!("ShortStr::from_static({s:?})")
            }
            (Ty::ShortStr, _) => "ShortStr::from_static(\"\")".into(),
            (Ty::LongStr, Some(Value::String(s))) if !s.is_empty() => {
                format!("LongStr::from_static({s:?})")
            }
            (Ty::LongStr, _) => "LongStr::from_static(\"\")".into(),
            (Ty::Table, _) => "FieldTable::new()".into(),
            (_, Some(Value::Number(n))) if self.rust_type() == "ReplyCode" => {
                format!("ReplyCode({n})")
            }
            (_, _) if self.rust_type() == "ReplyCode" => "ReplyCode(0)".into(),
            (_, Some(Value::Number(n))) => n.to_string(),
            (_, _) => "0".into(),
        }
    }
}

struct MethodSpec {
    class: String,
    class_id: u16,
    name: String,
    id: u16,
    synchronous: bool,
    content: bool,
    args: Vec<Arg>,
}

impl MethodSpec {
    fn full_name(&self) -> String {
        format!("{}.{}", self.class, self.name)
    }

    fn struct_name(&self) -> String {
        camel(&self.name)
    }

    fn variant(&self) -> String {
        format!("{}{}", camel(&self.class), camel(&self.name))
    }

    fn path(&self) -> String {
        format!("{}::{}", self.class, self.struct_name())
    }

    fn fields(&self) -> impl Iterator<Item = &Arg> {
        self.args.iter().filter(|a| !a.reserved)
    }
}

/// Arguments that the spec reserves: sent with a fixed value, never shown to users.
fn is_reserved(class: &str, method: &str, arg: &str) -> bool {
    matches!(
        (class, method, arg),
        ("connection", "open", "capabilities" | "insist")
            | ("connection", "open-ok", "known-hosts")
            | ("channel", "open", "out-of-band")
            | ("channel", "open-ok", "channel-id")
            | ("basic", "get-empty", "cluster-id")
    ) || (arg == "ticket" && !(class == "access" && method == "request-ok"))
}

fn camel(s: &str) -> String {
    s.split('-')
        .map(|part| {
            let mut chars = part.chars();
            match chars.next() {
                Some(first) => first.to_ascii_uppercase().to_string() + chars.as_str(),
                None => String::new(),
            }
        })
        .collect()
}

fn module(class: &str) -> String {
    class.replace('-', "_")
}

/// The classes (name, id) and every method, in spec order.
type Parsed = (Vec<(String, u16)>, Vec<MethodSpec>);

fn parse(spec: &str) -> Result<Parsed, Error> {
    let root: Value = serde_json::from_str(spec).map_err(|e| err(format!("bad JSON: {e}")))?;
    let domains: Vec<(String, String)> = root["domains"]
        .as_array()
        .ok_or_else(|| err("no domains"))?
        .iter()
        .filter_map(|d| Some((d[0].as_str()?.to_string(), d[1].as_str()?.to_string())))
        .collect();
    let resolve = |domain: &str| -> Result<Ty, Error> {
        match domains.iter().find(|(name, _)| name == domain) {
            Some((_, ty)) => Ty::parse(ty),
            None => Ty::parse(domain),
        }
    };
    let mut classes = Vec::new();
    let mut methods = Vec::new();
    for class in root["classes"]
        .as_array()
        .ok_or_else(|| err("no classes"))?
    {
        let cname = class["name"].as_str().ok_or_else(|| err("class name"))?;
        let cid = class["id"].as_u64().ok_or_else(|| err("class id"))? as u16;
        classes.push((cname.to_string(), cid));
        for m in class["methods"].as_array().ok_or_else(|| err("methods"))? {
            let mname = m["name"].as_str().ok_or_else(|| err("method name"))?;
            let mut args = Vec::new();
            for a in m["arguments"].as_array().ok_or_else(|| err("arguments"))? {
                let name = a["name"].as_str().ok_or_else(|| err("argument name"))?;
                let domain = a["domain"].as_str().or(a["type"].as_str());
                let domain = domain.ok_or_else(|| err(format!("{cname}.{mname}.{name} type")))?;
                args.push(Arg {
                    name: name.to_string(),
                    domain: domain.to_string(),
                    ty: resolve(domain)?,
                    default: a.get("default-value").cloned(),
                    reserved: is_reserved(cname, mname, name),
                });
            }
            methods.push(MethodSpec {
                class: cname.to_string(),
                class_id: cid,
                name: mname.to_string(),
                id: m["id"].as_u64().ok_or_else(|| err("method id"))? as u16,
                synchronous: m["synchronous"].as_bool().unwrap_or(false),
                content: m["content"].as_bool().unwrap_or(false),
                args,
            });
        }
    }
    Ok((classes, methods))
}

/// Turns the JSON spec into the source of `generated.rs`.
///
/// # Errors
///
/// When the JSON is not the rabbitmq-codegen format or names an unknown type.
pub fn generate(spec: &str) -> Result<String, Error> {
    let (classes, methods) = parse(spec)?;
    let mut out = String::new();
    let o = &mut out;
    w(
        o,
        "// @generated by lepus-codegen from amqp-rabbitmq-0.9.1.json. Do not edit by hand:",
    );
    w(
        o,
        "// change crates/lepus-codegen and run `cargo run -p lepus-codegen`.",
    );
    w(o, "");
    w(o, "use bytes::{BufMut, Bytes, BytesMut};");
    w(o, "");
    w(o, "use super::{MethodArgs, ReadArgs};");
    w(o, "use crate::codec::Reader;");
    w(o, "use crate::error::DecodeError;");
    w(o, "#[allow(unused_imports)]");
    w(o, "use crate::{FieldTable, LongStr, ReplyCode, ShortStr};");
    for (class, class_id) in &classes {
        w(o, "");
        w(o, &format!("/// {}", docs::class(class)));
        w(o, "///");
        w(o, &format!("/// Class id {class_id}."));
        w(o, &format!("pub mod {} {{", module(class)));
        w(o, "    use super::*;");
        for m in methods.iter().filter(|m| &m.class == class) {
            gen_struct(o, m);
        }
        w(o, "}");
    }
    gen_enum(o, &methods);
    gen_info(o, &methods);
    gen_strategies(o, &methods);
    Ok(out)
}

fn w(out: &mut String, line: &str) {
    out.push_str(line);
    out.push('\n');
}

fn gen_struct(o: &mut String, m: &MethodSpec) {
    let name = m.struct_name();
    let fields: Vec<&Arg> = m.fields().collect();
    w(o, "");
    w(
        o,
        &format!(
            "    /// `{}`: {}",
            m.full_name(),
            docs::method(&m.class, &m.name)
        ),
    );
    w(o, "    ///");
    let mut facts = format!("    /// Method id {}.{}", m.class_id, m.id);
    if m.synchronous {
        facts.push_str("; synchronous (expects a reply)");
    }
    if m.content {
        facts.push_str("; carries content");
    }
    facts.push('.');
    w(o, &facts);
    if fields.is_empty() {
        w(
            o,
            "    #[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]",
        );
        w(o, &format!("    pub struct {name};"));
    } else {
        w(o, "    #[derive(Debug, Clone, PartialEq)]");
        w(o, &format!("    pub struct {name} {{"));
        for a in &fields {
            let doc = docs::argument(&m.class, &m.name, &a.name);
            let doc = if doc.is_empty() {
                format!("The `{}` argument.", a.name)
            } else {
                doc.to_string()
            };
            w(o, &format!("        /// {doc}"));
            w(o, &format!("        pub {}: {},", a.field(), a.rust_type()));
        }
        w(o, "    }");
        w(o, "");
        w(o, &format!("    impl Default for {name} {{"));
        w(o, "        /// The spec's default value for each argument.");
        w(o, "        fn default() -> Self {");
        w(o, "            Self {");
        for a in &fields {
            w(
                o,
                &format!("                {}: {},", a.field(), a.default_expr()),
            );
        }
        w(o, "            }");
        w(o, "        }");
        w(o, "    }");
    }
    w(o, "");
    w(o, &format!("    impl MethodArgs for {name} {{"));
    w(o, &format!("        const CLASS_ID: u16 = {};", m.class_id));
    w(o, &format!("        const METHOD_ID: u16 = {};", m.id));
    w(
        o,
        &format!("        const NAME: &'static str = \"{}\";", m.full_name()),
    );
    w(o, "");
    w(o, "        #[inline]");
    let out_name = if m.args.is_empty() { "_out" } else { "out" };
    w(
        o,
        &format!("        fn encode_args(&self, {out_name}: &mut BytesMut) {{"),
    );
    gen_encode(o, m);
    w(o, "        }");
    w(o, "");
    w(o, "        #[inline]");
    w(
        o,
        "        fn decode_fields(buf: &mut Bytes) -> Result<Self, DecodeError> {",
    );
    w(
        o,
        "            crate::codec::read_from(buf, <Self as ReadArgs>::read)",
    );
    w(o, "        }");
    w(o, "    }");
    w(o, "");
    w(o, &format!("    impl ReadArgs for {name} {{"));
    w(o, "        #[inline]");
    let r_name = if m.args.is_empty() { "_r" } else { "r" };
    w(
        o,
        &format!("        fn read({r_name}: &mut Reader<'_>) -> Result<Self, DecodeError> {{"),
    );
    gen_decode(o, m);
    w(o, "        }");
    w(o, "    }");
}

/// Groups runs of adjacent bits, which share octets (low bit first, 8 to an octet).
fn groups(args: &[Arg]) -> Vec<Vec<&Arg>> {
    let mut out: Vec<Vec<&Arg>> = Vec::new();
    let mut prev_bit = false;
    for a in args {
        let is_bit = a.ty == Ty::Bit;
        match out.last_mut() {
            Some(group) if is_bit && prev_bit && group.len() < 8 => group.push(a),
            _ => out.push(vec![a]),
        }
        prev_bit = is_bit;
    }
    out
}

fn gen_encode(o: &mut String, m: &MethodSpec) {
    for group in groups(&m.args) {
        let Some(first) = group.first() else { continue };
        if first.ty == Ty::Bit {
            let mut terms = Vec::new();
            for (i, a) in group.iter().enumerate() {
                if a.reserved {
                    if a.default_expr() == "true" {
                        terms.push(format!("0x{:02x}", 1u8 << i));
                    }
                } else if i == 0 {
                    terms.push(format!("u8::from(self.{})", a.field()));
                } else {
                    terms.push(format!("(u8::from(self.{}) << {i})", a.field()));
                }
            }
            let names: Vec<&str> = group.iter().map(|a| a.name.as_str()).collect();
            let expr = if terms.is_empty() {
                "0".to_string()
            } else {
                terms.join(" | ")
            };
            w(
                o,
                &format!("            out.put_u8({expr}); // {}", names.join(", ")),
            );
            continue;
        }
        let a = first;
        let value = if a.reserved {
            // Reserved arguments are written with the spec's fixed value.
            match a.ty {
                Ty::ShortStr => {
                    w(
                        o,
                        &format!("            out.put_u8(0); // {} (reserved)", a.name),
                    );
                    continue;
                }
                Ty::LongStr => {
                    w(
                        o,
                        &format!("            out.put_u32(0); // {} (reserved)", a.name),
                    );
                    continue;
                }
                _ => format!("{} /* {} (reserved) */", a.default_expr(), a.name),
            }
        } else {
            format!("self.{}", a.field())
        };
        let line = match a.ty {
            Ty::Octet => format!("out.put_u8({value});"),
            Ty::Short if a.rust_type() == "ReplyCode" => format!("out.put_u16({value}.0);"),
            Ty::Short => format!("out.put_u16({value});"),
            Ty::Long => format!("out.put_u32({value});"),
            Ty::LongLong | Ty::Timestamp => format!("out.put_u64({value});"),
            Ty::ShortStr | Ty::LongStr | Ty::Table => format!("{value}.encode(out);"),
            Ty::Bit => continue, // handled as a group above
        };
        w(o, &format!("            {line}"));
    }
}

fn gen_decode(o: &mut String, m: &MethodSpec) {
    let ctx = m.full_name();
    for group in groups(&m.args) {
        let Some(first) = group.first() else { continue };
        if first.ty == Ty::Bit {
            let any_field = group.iter().any(|a| !a.reserved);
            let var = if any_field { "bits" } else { "_bits" };
            w(o, &format!("            let {var} = r.u8(\"{ctx}\")?;"));
            for (i, a) in group.iter().enumerate() {
                if !a.reserved {
                    w(
                        o,
                        &format!(
                            "            let {} = {var} & 0x{:02x} != 0;",
                            a.field(),
                            1u8 << i
                        ),
                    );
                }
            }
            continue;
        }
        let a = first;
        let lhs = if a.reserved {
            "let _".to_string()
        } else {
            format!("let {}", a.field())
        };
        let rhs = match a.ty {
            Ty::Octet => format!("r.u8(\"{ctx}\")?"),
            Ty::Short if a.rust_type() == "ReplyCode" => format!("ReplyCode(r.u16(\"{ctx}\")?)"),
            Ty::Short => format!("r.u16(\"{ctx}\")?"),
            Ty::Long => format!("r.u32(\"{ctx}\")?"),
            Ty::LongLong | Ty::Timestamp => format!("r.u64(\"{ctx}\")?"),
            Ty::ShortStr => "ShortStr::decode(r)?".to_string(),
            Ty::LongStr => "LongStr::decode(r)?".to_string(),
            Ty::Table => "FieldTable::decode(r)?".to_string(),
            Ty::Bit => continue, // handled as a group above
        };
        w(o, &format!("            {lhs} = {rhs};"));
    }
    let fields: Vec<String> = m.fields().map(Arg::field).collect();
    if fields.is_empty() {
        w(o, "            Ok(Self)");
    } else {
        w(
            o,
            &format!("            Ok(Self {{ {} }})", fields.join(", ")),
        );
    }
}

fn gen_enum(o: &mut String, methods: &[MethodSpec]) {
    w(o, "");
    w(
        o,
        "/// Every AMQP 0-9-1 method, with RabbitMQ's extensions.",
    );
    w(o, "///");
    w(
        o,
        "/// Variants are named class then method (`QueueDeclare` holds [`queue::Declare`]). The",
    );
    w(
        o,
        "/// set is fixed by the protocol, so the enum is exhaustive.",
    );
    w(o, "#[derive(Debug, Clone, PartialEq)]");
    w(o, "pub enum Method {");
    for m in methods {
        w(
            o,
            &format!(
                "    /// `{}`: {}",
                m.full_name(),
                docs::method(&m.class, &m.name)
            ),
        );
        w(o, &format!("    {}({}),", m.variant(), m.path()));
    }
    w(o, "}");
    w(o, "");
    w(o, "impl Method {");
    w(
        o,
        "    /// Decodes a method frame's payload: class id, method id, then the arguments.",
    );
    w(o, "    ///");
    w(o, "    /// # Errors");
    w(o, "    ///");
    w(
        o,
        "    /// [`DecodeError::UnknownMethod`] for an id pair the protocol does not define, and",
    );
    w(o, "    /// [`DecodeError::InMethod`] when the arguments are malformed or followed by extra bytes.");
    w(o, "    #[inline]");
    w(
        o,
        "    pub fn decode(payload: &mut Bytes) -> Result<Self, DecodeError> {",
    );
    w(o, "        crate::codec::read_from(payload, Self::read)");
    w(o, "    }");
    w(o, "");
    w(
        o,
        "    /// Like [`decode`](Self::decode), from a reader over the whole payload.",
    );
    w(o, "    #[inline]");
    w(
        o,
        "    pub(crate) fn read(r: &mut Reader<'_>) -> Result<Self, DecodeError> {",
    );
    w(o, "        let class_id = r.u16(\"method class id\")?;");
    w(o, "        let method_id = r.u16(\"method id\")?;");
    w(o, "        Ok(match (class_id, method_id) {");
    for m in methods {
        w(
            o,
            &format!(
                "            ({}, {}) => Self::{}(super::read_args(r)?),",
                m.class_id,
                m.id,
                m.variant()
            ),
        );
    }
    w(
        o,
        "            _ => return Err(DecodeError::UnknownMethod { class_id, method_id }),",
    );
    w(o, "        })");
    w(o, "    }");
    w(o, "");
    w(
        o,
        "    /// Appends the class id, method id and arguments (a method frame's payload).",
    );
    w(o, "    pub fn encode(&self, out: &mut BytesMut) {");
    w(o, "        match self {");
    for m in methods {
        w(
            o,
            &format!(
                "            Self::{}(m) => super::encode_with_ids(m, out),",
                m.variant()
            ),
        );
    }
    w(o, "        }");
    w(o, "    }");
    for (fname, ty, doc, f) in [
        ("class_id", "u16", "The class id.", 0),
        ("method_id", "u16", "The method id.", 1),
        (
            "name",
            "&'static str",
            "The method's name, such as `queue.declare`.",
            2,
        ),
        (
            "has_content",
            "bool",
            "Whether a content header and body follow this method.",
            3,
        ),
        (
            "is_synchronous",
            "bool",
            "Whether the method expects a reply.",
            4,
        ),
    ] {
        w(o, "");
        w(o, &format!("    /// {doc}"));
        w(o, &format!("    pub fn {fname}(&self) -> {ty} {{"));
        w(o, "        match self {");
        for m in methods {
            let v = match f {
                0 => m.class_id.to_string(),
                1 => m.id.to_string(),
                2 => format!("\"{}\"", m.full_name()),
                3 => m.content.to_string(),
                _ => m.synchronous.to_string(),
            };
            w(o, &format!("            Self::{}(_) => {v},", m.variant()));
        }
        w(o, "        }");
        w(o, "    }");
    }
    w(o, "}");
    for m in methods {
        w(o, "");
        w(o, &format!("impl From<{}> for Method {{", m.path()));
        w(o, &format!("    fn from(m: {}) -> Self {{", m.path()));
        w(o, &format!("        Self::{}(m)", m.variant()));
        w(o, "    }");
        w(o, "}");
    }
}

fn gen_info(o: &mut String, methods: &[MethodSpec]) {
    w(o, "");
    w(
        o,
        "/// Every method's ids, name and arguments, in spec order, reserved arguments included.",
    );
    w(o, "pub const METHODS: &[MethodInfo] = &[");
    for m in methods {
        w(o, "    MethodInfo {");
        w(o, &format!("        class_id: {},", m.class_id));
        w(o, &format!("        method_id: {},", m.id));
        w(o, &format!("        name: \"{}\",", m.full_name()));
        w(o, &format!("        synchronous: {},", m.synchronous));
        w(o, &format!("        content: {},", m.content));
        w(o, "        arguments: &[");
        for a in &m.args {
            w(
                o,
                &format!(
                    "            ArgumentInfo {{ name: \"{}\", ty: \"{}\", reserved: {} }},",
                    a.name,
                    a.ty.spec_name(),
                    a.reserved
                ),
            );
        }
        w(o, "        ],");
        w(o, "    },");
    }
    w(o, "];");
    w(o, "");
    w(
        o,
        "/// A method's ids, name and argument list, as the spec gives them.",
    );
    w(o, "#[derive(Debug, Clone, Copy, PartialEq, Eq)]");
    w(o, "pub struct MethodInfo {");
    w(o, "    /// The class id.");
    w(o, "    pub class_id: u16,");
    w(o, "    /// The method id.");
    w(o, "    pub method_id: u16,");
    w(o, "    /// `class.method`, as the spec spells it.");
    w(o, "    pub name: &'static str,");
    w(o, "    /// Whether the method expects a reply.");
    w(o, "    pub synchronous: bool,");
    w(o, "    /// Whether content follows the method.");
    w(o, "    pub content: bool,");
    w(o, "    /// The arguments in wire order.");
    w(o, "    pub arguments: &'static [ArgumentInfo],");
    w(o, "}");
    w(o, "");
    w(o, "/// One argument of a method, as the spec gives it.");
    w(o, "#[derive(Debug, Clone, Copy, PartialEq, Eq)]");
    w(o, "pub struct ArgumentInfo {");
    w(o, "    /// The spec's name, such as `routing-key`.");
    w(o, "    pub name: &'static str,");
    w(
        o,
        "    /// The primitive type: `bit`, `octet`, `short`, `long`, `longlong`, `shortstr`,",
    );
    w(o, "    /// `longstr`, `table` or `timestamp`.");
    w(o, "    pub ty: &'static str,");
    w(
        o,
        "    /// Whether the argument is reserved: sent with a fixed value, not a struct field.",
    );
    w(o, "    pub reserved: bool,");
    w(o, "}");
}

fn gen_strategies(o: &mut String, methods: &[MethodSpec]) {
    w(o, "");
    w(o, "/// Proptest strategies for every method.");
    w(o, "#[cfg(test)]");
    w(o, "pub(crate) mod strategies {");
    w(o, "    use proptest::prelude::*;");
    w(o, "    use proptest::strategy::Union;");
    w(o, "");
    w(o, "    use super::*;");
    w(
        o,
        "    use crate::testing::{field_table, long_str, short_str};",
    );
    w(o, "");
    w(o, "    /// Any method, with arbitrary arguments.");
    w(o, "    pub(crate) fn method() -> BoxedStrategy<Method> {");
    w(o, "        Union::new(vec![");
    for m in methods {
        let fields: Vec<&Arg> = m.fields().collect();
        if fields.is_empty() {
            w(
                o,
                &format!(
                    "            Just(Method::{}({})).boxed(),",
                    m.variant(),
                    m.path()
                ),
            );
            continue;
        }
        let strategies: Vec<String> = fields
            .iter()
            .map(|a| match a.rust_type() {
                "ReplyCode" => "any::<u16>().prop_map(ReplyCode)".to_string(),
                "ShortStr" => "short_str()".to_string(),
                "LongStr" => "long_str()".to_string(),
                "FieldTable" => "field_table()".to_string(),
                other => format!("any::<{other}>()"),
            })
            .collect();
        let names: Vec<String> = fields.iter().map(|a| a.field()).collect();
        let mut line = String::new();
        let _ = write!(
            line,
            "            ({},).prop_map(|({},)| Method::{}({} {{ {} }})).boxed(),",
            strategies.join(", "),
            names.join(", "),
            m.variant(),
            m.path(),
            names.join(", ")
        );
        w(o, &line);
    }
    w(o, "        ])");
    w(o, "        .boxed()");
    w(o, "    }");
    w(o, "}");
}
