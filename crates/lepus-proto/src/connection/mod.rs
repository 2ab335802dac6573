//! The connection state machine.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use lepus_wire::method::{basic, channel, connection};
use lepus_wire::{
    frame, BasicProperties, ContentHeader, FieldTable, Frame, LongStr, Method, MethodArgs,
    ReplyCode, ShortStr, FRAME_MIN_SIZE, PROTOCOL_HEADER,
};

use crate::config::{Config, Heartbeat, DEFAULT_CHANNEL_MAX};
use crate::error::{ChannelError, Close, ConnectionError};
use crate::event::{Event, Reply};
use crate::transmit::Transmit;

mod channel_state;
mod replies;

use channel_state::{ChannelState, Incoming, Pending};

/// What was settled in `connection.tune`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Negotiated {
    /// Highest usable channel id.
    pub channel_max: u16,
    /// Largest frame either side may send, header and end octet included.
    pub frame_max: u32,
    /// Heartbeat interval in seconds; 0 when heartbeats are off.
    pub heartbeat: u16,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Protocol header sent; waiting for `connection.start`.
    AwaitStart,
    /// `start-ok` sent; waiting for `secure` or `tune`.
    AwaitTune,
    /// `open` sent; waiting for `open-ok`.
    AwaitOpenOk,
    /// Ready for channels.
    Open,
    /// `connection.close` sent; waiting for `close-ok`.
    Closing,
    /// Finished; [`Event::Closed`] was emitted.
    Closed,
}

impl State {
    /// Where the connection is, for error messages: `while waiting for connection.tune`.
    fn describe(self) -> &'static str {
        match self {
            Self::AwaitStart => "while waiting for connection.start",
            Self::AwaitTune => "while waiting for connection.secure or connection.tune",
            Self::AwaitOpenOk => "while waiting for connection.open-ok",
            Self::Open => "on an open connection",
            Self::Closing => "while waiting for connection.close-ok",
            Self::Closed => "after the connection closed",
        }
    }
}

/// One AMQP 0-9-1 client connection, without I/O.
///
/// The caller owns the socket and the clock. The methods come in four kinds, as in quinn-proto:
///
/// - **Inputs**: [`handle_input`](Self::handle_input) with bytes read from the socket, and
///   [`handle_timeout`](Self::handle_timeout) when the deadline from
///   [`poll_timeout`](Self::poll_timeout) passes.
/// - **Commands** queue frames: [`open_channel`](Self::open_channel), [`call`](Self::call),
///   [`basic_publish`](Self::basic_publish), [`send`](Self::send), [`close`](Self::close).
/// - **Outputs**: [`poll_transmit`](Self::poll_transmit) hands out bytes to write,
///   [`poll_event`](Self::poll_event) what happened, [`poll_timeout`](Self::poll_timeout) when
///   to call back.
/// - **Getters**: [`is_open`](Self::is_open), [`negotiated`](Self::negotiated),
///   [`server_properties`](Self::server_properties), [`blocked`](Self::blocked).
///
/// After every input or command, the driver must drain [`poll_transmit`](Self::poll_transmit)
/// (and write the bytes, in order), drain [`poll_event`](Self::poll_event), and re-arm its timer
/// from [`poll_timeout`](Self::poll_timeout). Nothing here blocks, sleeps or reads the clock.
///
/// Replies to synchronous requests on a channel arrive in request order, so the driver keeps a
/// first-in, first-out queue of waiters per channel and pairs each [`Event::Reply`] with the
/// oldest; a request made with `nowait` gets no reply and no waiter.
#[derive(Debug)]
pub struct Connection {
    config: Config,
    state: State,
    transmit: Transmit,
    events: VecDeque<Event>,
    /// Channel `id` lives at index `id - 1`.
    channels: Vec<Option<ChannelState>>,
    next_generation: u64,
    negotiated: Negotiated,
    /// The server's properties, encoded.
    server_properties: Bytes,
    blocked: Option<String>,
    /// Outstanding connection-level requests (only `update-secret`).
    pending_secret: usize,
    /// Why lepus is closing the connection, once `connection.close` is sent.
    close_reason: Option<Close>,
    /// How the connection ended, once it has; commands then fail with it.
    ended: Option<ConnectionError>,
    last_received: Option<Instant>,
    last_sent: Option<Instant>,
}

impl Connection {
    /// A connection about to start: the protocol header is already queued for sending.
    ///
    /// `config.frame_max` below [`MIN_FRAME_MAX`](crate::MIN_FRAME_MAX) is raised to it.
    pub fn new(mut config: Config) -> Self {
        if config.frame_max != 0 && config.frame_max < crate::MIN_FRAME_MAX {
            config.frame_max = crate::MIN_FRAME_MAX;
        }
        let mut transmit = Transmit::default();
        transmit.buf().extend_from_slice(&PROTOCOL_HEADER);
        Self {
            config,
            state: State::AwaitStart,
            transmit,
            // Most of the time one event waits at a time: an idle connection keeps one slot.
            events: VecDeque::with_capacity(1),
            channels: Vec::new(),
            next_generation: 1,
            negotiated: Negotiated {
                channel_max: 0,
                frame_max: FRAME_MIN_SIZE,
                heartbeat: 0,
            },
            server_properties: Bytes::new(),
            blocked: None,
            pending_secret: 0,
            close_reason: None,
            ended: None,
            last_received: None,
            last_sent: None,
        }
    }

    // ---- inputs ----

    /// Takes every complete frame out of `buf` and acts on it; a partial frame stays in `buf`.
    ///
    /// Call with the socket's read buffer after each read. Protocol violations by the server
    /// close the connection (a `connection.close` with the matching reply code is queued) and
    /// end in [`Event::Closed`].
    pub fn handle_input(&mut self, now: Instant, buf: &mut BytesMut) {
        self.handle_input_bounded(now, buf, usize::MAX);
    }

    /// Like [`handle_input`](Self::handle_input), taking at most `max_frames` frames; returns
    /// whether a complete frame may still be waiting in `buf`.
    ///
    /// A driver that shares the connection with other threads under a lock uses this to hold
    /// the lock briefly, draining events between slices of a large read.
    pub fn handle_input_bounded(
        &mut self,
        now: Instant,
        buf: &mut BytesMut,
        max_frames: usize,
    ) -> bool {
        if buf.is_empty() || self.state == State::Closed {
            return false;
        }
        self.last_received = Some(now);
        if self.state == State::AwaitStart {
            match first_reply(buf, self.receive_frame_max()) {
                FirstReply::Incomplete => return false,
                FirstReply::Foreign => {
                    let shown = buf.len().min(FOREIGN_SHOWN);
                    let received = Bytes::copy_from_slice(buf.get(..shown).unwrap_or_default());
                    self.fail(ConnectionError::NotAmqp { received });
                    return false;
                }
                FirstReply::Frame => {}
            }
        }
        for _ in 0..max_frames {
            if self.state == State::Closed {
                return false;
            }
            let max = self.receive_frame_max();
            match Frame::decode(buf, max) {
                Ok(Some(frame)) => self.handle_frame(frame),
                Ok(None) => return false,
                Err(e) => {
                    self.protocol_error(ConnectionError::Protocol(e));
                    return false;
                }
            }
        }
        !buf.is_empty()
    }

    /// Acts on the clock: sends a heartbeat when one is due and fails the connection when the
    /// server has been silent for two intervals.
    pub fn handle_timeout(&mut self, now: Instant) {
        let Some(interval) = self.heartbeat_interval() else {
            return;
        };
        if let Some(last) = self.last_received {
            if now >= last + 2 * interval {
                let secs = u32::from(self.negotiated.heartbeat);
                self.fail(ConnectionError::HeartbeatTimeout(secs));
                return;
            }
        }
        let last_sent = self.last_sent.unwrap_or(now);
        if now >= last_sent + interval {
            // Bytes already waiting for the driver count as traffic; otherwise send a heartbeat.
            // Either way the send deadline moves on, so a driver that has not yet taken the
            // bytes is not woken again for the same deadline.
            if self.transmit.len() == 0 {
                frame::encode_heartbeat(self.transmit.buf());
            }
            self.last_sent = Some(now);
        }
    }

    /// Restarts the silence timer, as if a byte had just arrived.
    ///
    /// A driver that stops reading on purpose (a slow consumer's buffer is full) calls this, so
    /// that its own pause is not taken for a dead server.
    pub fn reset_receive_timer(&mut self, now: Instant) {
        if self.last_received.is_some() {
            self.last_received = Some(now);
        }
    }

    /// The driver reports that the transport closed (read end of file or an I/O error).
    pub fn handle_transport_closed(&mut self, reason: String) {
        if self.state == State::Closing {
            // The server may drop the socket instead of answering close-ok.
            let reason = self.close_reason.take().unwrap_or(Close {
                code: ReplyCode::REPLY_SUCCESS,
                text: "closed".into(),
                class_id: 0,
                method_id: 0,
            });
            self.finish(ConnectionError::LocallyClosed(reason));
            return;
        }
        self.finish(ConnectionError::TransportClosed(reason));
    }

    // ---- outputs ----

    /// Moves the bytes to write into `out`, in order, and returns how many there are.
    ///
    /// Counts as sending for the heartbeat timer: call it when the bytes are about to be
    /// written.
    pub fn poll_transmit(&mut self, now: Instant, out: &mut VecDeque<Bytes>) -> usize {
        let n = self.transmit.drain_into(out);
        if n > 0 {
            self.last_sent = Some(now);
        }
        n
    }

    /// Bytes queued for sending and not yet taken by [`poll_transmit`](Self::poll_transmit).
    pub fn pending_bytes(&self) -> usize {
        self.transmit.len()
    }

    /// Gives back memory that traffic made grow: the encode block when nothing waits in it,
    /// the event queue when it is empty, and the request queues of idle channels. A driver
    /// calls this when the connection has been quiet for a while; the next burst grows them
    /// again.
    pub fn shrink(&mut self) {
        self.transmit.release();
        if self.events.is_empty() {
            self.events.shrink_to(1);
        }
        for state in self.channels.iter_mut().flatten() {
            if state.pending.is_empty() {
                state.pending.shrink_to_fit();
            }
        }
    }

    /// The next thing that happened, oldest first.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// When to call [`handle_timeout`](Self::handle_timeout) next, if heartbeats are on.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let interval = self.heartbeat_interval()?;
        let send = self.last_sent.map(|t| t + interval);
        let dead = self.last_received.map(|t| t + 2 * interval);
        match (send, dead) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    // ---- getters ----

    /// Whether the handshake finished and the connection is not closing.
    pub fn is_open(&self) -> bool {
        self.state == State::Open
    }

    /// Whether the connection is finished.
    pub fn is_closed(&self) -> bool {
        self.state == State::Closed
    }

    /// The negotiated limits; meaningful once [`Event::Connected`] was emitted.
    pub fn negotiated(&self) -> Negotiated {
        self.negotiated
    }

    /// The properties the server sent in `connection.start` (product, version, capabilities),
    /// decoded anew on each call; empty before they arrived.
    pub fn server_properties(&self) -> FieldTable {
        FieldTable::decode_from(&mut self.server_properties.clone()).unwrap_or_default()
    }

    /// The reason the server gave for `connection.blocked`, while publishing is blocked.
    pub fn blocked(&self) -> Option<&str> {
        self.blocked.as_deref()
    }

    /// The generation of an open channel: a number that changes each time the id is reused,
    /// so that a handle to a closed channel cannot act on its successor.
    pub fn channel_generation(&self, channel: u16) -> Option<u64> {
        self.channel(channel).map(|c| c.generation)
    }

    /// Whether a channel is open (or opening) with this generation.
    pub fn channel_is_live(&self, channel: u16, generation: u64) -> bool {
        self.channel(channel)
            .is_some_and(|c| c.generation == generation && !c.closing)
    }

    /// The sequence number the next publish on `channel` will get, in confirm mode.
    pub fn next_publish_seq(&self, channel: u16) -> Option<u64> {
        self.channel(channel).and_then(|c| c.next_publish_seq)
    }

    // ---- commands ----

    /// Opens a channel on the lowest free id and returns the id and its generation.
    ///
    /// The channel may be used at once; the server's `channel.open-ok` arrives as an
    /// [`Event::Reply`] (and any error as [`Event::ChannelClosed`]).
    ///
    /// # Errors
    ///
    /// [`ChannelError::NoFreeChannel`] when every id up to channel_max is in use, and
    /// [`ChannelError::ConnectionClosed`] when the connection is not open.
    pub fn open_channel(&mut self) -> Result<(u16, u64), ChannelError> {
        self.check_open()?;
        let max = self.negotiated.channel_max.max(1);
        let id = (1..=max)
            .find(|&id| self.channel(id).is_none())
            .ok_or(ChannelError::NoFreeChannel(max))?;
        let generation = self.next_generation;
        self.next_generation += 1;
        self.install(id, ChannelState::new(generation));
        self.call(id, channel::Open.into())?;
        Ok((id, generation))
    }

    /// Opens a channel on a given id, as a client restoring its channels after reconnecting
    /// does; returns the channel's generation.
    ///
    /// # Errors
    ///
    /// [`ChannelError::InvalidState`] when `id` is 0, above channel_max or in use, and
    /// [`ChannelError::ConnectionClosed`] when the connection is not open.
    pub fn open_channel_with_id(&mut self, id: u16) -> Result<u64, ChannelError> {
        self.check_open()?;
        if id == 0 || id > self.negotiated.channel_max.max(1) {
            return Err(ChannelError::InvalidState(
                "channel id is 0 or above channel_max",
            ));
        }
        if self.channel(id).is_some() {
            return Err(ChannelError::InvalidState("channel id is in use"));
        }
        let generation = self.next_generation;
        self.next_generation += 1;
        self.install(id, ChannelState::new(generation));
        self.call(id, channel::Open.into())?;
        Ok(generation)
    }

    /// Sends a method on an open channel; returns whether a reply will follow as an
    /// [`Event::Reply`] (synchronous methods without `nowait`).
    ///
    /// `channel.close` closes the channel: its close-ok ends in [`Event::ChannelClosed`] with no
    /// reason instead of a reply. Use [`basic_publish`](Self::basic_publish) for publishing.
    ///
    /// # Errors
    ///
    /// When the channel is not open or the method cannot be encoded (a table too large for
    /// frame_max); nothing is sent then.
    pub fn call(&mut self, channel: u16, method: Method) -> Result<bool, ChannelError> {
        self.check_open()?;
        if channel == 0 {
            return Err(ChannelError::InvalidState(
                "channel 0 carries connection methods only",
            ));
        }
        let frame_max = self.negotiated.frame_max;
        let state = self.channel_mut(channel)?;
        if state.closing {
            return Err(ChannelError::Closed);
        }
        frame::encode_any_method(self.transmit.buf(), channel, &method, frame_max)?;
        let state = self.channel_mut(channel)?;
        match &method {
            Method::ChannelClose(_) => state.closing = true,
            // Publishes after confirm.select count from 1, even before select-ok arrives.
            Method::ConfirmSelect(_) if state.next_publish_seq.is_none() => {
                state.next_publish_seq = Some(1);
            }
            _ => {}
        }
        let expects = replies::expected(&method);
        if let Some(expected) = expects {
            state.pending.push_back(expected);
        }
        Ok(expects.is_some())
    }

    /// Sends an asynchronous method (ack, nack, reject) without going through [`Method`].
    ///
    /// # Errors
    ///
    /// When the channel is not open.
    #[inline]
    pub fn send<M: MethodArgs>(&mut self, channel: u16, method: &M) -> Result<(), ChannelError> {
        self.check_open()?;
        let frame_max = self.negotiated.frame_max;
        let state = self.channel_mut(channel)?;
        if state.closing {
            return Err(ChannelError::Closed);
        }
        frame::encode_method(self.transmit.buf(), channel, method, frame_max)?;
        Ok(())
    }

    /// Publishes a message: method, content header and body frames (split at frame_max).
    ///
    /// Returns the message's sequence number when the channel is in confirm mode; the
    /// matching [`Event::Confirm`] settles it.
    ///
    /// # Errors
    ///
    /// When the channel is not open or the properties do not fit in a frame; nothing is sent.
    pub fn basic_publish(
        &mut self,
        channel: u16,
        publish: &basic::Publish,
        properties: &BasicProperties,
        body: Bytes,
    ) -> Result<Option<u64>, ChannelError> {
        self.publish_with(channel, properties, body, |buf, frame_max| {
            frame::encode_method(buf, channel, publish, frame_max)
        })
    }

    /// Like [`basic_publish`](Self::basic_publish), from borrowed names: the hot path, which
    /// copies nothing but the frames' bytes (and not even a large body).
    ///
    /// # Errors
    ///
    /// When the channel is not open, a name is longer than 255 bytes, or the properties do not
    /// fit in a frame; nothing is sent.
    #[inline]
    pub fn publish(
        &mut self,
        channel: u16,
        exchange: &str,
        routing_key: &str,
        mandatory: bool,
        properties: &BasicProperties,
        body: Bytes,
    ) -> Result<Option<u64>, ChannelError> {
        self.publish_with(channel, properties, body, |buf, _| {
            frame::encode_basic_publish(buf, channel, exchange, routing_key, mandatory)
        })
    }

    /// Publishes with the method frame written by `method`: then the header and body frames.
    #[inline]
    fn publish_with(
        &mut self,
        channel: u16,
        properties: &BasicProperties,
        body: Bytes,
        method: impl FnOnce(&mut BytesMut, u32) -> Result<(), lepus_wire::EncodeError>,
    ) -> Result<Option<u64>, ChannelError> {
        self.check_open()?;
        let frame_max = self.negotiated.frame_max;
        let state = self.channel_mut(channel)?;
        if state.closing {
            return Err(ChannelError::Closed);
        }
        let seq = state.next_publish_seq;
        let buf = self.transmit.buf();
        let start = buf.len();
        method(buf, frame_max)?;
        if let Err(e) = frame::encode_header(buf, channel, body.len() as u64, properties, frame_max)
        {
            buf.truncate(start);
            return Err(e.into());
        }
        let max_body = (frame_max as usize)
            .saturating_sub(frame::FRAME_OVERHEAD)
            .max(1);
        let mut rest = body;
        while !rest.is_empty() {
            let piece = rest.split_to(rest.len().min(max_body));
            frame::encode_body_header(self.transmit.buf(), channel, piece.len());
            self.transmit.push_body(piece);
            self.transmit
                .buf()
                .extend_from_slice(&[lepus_wire::FRAME_END]);
        }
        if let Some(next) = seq {
            if let Ok(state) = self.channel_mut(channel) {
                state.next_publish_seq = Some(next + 1);
            }
        }
        Ok(seq)
    }

    /// Replaces the connection's secret (`connection.update-secret`), such as an expiring
    /// OAuth 2 token. The server's answer arrives as an [`Event::Reply`] on channel 0.
    ///
    /// # Errors
    ///
    /// When the connection is not open or the reason is longer than 255 bytes.
    pub fn update_secret(&mut self, secret: LongStr, reason: &str) -> Result<(), ChannelError> {
        self.check_open()?;
        let method = connection::UpdateSecret {
            new_secret: secret,
            reason: ShortStr::try_from(reason)?,
        };
        let frame_max = self.negotiated.frame_max;
        frame::encode_method(self.transmit.buf(), 0, &method, frame_max)?;
        self.pending_secret += 1;
        Ok(())
    }

    /// Starts closing the connection with a reply code (200 for a normal close) and text.
    ///
    /// Frames already queued go out first. The connection ends with [`Event::Closed`] when the
    /// server answers `close-ok` (or drops the socket).
    pub fn close(&mut self, code: ReplyCode, text: &str) {
        match self.state {
            State::Closing | State::Closed => return,
            State::Open => {}
            // Before the handshake ends there is nothing to close politely.
            _ => {
                self.finish(ConnectionError::LocallyClosed(Close {
                    code,
                    text: text.into(),
                    class_id: 0,
                    method_id: 0,
                }));
                return;
            }
        }
        let close = connection::Close {
            reply_code: code,
            reply_text: short_lossy(text),
            class_id: 0,
            method_id: 0,
        };
        let _ = frame::encode_method(self.transmit.buf(), 0, &close, FRAME_MIN_SIZE);
        self.state = State::Closing;
        self.close_reason = Some(Close {
            code,
            text: text.into(),
            class_id: 0,
            method_id: 0,
        });
    }
}

// ---- internals ----
impl Connection {
    fn channel(&self, id: u16) -> Option<&ChannelState> {
        self.channels.get(slot_index(id)?).and_then(Option::as_ref)
    }

    /// Puts `state` in the slot of channel `id` (never 0). The first few slots are added one
    /// at a time: most connections use a channel or two, and every slot costs a
    /// [`ChannelState`]. Beyond that the table grows geometrically.
    fn install(&mut self, id: u16, state: ChannelState) {
        let Some(index) = slot_index(id) else {
            return;
        };
        if self.channels.len() <= index {
            let more = index + 1 - self.channels.len();
            if index < 4 {
                self.channels.reserve_exact(more);
            } else {
                self.channels.reserve(more);
            }
            self.channels.resize_with(index + 1, || None);
        }
        if let Some(slot) = self.channels.get_mut(index) {
            *slot = Some(state);
        }
    }

    fn channel_mut(&mut self, id: u16) -> Result<&mut ChannelState, ChannelError> {
        slot_index(id)
            .and_then(|index| self.channels.get_mut(index))
            .and_then(Option::as_mut)
            .ok_or(ChannelError::NotOpen(id))
    }

    fn check_open(&self) -> Result<(), ChannelError> {
        match self.state {
            State::Open => Ok(()),
            State::Closing => Err(ChannelError::ConnectionClosed(
                ConnectionError::LocallyClosed(self.close_reason.clone().unwrap_or_else(|| {
                    Close {
                        code: ReplyCode::REPLY_SUCCESS,
                        text: "closing".into(),
                        class_id: 0,
                        method_id: 0,
                    }
                })),
            )),
            State::Closed => Err(ChannelError::ConnectionClosed(
                self.ended.clone().unwrap_or_else(|| {
                    ConnectionError::TransportClosed("connection is closed".into())
                }),
            )),
            _ => Err(ChannelError::InvalidState("connection is not open yet")),
        }
    }

    fn heartbeat_interval(&self) -> Option<Duration> {
        if self.negotiated.heartbeat == 0 || self.state == State::Closed {
            return None;
        }
        Some(Duration::from_secs(u64::from(self.negotiated.heartbeat)))
    }

    fn receive_frame_max(&self) -> u32 {
        match self.state {
            // Before tuning, frames are limited by what lepus itself would accept.
            State::AwaitStart | State::AwaitTune => match self.config.frame_max {
                0 => u32::MAX,
                n => n.max(FRAME_MIN_SIZE),
            },
            _ => self.negotiated.frame_max,
        }
    }

    /// Ends the connection: fails every channel and emits [`Event::Closed`].
    fn finish(&mut self, error: ConnectionError) {
        if self.state == State::Closed {
            return;
        }
        self.state = State::Closed;
        self.channels.clear();
        self.ended = Some(error.clone());
        self.events.push_back(Event::Closed(error));
    }

    /// Ends the connection without a close handshake.
    fn fail(&mut self, error: ConnectionError) {
        self.finish(error);
    }

    /// The server broke the protocol: tell it why, then end.
    fn protocol_error(&mut self, error: ConnectionError) {
        if matches!(
            self.state,
            State::Open | State::Closing | State::AwaitOpenOk
        ) {
            let close = connection::Close {
                reply_code: error.reply_code().unwrap_or(ReplyCode::INTERNAL_ERROR),
                reply_text: short_lossy(&error.to_string()),
                class_id: 0,
                method_id: 0,
            };
            let _ = frame::encode_method(self.transmit.buf(), 0, &close, FRAME_MIN_SIZE);
        }
        self.finish(error);
    }

    fn handle_frame(&mut self, frame: Frame) {
        // After sending connection.close, everything but close and close-ok is discarded
        // (spec 2.2.4); those two arrive on channel 0.
        if self.state == State::Closing && frame.channel() != 0 {
            return;
        }
        match frame {
            Frame::Heartbeat => {}
            Frame::Method { channel: 0, method } => self.handle_connection_method(method),
            Frame::Method { channel, method } => self.handle_channel_method(channel, method),
            Frame::Header { channel, header } => self.handle_header(channel, header),
            Frame::Body { channel, body } => self.handle_body(channel, body),
        }
    }

    fn unexpected(&mut self, what: String) {
        self.protocol_error(ConnectionError::UnexpectedFrame(what));
    }

    fn send_connection_method<M: MethodArgs>(&mut self, method: &M) {
        // Connection methods lepus sends are small and fit in the minimum frame size.
        let _ = frame::encode_method(self.transmit.buf(), 0, method, u32::MAX);
    }

    fn handle_connection_method(&mut self, method: Method) {
        match (self.state, method) {
            (State::AwaitStart, Method::ConnectionStart(start)) => self.on_start(start),
            (State::AwaitTune, Method::ConnectionSecure(_)) => {
                // PLAIN, AMQPLAIN and EXTERNAL carry everything in the first response; answer a
                // challenge with the same response, as other clients do.
                let response = self.config.sasl.response();
                self.send_connection_method(&connection::SecureOk { response });
            }
            (State::AwaitTune, Method::ConnectionTune(tune)) => self.on_tune(tune),
            (State::AwaitOpenOk, Method::ConnectionOpenOk(_)) => {
                self.state = State::Open;
                self.events.push_back(Event::Connected);
            }
            (_, Method::ConnectionClose(close)) => {
                self.send_connection_method(&connection::CloseOk);
                self.finish(ConnectionError::ServerClosed(Close {
                    code: close.reply_code,
                    text: close.reply_text.to_string_lossy().into_owned(),
                    class_id: close.class_id,
                    method_id: close.method_id,
                }));
            }
            (State::Closing, Method::ConnectionCloseOk(_)) => {
                let reason = self.close_reason.take().unwrap_or(Close {
                    code: ReplyCode::REPLY_SUCCESS,
                    text: String::new(),
                    class_id: 0,
                    method_id: 0,
                });
                self.finish(ConnectionError::LocallyClosed(reason));
            }
            // After sending close, everything but close and close-ok is discarded (spec 2.2.4).
            (State::Closing, _) => {}
            (State::Open, Method::ConnectionBlocked(b)) => {
                let reason = b.reason.to_string_lossy().into_owned();
                self.blocked = Some(reason.clone());
                self.events.push_back(Event::Blocked { reason });
            }
            (State::Open, Method::ConnectionUnblocked(_)) => {
                self.blocked = None;
                self.events.push_back(Event::Unblocked);
            }
            (State::Open, Method::ConnectionUpdateSecretOk(ok)) if self.pending_secret > 0 => {
                self.pending_secret -= 1;
                self.events.push_back(Event::Reply {
                    channel: 0,
                    reply: Reply::Method(ok.into()),
                });
            }
            (state, method) => self.unexpected(format!(
                "{} on channel 0 {}",
                method.name(),
                state.describe()
            )),
        }
    }

    fn on_start(&mut self, start: connection::Start) {
        if (start.version_major, start.version_minor) != (0, 9) {
            return self.fail(ConnectionError::VersionMismatch {
                major: start.version_major,
                minor: start.version_minor,
            });
        }
        let wanted = self.config.sasl.mechanism();
        let offered = start.mechanisms.to_string_lossy().into_owned();
        if !offered.split(' ').any(|m| m == wanted) {
            return self.fail(ConnectionError::UnsupportedMechanism { wanted, offered });
        }
        // Kept encoded, in a buffer of their own: decoded, they would hold on to the frame they
        // came in (and with it the read buffer), and take three times the room.
        let mut encoded = BytesMut::new();
        start.server_properties.encode_to(&mut encoded);
        self.server_properties = Bytes::copy_from_slice(&encoded);
        let locale = ShortStr::try_from(self.config.locale.as_str())
            .unwrap_or_else(|_| ShortStr::from_static("en_US"));
        let start_ok = connection::StartOk {
            // Sent once; a new connection is made from a new config.
            client_properties: std::mem::take(&mut self.config.client_properties),
            mechanism: ShortStr::from_static(wanted),
            response: self.config.sasl.response(),
            locale,
        };
        self.send_connection_method(&start_ok);
        self.state = State::AwaitTune;
    }

    fn on_tune(&mut self, tune: connection::Tune) {
        let pick = |ours: u32, theirs: u32, default: u32| match (ours, theirs) {
            (0, 0) => default,
            (0, t) => t,
            (o, 0) => o,
            (o, t) => o.min(t),
        };
        let channel_max = pick(
            u32::from(self.config.channel_max),
            u32::from(tune.channel_max),
            u32::from(DEFAULT_CHANNEL_MAX),
        ) as u16;
        let frame_max = pick(
            self.config.frame_max,
            tune.frame_max,
            crate::config::DEFAULT_FRAME_MAX,
        );
        let heartbeat = match self.config.heartbeat {
            Heartbeat::ServerDefault => tune.heartbeat,
            Heartbeat::Disabled => 0,
            Heartbeat::Secs(n) => n,
        };
        self.negotiated = Negotiated {
            channel_max,
            frame_max,
            heartbeat,
        };
        self.send_connection_method(&connection::TuneOk {
            channel_max,
            frame_max,
            heartbeat,
        });
        let vhost = match ShortStr::try_from(self.config.vhost.as_str()) {
            Ok(v) => v,
            Err(_) => {
                return self.fail(ConnectionError::UnexpectedFrame(
                    "virtual host name longer than 255 bytes".into(),
                ))
            }
        };
        self.send_connection_method(&connection::Open {
            virtual_host: vhost,
        });
        self.state = State::AwaitOpenOk;
    }

    fn handle_channel_method(&mut self, id: u16, method: Method) {
        if !matches!(self.state, State::Open | State::Closing) {
            return self.unexpected(format!("{} on channel {id} before open-ok", method.name()));
        }
        let Ok(state) = self.channel_mut(id) else {
            return self.protocol_error_code(
                ReplyCode::CHANNEL_ERROR,
                format!("{} on channel {id}, which is not open", method.name()),
            );
        };
        if state.incoming.is_some() {
            return self.unexpected(format!(
                "{} on channel {id} in the middle of a message",
                method.name()
            ));
        }
        if state.closing {
            // After sending channel.close, only close and close-ok matter (spec 2.2.3).
            match method {
                Method::ChannelCloseOk(_) if state.close_reported => {
                    // The end of a crossing close, already reported: just free the id.
                    if let Some(slot) =
                        slot_index(id).and_then(|index| self.channels.get_mut(index))
                    {
                        *slot = None;
                    }
                }
                Method::ChannelCloseOk(_) => self.channel_closed(id, None),
                Method::ChannelClose(close) if !state.close_reported => {
                    // Both sides closed at once: answer and report the server's reason now, but
                    // keep the id until the server's close-ok for our own close arrives, so that
                    // frame is not taken for a stray one.
                    state.close_reported = true;
                    let _ =
                        frame::encode_method(self.transmit.buf(), id, &channel::CloseOk, u32::MAX);
                    self.events.push_back(Event::ChannelClosed {
                        channel: id,
                        close: Some(close_from(&close)),
                    });
                }
                _ => {}
            }
            return;
        }
        match method {
            Method::BasicDeliver(deliver) => {
                state.incoming = Some(Incoming::new(Pending::Deliver(deliver)))
            }
            Method::BasicReturn(ret) => state.incoming = Some(Incoming::new(Pending::Return(ret))),
            Method::BasicGetOk(get_ok) => {
                if !state
                    .pending
                    .front()
                    .is_some_and(|e| e.accepts_ids(basic::GetOk::CLASS_ID, basic::GetOk::METHOD_ID))
                {
                    return self
                        .unexpected(format!("basic.get-ok on channel {id} without basic.get"));
                }
                state.incoming = Some(Incoming::new(Pending::GetOk(get_ok)));
            }
            Method::BasicAck(ack) => self.events.push_back(Event::Confirm {
                channel: id,
                delivery_tag: ack.delivery_tag,
                multiple: ack.multiple,
                ack: true,
            }),
            Method::BasicNack(nack) => self.events.push_back(Event::Confirm {
                channel: id,
                delivery_tag: nack.delivery_tag,
                multiple: nack.multiple,
                ack: false,
            }),
            Method::BasicCancel(cancel) => {
                if !cancel.nowait {
                    let ok = basic::CancelOk {
                        consumer_tag: cancel.consumer_tag.clone(),
                    };
                    let _ = frame::encode_method(self.transmit.buf(), id, &ok, u32::MAX);
                }
                self.events.push_back(Event::ConsumerCancelled {
                    channel: id,
                    consumer_tag: cancel.consumer_tag,
                });
            }
            Method::ChannelFlow(flow) => {
                let ok = channel::FlowOk {
                    active: flow.active,
                };
                let _ = frame::encode_method(self.transmit.buf(), id, &ok, u32::MAX);
                self.events.push_back(Event::Flow {
                    channel: id,
                    active: flow.active,
                });
            }
            Method::ChannelClose(close) => self.server_closed_channel(id, close),
            method => {
                let Some(&expected) = state.pending.front() else {
                    return self.unexpected(format!(
                        "{} on channel {id} with no request outstanding",
                        method.name()
                    ));
                };
                if !expected.accepts(&method) {
                    return self.unexpected(format!(
                        "{} on channel {id}, expected a reply to {}",
                        method.name(),
                        expected.request
                    ));
                }
                state.pending.pop_front();
                if let Method::ConfirmSelectOk(_) = method {
                    state.next_publish_seq.get_or_insert(1);
                }
                self.events.push_back(Event::Reply {
                    channel: id,
                    reply: Reply::Method(method),
                });
            }
        }
    }

    fn protocol_error_code(&mut self, code: ReplyCode, what: String) {
        let close = connection::Close {
            reply_code: code,
            reply_text: short_lossy(&what),
            class_id: 0,
            method_id: 0,
        };
        let _ = frame::encode_method(self.transmit.buf(), 0, &close, FRAME_MIN_SIZE);
        self.finish(ConnectionError::UnexpectedFrame(what));
    }

    fn server_closed_channel(&mut self, id: u16, close: channel::Close) {
        let _ = frame::encode_method(self.transmit.buf(), id, &channel::CloseOk, u32::MAX);
        self.channel_closed(id, Some(close_from(&close)));
    }

    fn channel_closed(&mut self, id: u16, close: Option<Close>) {
        if let Some(slot) = slot_index(id).and_then(|index| self.channels.get_mut(index)) {
            *slot = None;
        }
        self.events
            .push_back(Event::ChannelClosed { channel: id, close });
    }

    fn handle_header(&mut self, id: u16, header: ContentHeader) {
        let max = self.config.max_message_size;
        let Ok(state) = self.channel_mut(id) else {
            return self.protocol_error_code(
                ReplyCode::CHANNEL_ERROR,
                format!("content header on channel {id}, which is not open"),
            );
        };
        let Some(incoming) = state.incoming.as_mut() else {
            if state.closing {
                return;
            }
            return self.unexpected(format!("content header on channel {id} without a method"));
        };
        if incoming.properties.is_some() {
            return self.unexpected(format!("second content header on channel {id}"));
        }
        if header.body_size > max {
            return self.protocol_error(ConnectionError::MessageTooLarge {
                size: header.body_size,
                max,
            });
        }
        incoming.start_body(header);
        if incoming.is_complete() {
            self.complete_message(id);
        }
    }

    fn handle_body(&mut self, id: u16, body: Bytes) {
        let Ok(state) = self.channel_mut(id) else {
            return self.protocol_error_code(
                ReplyCode::CHANNEL_ERROR,
                format!("content body on channel {id}, which is not open"),
            );
        };
        let closing = state.closing;
        let Some(incoming) = state.incoming.as_mut().filter(|i| i.properties.is_some()) else {
            if closing {
                return;
            }
            return self.unexpected(format!("content body on channel {id} without a header"));
        };
        if !incoming.push_body(body) {
            return self.unexpected(format!(
                "content body on channel {id} longer than its header said"
            ));
        }
        if incoming.is_complete() {
            self.complete_message(id);
        }
    }

    fn complete_message(&mut self, id: u16) {
        let Ok(state) = self.channel_mut(id) else {
            return;
        };
        let Some(incoming) = state.incoming.take() else {
            return;
        };
        let (pending, message) = incoming.finish();
        let event = match pending {
            Pending::Deliver(deliver) => Event::Delivery {
                channel: id,
                deliver,
                message,
            },
            Pending::Return(returned) => Event::Returned {
                channel: id,
                returned,
                message,
            },
            Pending::GetOk(get_ok) => {
                state.pending.pop_front();
                Event::Reply {
                    channel: id,
                    reply: Reply::GetOk { get_ok, message },
                }
            }
        };
        self.events.push_back(event);
    }
}

/// How many of a foreign server's first bytes [`ConnectionError::NotAmqp`] keeps.
const FOREIGN_SHOWN: usize = 64;

/// What the server's first bytes are, before `connection.start`.
enum FirstReply {
    /// Too few bytes to tell.
    Incomplete,
    /// Not AMQP 0-9-1: another protocol's greeting or error (HTTP, TLS), or the protocol
    /// header of another AMQP version, which a server sends back when it does not support
    /// the one asked for.
    Foreign,
    /// A plausible method frame on channel 0: decode it.
    Frame,
}

fn first_reply(buf: &[u8], frame_max: u32) -> FirstReply {
    const AMQP: &[u8] = b"AMQP";
    match buf {
        [] => FirstReply::Incomplete,
        [b'A', ..] if buf.len() < 8 && AMQP.starts_with(buf.get(..4).unwrap_or(buf)) => {
            FirstReply::Incomplete
        }
        [frame::FRAME_METHOD, c0, c1, s0, s1, s2, s3, ..] => {
            let size = u64::from(u32::from_be_bytes([*s0, *s1, *s2, *s3]));
            if [*c0, *c1] != [0, 0] || size + frame::FRAME_OVERHEAD as u64 > u64::from(frame_max) {
                FirstReply::Foreign
            } else {
                FirstReply::Frame
            }
        }
        [frame::FRAME_METHOD, ..] => FirstReply::Incomplete,
        _ => FirstReply::Foreign,
    }
}

fn close_from(close: &channel::Close) -> Close {
    Close {
        code: close.reply_code,
        text: close.reply_text.to_string_lossy().into_owned(),
        class_id: close.class_id,
        method_id: close.method_id,
    }
}

/// A short string from text, cut at 255 bytes (on a character boundary) if longer.
fn short_lossy(text: &str) -> ShortStr {
    let mut end = text.len().min(ShortStr::MAX_LEN);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    ShortStr::try_from(text.get(..end).unwrap_or_default()).unwrap_or_default()
}

/// Where channel `id` lives in the channel table; channel 0 has no slot.
fn slot_index(id: u16) -> Option<usize> {
    usize::from(id).checked_sub(1)
}
