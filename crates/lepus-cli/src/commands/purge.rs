//! `lepus purge`.

use crate::cli::PurgeArgs;
use crate::commands::finish;
use crate::connect::Target;
use crate::error::{CliError, OnChannel};
use crate::output::print_line;

/// Purges the queue and prints how many messages were removed.
///
/// # Errors
///
/// Connection errors; 404 when the queue is missing.
pub(crate) async fn run(args: PurgeArgs, target: &Target) -> Result<(), CliError> {
    let (conn, ch) = target.channel("purge").await?;
    let count = ch.queue_purge(args.queue()).await.on(ch.id())?;
    print_line(&count.to_string())?;
    finish(conn).await
}
