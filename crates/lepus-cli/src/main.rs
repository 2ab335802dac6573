//! The `lepus` command-line tool: publish, consume, get, declare, bind, unbind, delete, purge
//! and a PerfTest-style load generator, on top of the lepus client.
//!
//! # Layout
//!
//! ```text
//! main.rs        parse (clap), resolve the URL, run on tokio, print `lepus: error: ...`, exit code
//! cli.rs         every flag, checked before connecting (usage errors exit 2)
//! connect.rs     --url / $AMQP_URL / default, --connect-timeout, --heartbeat
//! table.rs       field tables <-> JSON, --header and --arg
//! properties.rs  --property NAME=VALUE, properties as JSON
//! codec.rs       kombu's serializers and compression: publish --serializer, --decode
//! output.rs      consume/get output (JSON lines or raw bodies)
//! error.rs       one-line errors naming the broker's reply code and text
//! signal.rs      SIGINT and SIGTERM: consume, publish and perf stop cleanly
//! commands/      one module per subcommand
//! perf/          the load generator
//! ```
//!
//! Exit codes: 0 on success, 1 on a runtime or broker error, 2 on a usage error, 130 or 143
//! when `publish` is stopped by SIGINT or SIGTERM. Every error is one line on stderr starting
//! `lepus: error: `; a panic, which would be a bug, is reported the same way by a hook, without
//! its message or a backtrace.

mod cli;
mod codec;
mod commands;
mod connect;
mod error;
mod output;
mod perf;
mod properties;
mod signal;
mod table;
mod trace;

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use clap::error::ErrorKind;
use clap::Parser;

use crate::cli::Cli;
use crate::connect::Target;
use crate::error::{one_line, CliError, EXIT_FAILURE, EXIT_USAGE};

/// How long tasks still running at exit (a stdin reader, say) get before the runtime drops them.
const SHUTDOWN_GRACE: Duration = Duration::from_millis(100);

fn main() -> ExitCode {
    install_panic_hook();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return clap_exit(&e),
    };
    init_tracing(cli.global.verbose);
    let env_url = std::env::var("AMQP_URL").ok();
    let result = Target::resolve(&cli.global, env_url).and_then(|target| {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .map_err(|e| CliError::failed(format!("starting the async runtime: {e}")))?;
        let result = runtime.block_on(commands::run(cli.command, &target));
        runtime.shutdown_timeout(SHUTDOWN_GRACE);
        result
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let _ = writeln!(std::io::stderr().lock(), "lepus: {}", e.line());
            ExitCode::from(e.exit_code())
        }
    }
}

/// Prints `lepus: error: <message>` on stderr.
fn report(message: &str) {
    let _ = writeln!(std::io::stderr().lock(), "lepus: error: {message}");
}

/// Help and version go to stdout with exit 0; every other clap error becomes one line and exit
/// code 2, with nothing on stdout.
fn clap_exit(e: &clap::Error) -> ExitCode {
    match e.kind() {
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => {
            let _ = e.print();
            ExitCode::SUCCESS
        }
        // clap would print a whole help page here; one line says it.
        ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
            report("a subcommand is required (see --help)");
            ExitCode::from(EXIT_USAGE)
        }
        _ => {
            report(&clap_one_line(&e.render().to_string()));
            ExitCode::from(EXIT_USAGE)
        }
    }
}

/// Squeezes clap's multi-line error into one line: the message and its details, without the
/// usage block, tips or the `error: ` prefix.
fn clap_one_line(rendered: &str) -> String {
    let mut parts = Vec::new();
    for line in rendered.lines() {
        let line = line.trim();
        if line.starts_with("Usage:") || line.starts_with("For more information") {
            break;
        }
        if line.is_empty() || line.starts_with("tip:") {
            continue;
        }
        parts.push(line.strip_prefix("error: ").unwrap_or(line));
    }
    format!("{} (see --help)", one_line(&parts.join(" ")))
}

/// The last resort: a panic is a bug, but the user sees one `lepus: error:` line and exit code
/// 1, never a panic message or a backtrace.
fn install_panic_hook() {
    std::panic::set_hook(Box::new(|_| {
        report("internal error (this is a bug in lepus; please report it)");
        std::process::exit(i32::from(EXIT_FAILURE));
    }));
}

/// `-v` logs at debug level to stderr, `-vv` at trace.
fn init_tracing(verbose: u8) {
    let level = match verbose {
        0 => return,
        1 => tracing::Level::DEBUG,
        _ => tracing::Level::TRACE,
    };
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_max_level(level)
        .with_target(false)
        .try_init();
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    fn clap_message(args: &[&str]) -> String {
        let e =
            Cli::try_parse_from(std::iter::once("lepus").chain(args.iter().copied())).unwrap_err();
        clap_one_line(&e.render().to_string())
    }

    #[test]
    fn clap_errors_become_one_line() {
        let m = clap_message(&["publish", "--routing-key", "k", "--nope"]);
        assert!(m.starts_with("unexpected argument '--nope' found"), "{m}");
        assert!(!m.contains('\n'));
        let m = clap_message(&["consume"]);
        assert!(m.contains("--queue"), "{m}");
        let m = clap_message(&["publish", "--routing-key", "k", "--count", "x"]);
        assert!(m.contains("invalid value 'x' for '--count <N>'"), "{m}");
        let m = clap_message(&["publish", "--routing-key", "k", "--property", "bad=1"]);
        assert!(m.contains("unknown property 'bad'"), "{m}");
        let e = Cli::try_parse_from(["lepus"]).unwrap_err();
        assert!(matches!(
            e.kind(),
            ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand | ErrorKind::MissingSubcommand
        ));
    }
}
