//! Exchanges, their bindings, and how each kind matches a routing key or headers.

use lepus_wire::{FieldTable, FieldValue};

/// The kind of an exchange, which decides how its bindings match.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExchangeKind {
    /// Routing key equals the binding key.
    Direct,
    /// Every binding matches.
    Fanout,
    /// Dot-separated words, `*` for one word and `#` for zero or more.
    Topic,
    /// The message's headers against the binding's arguments (`x-match`).
    Headers,
}

impl ExchangeKind {
    /// The kind named `name` as `exchange.declare` sends it.
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "direct" => Some(Self::Direct),
            "fanout" => Some(Self::Fanout),
            "topic" => Some(Self::Topic),
            "headers" => Some(Self::Headers),
            _ => None,
        }
    }

    /// The name as RabbitMQ reports it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Direct => "direct",
            Self::Fanout => "fanout",
            Self::Topic => "topic",
            Self::Headers => "headers",
        }
    }
}

/// Where a binding leads.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum Destination {
    Queue(String),
    Exchange(String),
}

/// One binding from an exchange.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Binding {
    pub(crate) destination: Destination,
    pub(crate) key: String,
    pub(crate) arguments: FieldTable,
}

/// An exchange of a virtual host.
#[derive(Debug)]
pub(crate) struct Exchange {
    pub(crate) name: String,
    pub(crate) kind: ExchangeKind,
    pub(crate) durable: bool,
    pub(crate) auto_delete: bool,
    pub(crate) internal: bool,
    pub(crate) arguments: FieldTable,
    pub(crate) bindings: Vec<Binding>,
}

impl Exchange {
    pub(crate) fn new(name: &str, kind: ExchangeKind) -> Self {
        Self {
            name: name.to_owned(),
            kind,
            durable: true,
            auto_delete: false,
            internal: false,
            arguments: FieldTable::new(),
            bindings: Vec::new(),
        }
    }

    /// The alternate exchange messages go to when nothing here matches.
    pub(crate) fn alternate(&self) -> Option<&str> {
        self.arguments.get("alternate-exchange")?.as_str()
    }

    /// Appends to `out` the destinations whose bindings match.
    pub(crate) fn matches<'a>(
        &'a self,
        routing_key: &str,
        headers: Option<&FieldTable>,
        out: &mut Vec<&'a Destination>,
    ) {
        for b in &self.bindings {
            let hit = match self.kind {
                ExchangeKind::Direct => b.key == routing_key,
                ExchangeKind::Fanout => true,
                ExchangeKind::Topic => topic_matches(&b.key, routing_key),
                ExchangeKind::Headers => headers_match(&b.arguments, headers),
            };
            if hit && !out.contains(&&b.destination) {
                out.push(&b.destination);
            }
        }
    }
}

/// The words of a topic key: the empty key has none.
fn words(key: &str) -> Vec<&str> {
    if key.is_empty() {
        Vec::new()
    } else {
        key.split('.').collect()
    }
}

/// Whether the topic binding `pattern` matches `key`, as RabbitMQ's topic exchange decides:
/// `*` is exactly one word, `#` zero or more, and the empty key has no words.
pub(crate) fn topic_matches(pattern: &str, key: &str) -> bool {
    let p = words(pattern);
    let k = words(key);
    // matched[j]: the pattern so far matches the first j words of the key.
    let mut matched = vec![false; k.len() + 1];
    if let Some(first) = matched.first_mut() {
        *first = true;
    }
    for word in &p {
        let mut next = vec![false; k.len() + 1];
        if *word == "#" {
            let mut any = false;
            for (j, slot) in next.iter_mut().enumerate() {
                any |= matched.get(j).copied().unwrap_or(false);
                *slot = any;
            }
        } else {
            for (j, kw) in k.iter().enumerate() {
                if matched.get(j).copied().unwrap_or(false) && (*word == "*" || word == kw) {
                    if let Some(slot) = next.get_mut(j + 1) {
                        *slot = true;
                    }
                }
            }
        }
        matched = next;
    }
    matched.last().copied().unwrap_or(false)
}

/// Whether a headers binding's arguments match a message's headers (`x-match` all, any,
/// all-with-x, any-with-x; `all` when absent). A void argument asks for presence only; other
/// values compare by value, numbers across integer widths, as RabbitMQ compares them.
pub(crate) fn headers_match(binding: &FieldTable, headers: Option<&FieldTable>) -> bool {
    let mode = binding.get("x-match").and_then(FieldValue::as_str);
    let (any, with_x) = match mode {
        Some("any") => (true, false),
        Some("any-with-x") => (true, true),
        Some("all-with-x") => (false, true),
        _ => (false, false),
    };
    let mut considered = 0usize;
    let mut hits = 0usize;
    for (key, want) in binding.iter() {
        let key = key.as_bytes();
        if key == b"x-match" || (!with_x && key.starts_with(b"x-")) {
            continue;
        }
        considered += 1;
        let found = headers
            .and_then(|h| h.iter().find(|(k, _)| k.as_bytes() == key))
            .map(|(_, v)| v);
        let hit = match (want, found) {
            (_, None) => false,
            (FieldValue::Void, Some(_)) => true,
            (want, Some(have)) => values_equal(want, have),
        };
        if hit {
            hits += 1;
            if any {
                return true;
            }
        } else if !any {
            return false;
        }
    }
    if any {
        false
    } else {
        hits == considered
    }
}

/// Equality of field values as RabbitMQ's headers exchange sees it.
fn values_equal(a: &FieldValue, b: &FieldValue) -> bool {
    match (a.as_i64(), b.as_i64()) {
        (Some(x), Some(y)) if !is_float(a) && !is_float(b) => x == y,
        _ => match (a.as_bytes(), b.as_bytes()) {
            (Some(x), Some(y)) => x == y,
            _ => a == b,
        },
    }
}

fn is_float(v: &FieldValue) -> bool {
    matches!(v, FieldValue::F32(_) | FieldValue::F64(_))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_words() {
        let cases = [
            ("a.b.c", "a.b.c", true),
            ("a.*.c", "a.b.c", true),
            ("a.*.c", "a.c", false),
            ("a.#.c", "a.c", true),
            ("a.#.c", "a.b.x.c", true),
            ("#", "", true),
            ("#", "a.b", true),
            ("*", "", false),
            ("*", "a", true),
            ("*", "a.b", false),
            ("", "", true),
            ("", "a", false),
            ("#.#", "a", true),
            ("a.#", "a", true),
            ("#.a", "a", true),
            ("*.#", "", false),
            ("a..b", "a..b", true),
            ("a.*.b", "a..b", true),
            ("#.b.#", "a.b.c", true),
            ("#.b.#", "a.c", false),
        ];
        for (pattern, key, want) in cases {
            assert_eq!(topic_matches(pattern, key), want, "{pattern:?} vs {key:?}");
        }
    }

    #[test]
    fn headers_modes() {
        let headers = FieldTable::new()
            .with("a", 1i32)
            .with("b", "x")
            .with("x-k", "v");
        let all = FieldTable::new().with("a", 1i64).with("b", "x");
        assert!(headers_match(&all, Some(&headers)));
        let all_miss = FieldTable::new().with("a", 1i64).with("c", "x");
        assert!(!headers_match(&all_miss, Some(&headers)));
        let any = all_miss.clone().with("x-match", "any");
        assert!(headers_match(&any, Some(&headers)));
        let presence = FieldTable::new().with("b", ());
        assert!(headers_match(&presence, Some(&headers)));
        // x- arguments are ignored unless the mode says -with-x.
        let x_all = FieldTable::new().with("x-k", "other");
        assert!(headers_match(&x_all, Some(&headers)));
        let x_all_with = x_all.clone().with("x-match", "all-with-x");
        assert!(!headers_match(&x_all_with, Some(&headers)));
        let x_any_with = FieldTable::new()
            .with("x-match", "any-with-x")
            .with("x-k", "v");
        assert!(headers_match(&x_any_with, Some(&headers)));
        // any with nothing to compare matches nothing; all with nothing matches everything.
        assert!(!headers_match(
            &FieldTable::new().with("x-match", "any"),
            None
        ));
        assert!(headers_match(&FieldTable::new(), None));
    }
}
