//! `lepus consume`: a consumer that prints what it receives.
//!
//! # Never more than N
//!
//! With `--count N` no message beyond the N-th may be delivered (and then requeued, which would
//! leave it marked redelivered). The broker delivers at most `prefetch` unsettled messages per
//! consumer, so over the consumer's life it can deliver at most `settled + prefetch` messages,
//! where `settled` counts the acks (and rejects) it has received. lepus sets the prefetch to
//! `p = min(--prefetch, N)` and settles a message at once only while `settled + p` stays at most
//! N afterwards; the last `p` messages are printed at once but their settlement is *deferred*.
//! When the N-th message has arrived the broker therefore cannot send another, and lepus cancels
//! the consumer (waiting for `cancel-ok`) before settling the deferred messages. Settling only
//! after the cancel is what makes the bound hold: an ack sent while the consumer is still active
//! would let the broker deliver message N+1.
//!
//! `--requeue` defers every settlement until the consumer is cancelled (a message requeued
//! earlier could come straight back to this consumer and be shown twice); one `basic.nack`
//! (multiple, requeue) then puts them all back in their original order. The prefetch is then
//! `N` (at most 65535) whatever `--prefetch` says; without `--count` the consumer stops once
//! `--prefetch` messages are held, as the broker will send no more.
//!
//! `--no-ack` consumes in automatic-acknowledgement mode, where RabbitMQ ignores the prefetch
//! limit; with `--count` that would let the broker push (and drop) messages beyond the N-th, so
//! lepus then consumes with acknowledgements and acks each message as it arrives instead
//! (deferring the last `p` as above).
//!
//! # Refused messages
//!
//! With `--decode`, a message that is outside `--accept`, or does not inflate or decode, is
//! neither printed nor settled: the consumer stops there, is cancelled, the messages printed
//! before are settled as usual (acked, rejected or requeued), deliveries that arrived after
//! the refused one are requeued, and the refused message is requeued last; lepus exits 1. No
//! message is ever lost to a refusal: `--no-ack` with `--decode` consumes with
//! acknowledgements and acks each message on arrival once it has decoded (as with `--count`),
//! since a message the broker has already forgotten could not be put back.

use std::time::Duration;

use lepus::{BasicConsumeOptions, BasicQosOptions, Channel, Consumer, Delivery};

use crate::cli::ConsumeArgs;
use crate::codec::{DecodeError, Decoder};
use crate::commands::finish;
use crate::connect::Target;
use crate::error::{CliError, OnChannel, Settled};
use crate::output::Printer;
use crate::signal::Stop;

/// What happens to each message once printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Settle {
    /// `basic.ack` after printing.
    Ack,
    /// `basic.ack` on arrival, before printing (`--no-ack --count N`, `--no-ack --decode`).
    AckOnArrival,
    /// Nothing: the broker forgot the message when it sent it (`--no-ack`).
    None,
    /// `basic.reject` without requeue after printing.
    Reject,
    /// Requeued when the consumer stops.
    Requeue,
}

/// Why the consume loop stopped.
#[derive(Debug)]
enum Why {
    /// `--count` messages arrived, or the requeue window is full.
    Done,
    /// No message for `--idle-timeout`.
    Idle,
    /// Ctrl-C (SIGINT) or SIGTERM.
    Interrupted,
    /// `--decode` refused a message (boxed: a delivery is large).
    Refused(Box<Refused>),
}

/// A message `--decode` refused or could not decode: not printed, and left unsettled until
/// the consumer is cancelled, then requeued (see the module docs).
#[derive(Debug)]
struct Refused {
    delivery: Delivery,
    error: DecodeError,
}

/// The consumer's bookkeeping of the "never more than N" scheme (see the module docs).
#[derive(Debug)]
struct Window {
    /// `--count`, if given.
    limit: Option<u64>,
    /// The prefetch sent with `basic.qos` (0: none).
    prefetch: u16,
    settle: Settle,
    received: u64,
    settled: u64,
    /// Highest delivery tag printed but not yet settled.
    deferred: Option<u64>,
    deferred_count: u64,
}

impl Window {
    fn new(args: &ConsumeArgs) -> Self {
        // A message refused by --decode must go back to the queue: the broker must not have
        // forgotten it on delivery.
        let decode = args.decode.decode;
        let settle = match (args.no_ack, args.requeue, args.reject, args.count) {
            (true, _, _, Some(_)) => Settle::AckOnArrival,
            (true, _, _, None) if decode => Settle::AckOnArrival,
            (true, _, _, None) => Settle::None,
            (false, true, _, _) => Settle::Requeue,
            (false, false, true, _) => Settle::Reject,
            (false, false, false, _) => Settle::Ack,
        };
        let wanted = if args.prefetch == 0 {
            u16::MAX
        } else {
            args.prefetch
        };
        let prefetch = match (settle, args.count) {
            // The broker ignores basic.qos for automatic acknowledgement.
            (Settle::None, _) => 0,
            // Nothing is settled before the end, so the window must hold all N.
            (Settle::Requeue, Some(n)) => u16::try_from(n).unwrap_or(u16::MAX),
            (_, Some(n)) => u16::try_from(n).unwrap_or(u16::MAX).min(wanted),
            (Settle::Requeue, None) => wanted,
            (_, None) => args.prefetch,
        };
        Self {
            limit: args.count,
            prefetch,
            settle,
            received: 0,
            settled: 0,
            deferred: None,
            deferred_count: 0,
        }
    }

    /// Whether the message just received may be settled now without letting the broker
    /// deliver more than `limit` messages in all.
    fn may_settle_now(&self) -> bool {
        match (self.settle, self.limit) {
            (Settle::Requeue, _) => false,
            (_, None) => true,
            (_, Some(n)) => self.settled + 1 + u64::from(self.prefetch) <= n,
        }
    }

    /// Whether the consumer has all it may take: `--count` messages, or with `--requeue` a
    /// full window (the broker sends no more while none is settled).
    fn is_done(&self) -> bool {
        let window_full = self.settle == Settle::Requeue
            && self.prefetch > 0
            && self.deferred_count >= u64::from(self.prefetch);
        window_full || self.limit.is_some_and(|n| self.received >= n)
    }
}

/// Consumes from `--queue`, printing each message, until `--count` messages, `--idle-timeout`
/// without one, or SIGINT (Ctrl-C) or SIGTERM; then cancels the consumer, settles what is left
/// and exits 0.
///
/// # Errors
///
/// Connection errors; 404 when the queue is missing; the broker cancelling the consumer (queue
/// deleted) or closing the channel; with `--decode`, a message refused or not decodable (it is
/// requeued); a failed write to stdout (unsettled messages then go back to the queue when the
/// connection closes).
pub(crate) async fn run(
    args: ConsumeArgs,
    target: &Target,
    mut stop: Stop,
) -> Result<(), CliError> {
    let decoder = if args.decode.decode {
        Some(Decoder::new(&args.decode.accept)?)
    } else {
        None
    };
    let decoder = decoder.as_ref();
    let mut window = Window::new(&args);
    let prefetch = window.prefetch;
    let options = BasicConsumeOptions {
        no_ack: window.settle == Settle::None,
        ..BasicConsumeOptions::default()
    };
    let setup = async {
        let (conn, ch) = target.channel_recovering("consume").await?;
        if prefetch > 0 {
            ch.basic_qos(prefetch, BasicQosOptions::default())
                .await
                .on(ch.id())?;
        }
        let consumer = ch
            .basic_consume(&args.queue, "", options)
            .await
            .on(ch.id())?;
        Ok::<_, CliError>((conn, ch, consumer))
    };
    // Connecting can take long: a signal then stops lepus before anything was consumed (the
    // broker requeues whatever it had sent once the dropped connection is gone).
    let (conn, ch, mut consumer) = tokio::select! {
        biased;
        _ = stop.wait() => return Ok(()),
        setup = setup => setup?,
    };
    let mut printer = Printer::new(args.output);
    let idle = args.idle_timeout.map(Duration::from_secs_f64);

    let why = receive(
        &ch,
        &mut consumer,
        &mut window,
        &mut printer,
        decoder,
        idle,
        stop,
    )
    .await?;
    tracing::debug!(?why, received = window.received, "stopping the consumer");
    let mut refused = match why {
        Why::Refused(refused) => Some(*refused),
        Why::Done | Why::Idle | Why::Interrupted => None,
    };

    // Cancel first: only once cancel-ok is in may the deferred messages be settled (an ack
    // while the consumer is active makes room for one more delivery).
    let tag = consumer.tag().to_string_lossy().into_owned();
    ch.basic_cancel(&tag).await.on(ch.id())?;
    // Deliveries that arrived before cancel-ok (after an idle timeout or a signal) are printed
    // and settled like the others; with --count none can be here. After a refusal they are
    // requeued unseen.
    while let Some(next) = consumer.recv().await {
        let delivery = next.on(ch.id())?;
        if refused.is_some() || window.limit.is_some_and(|n| window.received >= n) {
            delivery.nack(true).settled(ch.id())?;
            continue;
        }
        refused = handle(&ch, delivery, &mut window, &mut printer, decoder)?;
    }
    if let Some(tag) = window.deferred.take() {
        match window.settle {
            Settle::Ack | Settle::AckOnArrival => ch.basic_ack(tag, true),
            Settle::Reject => ch.basic_nack(tag, true, false),
            Settle::Requeue => ch.basic_nack(tag, true, true),
            Settle::None => Ok(()),
        }
        .settled(ch.id())?;
    }
    // The deferred tag is below the refused message's: the multiple settle above left it be.
    if let Some(Refused { delivery, error }) = refused {
        delivery.reject(true).settled(ch.id())?;
        finish(conn).await?;
        return Err(CliError::failed(format!(
            "{error} (the message was requeued)"
        )));
    }
    finish(conn).await
}

/// Receives and prints until the window is done, the idle timeout passes, a signal comes or
/// `--decode` refuses a message.
async fn receive(
    ch: &Channel,
    consumer: &mut Consumer,
    window: &mut Window,
    printer: &mut Printer,
    decoder: Option<&Decoder>,
    idle: Option<Duration>,
    mut stop: Stop,
) -> Result<Why, CliError> {
    while !window.is_done() {
        let next = async {
            match idle {
                Some(after) => tokio::time::timeout(after, consumer.recv()).await.ok(),
                None => Some(consumer.recv().await),
            }
        };
        let next = tokio::select! {
            biased;
            _ = stop.wait() => return Ok(Why::Interrupted),
            next = next => next,
        };
        let delivery = match next {
            None => return Ok(Why::Idle),
            Some(Some(delivery)) => delivery.on(ch.id())?,
            Some(None) => {
                return Err(CliError::failed(format!(
                    "the consumer on channel {} ended unexpectedly",
                    ch.id()
                )))
            }
        };
        if let Some(refused) = handle(ch, delivery, window, printer, decoder)? {
            return Ok(Why::Refused(Box::new(refused)));
        }
    }
    Ok(Why::Done)
}

/// Decodes (with `--decode`) and prints one delivery, and settles it now or defers it; a
/// message the decoder refuses comes back unsettled and unprinted.
fn handle(
    ch: &Channel,
    delivery: Delivery,
    window: &mut Window,
    printer: &mut Printer,
    decoder: Option<&Decoder>,
) -> Result<Option<Refused>, CliError> {
    let payload = match decoder.map(|d| d.decode(&delivery)).transpose() {
        Ok(payload) => payload,
        Err(error) => return Ok(Some(Refused { delivery, error })),
    };
    window.received += 1;
    let now = window.may_settle_now();
    if window.settle == Settle::AckOnArrival && now {
        delivery.ack().settled(ch.id())?;
        window.settled += 1;
    }
    printer.print(&delivery, None, payload.as_ref())?;
    if !now {
        window.deferred = Some(delivery.delivery_tag);
        window.deferred_count += 1;
        return Ok(None);
    }
    match window.settle {
        Settle::Ack => delivery.ack().settled(ch.id())?,
        Settle::Reject => delivery.reject(false).settled(ch.id())?,
        Settle::AckOnArrival | Settle::None | Settle::Requeue => return Ok(None),
    }
    window.settled += 1;
    Ok(None)
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::cli::{Cli, Command};

    fn window(args: &[&str]) -> Window {
        let cli = Cli::try_parse_from(
            ["lepus", "consume", "--queue", "q"]
                .into_iter()
                .chain(args.iter().copied()),
        )
        .unwrap();
        let Command::Consume(c) = cli.command else {
            panic!("not consume")
        };
        Window::new(&c)
    }

    /// Plays the broker: it may deliver while `received < settled + prefetch`.
    fn simulate(mut w: Window, queue_len: u64) -> (u64, u64) {
        let mut max_deliverable = 0;
        loop {
            let allowed = if w.prefetch == 0 {
                u64::MAX
            } else {
                w.settled + u64::from(w.prefetch)
            };
            max_deliverable = max_deliverable.max(allowed.min(queue_len));
            if w.is_done() || w.received >= allowed || w.received >= queue_len {
                break;
            }
            w.received += 1;
            let now = w.may_settle_now();
            if now && w.settle != Settle::Requeue && w.settle != Settle::None {
                w.settled += 1;
            } else if !now {
                w.deferred_count += 1;
            }
        }
        (w.received, max_deliverable)
    }

    #[test]
    fn the_broker_can_never_deliver_more_than_count() {
        for count in [1u64, 2, 5, 99, 100, 101, 1000] {
            for prefetch in ["1", "3", "100", "0", "65535"] {
                for extra in [&[][..], &["--reject"], &["--no-ack"], &["--requeue"]] {
                    let c = count.to_string();
                    let mut args = vec!["--count", &c, "--prefetch", prefetch];
                    args.extend_from_slice(extra);
                    let (received, deliverable) = simulate(window(&args), 10_000);
                    assert_eq!(received, count, "{args:?}");
                    assert!(
                        deliverable <= count,
                        "{args:?}: broker could send {deliverable}"
                    );
                }
            }
        }
    }

    #[test]
    fn prefetch_is_capped_by_count() {
        assert_eq!(window(&["--count", "5", "--prefetch", "100"]).prefetch, 5);
        assert_eq!(
            window(&["--count", "500", "--prefetch", "100"]).prefetch,
            100
        );
        assert_eq!(
            window(&["--count", "100000", "--prefetch", "0"]).prefetch,
            u16::MAX
        );
        assert_eq!(window(&["--prefetch", "0"]).prefetch, 0);
        assert_eq!(window(&["--no-ack"]).prefetch, 0);
    }

    #[test]
    fn settle_modes() {
        assert_eq!(window(&[]).settle, Settle::Ack);
        assert_eq!(window(&["--reject"]).settle, Settle::Reject);
        assert_eq!(window(&["--requeue"]).settle, Settle::Requeue);
        assert_eq!(window(&["--reject", "--requeue"]).settle, Settle::Requeue);
        assert_eq!(window(&["--no-ack"]).settle, Settle::None);
        assert_eq!(
            window(&["--no-ack", "--count", "3"]).settle,
            Settle::AckOnArrival
        );
        // A refused message must be requeued: --decode never consumes without acks.
        let w = window(&["--no-ack", "--decode"]);
        assert_eq!((w.settle, w.prefetch), (Settle::AckOnArrival, 100));
        assert_eq!(
            window(&["--no-ack", "--decode", "--count", "3"]).settle,
            Settle::AckOnArrival
        );
    }

    #[test]
    fn requeue_without_count_stops_when_the_window_is_full() {
        let mut w = window(&["--requeue", "--prefetch", "2"]);
        assert!(!w.is_done());
        w.deferred_count = 2;
        assert!(w.is_done());
        // Acking consumers without --count run until idle or Ctrl-C.
        let mut w = window(&["--prefetch", "2"]);
        w.received = 1000;
        assert!(!w.is_done());
    }
}
