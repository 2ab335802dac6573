//! One module per subcommand; [`run`] picks the one asked for.

mod bind;
mod consume;
mod declare;
mod delete;
mod get;
mod publish;
mod purge;

use lepus::Connection;

use crate::cli::Command;
use crate::connect::Target;
use crate::error::CliError;
use crate::signal::Stop;

/// Runs `command` against `target`. `consume`, `publish` and `perf` first take over SIGINT and
/// SIGTERM (see [`crate::signal`]); the other commands keep the default: a signal ends them.
///
/// # Errors
///
/// Whatever the command reports; see each module.
pub(crate) async fn run(command: Command, target: &Target) -> Result<(), CliError> {
    match command {
        Command::Publish(args) => publish::run(args, target, Stop::listen()?).await,
        Command::Consume(args) => consume::run(args, target, Stop::listen()?).await,
        Command::Get(args) => get::run(args, target).await,
        Command::Declare(args) => declare::run(args, target).await,
        Command::Bind(args) => bind::run(args, target, bind::Op::Bind).await,
        Command::Unbind(args) => bind::run(args, target, bind::Op::Unbind).await,
        Command::Delete(args) => delete::run(args, target).await,
        Command::Purge(args) => purge::run(args, target).await,
        Command::Perf(args) => crate::perf::run(args, target, Stop::listen()?).await,
    }
}

/// Closes the connection gracefully: everything queued (acks, nacks, publishes) is written
/// before `connection.close`, and the broker's close-ok is awaited.
///
/// # Errors
///
/// When the connection had already failed: the work done before may not have reached the
/// broker, so this is reported.
pub(crate) async fn finish(conn: Connection) -> Result<(), CliError> {
    if !conn.is_open() {
        return Err(CliError::failed(format!(
            "the connection failed: {}",
            conn.closed().await
        )));
    }
    conn.close().await.map_err(CliError::from)
}
