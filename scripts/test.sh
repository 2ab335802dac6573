#!/usr/bin/env bash
# The project's test command: formatting, lints, then every test against a real RabbitMQ.
#
# Tests that change broker-wide state (memory alarms, closing every connection) live in test
# binaries named `serial_*` and run one at a time after the others.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/ensure-broker.sh

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== cargo test"
cargo test --workspace --locked
echo "== serial tests (broker-wide state, one at a time)"
cargo test -p lepus --locked --test serial_broker --test blocking -- --ignored --test-threads=1
echo "== examples against the broker"
for example in consume_acks publish_confirms error_handling; do
  cargo run -q --locked -p lepus --example "$example"
done
