//! Automatic recovery: reconnecting after a lost link and restoring what the connection had.
//!
//! When the link is lost in a way that reconnecting can mend
//! ([`ConnectionError::is_recoverable`](lepus_proto::ConnectionError::is_recoverable)),
//! [`begin`] settles everything that was in flight (requests fail with
//! [`Error::ConnectionLost`], confirms become [`Confirmation::Uncertain`], buffered
//! deliveries are dropped: the broker requeues them) and starts [`recover`] on the runtime.
//! That task tries the brokers in turn with backoff; each attempt ([`attempt`]) opens a link,
//! reopens the channels on their ids with their modes, declares the recorded topology on a
//! channel of its own, and subscribes the consumers again. Calls the application makes
//! meanwhile wait ([`Shared::ready`]).

mod policy;
mod topology;

use std::sync::Arc;
use std::time::Instant;

use lepus_proto::Reply;
use lepus_wire::method::{basic, channel, confirm, exchange, queue, tx};
use lepus_wire::{Method, ShortStr};
use tokio::sync::oneshot;

use crate::config::ConnectionOptions;
use crate::driver::{self, ChannelSlot, ConnectionEvent, Inner, Link, Shared, Waiter};
use crate::error::{Error, Result};

pub use policy::{RecoveryPolicy, TopologyFilter};
pub(crate) use topology::{RecordedBinding, RecordedConsumer, Topology};

pub use topology::TopologyEntity;

/// Whether a lost connection may be recovered: the policy allows it and nothing ended it
/// for good.
pub(crate) fn may_recover(shared: &Shared, inner: &Inner) -> bool {
    shared.options.recovery.enabled && shared.runtime.is_some() && inner.error.is_none()
}

/// The link was lost: settles what was in flight and starts the recovery task.
pub(crate) fn begin(shared: &Arc<Shared>, inner: &mut Inner, cause: Error) {
    let started = Instant::now();
    inner.recovering = true;
    inner.epoch += 1;
    shared
        .epoch
        .store(inner.epoch, std::sync::atomic::Ordering::Release);
    let unsent_messages = inner.retire_link(shared);
    // Told in the `Disconnected` event; the connection goes on, so a later close is not
    // about them.
    inner.lost = None;
    let _uncertain = settle_in_flight(inner, &cause);
    #[cfg(feature = "metrics")]
    shared
        .events
        .metrics
        .confirm_uncertain
        .increment(_uncertain);
    shared.link.send_replace(Link::Recovering);
    shared.space.notify_waiters();
    tracing::warn!(
        address = %inner.address,
        error = %cause,
        unsent_messages,
        "connection lost; recovering"
    );
    shared.events.send(ConnectionEvent::Disconnected {
        cause,
        unsent_messages,
    });
    if let Some(runtime) = &shared.runtime {
        drop(runtime.spawn(recover(Arc::clone(shared), started)));
    }
}

/// An attempt's link failed while recovering: what waited on it fails, and its tasks stop.
/// The recovery task sees the failure and goes on.
pub(crate) fn attempt_failed(shared: &Shared, inner: &mut Inner, cause: &Error) {
    inner.retire_link(shared);
    settle_in_flight(inner, cause);
}

/// Everything waiting on the lost link gets its outcome: requests fail as retryable, confirms
/// become uncertain, buffered deliveries are dropped (the broker requeues them), and channels
/// the application was closing are closed.
fn settle_in_flight(inner: &mut Inner, cause: &Error) -> u64 {
    let lost = Error::ConnectionLost(Arc::new(cause.clone()));
    let mut uncertain = 0u64;
    let mut closed = Vec::new();
    for (&id, slot) in inner.channels.iter_mut() {
        for waiter in slot.waiters.drain(..) {
            waiter.fail(lost.clone());
        }
        if !slot.confirms.is_drained() {
            slot.nacked_since_wait = true;
        }
        // Kept publishes wait on: they are published again on the new link.
        let kept = slot.replay.as_ref();
        let before = slot.confirms.unsettled();
        slot.confirms.uncertain(
            |n| kept.is_some_and(|k| k.contains(n)),
            &mut inner.wake_later,
        );
        uncertain += before.saturating_sub(slot.confirms.unsettled()) as u64;
        if let Some(drained) = &slot.confirms_drained {
            drained.notify_waiters();
        }
        for queue in slot.consumers.values() {
            queue.drop_buffered();
        }
        slot.consumers.clear();
        slot.returned.clear();
        slot.unsettled = 0;
        slot.last_delivery_tag = 0;
        slot.flow_paused = false;
        slot.read_deliveries = 0;
        slot.read_confirms = 0;
        if slot.closing {
            closed.push(id);
        }
    }
    for id in closed {
        if let Some(mut slot) = inner.channels.remove(&id) {
            inner.topology.channel_closed(id);
            if let Some(tx) = slot.close_waiter.take() {
                let _ = tx.send(None);
            }
        }
    }
    for tx in inner.update_secret_waiters.drain(..) {
        let _ = tx.send(Err(lost.clone()));
    }
    uncertain
}

/// Reconnects with backoff until an attempt succeeds, the policy gives up, or the application
/// closes the connection.
async fn recover(shared: Arc<Shared>, started: Instant) {
    let policy = shared.options.recovery.clone();
    let hosts = shared.options.attempts();
    // Start with the broker after the one that was lost.
    let current = shared.lock().address.clone();
    let first = hosts
        .iter()
        .position(|o| format!("{}:{}", o.host, o.port) == current)
        .map_or(0, |at| at + 1);
    let mut last_error = None;
    for attempt in 0u32.. {
        if policy.exhausted(attempt, started.elapsed()) {
            let error = last_error.unwrap_or_else(|| {
                Error::InvalidState("recovery gave up before its first attempt")
            });
            return give_up(&shared, error);
        }
        let Some(options) = hosts.get((first + attempt as usize) % hosts.len().max(1)) else {
            return give_up(&shared, Error::InvalidState("no broker to recover to"));
        };
        let delay = policy.delay(attempt, fastrand::f64());
        let address = format!("{}:{}", options.host, options.port);
        tracing::info!(%address, attempt = attempt + 1, ?delay, "reconnecting");
        shared.events.send(ConnectionEvent::Reconnecting {
            address,
            attempt: attempt + 1,
            after: delay,
        });
        let mut link = shared.link.subscribe();
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            _ = link.wait_for(|l| *l != Link::Recovering) => return,
        }
        match self::attempt(&shared, options).await {
            Ok(()) => return finish(&shared, started),
            Err(_) if !shared.lock().recovering => return,
            Err(e) if !worth_retrying(&e) => return give_up(&shared, e),
            Err(e) => {
                tracing::info!(error = %e, "reconnecting failed");
                shared.lock().retire_link(&shared);
                last_error = Some(e);
            }
        }
    }
}

/// Whether an attempt that failed with `e` may be tried again (or on another broker): the
/// broker could not be reached, not a refusal.
pub(crate) fn worth_retrying(e: &Error) -> bool {
    match e {
        Error::Connect { .. }
        | Error::Io(_)
        | Error::Tls(_)
        | Error::Timeout { .. }
        | Error::ConnectionLost(_) => true,
        Error::AllHostsFailed(each) => each.iter().any(|(_, e)| worth_retrying(e)),
        Error::ConnectionClosed(cause) => cause.is_recoverable(),
        _ => false,
    }
}

/// One reconnection: a new link to `options`'s broker, then channels, topology and consumers.
async fn attempt(shared: &Arc<Shared>, options: &ConnectionOptions) -> Result<()> {
    let (reader, writer, inline) = crate::transport::connect(options).await?;
    let (handshake, session) = {
        let mut inner = shared.lock();
        if !inner.recovering {
            return Err(inner.closed_error());
        }
        let proto = lepus_proto::Connection::new(options.proto_config());
        let address = format!("{}:{}", options.host, options.port);
        let session = inner.install_link(shared, proto, address, inline);
        let (tx, rx) = oneshot::channel();
        inner.connected = Some(tx);
        (rx, session)
    };
    tokio::spawn(driver::reader(Arc::clone(shared), reader, session));
    tokio::spawn(driver::writer(Arc::clone(shared), writer, session));
    let limit = shared.options.handshake_timeout;
    match tokio::time::timeout(limit, handshake).await {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(e))) => return Err(e),
        Ok(Err(_)) => return Err(shared.lock().closed_error()),
        Err(_) => {
            return Err(Error::Timeout {
                what: "AMQP handshake",
                after: limit,
            })
        }
    }
    let channels: Vec<(u16, ChannelState)> = {
        let inner = shared.lock();
        let mut ids: Vec<_> = inner
            .channels
            .iter()
            .map(|(&id, slot)| (id, ChannelState::of(slot)))
            .collect();
        ids.sort_by_key(|(id, _)| *id);
        ids
    };
    for (id, state) in &channels {
        reopen_channel(shared, *id, state).await?;
    }
    let own = restore_topology(shared).await?;
    restore_consumers(shared, &channels, own).await
}

/// What a channel was set to, to set it again on a new link.
#[derive(Debug, Clone)]
struct ChannelState {
    generation: u64,
    prefetch_consumer: u32,
    prefetch_channel: u32,
    confirm_mode: bool,
    tx_mode: bool,
    app_flow: Option<bool>,
}

impl ChannelState {
    fn of(slot: &ChannelSlot) -> Self {
        Self {
            generation: slot.generation,
            prefetch_consumer: slot.prefetch_consumer,
            prefetch_channel: slot.prefetch_channel,
            confirm_mode: slot.confirm_mode,
            tx_mode: slot.tx_mode,
            app_flow: slot.app_flow,
        }
    }
}

/// Opens channel `id` on the new link and sets its modes again: QoS in both scopes, confirm
/// mode (numbering goes on where it was), transactions, flow. A slot the broker removed (it
/// closed the channel during recovery) is put back, so the application's handles go on.
async fn reopen_channel(shared: &Arc<Shared>, id: u16, state: &ChannelState) -> Result<()> {
    let rx = {
        let mut inner = shared.lock();
        inner.proto.open_channel_with_id(id)?;
        let slot = inner.channels.entry(id).or_insert_with(|| {
            Box::new(ChannelSlot {
                generation: state.generation,
                prefetch_consumer: state.prefetch_consumer,
                prefetch_channel: state.prefetch_channel,
                confirm_mode: state.confirm_mode,
                tx_mode: state.tx_mode,
                app_flow: state.app_flow,
                ..ChannelSlot::default()
            })
        });
        let (tx, rx) = oneshot::channel();
        slot.waiters.push_back(Waiter::Reply(tx));
        inner.closed_channels.remove(&id);
        inner.wake_writer(shared);
        rx
    };
    wait(shared, rx, "channel.open-ok").await?;
    for (count, global) in [
        (state.prefetch_consumer, false),
        (state.prefetch_channel, true),
    ] {
        if count > 0 {
            let qos = basic::Qos {
                prefetch_size: 0,
                prefetch_count: u16::try_from(count).unwrap_or(u16::MAX),
                global,
            };
            call(shared, id, qos.into(), "basic.qos-ok").await?;
        }
    }
    if state.confirm_mode {
        call(
            shared,
            id,
            confirm::Select { nowait: false }.into(),
            "confirm.select-ok",
        )
        .await?;
        replay(shared, id)?;
    }
    if state.tx_mode {
        call(shared, id, tx::Select.into(), "tx.select-ok").await?;
    }
    if state.app_flow == Some(false) {
        call(
            shared,
            id,
            channel::Flow { active: false }.into(),
            "channel.flow-ok",
        )
        .await?;
    }
    Ok(())
}

/// Publishes again, first thing on the reopened channel `id`, the messages kept for replay,
/// and numbers the link's confirms: the broker's 1 to k stand for the replayed messages, and
/// later ones follow on from the last number given before the loss.
fn replay(shared: &Arc<Shared>, id: u16) -> Result<()> {
    let mut inner = shared.lock();
    let kept: Vec<(u64, crate::confirm::Replay)> = match inner.channels.get(&id) {
        Some(slot) => slot
            .replay
            .iter()
            .flat_map(crate::confirm::Kept::iter)
            .map(|(n, m)| (*n, m.clone()))
            .collect(),
        None => return Ok(()),
    };
    let mut replayed = Vec::with_capacity(kept.len());
    for (number, m) in kept {
        inner.proto.publish(
            id,
            m.exchange.as_str().unwrap_or_default(),
            m.routing_key.as_str().unwrap_or_default(),
            m.mandatory,
            &m.properties,
            m.body,
        )?;
        inner.note_publish();
        replayed.push(number);
    }
    inner.stats.replayed += replayed.len() as u64;
    if let Some(slot) = inner.channels.get_mut(&id) {
        slot.confirm_offset = slot.published_seq.saturating_sub(replayed.len() as u64);
        slot.replayed = replayed;
    }
    inner.wake_writer(shared);
    Ok(())
}

/// Declares the recorded exchanges, exchange bindings, queues and queue bindings again, in
/// that order, on a channel of recovery's own. An entity the broker refuses is reported and
/// forgotten, and recovery goes on with the rest on a fresh channel. Returns that channel,
/// still open, if it opened one.
async fn restore_topology(shared: &Arc<Shared>) -> Result<Option<u16>> {
    let policy = &shared.options.recovery;
    let (exchanges, exchange_bindings, queues) = {
        let inner = shared.lock();
        let t = &inner.topology;
        (
            t.exchanges.clone(),
            t.exchange_bindings.clone(),
            t.queues.clone(),
        )
    };
    if exchanges.is_empty() && exchange_bindings.is_empty() && queues.is_empty() {
        return Ok(None);
    }
    let mut ch = open_own_channel(shared).await?;
    for e in exchanges {
        if !policy.keeps(&TopologyEntity::Exchange(&e.name)) {
            continue;
        }
        let method = exchange::Declare {
            exchange: short(&e.name)?,
            kind: short(e.kind.as_str())?,
            passive: false,
            durable: e.options.durable,
            auto_delete: e.options.auto_delete,
            internal: e.options.internal,
            nowait: false,
            arguments: e.options.arguments.clone(),
        };
        let outcome = call(shared, ch, method.into(), "exchange.declare-ok").await;
        if refused(shared, &mut ch, outcome, format!("exchange '{}'", e.name)).await? {
            shared.lock().topology.exchange_refused(&e.name);
        }
    }
    for b in exchange_bindings {
        rebind(shared, &mut ch, &b, Bound::Exchange).await?;
    }
    for q in queues {
        let entity = TopologyEntity::Queue {
            name: &q.name,
            server_named: q.server_named,
        };
        if !policy.keeps(&entity) {
            continue;
        }
        let method = queue::Declare {
            // A server-named queue gets a new name: never ask for an `amq.gen-*` one.
            queue: short(if q.server_named { "" } else { &q.name })?,
            passive: false,
            durable: q.options.durable,
            exclusive: q.options.exclusive,
            auto_delete: q.options.auto_delete,
            nowait: false,
            arguments: q.options.arguments.clone(),
        };
        let outcome = call(shared, ch, method.into(), "queue.declare-ok").await;
        let declared = match outcome {
            Ok(Some(Reply::Method(Method::QueueDeclareOk(ok)))) => {
                Some(ok.queue.to_string_lossy().into_owned())
            }
            other => {
                if refused(shared, &mut ch, other, format!("queue '{}'", q.name)).await? {
                    shared.lock().topology.queue_refused(&q.name);
                }
                None
            }
        };
        if let Some(new) = declared.filter(|new| *new != q.name) {
            shared.lock().topology.queue_renamed(&q.name, &new);
            tracing::info!(old = %q.name, %new, "server-named queue renamed");
            shared.events.send(ConnectionEvent::QueueRenamed {
                old: q.name.clone(),
                new,
            });
        }
    }
    // Bindings after the queues, with the names they have now.
    let queue_bindings = shared.lock().topology.queue_bindings.clone();
    for b in queue_bindings {
        rebind(shared, &mut ch, &b, Bound::Queue).await?;
    }
    Ok(Some(ch))
}

/// What a binding binds to its source exchange.
#[derive(Debug, Clone, Copy)]
enum Bound {
    Exchange,
    Queue,
}

/// Binds `b` again on recovery's channel `ch` (unless filtered out); a binding the broker
/// refuses is reported and forgotten.
async fn rebind(
    shared: &Arc<Shared>,
    ch: &mut u16,
    b: &RecordedBinding,
    bound: Bound,
) -> Result<()> {
    let (destination, source, key) = (&b.destination, &b.source, &b.routing_key);
    let entity = match bound {
        Bound::Exchange => TopologyEntity::ExchangeBinding {
            destination,
            source,
            routing_key: key,
        },
        Bound::Queue => TopologyEntity::QueueBinding {
            queue: destination,
            exchange: source,
            routing_key: key,
        },
    };
    if !shared.options.recovery.keeps(&entity) {
        return Ok(());
    }
    let (destination, source, key) = (short(destination)?, short(source)?, short(key)?);
    let arguments = b.arguments.clone();
    let (method, reply, what): (Method, _, _) = match bound {
        Bound::Exchange => (
            exchange::Bind {
                destination,
                source,
                routing_key: key,
                nowait: false,
                arguments,
            }
            .into(),
            "exchange.bind-ok",
            "exchange",
        ),
        Bound::Queue => (
            queue::Bind {
                queue: destination,
                exchange: source,
                routing_key: key,
                nowait: false,
                arguments,
            }
            .into(),
            "queue.bind-ok",
            "queue",
        ),
    };
    let outcome = call(shared, *ch, method, reply).await;
    let entity = format!("binding of {what} '{}' to '{}'", b.destination, b.source);
    if refused(shared, ch, outcome, entity).await? {
        let mut inner = shared.lock();
        match bound {
            Bound::Exchange => inner.topology.exchange_unbound(b),
            Bound::Queue => inner.topology.queue_unbound(b),
        }
    }
    Ok(())
}

/// Subscribes every recorded consumer again, on its channel, with its tag and options. A
/// consumer the broker refuses ends its stream with the broker's reason, and its channel is
/// opened again.
///
/// `own` is recovery's own channel, if one is open already; it is closed at the end.
async fn restore_consumers(
    shared: &Arc<Shared>,
    channels: &[(u16, ChannelState)],
    own: Option<u16>,
) -> Result<()> {
    let consumers = shared.lock().topology.consumers.clone();
    if consumers.is_empty() {
        if let Some(own) = own {
            close_own_channel(shared, own).await?;
        }
        return Ok(());
    }
    // A consume on a missing queue would close the consumer's channel, and with it the
    // consumers already restored there: look for each queue first, on a channel of recovery's
    // own, where a 404 harms nothing.
    let mut own = match own {
        Some(own) => own,
        None => open_own_channel(shared).await?,
    };
    let mut missing = Vec::new();
    let mut checked = Vec::new();
    for c in &consumers {
        if checked.contains(&c.queue) {
            continue;
        }
        checked.push(c.queue.clone());
        let passive = queue::Declare {
            queue: short(&c.queue)?,
            passive: true,
            ..Default::default()
        };
        match call(shared, own, passive.into(), "queue.declare-ok").await {
            Ok(_) => {}
            Err(e @ Error::ChannelClosed(_)) => {
                missing.push((c.queue.clone(), e));
                own = open_own_channel(shared).await?;
            }
            Err(e) => return Err(e),
        }
    }
    close_own_channel(shared, own).await?;
    for c in consumers {
        if let Some((_, e)) = missing.iter().find(|(q, _)| *q == c.queue) {
            report(
                shared,
                format!("consumer '{}' on queue '{}'", c.tag, c.queue),
                e,
            );
            c.stream.end(Some(e.clone()));
            shared
                .lock()
                .topology
                .consumer_ended(c.channel, &c.tag, false);
            continue;
        }
        let entity = TopologyEntity::Consumer {
            channel: c.channel,
            tag: &c.tag.to_string_lossy(),
            queue: &c.queue,
        };
        if !shared.options.recovery.keeps(&entity) {
            c.stream.end(None);
            shared
                .lock()
                .topology
                .consumer_ended(c.channel, &c.tag, false);
            continue;
        }
        let method = basic::Consume {
            queue: short(&c.queue)?,
            consumer_tag: c.tag.clone(),
            no_local: c.options.no_local,
            no_ack: c.options.no_ack,
            exclusive: c.options.exclusive,
            nowait: false,
            arguments: c.options.arguments.clone(),
        };
        let rx = {
            let mut inner = shared.lock();
            let wanted = inner
                .topology
                .consumers
                .iter()
                .any(|r| r.channel == c.channel && r.tag == c.tag);
            // Dropped or cancelled meanwhile, or its channel closed.
            if !wanted || !inner.channels.contains_key(&c.channel) {
                continue;
            }
            inner.proto.call(c.channel, method.into())?;
            let (tx, rx) = oneshot::channel();
            if let Some(slot) = inner.channels.get_mut(&c.channel) {
                slot.waiters.push_back(Waiter::Consume {
                    tx,
                    queue: Arc::clone(&c.stream),
                    no_ack: c.options.no_ack,
                });
            }
            inner.wake_writer(shared);
            rx
        };
        match wait(shared, rx, "basic.consume-ok").await {
            Ok(_) => {
                let mut inner = shared.lock();
                let wanted = inner
                    .topology
                    .consumers
                    .iter()
                    .any(|r| r.channel == c.channel && r.tag == c.tag);
                if !wanted {
                    // Dropped while it was being subscribed: cancel it again.
                    let cancel = basic::Cancel {
                        consumer_tag: c.tag.clone(),
                        nowait: true,
                    };
                    if let Some(slot) = inner.channels.get_mut(&c.channel) {
                        slot.consumers.remove(&c.tag);
                    }
                    let _ = inner.proto.call(c.channel, cancel.into());
                    inner.wake_writer(shared);
                    continue;
                }
                drop(inner);
                tracing::debug!(channel = c.channel, tag = %c.tag, queue = %c.queue, "consumer recovered");
                shared.events.send(ConnectionEvent::ConsumerRecovered {
                    channel: c.channel,
                    consumer_tag: c.tag.clone(),
                    queue: c.queue.clone(),
                });
            }
            Err(e @ Error::ChannelClosed(_)) => {
                report(
                    shared,
                    format!("consumer '{}' on queue '{}'", c.tag, c.queue),
                    &e,
                );
                c.stream.end(Some(e));
                shared
                    .lock()
                    .topology
                    .consumer_ended(c.channel, &c.tag, false);
                if let Some((_, state)) = channels.iter().find(|(id, _)| *id == c.channel) {
                    reopen_channel(shared, c.channel, state).await?;
                }
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// The connection is open again: calls go on.
fn finish(shared: &Arc<Shared>, started: Instant) {
    let mut inner = shared.lock();
    inner.recovering = false;
    inner.stats.recoveries += 1;
    let address = inner.address.clone();
    inner.wake_writer(shared);
    drop(inner);
    let took = started.elapsed();
    shared.link.send_replace(Link::Open);
    shared.space.notify_waiters();
    tracing::info!(%address, ?took, "connection recovered");
    shared
        .events
        .send(ConnectionEvent::Recovered { address, took });
}

/// Recovery ends without a connection: everything fails with `error`.
fn give_up(shared: &Arc<Shared>, error: Error) {
    tracing::warn!(error = %error, "recovery gave up");
    shared.events.send(ConnectionEvent::RecoveryFailed {
        error: error.clone(),
    });
    let mut inner = shared.lock();
    if inner.error.is_some() {
        return;
    }
    inner.retire_link(shared);
    driver::terminate(shared, &mut inner, error);
}

/// Sends `method` on `channel` and waits for its reply (`None` for a method without one).
async fn call(
    shared: &Arc<Shared>,
    channel: u16,
    method: Method,
    what: &'static str,
) -> Result<Option<Reply>> {
    let rx = {
        let mut inner = shared.lock();
        let expects = inner.proto.call(channel, method)?;
        inner.wake_writer(shared);
        if !expects {
            return Ok(None);
        }
        let (tx, rx) = oneshot::channel();
        match inner.channels.get_mut(&channel) {
            Some(slot) => slot.waiters.push_back(Waiter::Reply(tx)),
            None => return Err(Error::ChannelNotOpen(channel)),
        }
        rx
    };
    wait(shared, rx, what).await.map(Some)
}

/// Waits for a reply within the RPC timeout.
async fn wait(
    shared: &Shared,
    rx: oneshot::Receiver<Result<Reply>>,
    what: &'static str,
) -> Result<Reply> {
    let after = shared.options.rpc_timeout;
    match tokio::time::timeout(after, rx).await {
        Ok(Ok(reply)) => reply,
        Ok(Err(_)) => Err(shared.lock().closed_error()),
        Err(_) => Err(Error::Timeout { what, after }),
    }
}

/// Opens a channel for declaring the topology, on the lowest free id.
async fn open_own_channel(shared: &Arc<Shared>) -> Result<u16> {
    let (rx, id) = {
        let mut inner = shared.lock();
        let (id, _) = inner.proto.open_channel()?;
        let (tx, rx) = oneshot::channel();
        // Generation 0 matches no handle the application holds.
        let mut slot = ChannelSlot::default();
        slot.waiters.push_back(Waiter::Reply(tx));
        inner.channels.insert(id, Box::new(slot));
        inner.wake_writer(shared);
        (rx, id)
    };
    wait(shared, rx, "channel.open-ok").await?;
    Ok(id)
}

async fn close_own_channel(shared: &Arc<Shared>, id: u16) -> Result<()> {
    let rx = {
        let mut inner = shared.lock();
        let close = channel::Close {
            reply_code: lepus_wire::ReplyCode::REPLY_SUCCESS,
            reply_text: ShortStr::from_static("recovery done"),
            class_id: 0,
            method_id: 0,
        };
        inner.proto.call(id, close.into())?;
        let (tx, rx) = oneshot::channel();
        if let Some(slot) = inner.channels.get_mut(&id) {
            slot.close_waiter = Some(tx);
        }
        inner.wake_writer(shared);
        rx
    };
    let after = shared.options.rpc_timeout;
    match tokio::time::timeout(after, rx).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(_)) => Err(shared.lock().closed_error()),
        Err(_) => Err(Error::Timeout {
            what: "channel.close-ok",
            after,
        }),
    }
}

/// Looks at the outcome of declaring `what`: `Ok(false)` when it went through, `Ok(true)`
/// when the broker refused it (reported; recovery's channel is opened anew), an error when
/// the link itself failed.
async fn refused(
    shared: &Arc<Shared>,
    ch: &mut u16,
    outcome: Result<Option<Reply>>,
    what: String,
) -> Result<bool> {
    match outcome {
        Ok(_) => Ok(false),
        Err(e @ Error::ChannelClosed(_)) => {
            report(shared, what, &e);
            *ch = open_own_channel(shared).await?;
            Ok(true)
        }
        Err(e) => Err(e),
    }
}

fn report(shared: &Shared, entity: String, error: &Error) {
    tracing::warn!(%entity, error = %error, "could not restore after recovery");
    shared.events.send(ConnectionEvent::TopologyFailed {
        entity,
        error: error.clone(),
    });
}

fn short(name: &str) -> Result<ShortStr> {
    ShortStr::try_from(name).map_err(|e| Error::InvalidArgument(e.to_string()))
}
