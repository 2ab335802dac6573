//! `lepus declare queue|exchange`.

use lepus::{ExchangeDeclareOptions, ExchangeKind, QueueDeclareOptions};

use crate::cli::{Declare, DeclareExchange, DeclareQueue};
use crate::commands::finish;
use crate::connect::Target;
use crate::error::{CliError, OnChannel};
use crate::output::print_line;

/// Declares the queue or exchange.
///
/// # Errors
///
/// Connection errors; the broker's refusal (404 for a passive declare of a missing entity, 406
/// when it exists with other settings, 405 when another connection holds it exclusively).
pub(crate) async fn run(args: Declare, target: &Target) -> Result<(), CliError> {
    match args {
        Declare::Queue(q) => queue(q, target).await,
        Declare::Exchange(x) => exchange(x, target).await,
    }
}

async fn queue(args: DeclareQueue, target: &Target) -> Result<(), CliError> {
    let (conn, ch) = target.channel("declare").await?;
    let declared = if args.passive {
        ch.queue_declare_passive(&args.name).await
    } else {
        let options = QueueDeclareOptions {
            durable: args.durable,
            exclusive: args.exclusive,
            auto_delete: args.auto_delete,
            nowait: false,
            arguments: args.table.table(),
        };
        ch.queue_declare(&args.name, options).await
    }
    .on(ch.id())?;
    print_line(&format!(
        "{}\t{}\t{}",
        declared.name, declared.message_count, declared.consumer_count
    ))?;
    finish(conn).await
}

async fn exchange(args: DeclareExchange, target: &Target) -> Result<(), CliError> {
    let (conn, ch) = target.channel("declare").await?;
    match (&args.kind, args.passive) {
        (_, true) => ch.exchange_declare_passive(&args.name).await,
        (Some(kind), false) => {
            let options = ExchangeDeclareOptions {
                durable: args.durable,
                auto_delete: args.auto_delete,
                internal: args.internal,
                nowait: false,
                arguments: args.table.table(),
            };
            ch.exchange_declare(&args.name, kind_of(kind), options)
                .await
        }
        // clap requires --type unless --passive.
        (None, false) => return Err(CliError::Usage("--type is required".into())),
    }
    .on(ch.id())?;
    finish(conn).await
}

/// The exchange kind for a `--type` value; unknown names are plugin types.
fn kind_of(name: &str) -> ExchangeKind {
    match name {
        "direct" => ExchangeKind::Direct,
        "fanout" => ExchangeKind::Fanout,
        "topic" => ExchangeKind::Topic,
        "headers" => ExchangeKind::Headers,
        other => ExchangeKind::Custom(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds() {
        assert_eq!(kind_of("topic"), ExchangeKind::Topic);
        assert_eq!(
            kind_of("x-consistent-hash"),
            ExchangeKind::Custom("x-consistent-hash".into())
        );
    }
}
