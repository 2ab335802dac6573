//! Regenerates `crates/lepus-wire/src/method/generated.rs` from the JSON spec.
//!
//! Run from anywhere in the workspace: `cargo run -p lepus-codegen`.

use std::path::Path;
use std::process::ExitCode;

fn main() -> ExitCode {
    let crates = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let spec_path = crates.join("lepus-wire/spec/amqp-rabbitmq-0.9.1.json");
    let out_path = crates.join("lepus-wire/src/method/generated.rs");
    let result = std::fs::read_to_string(&spec_path)
        .map_err(|e| format!("cannot read {}: {e}", spec_path.display()))
        .and_then(|spec| lepus_codegen::generate(&spec).map_err(|e| e.to_string()))
        .and_then(|code| {
            std::fs::write(&out_path, code)
                .map_err(|e| format!("cannot write {}: {e}", out_path.display()))
        });
    match result {
        Ok(()) => {
            println!("wrote {}", out_path.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("lepus-codegen: error: {e}");
            ExitCode::FAILURE
        }
    }
}
