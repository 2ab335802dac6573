//! Broker-wide actions for the serial tests: RabbitMQ's command-line tools, closing a
//! connection as an operator would, stopping and starting the broker's application.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::Command;
use std::time::Duration;

/// Runs one of RabbitMQ's command-line tools; its standard output.
pub(crate) fn tool(program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program} {args:?}: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub(crate) fn rabbitmqctl(args: &[&str]) -> String {
    tool("rabbitmqctl", args)
}

/// Closes the connection whose `connection_name` is `name` from the broker's side (320
/// CONNECTION_FORCED), as `rabbitmqctl close_connection` does for an operator.
pub(crate) async fn close_connection_named(name: &str, reason: &str) {
    let mut pid = None;
    for _ in 0..50 {
        let listing = rabbitmqctl(&["list_connections", "pid", "client_properties"]);
        pid = listing
            .lines()
            .find(|l| l.contains(name))
            .and_then(|l| l.split_whitespace().next())
            .map(str::to_string);
        if pid.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let pid = pid.expect("connection listed by rabbitmqctl");
    rabbitmqctl(&["close_connection", &pid, reason]);
}

/// Stops the broker's application (its node stays up); started again when dropped, also when
/// the test panics.
pub(crate) struct Stopped;

impl Stopped {
    pub(crate) fn stop_app() -> Self {
        rabbitmqctl(&["stop_app"]);
        Self
    }

    /// Starts the application again and waits until it accepts connections.
    pub(crate) fn start_app(self) {
        drop(self);
    }
}

impl Drop for Stopped {
    fn drop(&mut self) {
        let _ = Command::new("rabbitmqctl").arg("start_app").output();
        let _ = Command::new("rabbitmqctl")
            .args(["await_startup", "--timeout", "60"])
            .output();
    }
}

/// A user of the default vhost for one test, deleted when dropped.
pub(crate) struct TempUser {
    pub(crate) name: String,
}

impl TempUser {
    pub(crate) fn add(name: &str, password: &str) -> Self {
        rabbitmqctl(&["add_user", name, password]);
        let user = Self {
            name: name.to_string(),
        };
        rabbitmqctl(&["set_permissions", "-p", "/", name, ".*", ".*", ".*"]);
        user
    }
}

impl Drop for TempUser {
    fn drop(&mut self) {
        let _ = Command::new("rabbitmqctl")
            .args(["delete_user", &self.name])
            .output();
    }
}
