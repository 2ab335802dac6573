//! Decoding a delivery allocates nothing beyond what holds the message: method arguments,
//! properties and body share the received buffer.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::{Bytes, BytesMut};
use lepus_wire::method::basic;
use lepus_wire::{frame, BasicProperties, Frame, Method, ShortStr, FRAME_END};

struct Counting;

static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    /// Whether this thread's allocations count: the test harness's own threads allocate at
    /// times of their choosing, and must not be blamed on the decoder.
    static COUNTING: Cell<bool> = const { Cell::new(false) };
}

// SAFETY: forwards to the system allocator unchanged; only counts calls.
#[allow(unsafe_code)]
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if COUNTING.try_with(Cell::get).unwrap_or(false) {
            ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn deliveries(n: u64) -> BytesMut {
    let mut out = BytesMut::new();
    let body = Bytes::from_static(&[b'x'; 64]);
    for tag in 1..=n {
        let deliver = basic::Deliver {
            consumer_tag: ShortStr::from_static("amq.ctag-0123456789abcdefghijkl"),
            delivery_tag: tag,
            redelivered: false,
            exchange: ShortStr::from_static(""),
            routing_key: ShortStr::from_static("bench.codec.publish.0123456789abcdef"),
        };
        frame::encode_method(&mut out, 1, &deliver, 131_072).unwrap();
        let properties = BasicProperties {
            content_type: Some(ShortStr::from_static("text/plain")),
            delivery_mode: Some(2),
            ..Default::default()
        };
        frame::encode_header(&mut out, 1, 64, &properties, 131_072).unwrap();
        frame::encode_body_header(&mut out, 1, body.len());
        out.extend_from_slice(&body);
        out.extend_from_slice(&[FRAME_END]);
    }
    out
}

#[test]
fn decoding_deliveries_does_not_allocate_per_message() {
    const N: u64 = 1000;
    let mut buf = deliveries(N);
    let mut frames = Vec::with_capacity(3 * N as usize);
    let before = ALLOCATIONS.load(Ordering::Relaxed);
    COUNTING.set(true);
    while let Some(f) = Frame::decode(&mut buf, 131_072).unwrap() {
        frames.push(f);
    }
    COUNTING.set(false);
    let allocated = ALLOCATIONS.load(Ordering::Relaxed) - before;
    assert_eq!(frames.len(), 3 * N as usize);
    assert!(matches!(
        &frames[3],
        Frame::Method { method: Method::BasicDeliver(d), .. } if d.delivery_tag == 2
    ));
    // At most one allocation in all: the read buffer switching to shared ownership at the first
    // split. Nothing per message.
    assert!(allocated <= 1, "{allocated} allocations for {N} deliveries");
}
