//! Arbitrary bytes from a peer, fed to the streaming frame decoder in pieces.
//!
//! The decoder must never panic. Whatever decodes must re-encode to a frame that decodes to the
//! same bytes, and a partial frame must leave the buffer untouched.
#![no_main]

use bytes::BytesMut;
use lepus_wire::Frame;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The first byte picks a read size, so frames straddle reads in many ways.
    let Some((&step, data)) = data.split_first() else {
        return;
    };
    let step = usize::from(step).max(1);
    let mut buf = BytesMut::new();
    for chunk in data.chunks(step) {
        buf.extend_from_slice(chunk);
        loop {
            let before = buf.len();
            match Frame::decode(&mut buf, 8192) {
                Ok(Some(frame)) => {
                    let mut out = BytesMut::new();
                    frame.encode(&mut out);
                    let wire = out.clone();
                    let again = Frame::decode(&mut out, u32::MAX)
                        .expect("re-encoded frame decodes")
                        .expect("re-encoded frame is complete");
                    assert!(out.is_empty());
                    // Compared as bytes: a NaN float in a table is not equal to itself.
                    let mut twice = BytesMut::new();
                    again.encode(&mut twice);
                    assert_eq!(twice, wire);
                }
                Ok(None) => {
                    assert_eq!(buf.len(), before, "a partial frame must not be consumed");
                    break;
                }
                Err(e) => {
                    let _ = e.reply_code();
                    let _ = e.to_string();
                    return;
                }
            }
        }
    }
});
