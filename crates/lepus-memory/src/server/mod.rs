//! The broker as a state machine: bytes from each connection in, bytes for each connection out.

mod basic;
mod conn;
mod entities;

use std::collections::BTreeMap;

use rustc_hash::FxHashMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::BytesMut;
use lepus_wire::method::{channel as channel_m, connection};
use lepus_wire::{FieldTable, FieldValue, Frame, LongStr, Method, ReplyCode, PROTOCOL_HEADER};

use crate::broker::dead_letter::{DeadLetter, Reason};
use crate::broker::{BrokerConfig, Clock, ConnId, ExchangeInfo, QueueInfo, Vhost};
use conn::{short, Conn, Phase};

/// Why a method failed: a reply code and RabbitMQ's text (with the code's name in front).
#[derive(Debug)]
pub(crate) struct Fail {
    pub(crate) code: ReplyCode,
    pub(crate) text: String,
}

impl Fail {
    pub(crate) fn new(code: ReplyCode, text: impl std::fmt::Display) -> Self {
        Self {
            code,
            text: format!("{} - {text}", code.name().unwrap_or("ERROR")),
        }
    }
}

pub(crate) type Res = Result<(), Fail>;

/// An in-process AMQP 0-9-1 broker with RabbitMQ's semantics, as a state machine.
///
/// It does no I/O and reads no clock: a driver feeds it each connection's bytes with the
/// current time and writes out what it produces. The call order:
///
/// 1. [`open_connection`](Self::open_connection) for each new client stream;
/// 2. [`handle_input`](Self::handle_input) with the bytes the client sent;
/// 3. [`poll_woken`](Self::poll_woken) for every connection that now has output (a publish on
///    one connection delivers on another), and [`take_output`](Self::take_output) for each;
///    after writing, [`wants_close`](Self::wants_close) says whether to close the stream;
/// 4. [`handle_timeout`](Self::handle_timeout) when [`poll_timeout`](Self::poll_timeout)'s
///    instant passes (message TTL, queue expiry, heartbeats), then step 3 again;
/// 5. [`connection_lost`](Self::connection_lost) when a stream ends.
#[derive(Debug)]
pub struct Broker {
    pub(crate) config: BrokerConfig,
    pub(crate) clock: Clock,
    pub(crate) vhosts: FxHashMap<String, Vhost>,
    pub(crate) conns: BTreeMap<ConnId, Conn>,
    next_conn: u64,
    pub(crate) woken: Vec<ConnId>,
    pub(crate) dead: Vec<DeadLetter>,
    /// Queues to run deliveries for: (vhost, queue).
    pub(crate) dirty: Vec<(Arc<str>, Arc<str>)>,
    pub(crate) names: u64,
    /// Direct reply-to addresses and the channel each belongs to.
    pub(crate) reply_to: FxHashMap<String, (ConnId, u16)>,
    blocked: Option<String>,
    /// A routing result kept between publishes, so routing allocates nothing.
    pub(crate) scratch: Vec<Arc<str>>,
}

impl Broker {
    /// A broker with `config`. `now` and `wall` fix the clock: later instants passed in become
    /// wall-clock times (`x-death` timestamps) as offsets from this pair.
    pub fn new(config: BrokerConfig, now: Instant, wall: SystemTime) -> Self {
        let vhosts = config
            .vhosts
            .iter()
            .map(|v| (v.clone(), Vhost::new()))
            .collect();
        Self {
            config,
            clock: Clock { base: now, wall },
            vhosts,
            conns: BTreeMap::new(),
            next_conn: 1,
            woken: Vec::new(),
            dead: Vec::new(),
            dirty: Vec::new(),
            names: 0,
            reply_to: FxHashMap::default(),
            blocked: None,
            scratch: Vec::new(),
        }
    }

    /// A new client connection, expecting the protocol header first.
    pub fn open_connection(&mut self, now: Instant) -> ConnId {
        let id = ConnId(self.next_conn);
        self.next_conn += 1;
        self.conns.insert(id, Conn::new(self.config.frame_max, now));
        id
    }

    /// Takes every complete frame the client sent out of `input` (leaving a partial one) and
    /// acts on it.
    pub fn handle_input(&mut self, id: ConnId, now: Instant, input: &mut BytesMut) {
        let Some(conn) = self.conns.get_mut(&id) else {
            input.clear();
            return;
        };
        conn.last_recv = now;
        if conn.phase == Phase::Header {
            if input.len() < PROTOCOL_HEADER.len() {
                return;
            }
            let header = input.split_to(PROTOCOL_HEADER.len());
            if header[..] != PROTOCOL_HEADER[..] {
                conn.out.extend_from_slice(&PROTOCOL_HEADER);
                conn.phase = Phase::Closing;
                conn.close_transport = true;
                self.wake(id);
                return;
            }
            self.send_start(id);
        }
        loop {
            let Some(conn) = self.conns.get_mut(&id) else {
                return;
            };
            if conn.close_transport {
                input.clear();
                break;
            }
            let frame_max = if conn.phase == Phase::Running {
                conn.frame_max
            } else {
                self.config.frame_max
            };
            let before = input.len();
            // A content header frame is kept as it came, to be delivered as it is.
            if let Some(len) = whole_header_frame(input, frame_max) {
                let mut frame = input.split_to(len).freeze();
                let raw = frame.clone();
                match Frame::decode_bytes(&mut frame, frame_max) {
                    Ok(Some(Frame::Header { channel, header })) => {
                        self.content_frame_header(id, channel, header, raw, now);
                        continue;
                    }
                    Ok(_) => continue,
                    Err(e) => {
                        let code = e.reply_code();
                        let text = format!("{} - {e}", code.name().unwrap_or("FRAME_ERROR"));
                        self.close_connection_with(id, code, &text, (0, 0));
                        continue;
                    }
                }
            }
            match Frame::decode(input, frame_max) {
                Ok(None) => break,
                Ok(Some(frame)) => self.handle_frame(id, frame, now),
                Err(e) => {
                    let code = e.reply_code();
                    self.close_connection_with(
                        id,
                        code,
                        &format!("{} - {e}", code.name().unwrap_or("FRAME_ERROR")),
                        (0, 0),
                    );
                    // A bad frame taken off whole leaves the stream in step: wait for
                    // close-ok. Otherwise the frames can no longer be told apart: drop what
                    // came, and end the stream once the close is written.
                    if input.len() == before {
                        input.clear();
                        if let Some(conn) = self.conns.get_mut(&id) {
                            conn.close_transport = true;
                        }
                        self.wake(id);
                    }
                }
            }
        }
        self.flush_confirms(id);
        self.run_pending(now);
    }

    /// The next connection with output to write since the last call.
    pub fn poll_woken(&mut self) -> Option<ConnId> {
        let id = self.woken.pop()?;
        if let Some(conn) = self.conns.get_mut(&id) {
            conn.woken = false;
        }
        Some(id)
    }

    /// Takes the bytes to write to connection `id`'s client.
    ///
    /// A connection whose output had grown past what a socket would hold gets deliveries
    /// again once that output was taken and written: the next call (after the write) runs
    /// them, and may return more.
    pub fn take_output(&mut self, id: ConnId, now: Instant) -> Option<bytes::Bytes> {
        let conn = self.conns.get_mut(&id)?;
        if conn.out.is_empty() {
            if !conn.throttled {
                return None;
            }
            conn.throttled = false;
            let channels: Vec<u16> = conn.channels.keys().copied().collect();
            for channel in channels {
                self.redispatch_channel(id, channel);
            }
            self.run_pending(now);
        }
        let conn = self.conns.get_mut(&id)?;
        if conn.out.is_empty() {
            return None;
        }
        conn.last_sent = now;
        if conn.out.len() >= basic::OUT_HIGH_WATER {
            conn.throttled = true;
        }
        Some(conn.out.split().freeze())
    }

    /// Whether the stream of connection `id` should be closed once its output is written.
    pub fn wants_close(&self, id: ConnId) -> bool {
        self.conns.get(&id).is_none_or(|c| c.close_transport)
    }

    /// The client's stream ended (or the driver dropped it): everything the connection held
    /// is released as RabbitMQ releases it (unacked messages requeued, exclusive queues deleted).
    pub fn connection_lost(&mut self, id: ConnId, now: Instant) {
        self.connection_lost_keep(id, now);
        self.conns.remove(&id);
        self.run_pending(now);
    }

    /// Closes connection `id` from the server with `code` and `text`, as `rabbitmqctl
    /// close_connection` does (320 CONNECTION_FORCED).
    pub fn close_connection(&mut self, id: ConnId, code: ReplyCode, text: &str, now: Instant) {
        self.close_connection_with(id, code, text, (0, 0));
        self.run_pending(now);
    }

    /// The connections currently attached.
    pub fn connections(&self) -> Vec<ConnId> {
        self.conns.keys().copied().collect()
    }

    /// Sends `connection.blocked` with `reason` to every client that understands it, as
    /// RabbitMQ does under a resource alarm.
    pub fn block(&mut self, reason: &str) {
        self.blocked = Some(reason.to_owned());
        let ids: Vec<ConnId> = self.conns.keys().copied().collect();
        for id in ids {
            self.notify_blocked(id);
        }
    }

    /// Sends `connection.unblocked` after [`block`](Self::block).
    pub fn unblock(&mut self) {
        if self.blocked.take().is_none() {
            return;
        }
        let ids: Vec<ConnId> = self.conns.keys().copied().collect();
        for id in ids {
            if let Some(conn) = self.conns.get_mut(&id) {
                if conn.blocked_notify && conn.phase == Phase::Running {
                    conn.send(0, &connection::Unblocked);
                    self.wake(id);
                }
            }
        }
    }

    fn notify_blocked(&mut self, id: ConnId) {
        let Some(reason) = self.blocked.clone() else {
            return;
        };
        if let Some(conn) = self.conns.get_mut(&id) {
            if conn.blocked_notify && conn.phase == Phase::Running {
                conn.send(
                    0,
                    &connection::Blocked {
                        reason: short(&reason),
                    },
                );
                self.wake(id);
            }
        }
    }

    /// A queue's state, or `None` if `vhost` has no queue `name`.
    pub fn queue(&self, vhost: &str, name: &str) -> Option<QueueInfo> {
        self.vhosts.get(vhost)?.queues.get(name).map(QueueInfo::of)
    }

    /// Every queue of `vhost`, by name.
    pub fn queues(&self, vhost: &str) -> Vec<QueueInfo> {
        let mut all: Vec<QueueInfo> = self
            .vhosts
            .get(vhost)
            .map(|v| v.queues.values().map(QueueInfo::of).collect())
            .unwrap_or_default();
        all.sort_by(|a, b| a.name.cmp(&b.name));
        all
    }

    /// An exchange's state, or `None` if `vhost` has no exchange `name`.
    pub fn exchange(&self, vhost: &str, name: &str) -> Option<ExchangeInfo> {
        let x = self.vhosts.get(vhost)?.exchanges.get(name)?;
        Some(ExchangeInfo {
            name: x.name.clone(),
            kind: x.kind,
            bindings: x.bindings.len(),
            auto_delete: x.auto_delete,
            internal: x.internal,
        })
    }

    /// The earliest instant at which [`handle_timeout`](Self::handle_timeout) has work.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let queues = self
            .vhosts
            .values()
            .flat_map(|v| v.queues.values())
            .filter_map(|q| match (q.earliest_expiry(), q.expiry_deadline()) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            });
        let beats = self
            .conns
            .values()
            .filter(|c| c.phase == Phase::Running && c.heartbeat > 0)
            .map(|c| {
                let hb = Duration::from_secs(u64::from(c.heartbeat));
                (c.last_sent + hb).min(c.last_recv + hb * 2)
            });
        queues.chain(beats).min()
    }

    /// Expires messages and queues, sends heartbeats, and drops clients that stopped sending.
    pub fn handle_timeout(&mut self, now: Instant) {
        let mut expired_queues = Vec::new();
        for (vname, vhost) in &mut self.vhosts {
            for q in vhost.queues.values_mut() {
                while let Some(entry) = q.pop_expired(now) {
                    self.dead.extend(q.dead_letter(
                        vname,
                        entry,
                        Reason::Expired,
                        self.clock.unix_secs(now),
                    ));
                }
                if q.expiry_deadline().is_some_and(|t| t <= now) {
                    expired_queues.push((vname.clone(), q.name.clone()));
                }
            }
        }
        for (vhost, name) in expired_queues {
            self.delete_queue(&vhost, &name, now);
        }
        let ids: Vec<ConnId> = self.conns.keys().copied().collect();
        for id in ids {
            let Some(conn) = self.conns.get_mut(&id) else {
                continue;
            };
            if conn.phase != Phase::Running || conn.heartbeat == 0 {
                continue;
            }
            let hb = Duration::from_secs(u64::from(conn.heartbeat));
            if now >= conn.last_recv + hb * 2 {
                // RabbitMQ closes the socket without a close frame on missed heartbeats.
                conn.close_transport = true;
                self.wake(id);
            } else if now >= conn.last_sent + hb {
                lepus_wire::frame::encode_heartbeat(&mut conn.out);
                conn.last_sent = now;
                self.wake(id);
            }
        }
        self.run_pending(now);
    }

    /// Marks connection `id` as having output.
    pub(crate) fn wake(&mut self, id: ConnId) {
        if let Some(conn) = self.conns.get_mut(&id) {
            if !conn.woken {
                conn.woken = true;
                self.woken.push(id);
            }
        }
    }

    fn send_start(&mut self, id: ConnId) {
        let capabilities = [
            "publisher_confirms",
            "exchange_exchange_bindings",
            "basic.nack",
            "consumer_cancel_notify",
            "connection.blocked",
            "consumer_priorities",
            "authentication_failure_close",
            "per_consumer_qos",
            "direct_reply_to",
        ]
        .iter()
        .fold(FieldTable::new(), |t, c| t.with(c, true));
        let properties = FieldTable::new()
            .with("capabilities", FieldValue::Table(capabilities))
            .with("cluster_name", "memory")
            .with("copyright", "lepus authors")
            .with(
                "information",
                "memory://, an in-process broker with RabbitMQ's semantics",
            )
            .with("platform", "Rust")
            .with("product", "lepus memory://")
            .with("version", env!("CARGO_PKG_VERSION"));
        let start = connection::Start {
            version_major: 0,
            version_minor: 9,
            server_properties: properties,
            mechanisms: LongStr::from("PLAIN AMQPLAIN"),
            locales: LongStr::from("en_US"),
        };
        if let Some(conn) = self.conns.get_mut(&id) {
            conn.send(0, &start);
            conn.phase = Phase::StartOk;
        }
        self.wake(id);
    }

    fn handle_frame(&mut self, id: ConnId, frame: Frame, now: Instant) {
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        match frame {
            Frame::Heartbeat => {}
            Frame::Method { channel: 0, method } => self.connection_method(id, method, now),
            _ if conn.phase == Phase::Closing => {}
            _ if conn.phase != Phase::Running => {
                self.close_connection_with(
                    id,
                    ReplyCode::COMMAND_INVALID,
                    "COMMAND_INVALID - channel frame before the connection is open",
                    (0, 0),
                );
            }
            Frame::Method { channel, method } => self.channel_method(id, channel, method, now),
            // RabbitMQ drops content sent on a channel it is closing.
            Frame::Header { channel, .. } | Frame::Body { channel, .. }
                if conn.channels.get(&channel).is_some_and(|ch| ch.closing) => {}
            Frame::Header { channel, header } => {
                // Only reached for a header frame that did not come through
                // `whole_header_frame`; encode it as received.
                let mut raw = BytesMut::new();
                let _ = lepus_wire::frame::encode_header(
                    &mut raw,
                    channel,
                    header.body_size,
                    &header.properties,
                    u32::MAX,
                );
                self.content_frame_header(id, channel, header, raw.freeze(), now);
            }
            Frame::Body { channel, body } => match self.content_body(id, channel, body) {
                Ok(Some(done)) => {
                    let r = self.publish(id, channel, done, now);
                    if let Err(f) = r {
                        self.fail(id, channel, f, (60, 40), now);
                    }
                }
                Ok(None) => {}
                Err(f) => self.fail(id, channel, f, (60, 40), now),
            },
        }
    }

    /// A content header frame, with the frame as received.
    fn content_frame_header(
        &mut self,
        id: ConnId,
        channel: u16,
        header: lepus_wire::ContentHeader,
        raw: bytes::Bytes,
        now: Instant,
    ) {
        let Some(conn) = self.conns.get(&id) else {
            return;
        };
        if conn.phase != Phase::Running {
            if conn.phase != Phase::Closing {
                self.close_connection_with(
                    id,
                    ReplyCode::COMMAND_INVALID,
                    "COMMAND_INVALID - channel frame before the connection is open",
                    (0, 0),
                );
            }
            return;
        }
        // RabbitMQ drops content sent on a channel it is closing.
        if conn.channels.get(&channel).is_some_and(|ch| ch.closing) {
            return;
        }
        if let Err(f) = self.content_header(id, channel, header, raw) {
            self.fail(id, channel, f, (60, 40), now);
        }
    }

    fn connection_method(&mut self, id: ConnId, method: Method, now: Instant) {
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        match (conn.phase, method) {
            (Phase::StartOk, Method::ConnectionStartOk(ok)) => self.start_ok(id, ok),
            (Phase::TuneOk, Method::ConnectionTuneOk(tune)) => {
                conn.channel_max = if tune.channel_max == 0 {
                    self.config.channel_max
                } else {
                    tune.channel_max.min(self.config.channel_max)
                };
                conn.frame_max = if tune.frame_max == 0 {
                    self.config.frame_max
                } else {
                    tune.frame_max.min(self.config.frame_max)
                };
                conn.heartbeat = tune.heartbeat;
                conn.phase = Phase::Open;
            }
            (Phase::Open, Method::ConnectionOpen(open)) => {
                let vhost = open.virtual_host.to_string_lossy().into_owned();
                if !self.vhosts.contains_key(&vhost) {
                    let text = format!("NOT_ALLOWED - vhost {vhost} not found");
                    self.close_connection_with(id, ReplyCode::NOT_ALLOWED, &text, (10, 40));
                    return;
                }
                conn.vhost = Arc::from(vhost.as_str());
                conn.phase = Phase::Running;
                conn.send(0, &connection::OpenOk);
                self.wake(id);
                self.notify_blocked(id);
            }
            (Phase::Closing, Method::ConnectionCloseOk(_) | Method::ConnectionClose(_)) => {
                conn.close_transport = true;
                self.wake(id);
                self.connection_lost_keep(id, now);
            }
            (Phase::Closing, _) => {}
            (_, Method::ConnectionClose(_)) => {
                conn.send(0, &connection::CloseOk);
                conn.close_transport = true;
                self.wake(id);
                self.connection_lost_keep(id, now);
            }
            (Phase::Running, Method::ConnectionUpdateSecret(_)) => {
                conn.send(0, &connection::UpdateSecretOk);
                self.wake(id);
            }
            (Phase::Running, Method::ConnectionBlocked(_) | Method::ConnectionUnblocked(_)) => {}
            (_, other) => {
                let text = format!(
                    "COMMAND_INVALID - unexpected method {} on channel 0",
                    other.name()
                );
                let (class, method) = (other.class_id(), other.method_id());
                self.close_connection_with(id, ReplyCode::COMMAND_INVALID, &text, (class, method));
            }
        }
    }

    fn start_ok(&mut self, id: ConnId, ok: connection::StartOk) {
        let mechanism = ok.mechanism.to_string_lossy().into_owned();
        let credentials = match mechanism.as_str() {
            "PLAIN" => {
                let mut parts = ok.response.as_bytes().split(|b| *b == 0);
                let _authzid = parts.next();
                match (parts.next(), parts.next()) {
                    (Some(u), Some(p)) => Some((
                        String::from_utf8_lossy(u).into_owned(),
                        String::from_utf8_lossy(p).into_owned(),
                    )),
                    _ => None,
                }
            }
            "AMQPLAIN" => {
                let mut table = BytesMut::new();
                table.extend_from_slice(&(ok.response.len() as u32).to_be_bytes());
                table.extend_from_slice(ok.response.as_bytes());
                let mut bytes = table.freeze();
                FieldTable::decode_from(&mut bytes).ok().and_then(|t| {
                    let user = t.get("LOGIN")?.as_str()?.to_owned();
                    let pass = t.get("PASSWORD")?.as_str()?.to_owned();
                    Some((user, pass))
                })
            }
            _ => {
                let text =
                    format!("ACCESS_REFUSED - unsupported authentication mechanism '{mechanism}'");
                self.close_connection_with(id, ReplyCode::ACCESS_REFUSED, &text, (10, 11));
                return;
            }
        };
        let accepted = credentials
            .as_ref()
            .is_some_and(|(u, p)| self.config.users.iter().any(|(uu, pp)| uu == u && pp == p));
        if !accepted {
            let text = format!(
                "ACCESS_REFUSED - Login was refused using authentication mechanism {mechanism}. For details see the broker logfile."
            );
            self.close_connection_with(id, ReplyCode::ACCESS_REFUSED, &text, (10, 11));
            return;
        }
        let capability = |name: &str| {
            ok.client_properties
                .get("capabilities")
                .and_then(FieldValue::as_table)
                .and_then(|c| c.get(name))
                .and_then(FieldValue::as_bool)
                .unwrap_or(false)
        };
        let cancel_notify = capability("consumer_cancel_notify");
        let blocked_notify = capability("connection.blocked");
        let tune = connection::Tune {
            channel_max: self.config.channel_max,
            frame_max: self.config.frame_max,
            heartbeat: self.config.heartbeat,
        };
        if let Some(conn) = self.conns.get_mut(&id) {
            conn.user = credentials.map(|(u, _)| u).unwrap_or_default();
            conn.cancel_notify = cancel_notify;
            conn.blocked_notify = blocked_notify;
            conn.client_properties = ok.client_properties;
            conn.send(0, &tune);
            conn.phase = Phase::TuneOk;
        }
        self.wake(id);
    }

    /// Sends `connection.close` and waits for `close-ok`, discarding what else arrives.
    pub(crate) fn close_connection_with(
        &mut self,
        id: ConnId,
        code: ReplyCode,
        text: &str,
        class_method: (u16, u16),
    ) {
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        if conn.phase == Phase::Closing || conn.close_transport {
            return;
        }
        let handshaking = !matches!(conn.phase, Phase::Running);
        conn.send(
            0,
            &connection::Close {
                reply_code: code,
                reply_text: short(text),
                class_id: class_method.0,
                method_id: class_method.1,
            },
        );
        conn.phase = Phase::Closing;
        if handshaking {
            // A refused login or vhost: RabbitMQ closes the socket right after the close.
            conn.close_transport = true;
        }
        self.wake(id);
    }

    /// Releases what a closed connection held but keeps its entry until the stream ends.
    fn connection_lost_keep(&mut self, id: ConnId, now: Instant) {
        if let Some(conn) = self.conns.get(&id) {
            let channels: Vec<u16> = conn.channels.keys().copied().collect();
            for ch in channels {
                self.release_channel(id, ch, now);
                if let Some(conn) = self.conns.get_mut(&id) {
                    conn.channels.remove(&ch);
                }
            }
        }
        self.reply_to.retain(|_, (c, _)| *c != id);
        self.delete_exclusive_queues(id, now);
    }

    fn delete_exclusive_queues(&mut self, id: ConnId, now: Instant) {
        let owned: Vec<(String, Arc<str>)> = self
            .vhosts
            .iter()
            .flat_map(|(v, vh)| {
                vh.queues
                    .values()
                    .filter(|q| q.owner == Some(id))
                    .map(move |q| (v.clone(), q.name.clone()))
            })
            .collect();
        for (vhost, name) in owned {
            self.delete_queue(&vhost, &name, now);
        }
    }

    /// Reports a failed method: a soft error closes the channel, a hard one the connection.
    pub(crate) fn fail(
        &mut self,
        id: ConnId,
        channel: u16,
        f: Fail,
        class_method: (u16, u16),
        now: Instant,
    ) {
        if f.code.is_hard() || channel == 0 {
            self.close_connection_with(id, f.code, &f.text, class_method);
            return;
        }
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        conn.send_channel_close(channel, f.code, &f.text, class_method);
        self.wake(id);
        // The channel's messages go back now; its entry stays until close-ok.
        self.release_channel(id, channel, now);
        if let Some(ch) = self
            .conns
            .get_mut(&id)
            .and_then(|c| c.channels.get_mut(&channel))
        {
            ch.closing = true;
        }
    }

    fn channel_method(&mut self, id: ConnId, channel: u16, method: Method, now: Instant) {
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        let ids = (method.class_id(), method.method_id());
        match conn.channels.get(&channel) {
            // The client's close-ok for a channel it closed itself meanwhile: nothing to do.
            None if matches!(method, Method::ChannelCloseOk(_)) => return,
            None => {
                if let Method::ChannelOpen(_) = method {
                    if channel > conn.channel_max {
                        let text = format!(
                            "CHANNEL_ERROR - channel number {channel} exceeds channel_max {}",
                            conn.channel_max
                        );
                        self.close_connection_with(id, ReplyCode::CHANNEL_ERROR, &text, ids);
                        return;
                    }
                    conn.channels.insert(
                        channel,
                        conn::Channel {
                            next_tag: 1,
                            ..Default::default()
                        },
                    );
                    conn.send(channel, &channel_m::OpenOk);
                    self.wake(id);
                } else {
                    self.close_connection_with(
                        id,
                        ReplyCode::CHANNEL_ERROR,
                        "CHANNEL_ERROR - expected 'channel.open'",
                        ids,
                    );
                }
                return;
            }
            Some(ch) if ch.closing => {
                match method {
                    Method::ChannelCloseOk(_) => {
                        conn.channels.remove(&channel);
                    }
                    Method::ChannelClose(_) => {
                        conn.send(channel, &channel_m::CloseOk);
                        conn.channels.remove(&channel);
                        self.wake(id);
                    }
                    _ => {}
                }
                return;
            }
            Some(ch) if ch.incoming.is_some() => {
                self.close_connection_with(
                    id,
                    ReplyCode::UNEXPECTED_FRAME,
                    "UNEXPECTED_FRAME - expected content header for class 60, got non content header frame instead",
                    ids,
                );
                return;
            }
            Some(_) => {}
        }
        let result = match method {
            Method::ChannelOpen(_) => Err(Fail::new(
                ReplyCode::CHANNEL_ERROR,
                "second 'channel.open' seen",
            )),
            Method::ChannelClose(_) => {
                self.release_channel(id, channel, now);
                if let Some(conn) = self.conns.get_mut(&id) {
                    conn.channels.remove(&channel);
                    conn.send(channel, &channel_m::CloseOk);
                }
                self.wake(id);
                Ok(())
            }
            Method::ChannelCloseOk(_) => Ok(()),
            Method::ChannelFlow(flow) => {
                if let Some(conn) = self.conns.get_mut(&id) {
                    if let Some(ch) = conn.channels.get_mut(&channel) {
                        ch.flow_paused = !flow.active;
                    }
                    conn.send(
                        channel,
                        &channel_m::FlowOk {
                            active: flow.active,
                        },
                    );
                }
                self.wake(id);
                if flow.active {
                    self.redispatch_channel(id, channel);
                }
                Ok(())
            }
            Method::AccessRequest(_) => {
                self.reply(
                    id,
                    channel,
                    &lepus_wire::method::access::RequestOk { ticket: 1 },
                );
                Ok(())
            }
            Method::ExchangeDeclare(m) => self.exchange_declare(id, channel, m),
            Method::ExchangeDelete(m) => self.exchange_delete(id, channel, m, now),
            Method::ExchangeBind(m) => self.exchange_bind(id, channel, m, true, now),
            Method::ExchangeUnbind(m) => {
                let bind = lepus_wire::method::exchange::Bind {
                    destination: m.destination,
                    source: m.source,
                    routing_key: m.routing_key,
                    nowait: m.nowait,
                    arguments: m.arguments,
                };
                self.exchange_bind(id, channel, bind, false, now)
            }
            Method::QueueDeclare(m) => self.queue_declare(id, channel, m, now),
            Method::QueueBind(m) => self.queue_bind(id, channel, m, now),
            Method::QueueUnbind(m) => self.queue_unbind(id, channel, m, now),
            Method::QueuePurge(m) => self.queue_purge(id, channel, m),
            Method::QueueDelete(m) => self.queue_delete_method(id, channel, m, now),
            Method::BasicQos(m) => self.basic_qos(id, channel, m),
            Method::BasicConsume(m) => self.basic_consume(id, channel, m, now),
            Method::BasicCancel(m) => self.basic_cancel(id, channel, m, now),
            Method::BasicPublish(m) => self.basic_publish(id, channel, m),
            Method::BasicGet(m) => self.basic_get(id, channel, m, now),
            Method::BasicAck(m) => self.settle(
                id,
                channel,
                m.delivery_tag,
                m.multiple,
                basic::Settle::Ack,
                now,
            ),
            Method::BasicReject(m) => self.settle(
                id,
                channel,
                m.delivery_tag,
                false,
                basic::Settle::reject(m.requeue),
                now,
            ),
            Method::BasicNack(m) => self.settle(
                id,
                channel,
                m.delivery_tag,
                m.multiple,
                basic::Settle::reject(m.requeue),
                now,
            ),
            Method::BasicRecover(m) => self.basic_recover(id, channel, m.requeue, true, now),
            Method::BasicRecoverAsync(m) => self.basic_recover(id, channel, m.requeue, false, now),
            Method::TxSelect(_) => self.tx_select(id, channel),
            Method::TxCommit(_) => self.tx_commit(id, channel, now),
            Method::TxRollback(_) => self.tx_rollback(id, channel),
            Method::ConfirmSelect(m) => self.confirm_select(id, channel, m),
            other => Err(Fail::new(
                ReplyCode::COMMAND_INVALID,
                format!("unexpected method {} from a client", other.name()),
            )),
        };
        if let Err(f) = result {
            self.fail(id, channel, f, ids, now);
        }
    }

    /// Queues a reply method on a channel.
    pub(crate) fn reply<M: lepus_wire::MethodArgs>(
        &mut self,
        id: ConnId,
        channel: u16,
        method: &M,
    ) {
        if let Some(conn) = self.conns.get_mut(&id) {
            conn.send(channel, method);
        }
        self.wake(id);
    }

    /// A name RabbitMQ would generate: `prefix` and 22 URL-safe base64 characters.
    pub(crate) fn generate_name(&mut self, prefix: &str) -> String {
        self.names += 1;
        let mut x = self.names.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xD1B5_4A32_D192_ED03;
        let mut out = String::with_capacity(prefix.len() + 22);
        out.push_str(prefix);
        const ALPHABET: &[u8; 64] =
            b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        for _ in 0..22 {
            // splitmix64 steps
            x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = x;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            let c = ALPHABET.get((z & 63) as usize).copied().unwrap_or(b'A');
            out.push(char::from(c));
        }
        out
    }

    /// The vhost connection `id` is in.
    pub(crate) fn vhost_of(&self, id: ConnId) -> Arc<str> {
        self.conns
            .get(&id)
            .map_or_else(|| Arc::from("/"), |c| c.vhost.clone())
    }
}

/// The length of the content header frame at the front of `input`, when one is there whole
/// and within `frame_max` (anything else is left to [`Frame::decode`], errors included).
fn whole_header_frame(input: &BytesMut, frame_max: u32) -> Option<usize> {
    let (&kind, size) = input.first().zip(input.get(3..7))?;
    if kind != lepus_wire::frame::FRAME_HEADER {
        return None;
    }
    let size = u32::from_be_bytes(size.try_into().ok()?) as usize;
    let len = size.checked_add(8)?;
    (len <= frame_max as usize && input.len() >= len).then_some(len)
}
