//! `lepus delete queue|exchange`.

use lepus::{ExchangeDeleteOptions, QueueDeleteOptions};

use crate::cli::Delete;
use crate::commands::finish;
use crate::connect::Target;
use crate::error::{CliError, OnChannel};
use crate::output::print_line;

/// Deletes the queue (printing how many messages it held) or the exchange.
///
/// # Errors
///
/// Connection errors; 406 when `--if-unused`/`--if-empty` does not hold.
pub(crate) async fn run(args: Delete, target: &Target) -> Result<(), CliError> {
    let (conn, ch) = target.channel("delete").await?;
    match args {
        Delete::Queue(q) => {
            let options = QueueDeleteOptions {
                if_unused: q.if_unused,
                if_empty: q.if_empty,
                nowait: false,
            };
            let count = ch.queue_delete(&q.name, options).await.on(ch.id())?;
            print_line(&count.to_string())?;
        }
        Delete::Exchange(x) => {
            let options = ExchangeDeleteOptions {
                if_unused: x.if_unused,
                nowait: false,
            };
            ch.exchange_delete(&x.name, options).await.on(ch.id())?;
        }
    }
    finish(conn).await
}
