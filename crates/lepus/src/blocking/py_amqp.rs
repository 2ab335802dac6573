//! Porting from py-amqp: each py-amqp call and its [`lepus::blocking`](super) equivalent.
//!
//! This page has no items; it is documentation only. `conn` is a [`Connection`], `ch` a
//! [`Channel`], `d` a [`Delivery`] (py-amqp's `Message`) and `props` a [`BasicProperties`].
//! Add `?` (or handle the [`Error`]) after every call that returns a `Result`.
//!
//! Three differences matter when porting:
//!
//! - py-amqp's `queue_declare` and `exchange_declare` default to `auto_delete=True`; lepus's
//!   option structs default to `auto_delete: false`.
//! - Heartbeats are sent by the I/O thread: drop every `heartbeat_tick()` call, and the
//!   "call `drain_events` often enough" rule. Only consumer callbacks need `drain_events`.
//! - Flags are named fields of option structs, not positional arguments
//!   (`QueueDeclareOptions { durable: true, ..Default::default() }`).
//!
//! # Connection
//!
//! - `conn = amqp.Connection('localhost:5672', userid='guest', password='guest', virtual_host='/'); conn.connect()` → `let conn = Connection::connect("amqp://guest:guest@localhost:5672/%2f")?;`
//! - `amqp.Connection(..., heartbeat=10, connect_timeout=5)` → `let mut o = ConnectionOptions::from_uri(url)?; o.heartbeat(Heartbeat::Secs(10)).connect_timeout(Duration::from_secs(5)); Connection::connect_with(o)?`
//! - `amqp.Connection(..., client_properties={'connection_name': 'worker'})` → `o.connection_name("worker");`
//! - `ch = conn.channel()` → `let ch = conn.open_channel()?;`
//! - `conn.drain_events()` → `conn.drain_events(None)?;`
//! - `conn.drain_events(timeout=1)` (raises `socket.timeout`) → `conn.drain_events(Some(Duration::from_secs(1)))?` (returns [`Drained::TimedOut`], not an error)
//! - `conn.heartbeat_tick()` / `conn.send_heartbeat()` → nothing: the `lepus-io` thread does it
//! - `amqp.Connection(..., on_blocked=cb, on_unblocked=cb2)` → [`Event::Blocked`] / [`Event::Unblocked`] from `drain_events`, or `conn.blocked()`
//! - `conn.connected` → `conn.is_open()`
//! - `conn.server_properties` → `conn.server_properties()`
//! - `conn.close()` → `conn.close()?;`
//! - `with amqp.Connection(...) as conn:` → a scope: dropping `conn` closes the connection
//!
//! # Channel
//!
//! - `ch.close()` → `ch.close()?;`
//! - `ch.flow(False)` → `ch.flow(false)?;`
//! - `ch.exchange_declare('logs', 'topic', durable=True, auto_delete=False)` → `ch.exchange_declare("logs", ExchangeKind::Topic, ExchangeDeclareOptions { durable: true, ..Default::default() })?;`
//! - `ch.exchange_declare('logs', 'topic', passive=True)` → `ch.exchange_declare_passive("logs")?;`
//! - `ch.exchange_delete('logs', if_unused=True)` → `ch.exchange_delete("logs", ExchangeDeleteOptions { if_unused: true, ..Default::default() })?;`
//! - `ch.exchange_bind('dst', 'src', 'key')` → `ch.exchange_bind("dst", "src", "key", BindOptions::default())?;`
//! - `ch.exchange_unbind('dst', 'src', 'key')` → `ch.exchange_unbind("dst", "src", "key", BindOptions::default())?;`
//! - `name, messages, consumers = ch.queue_declare('jobs', durable=True, auto_delete=False)` → `let QueueDeclared { name, message_count, consumer_count } = ch.queue_declare("jobs", QueueDeclareOptions { durable: true, ..Default::default() })?;`
//! - `ch.queue_declare('', exclusive=True).queue` → `ch.queue_declare("", QueueDeclareOptions { exclusive: true, ..Default::default() })?.name`
//! - `ch.queue_declare('jobs', arguments={'x-message-ttl': 60000})` → `ch.queue_declare("jobs", QueueDeclareOptions { arguments: FieldTable::new().with("x-message-ttl", 60_000), ..Default::default() })?;`
//! - `ch.queue_declare('jobs', passive=True)` → `ch.queue_declare_passive("jobs")?;`
//! - `ch.queue_bind('jobs', exchange='logs', routing_key='app.*')` → `ch.queue_bind("jobs", "logs", "app.*", BindOptions::default())?;`
//! - `ch.queue_unbind('jobs', 'logs', 'app.*')` → `ch.queue_unbind("jobs", "logs", "app.*", FieldTable::new())?;`
//! - `ch.queue_purge('jobs')` → `ch.queue_purge("jobs")?` (the number purged)
//! - `ch.queue_delete('jobs', if_unused=True, if_empty=True)` → `ch.queue_delete("jobs", QueueDeleteOptions { if_unused: true, if_empty: true, ..Default::default() })?;`
//! - `ch.basic_qos(prefetch_size=0, prefetch_count=10, a_global=False)` → `ch.basic_qos(10, BasicQosOptions::default())?;`
//!
//! # Publishing
//!
//! - `msg = amqp.Message('hi', content_type='text/plain', delivery_mode=2, headers={'k': 'v'})` → `let props = BasicProperties { content_type: Some(ShortStr::from_static("text/plain")), delivery_mode: Some(2), headers: Some(FieldTable::new().with("k", "v")), ..Default::default() };` (the body is the last argument of `basic_publish`)
//! - `ch.basic_publish(msg, exchange='logs', routing_key='app.web')` → `ch.basic_publish("logs", "app.web", BasicPublishOptions::default(), &props, "hi")?;`
//! - `ch.basic_publish(msg, exchange='logs', routing_key='x', mandatory=True)` → `ch.basic_publish("logs", "x", BasicPublishOptions { mandatory: true }, &props, "hi")?;` (an unroutable message comes back as [`Event::Returned`])
//! - `ch.events['basic_return'].add(on_return)` → match [`Event::Returned`] in what `drain_events` returns
//! - `ch.confirm_select()` → `ch.confirm_select()?;`
//! - `ch.basic_publish_confirm(msg, exchange='', routing_key='jobs')` → `ch.basic_publish_confirm("", "jobs", BasicPublishOptions::default(), &props, "hi")?.is_ack()` (call `confirm_select` once first; lepus does not switch it on for you)
//! - many `ch.basic_publish(...)` then wait for all confirms → `ch.basic_publish(...)?` for each, then `ch.wait_for_confirms(Duration::from_secs(10))?` (`false` if any was nacked)
//! - a window of unconfirmed messages (`ch.events['basic_ack']` / `['basic_nack']` callbacks counting what is outstanding, `connection.drain_events()` while the window is full) → keep what `ch.basic_publish(...)?` returns in a `VecDeque` and call [`wait`](super::PublisherConfirm::wait) on the oldest while the queue is too long: each returns that message's [`Confirmation`](crate::Confirmation)
//!
//! # Getting and acknowledging
//!
//! - `msg = ch.basic_get('jobs', no_ack=False)` (`None` when empty) → `if let Some(GetMessage { delivery: d, message_count }) = ch.basic_get("jobs", false)? { … }`
//! - `msg.body` → `d.body` (a [`Bytes`](crate::bytes::Bytes))
//! - `msg.properties['content_type']` → `d.properties.content_type`
//! - `msg.headers` → `d.properties.headers`
//! - `msg.delivery_info['routing_key']` / `['exchange']` / `['redelivered']` → `d.routing_key` / `d.exchange` / `d.redelivered`
//! - `msg.delivery_tag` → `d.delivery_tag`
//! - `ch.basic_ack(msg.delivery_tag)` → `d.ack()?;` or `ch.basic_ack(d.delivery_tag, false)?;`
//! - `ch.basic_ack(msg.delivery_tag, multiple=True)` → `d.ack_multiple()?;`
//! - `ch.basic_nack(msg.delivery_tag, requeue=True)` → `d.nack(true)?;` or `ch.basic_nack(d.delivery_tag, false, true)?;`
//! - `ch.basic_reject(msg.delivery_tag, requeue=False)` → `d.reject(false)?;` or `ch.basic_reject(d.delivery_tag, false)?;`
//! - `ch.basic_recover(requeue=True)` → `ch.basic_recover(true)?;`
//! - `ch.basic_recover_async(requeue=True)` → `ch.basic_recover_async(true)?;`
//!
//! # Transactions
//!
//! - `ch.tx_select()` → `ch.tx_select()?;`
//! - `ch.tx_commit()` → `ch.tx_commit()?;`
//! - `ch.tx_rollback()` → `ch.tx_rollback()?;`
//!
//! # Consuming
//!
//! - `tag = ch.basic_consume('jobs', callback=cb)` → `let tag = ch.basic_consume("jobs", "", BasicConsumeOptions::default(), cb)?;` with `cb: impl FnMut(&Channel, Delivery) + Send + 'static`
//! - `ch.basic_consume('jobs', consumer_tag='w1', no_ack=True, exclusive=True, arguments={'x-priority': 10}, callback=cb)` → `ch.basic_consume("jobs", "w1", BasicConsumeOptions { no_ack: true, exclusive: true, arguments: FieldTable::new().with("x-priority", 10), ..Default::default() }, cb)?;`
//! - `ch.basic_consume('jobs', callback=cb, on_cancel=on_cancel)` → match [`Event::ConsumerCancelled`] in what `drain_events` returns
//! - `def cb(msg): ...; msg.channel.basic_ack(msg.delivery_tag)` → `|ch: &Channel, d: Delivery| { …; let _ = d.ack(); }` (the channel is the first argument)
//! - `while True: conn.drain_events()` → `loop { conn.drain_events(None)?; }`
//! - `try: conn.drain_events(timeout=1) except socket.timeout: idle()` → `if let Drained::TimedOut = conn.drain_events(Some(Duration::from_secs(1)))? { idle() }`
//! - `ch.basic_cancel(tag)` → `ch.basic_cancel(&tag)?;`
//! - no py-amqp equivalent: an iterator consumer → `for d in ch.basic_consume_iter("jobs", "", BasicConsumeOptions::default())? { let d = d?; … }`
//!
//! # Errors
//!
//! - `except amqp.exceptions.NotFound` → `Err(Error::ChannelClosed(close)) if close.code == ReplyCode::NOT_FOUND`
//! - `except amqp.exceptions.PreconditionFailed` → `Err(e) if e.reply_code() == Some(ReplyCode::PRECONDITION_FAILED)`
//! - `except amqp.exceptions.ChannelError` → `Err(Error::ChannelClosed(_))`
//! - `except amqp.exceptions.ConnectionError` / `ConnectionForced` → `Err(e) if e.is_connection_error()`
//! - `except amqp.exceptions.AccessRefused` at connect → `Err(Error::AuthenticationFailed(_))`
//! - `except socket.timeout` from `drain_events` → `Ok(Drained::TimedOut)`
//!
//! # A worker, ported
//!
//! ```python
//! import amqp
//!
//! def on_message(msg):
//!     print(msg.body)
//!     msg.channel.basic_ack(msg.delivery_tag)
//!
//! with amqp.Connection('localhost:5672') as conn:
//!     ch = conn.channel()
//!     ch.queue_declare('jobs', durable=True, auto_delete=False)
//!     ch.basic_qos(0, 10, False)
//!     ch.basic_consume('jobs', callback=on_message)
//!     while True:
//!         try:
//!             conn.drain_events(timeout=5)
//!         except socket.timeout:
//!             conn.heartbeat_tick()
//! ```
//!
//! <!-- no_run: like the Python it ports, it consumes until the process is killed. -->
//! ```no_run
//! use std::time::Duration;
//! use lepus::blocking::{Channel, Connection, Delivery};
//! use lepus::{BasicConsumeOptions, BasicQosOptions, QueueDeclareOptions};
//!
//! fn on_message(_ch: &Channel, msg: Delivery) {
//!     println!("{:?}", msg.body);
//!     if let Err(e) = msg.ack() {
//!         eprintln!("ack failed: {e}");
//!     }
//! }
//!
//! fn main() -> Result<(), lepus::Error> {
//!     let conn = Connection::connect("amqp://guest:guest@localhost:5672/%2f")?;
//!     let ch = conn.open_channel()?;
//!     ch.queue_declare("jobs", QueueDeclareOptions { durable: true, ..Default::default() })?;
//!     ch.basic_qos(10, BasicQosOptions::default())?;
//!     ch.basic_consume("jobs", "", BasicConsumeOptions::default(), on_message)?;
//!     loop {
//!         // No heartbeat_tick: a timeout is just a quiet moment.
//!         let _ = conn.drain_events(Some(Duration::from_secs(5)))?;
//!     }
//! }
//! ```
//!
//! [`Connection`]: super::Connection
//! [`Channel`]: super::Channel
//! [`Delivery`]: crate::Delivery
//! [`BasicProperties`]: crate::BasicProperties
//! [`Error`]: crate::Error
//! [`Drained::TimedOut`]: super::Drained::TimedOut
//! [`Event::Blocked`]: super::Event::Blocked
//! [`Event::Unblocked`]: super::Event::Unblocked
//! [`Event::Returned`]: super::Event::Returned
//! [`Event::ConsumerCancelled`]: super::Event::ConsumerCancelled
