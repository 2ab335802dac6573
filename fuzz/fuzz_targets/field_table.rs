//! Arbitrary field tables, including deep nesting and lying lengths.
#![no_main]

use bytes::{Bytes, BytesMut};
use lepus_wire::FieldTable;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut bytes = Bytes::copy_from_slice(data);
    if let Ok(table) = FieldTable::decode_from(&mut bytes) {
        let mut out = BytesMut::new();
        table.encode_to(&mut out);
        let mut wire = out.freeze();
        let again = FieldTable::decode_from(&mut wire).expect("re-encoded table decodes");
        // NaN floats are not equal to themselves; compare bytes instead of values.
        let mut out2 = BytesMut::new();
        again.encode_to(&mut out2);
        let mut out1 = BytesMut::new();
        table.encode_to(&mut out1);
        assert_eq!(out1, out2);
    }
});
