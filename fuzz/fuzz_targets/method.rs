//! Arbitrary method frame payloads: class id, method id, then arguments.
#![no_main]

use bytes::{Bytes, BytesMut};
use lepus_wire::Method;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut payload = Bytes::copy_from_slice(data);
    if let Ok(method) = Method::decode(&mut payload) {
        let mut out = BytesMut::new();
        method.encode(&mut out);
        let wire = out.clone().freeze();
        let again = Method::decode(&mut out.freeze()).expect("re-encoded method decodes");
        // Compared as bytes: a NaN float in a table is not equal to itself.
        let mut twice = BytesMut::new();
        again.encode(&mut twice);
        assert_eq!(twice.freeze(), wire);
    }
});
