//! The committed generated code must be exactly what the generator makes from the spec.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::path::Path;

#[test]
fn generated_code_is_up_to_date() {
    let crates = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let spec = std::fs::read_to_string(crates.join("lepus-wire/spec/amqp-rabbitmq-0.9.1.json"))
        .expect("spec JSON");
    let committed = std::fs::read_to_string(crates.join("lepus-wire/src/method/generated.rs"))
        .expect("generated.rs");
    let fresh = lepus_codegen::generate(&spec).expect("generate");
    assert!(
        fresh == committed,
        "crates/lepus-wire/src/method/generated.rs is stale: run `cargo run -p lepus-codegen`"
    );
}
