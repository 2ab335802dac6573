//! Stopping on SIGINT (Ctrl-C) and SIGTERM (what systemd, Kubernetes and `kill` send).
//!
//! `consume`, `publish` and `perf` call [`Stop::listen`] first. From then on the first signal
//! no longer ends the process: it is recorded, and each command checks for it ([`Stop::signal`])
//! or waits for it ([`Stop::wait`]) where it can stop cleanly. A second signal exits at once,
//! without cleaning up, so that a stop that hangs can still be cut short.

use std::io::Write;

use tokio::sync::watch;

use crate::error::CliError;

/// A signal that asks lepus to stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Signal {
    /// SIGINT, sent by Ctrl-C.
    Interrupt,
    /// SIGTERM, sent by service managers and `kill`.
    Terminate,
}

impl Signal {
    /// The signal's usual name.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::Interrupt => "SIGINT",
            Self::Terminate => "SIGTERM",
        }
    }

    /// The exit code of a command that stops because of the signal: 128 plus the signal's
    /// number, as shells report a process killed by it.
    pub(crate) fn exit_code(self) -> u8 {
        match self {
            Self::Interrupt => 128 + 2,
            Self::Terminate => 128 + 15,
        }
    }
}

/// Whether, and by which signal, the command was asked to stop. Cheap to clone.
#[derive(Debug, Clone)]
pub(crate) struct Stop(watch::Receiver<Option<Signal>>);

impl Stop {
    /// Starts listening for SIGINT and SIGTERM. Must be called inside the tokio runtime.
    ///
    /// # Errors
    ///
    /// When the signal handlers cannot be installed.
    pub(crate) fn listen() -> Result<Self, CliError> {
        let mut signals = Signals::new()
            .map_err(|e| CliError::failed(format!("installing the signal handlers: {e}")))?;
        let (tx, rx) = watch::channel(None);
        tokio::spawn(async move {
            let first = signals.next().await;
            tracing::debug!(signal = first.name(), "stopping");
            tx.send_replace(Some(first));
            let second = signals.next().await;
            let _ = writeln!(
                std::io::stderr().lock(),
                "lepus: {} again: exiting without cleaning up",
                second.name()
            );
            std::process::exit(i32::from(second.exit_code()));
        });
        Ok(Self(rx))
    }

    /// The signal received so far, if any.
    pub(crate) fn signal(&self) -> Option<Signal> {
        *self.0.borrow()
    }

    /// Waits for a signal; returns at once if one was received already.
    pub(crate) async fn wait(&mut self) -> Signal {
        match self.0.wait_for(Option::is_some).await {
            Ok(signal) => signal.unwrap_or(Signal::Interrupt),
            // The listener never ends while the process runs; should it, no signal comes.
            Err(_) => std::future::pending().await,
        }
    }
}

/// The installed handlers.
#[cfg(unix)]
struct Signals {
    interrupt: tokio::signal::unix::Signal,
    terminate: tokio::signal::unix::Signal,
}

#[cfg(unix)]
impl Signals {
    fn new() -> std::io::Result<Self> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Self {
            interrupt: signal(SignalKind::interrupt())?,
            terminate: signal(SignalKind::terminate())?,
        })
    }

    async fn next(&mut self) -> Signal {
        tokio::select! {
            Some(()) = self.interrupt.recv() => Signal::Interrupt,
            Some(()) = self.terminate.recv() => Signal::Terminate,
            // Both streams ended (the runtime is shutting down): no signal comes.
            else => std::future::pending().await,
        }
    }
}

/// Ctrl-C only where there is no SIGTERM.
#[cfg(not(unix))]
struct Signals;

#[cfg(not(unix))]
impl Signals {
    fn new() -> std::io::Result<Self> {
        Ok(Self)
    }

    async fn next(&mut self) -> Signal {
        match tokio::signal::ctrl_c().await {
            Ok(()) => Signal::Interrupt,
            Err(_) => std::future::pending().await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_follow_the_shell_convention() {
        assert_eq!(Signal::Interrupt.exit_code(), 130);
        assert_eq!(Signal::Terminate.exit_code(), 143);
        assert_eq!(Signal::Terminate.name(), "SIGTERM");
    }
}
