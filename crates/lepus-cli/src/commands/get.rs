//! `lepus get`: basic.get, one message at a time.

use crate::cli::GetArgs;
use crate::commands::finish;
use crate::connect::Target;
use crate::error::{CliError, OnChannel};
use crate::output::Printer;

/// Fetches up to `--count` messages and prints them; stops early (exit 0) when the queue is
/// empty.
///
/// Each message is acked after it is printed. With `--requeue` none is settled until all were
/// fetched, so each get returns a different message; then one `basic.nack` (multiple, requeue)
/// puts them all back at once, in their original order, and `message_count` of each printed
/// message is what was left after that get.
///
/// # Errors
///
/// Connection errors; 404 when the queue is missing; a failed write to stdout (the messages not
/// yet acked go back to the queue when the connection closes).
pub(crate) async fn run(args: GetArgs, target: &Target) -> Result<(), CliError> {
    let (conn, ch) = target.channel("get").await?;
    let mut printer = Printer::new(args.output);
    let mut last_unsettled = None;
    for _ in 0..args.count {
        let Some(got) = ch.basic_get(&args.queue, false).await.on(ch.id())? else {
            break;
        };
        printer.print(&got.delivery, Some(got.message_count))?;
        if args.requeue {
            last_unsettled = Some(got.delivery.delivery_tag);
        } else {
            got.delivery.ack().on(ch.id())?;
        }
    }
    if let Some(tag) = last_unsettled {
        ch.basic_nack(tag, true, true).on(ch.id())?;
    }
    finish(conn).await
}
