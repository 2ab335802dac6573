#!/usr/bin/env bash
# The project's test command: formatting, lints, then every test against a real RabbitMQ.
#
# Tests that change broker-wide state (a memory alarm, closing connections from the broker) are
# `#[ignore]`d in the normal run and run here afterwards, one at a time. The examples run last,
# against the same broker. The final line sums up every test run.
set -euo pipefail
cd "$(dirname "$0")/.."

log=$(mktemp)
trap 'rm -f "$log"' EXIT

scripts/ensure-broker.sh

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo clippy -p lepus --all-targets --locked --features otel,metrics -- -D warnings
cargo clippy -p lepus-messaging --all-targets --locked --features metrics -- -D warnings
echo "== cargo doc (warnings are errors)"
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --locked --quiet
echo "== cargo test"
cargo test --workspace --locked 2>&1 | tee -a "$log"
cargo test -p lepus --locked --features otel,metrics --lib --test otel --test otel_interop --test metrics 2>&1 | tee -a "$log"
cargo test -p lepus-messaging --locked --features metrics --test metrics 2>&1 | tee -a "$log"
echo "== the same integration tests against memory:// (the in-process broker)"
# Conformance runs on both brokers in the workspace run above; these binaries run again with
# memory:// as the test broker (the test proxy becomes a link to it, which cuts and freezes the
# same way). Tests of TCP-level behaviour say they are skipped there.
LEPUS_TEST_URL=memory:// cargo test -p lepus --locked --test client --test blocking --test ergonomics \
  --test full_buffer --test large_bodies --test recovery --test failures 2>&1 | tee -a "$log"
LEPUS_TEST_URL=memory:// cargo test -p lepus-messaging --locked --test messaging --test simple --test rpc \
  --test worker --test blocking 2>&1 | tee -a "$log"
echo "== serial tests (broker-wide state, one at a time)"
cargo test -p lepus --locked --test serial_broker --test serial_recovery --test blocking -- --ignored --test-threads=1 \
  2>&1 | tee -a "$log"
cargo test -p lepus-cli --locked --test serial_recovery -- --ignored --test-threads=1 2>&1 | tee -a "$log"
cargo test -p lepus-messaging --locked --test serial_worker -- --ignored --test-threads=1 2>&1 | tee -a "$log"
echo "== failover and cluster tests (extra broker nodes on 5681-5685, one test at a time)"
cargo test -p lepus --locked --test cluster -- --ignored --test-threads=1 2>&1 | tee -a "$log"
echo "== examples, on memory:// (their default) and against RabbitMQ"
rabbitmq=amqp://guest:guest@127.0.0.1:5672/%2f
for url in memory:// "$rabbitmq"; do
  for example in consume_acks publish_confirms error_handling; do
    AMQP_URL=$url cargo run -q --locked -p lepus --example "$example"
  done
  AMQP_URL=$url cargo run -q --locked -p lepus --features otel --example trace_tree
  for example in orders simple_queue rpc worker; do
    AMQP_URL=$url cargo run -q --locked -p lepus-messaging --example "$example"
  done
done
echo "== the CLI's load generator on memory://, no broker needed"
cargo run -q --locked -p lepus-cli -- perf --url memory:// --producers 1 --consumers 1 --count 20000 --confirm 100

awk '/^test result:/ { passed += $4; failed += $6 } END { printf "tests: %d passed, %d failed\n", passed, failed }' "$log"
