//! `lepus bind|unbind queue|exchange`.

use lepus::BindOptions;

use crate::cli::Bind;
use crate::commands::finish;
use crate::connect::Target;
use crate::error::{CliError, OnChannel};

/// Whether to add or remove the binding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Op {
    /// `queue.bind` / `exchange.bind`.
    Bind,
    /// `queue.unbind` / `exchange.unbind`.
    Unbind,
}

/// Adds or removes the binding.
///
/// # Errors
///
/// Connection errors; 404 when a queue or exchange is missing.
pub(crate) async fn run(args: Bind, target: &Target, op: Op) -> Result<(), CliError> {
    let what = match op {
        Op::Bind => "bind",
        Op::Unbind => "unbind",
    };
    let (conn, ch) = target.channel(what).await?;
    match (args, op) {
        (Bind::Queue(b), Op::Bind) => {
            let options = BindOptions {
                nowait: false,
                arguments: b.table.table(),
            };
            ch.queue_bind(&b.queue, &b.exchange, &b.routing_key, options)
                .await
        }
        (Bind::Queue(b), Op::Unbind) => {
            ch.queue_unbind(&b.queue, &b.exchange, &b.routing_key, b.table.table())
                .await
        }
        (Bind::Exchange(b), op) => {
            let options = BindOptions {
                nowait: false,
                arguments: b.table.table(),
            };
            match op {
                Op::Bind => {
                    ch.exchange_bind(&b.destination, &b.source, &b.routing_key, options)
                        .await
                }
                Op::Unbind => {
                    ch.exchange_unbind(&b.destination, &b.source, &b.routing_key, options)
                        .await
                }
            }
        }
    }
    .on(ch.id())?;
    finish(conn).await
}
