//! `lepus get`: basic.get, one message at a time.

use crate::cli::GetArgs;
use crate::codec::Decoder;
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
/// With `--decode`, a message that is refused (outside `--accept`) or does not decode is not
/// printed: it is requeued (with the messages of `--requeue` before it, in one `basic.nack`),
/// and `get` stops there and exits 1.
///
/// # Errors
///
/// Connection errors; 404 when the queue is missing; a refused or undecodable message with
/// `--decode`; a failed write to stdout (the messages not yet acked go back to the queue when
/// the connection closes).
pub(crate) async fn run(args: GetArgs, target: &Target) -> Result<(), CliError> {
    let decoder = if args.decode.decode {
        Some(Decoder::new(&args.decode.accept)?)
    } else {
        None
    };
    let (conn, ch) = target.channel("get").await?;
    let mut printer = Printer::new(args.output);
    let mut last_unsettled = None;
    for _ in 0..args.count {
        let Some(got) = ch.basic_get(&args.queue, false).await.on(ch.id())? else {
            break;
        };
        let payload = match decoder
            .as_ref()
            .map(|d| d.decode(&got.delivery))
            .transpose()
        {
            Ok(payload) => payload,
            Err(refused) => {
                // Multiple: with --requeue, the messages printed before go back with it, in
                // order; otherwise they were acked and only this one is unsettled.
                ch.basic_nack(got.delivery.delivery_tag, true, true)
                    .on(ch.id())?;
                finish(conn).await?;
                return Err(CliError::failed(format!(
                    "{refused} (the message was requeued)"
                )));
            }
        };
        printer.print(&got.delivery, Some(got.message_count), payload.as_ref())?;
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
