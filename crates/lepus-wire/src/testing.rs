//! Proptest strategies for wire values, shared by the property tests.

use bytes::Bytes;
use proptest::collection::vec;
use proptest::prelude::*;

use crate::{BasicProperties, Decimal, FieldTable, FieldValue, LongStr, ShortStr};

pub(crate) fn short_str() -> impl Strategy<Value = ShortStr> {
    prop_oneof![
        "[a-z0-9._-]{0,40}".prop_map(|s| ShortStr::try_from(s).unwrap()),
        vec(any::<u8>(), 0..=255).prop_map(|b| ShortStr::from_bytes(b).unwrap()),
    ]
}

pub(crate) fn long_str() -> impl Strategy<Value = LongStr> {
    vec(any::<u8>(), 0..300).prop_map(LongStr::from)
}

fn float64() -> impl Strategy<Value = f64> {
    // NaN is excluded only because it is not equal to itself; its bits round-trip all the same.
    prop::num::f64::NORMAL
        | prop::num::f64::SUBNORMAL
        | prop::num::f64::ZERO
        | prop::num::f64::INFINITE
}

fn float32() -> impl Strategy<Value = f32> {
    prop::num::f32::NORMAL
        | prop::num::f32::SUBNORMAL
        | prop::num::f32::ZERO
        | prop::num::f32::INFINITE
}

pub(crate) fn field_value() -> impl Strategy<Value = FieldValue> {
    let leaf = prop_oneof![
        any::<bool>().prop_map(FieldValue::Bool),
        any::<i8>().prop_map(FieldValue::I8),
        any::<u8>().prop_map(FieldValue::U8),
        any::<i16>().prop_map(FieldValue::I16),
        any::<u16>().prop_map(FieldValue::U16),
        any::<i32>().prop_map(FieldValue::I32),
        any::<u32>().prop_map(FieldValue::U32),
        any::<i64>().prop_map(FieldValue::I64),
        float32().prop_map(FieldValue::F32),
        float64().prop_map(FieldValue::F64),
        (any::<u8>(), any::<i32>())
            .prop_map(|(scale, value)| FieldValue::Decimal(Decimal { scale, value })),
        long_str().prop_map(FieldValue::LongStr),
        vec(any::<u8>(), 0..64).prop_map(|b| FieldValue::Bytes(Bytes::from(b))),
        any::<u64>().prop_map(FieldValue::Timestamp),
        Just(FieldValue::Void),
    ];
    leaf.prop_recursive(4, 64, 8, |inner| {
        prop_oneof![
            vec(inner.clone(), 0..8).prop_map(FieldValue::Array),
            vec((short_str(), inner), 0..8)
                .prop_map(|entries| FieldValue::Table(table_of(entries))),
        ]
    })
}

fn table_of(entries: Vec<(ShortStr, FieldValue)>) -> FieldTable {
    // Duplicate keys collapse, as they do on insert.
    entries.into_iter().collect()
}

pub(crate) fn field_table() -> impl Strategy<Value = FieldTable> {
    vec((short_str(), field_value()), 0..8).prop_map(table_of)
}

pub(crate) fn properties() -> impl Strategy<Value = BasicProperties> {
    (
        (
            proptest::option::of(short_str()),
            proptest::option::of(short_str()),
            proptest::option::of(field_table()),
            proptest::option::of(any::<u8>()),
            proptest::option::of(any::<u8>()),
        ),
        (
            proptest::option::of(short_str()),
            proptest::option::of(short_str()),
            proptest::option::of(short_str()),
            proptest::option::of(short_str()),
            proptest::option::of(any::<u64>()),
        ),
        (
            proptest::option::of(short_str()),
            proptest::option::of(short_str()),
            proptest::option::of(short_str()),
            proptest::option::of(short_str()),
        ),
    )
        .prop_map(|(a, b, c)| BasicProperties {
            content_type: a.0,
            content_encoding: a.1,
            headers: a.2,
            delivery_mode: a.3,
            priority: a.4,
            correlation_id: b.0,
            reply_to: b.1,
            expiration: b.2,
            message_id: b.3,
            timestamp: b.4,
            kind: c.0,
            user_id: c.1,
            app_id: c.2,
            cluster_id: c.3,
        })
}
