//! How lepus works, and why: the design notes behind the API. Documentation only.
//!
//! # Layers
//!
//! ```text
//!   lepus-cli ──► lepus (tokio driver, async API, lepus::blocking) ──► lepus-proto ──► lepus-wire
//! ```
//!
//! - `lepus-wire` turns bytes into typed frames and back. It has no state beyond one frame.
//! - `lepus-proto` is the client's protocol logic as a state machine that does no I/O and reads
//!   no clock: bytes and the current time go in, bytes to write, events and the next deadline
//!   come out. Everything that can go wrong between client and broker (a reply that does not
//!   match the request, a body longer than its header said, a close crossing a close) is decided
//!   here, and tested with a scripted broker and a fake clock.
//! - `lepus` owns the socket, the timers and the API. It adds no protocol behaviour of its own;
//!   [`blocking`](crate::blocking) adds none on top of it either.
//!
//! # One lock, no channel hop
//!
//! A connection's state (the protocol core, the waiters for replies and confirms, the consumers'
//! queues) sits behind one mutex shared by the user's handles and two tasks. A call such as
//! [`Channel::basic_publish`](crate::Channel::basic_publish) locks it, encodes its frames
//! straight into the core's output buffer, and wakes the writer task only if it is idle. There
//! is no per-message message-passing to a background task and, for bodies under 4 KiB, no
//! allocation. Under load the writer finds many messages queued and sends them with one
//! vectored write; bodies of 4 KiB or more are sent from the caller's buffer without a copy.
//!
//! The reader task reads 2 KiB at a time while reads are small, 64 KiB once one filled its
//! buffer, and up to 512 KiB while reads keep filling it (large bodies: a consumer of 64 KiB
//! messages then wakes once per several messages instead of once per message, which took a
//! fifth off its CPU time). A frame larger than a read is read straight into one buffer of
//! its size. The core decodes what was read in slices of a few dozen frames per lock, so
//! other threads' acks and publishes are never held up for long.
//! Consumers and confirm futures made ready by a read are woken once the whole read is handled
//! and the lock is released: the woken thread takes one larger batch and does not run straight
//! into the lock the reader still holds.
//!
//! # Memory
//!
//! An idle connection with one channel holds about 15 KiB of heap, everything counted (the
//! protocol core, both tasks, tokio's registration); `tests/footprint.rs` fails above 16 KiB.
//! Buffers start small and grow with traffic: the read buffer moves from 2 KiB to 64 KiB once
//! a read fills it (and on to 512 KiB while reads keep filling it), and frames are encoded into blocks that double, from 4 KiB to 64 KiB,
//! while the writer falls behind. A connection with no reads and no writes for a second gives
//! back what a burst made grow: both buffers, the event and confirm queues, and every
//! consumer's buffer that is empty (the consumer is woken to drop its own batch buffer). The
//! server's properties are kept encoded, in a buffer of their own, so they do not hold on to
//! the frame they arrived in. A service with thousands of mostly idle connections pays for
//! what each one is doing now, not for its busiest moment.
//!
//! # Wake-ups are the cost
//!
//! Measured on a busy connection, most of a client's CPU time goes to threads going to sleep
//! and being woken (the kernel's scheduler, futexes, epoll), not to encoding or decoding. Each
//! design choice above removes some: no task hop per message, one vectored write per batch,
//! one wake-up per read rather than per delivery.
//!
//! Two more remove the wake-up of the writer task from the application's thread, the largest
//! cost left when consuming or publishing with confirms:
//!
//! - **Writing from the waiting thread.** When a caller is about to wait for the broker (a
//!   [`PublisherConfirm`](crate::PublisherConfirm) or
//!   [`wait_for_confirms`](crate::Channel::wait_for_confirms), a
//!   [`Consumer`](crate::Consumer) with no delivery ready) and the writer task is idle, the
//!   caller writes what is queued itself, with a non-blocking vectored write on the socket. If
//!   the socket cannot take it all, the writer task sends the rest, in order. This needs the
//!   plain TCP socket; over TLS, whose session state lives in the writer task, the writer
//!   does all the writing.
//! - **Letting some frames wait briefly.** While the writer has written within the last
//!   couple of milliseconds (it is *lazy*: it looks for output again on its own within about
//!   2 ms), two kinds of frames do not wake it: a publish on a channel in confirm mode (its
//!   publisher is expected to wait for the confirm, which writes it as above), and an ack
//!   (it goes out with the next read, after which the reader wakes the writer from its own
//!   thread, cheaply, or with the caller's next wait). If the broker could be waiting for an
//!   ack (with a prefetch limit, the unacknowledged deliveries plus the acks already waiting
//!   would fill the window), the writer is woken at once: with `basic.qos(1)` every ack goes
//!   out immediately.
//!
//! The writer turns lazy only after a write that carried a batch (at least two) of acks or
//! publishes far ahead of their confirms, and nothing the broker may answer. After a write
//! with a request, a publish without confirms, a confirmed publish with few outstanding, or
//! a lone ack, it is not lazy: the application is then probably in a request/reply loop
//! (publish, wait for the delivery, ack, one at a time), where its next ack should go out at
//! once and the timer that laziness needs costs more than it saves. In a ping-pong through
//! the broker that took a round trip from 55–65 to about 40 µs of CPU (`bench_client latency`);
//! [`ConnectionStats::deferred_acks`](crate::ConnectionStats::deferred_acks) counts the acks
//! that waited.
//!
//! So no frame waits more than about 2 ms, and one that someone is waiting on goes out at
//! once. Publishes without confirms, requests and everything else wake the writer at once.
//! [`ConnectionOptions::write_coalescing`](crate::ConnectionOptions::write_coalescing) sets
//! the 2 ms; zero turns the waiting off.
//!
//! The same holds for reading. Every socket read wakes the reader task, and then the
//! application's tasks it hands deliveries or confirms to: two sleeping threads woken per
//! read. A broker streaming 60 000 deliveries a second writes them in small batches, a dozen
//! or so at a time, so a reader that reads as soon as anything arrives pays those two wake-ups
//! for every dozen messages. **Read coalescing:** after a read that brought such a stream, the
//! reader holds off its next read for about 1 ms
//! ([`ConnectionOptions::read_coalescing`](crate::ConnectionOptions::read_coalescing)), and
//! then reads everything that arrived meanwhile in one go. The application is woken at once
//! for what the read brought; only the next read waits. Larger batches also cost the broker
//! less per message, so throughput rises with it.
//!
//! Waiting to read only pays when nobody waits on the broker, so the reader decides after each
//! read, and holds off only when all of these hold:
//!
//! - the read brought at least 4 deliveries or confirms, at a rate that would gather at least
//!   16 in the delay, in a read under 32 KiB (a trickle keeps its latency, and large reads
//!   already amortise their wake-up);
//! - no reply to a request is awaited (`queue.declare`, `basic.get`, `channel.close`, ...);
//! - the application has sent nothing in the last ten delays that the broker may answer: a
//!   request, a publish without confirms, or a confirmed publish with fewer than 64 confirms
//!   outstanding. Acks and publishes far ahead of their confirms do not count. This keeps
//!   request/reply loops through queues at full speed: their requester publishes as replies
//!   come in;
//! - the broker can go on meanwhile: on each channel the read touched, the free part of the
//!   prefetch window (minus acks not yet written) and the number of confirms outstanding hold
//!   at least twice what the delay is expected to bring. A consumer with `basic.qos(10)` or a
//!   publisher awaiting each confirm never sees a delayed read.
//!
//! Anything the application sends that the broker may answer during a delay ends it at once.
//! [`Connection::stats`](crate::Connection::stats) counts reads, delayed reads and writes, to
//! see how well a connection batches.

//! # Replies
//!
//! AMQP replies to synchronous requests on a channel come back in request order. The core keeps,
//! per channel, the list of replies each outstanding request accepts (`queue.declare` accepts
//! `declare-ok`, `basic.get` accepts `get-ok` or `get-empty`, ...); a reply that does not match
//! the oldest request is a protocol violation and closes the connection with 505. The driver
//! keeps the waiting futures in the same order. A request whose future was dropped still gets
//! its reply; the reply is discarded, so later replies stay aligned.
//!
//! # Publisher confirms
//!
//! After `confirm.select` the core numbers publishes from 1, counting from the moment the
//! select is sent (RabbitMQ counts the same way, since it reads the frames in order). Each
//! publish's [`PublisherConfirm`](crate::PublisherConfirm) is just that number: its result
//! waits in the channel's queue of confirms, ordered by number, until the future takes it
//! (or is dropped). The queue reuses its space, so confirms cost no allocation per message;
//! `tests/allocations.rs` counts every allocation of the process while messages are
//! published, confirmed and consumed, and fails at one per twenty messages (it sees about
//! one per few hundred: a new read buffer now and then).
//!
//! A `basic.ack` or `basic.nack` with `multiple` settles every number up to its tag; a
//! single one settles its own. RabbitMQ sends `basic.return` for an unroutable mandatory message
//! just before that message's ack, so a return is attached to the next confirm the broker sends
//! ([`Confirmation::Ack`](crate::Confirmation::Ack) with the message). When the channel or
//! connection ends, every pending confirm resolves at once with the error.
//!
//! # Heartbeats
//!
//! With an interval of `n` seconds (see [`Heartbeat`](crate::Heartbeat) for how it is chosen),
//! lepus sends a heartbeat frame when it has sent nothing for `n` seconds, and declares the
//! broker dead when nothing at all has arrived for `2 * n` seconds. The deadline lives in the
//! core; the reader task sleeps until it. A dead broker ends every waiter, confirm and consumer
//! with [`ConnectionError::HeartbeatTimeout`](crate::ConnectionError::HeartbeatTimeout).
//!
//! # Backpressure
//!
//! - **Publishing:** when more than the write buffer's high-water mark is waiting to be
//!   written, or the broker sent `connection.blocked`, or it paused the channel with
//!   `channel.flow`, publishers wait; `blocked_publish_timeout` bounds the wait. Over TCP on
//!   Linux the kernel keeps at most 64 KiB of unsent bytes for the socket
//!   (`TCP_NOTSENT_LOWAT`) instead of growing its buffer to megabytes, so the messages
//!   [`ConnectionStats::messages_written`](crate::ConnectionStats::messages_written) counts
//!   as written have really left, or are about to, and a write shows progress as soon as the
//!   link drains a little.
//! - **Consuming:** each consumer has a bounded buffer
//!   ([`BasicConsumeOptions::buffer`](crate::BasicConsumeOptions::buffer)). When one is full,
//!   the reader stops reading the socket until the consumer takes its deliveries, so the broker
//!   sees TCP backpressure (and, with a prefetch limit, simply stops sending). Memory stays
//!   bounded whatever the prefetch, even with `no_ack`. The cost is that the connection's other
//!   channels wait too, which is why a slow consumer deserves its own connection. While reading
//!   is paused on purpose, the heartbeat check does not count the silence against the broker.
//!
//! # When a full consumer buffer holds up a reply
//!
//! While the reader is paused for a full consumer buffer, nothing behind that consumer's
//! deliveries is read, replies included. lepus never lets that hold up a reply the consumer
//! itself is waiting on:
//!
//! - **Cancelling the consumer** ([`Channel::basic_cancel`](crate::Channel::basic_cancel)):
//!   from the moment the cancel is sent, the consumer no longer pauses the reader; deliveries
//!   its full buffer cannot take are rejected with requeue at once (nothing lost, memory
//!   bounded), and cancel-ok is read however many deliveries the broker sends first. A
//!   dropped [`Consumer`](crate::Consumer) does the same.
//! - **Closing its channel or the connection:** the broker's deliveries are discarded unread
//!   from then on (as the spec asks), so the reader goes on and reads close-ok.
//!
//! What remains is a reply that has nothing to do with the full consumer, behind its
//! deliveries on the same connection. Each waits until the consumer takes its deliveries:
//!
//! - a request on another channel (or on the consumer's channel): `queue.declare`,
//!   `basic.get`, `basic.qos`, another `basic.consume`, ... (it times out after the RPC
//!   timeout if the consumer is never drained);
//! - publisher confirms on the same connection, and `wait_for_confirms`;
//! - `connection.update-secret`, and the broker's `connection.blocked` notices;
//! - deliveries to the connection's other consumers.
//!
//! What to do: keep taking deliveries while waiting for anything else (drain the consumer
//! in a task of its own, or `select!` over the consumer and the other call); or give a
//! consumer that can fall behind a connection of its own; or set
//! [`BasicConsumeOptions::buffer`](crate::BasicConsumeOptions::buffer) above the prefetch
//! limit (`basic.qos`), since a broker that respects the limit then never fills the buffer.
//!
//! # Recovery
//!
//! A connection that loses its broker reconnects and restores what it had, so that the
//! handles the application holds ([`Connection`](crate::Connection),
//! [`Channel`](crate::Channel), [`Consumer`](crate::Consumer)) go on working. It is on by
//! default; [`ConnectionOptions::no_recovery`](crate::ConnectionOptions::no_recovery) turns
//! it off, and a lost connection then fails every handle at once, as before.
//!
//! **When.** A loss reconnecting can mend is recovered; a refusal, or anything a broken or
//! hostile peer can cause, is not (it would only repeat, in a loop):
//!
//! | the connection ended by | recovered |
//! |---|---|
//! | an I/O error, the broker closing the socket | yes |
//! | missed heartbeats (two intervals of silence) | yes |
//! | `connection.close` 320 CONNECTION_FORCED (broker shutdown or restart, `rabbitmqctl close_connection`) | yes |
//! | `connection.close` 541 INTERNAL_ERROR | yes |
//! | `connection.close` 402, 403, 501–506, 530, 540 | no |
//! | [`Connection::close`](crate::Connection::close), or dropping every handle | no |
//! | a protocol violation lepus detected, a server that does not speak AMQP 0-9-1 | no |
//!
//! A channel closed by a soft error (404, 406, ...) is not a connection loss: that channel
//! stays closed, as without recovery. The table is
//! [`ConnectionError::is_recoverable`](crate::ConnectionError::is_recoverable).
//!
//! **How.** Each attempt waits first (125–250 ms for the first, doubling up to 10 s, with
//! jitter; [`RecoveryPolicy`](crate::RecoveryPolicy) sets these, and limits on attempts and
//! time), then connects to the next broker of the list (see
//! [`ConnectionOptions::add_host`](crate::ConnectionOptions::add_host)). An attempt that the
//! broker refuses (bad credentials, a deleted vhost) ends recovery: the connection closes
//! with that error. Then, in this order:
//!
//! 1. the same channel ids are opened, each with its QoS (both scopes), confirm mode, tx mode
//!    and flow;
//! 2. exchanges, exchange-to-exchange bindings, queues and queue bindings are declared again,
//!    on a channel of recovery's own. A server-named queue is declared with an empty name and
//!    gets a new one (never its old `amq.gen-*` name): its bindings and consumers follow it;
//! 3. consumers are subscribed again on their channels, with their tags and options.
//!
//! The topology is recorded per connection from every successful declare, bind and consume,
//! and forgotten on delete, unbind and cancel; passive declares are not recorded. An
//! auto-delete queue is forgotten when this client cancels its last consumer, an auto-delete
//! exchange when this client removes its last binding from it; exclusive queues are declared
//! again. A declare the broker refuses (someone declared the queue with other arguments) is
//! reported as an event and the declaration forgotten; recovery goes on with the rest, and
//! the queue's bindings and consumers are still tried (the queue may exist). A consumer
//! whose queue is gone ends its stream with the broker's 404.
//! [`RecoveryPolicy::filter`](crate::RecoveryPolicy::filter) leaves entities out.
//!
//! Note what the broker itself does when the link drops: an auto-delete queue goes with its
//! last consumer, and an exclusive one with its connection, messages included. Recovery
//! declares them again, empty.
//!
//! **What the application sees.**
//!
//! - Requests in flight at the loss fail with
//!   [`Error::ConnectionLost`](crate::Error::ConnectionLost), which is retryable
//!   ([`Error::is_retryable`](crate::Error::is_retryable)): whether they took effect is
//!   unknown. Calls made during recovery wait for it, within their own timeout (publishes as
//!   when the broker blocks the connection).
//! - Publisher confirms pending at the loss resolve at once to
//!   [`Confirmation::Uncertain`](crate::Confirmation::Uncertain), which is neither an ack nor
//!   a nack: the message may or may not have reached the broker. Publishing it again is
//!   at-least-once (a duplicate is possible). Confirm numbering goes on across the recovery.
//!   [`Channel::replay_on_recovery`](crate::Channel::replay_on_recovery) does the publishing
//!   again itself: the channel keeps every confirmed publish until the broker settles it
//!   (bodies by reference, so memory is bounded by the confirms the application lets wait),
//!   publishes the unsettled ones first thing on the reopened channel, and their confirm
//!   futures resolve with the verdict on the new copies.
//!   [`ConnectionStats::replayed`](crate::ConnectionStats::replayed) counts them.
//!   Messages published without confirms that were still in lepus's write buffer are lost
//!   with the link; [`ConnectionEvent::Disconnected`](crate::ConnectionEvent::Disconnected)
//!   counts them.
//! - A consumer's stream goes on. Deliveries of the lost link still buffered are dropped:
//!   the broker requeues them, and they come again marked redelivered (so do those whose
//!   acks were still waiting to be written). Settling a delivery of the lost link is refused
//!   locally with [`Error::StaleDelivery`](crate::Error::StaleDelivery): its tag means
//!   nothing on the new link, and the broker would close the channel with 406 for it.
//! - [`Connection::events`](crate::Connection::events) reports every step (`Disconnected`,
//!   `Reconnecting`, `QueueRenamed`, `ConsumerRecovered`, `TopologyFailed`, `Recovered`,
//!   `RecoveryFailed`), each also logged through `tracing`;
//!   [`Connection::wait_open`](crate::Connection::wait_open) waits for the end of a recovery,
//!   [`Connection::address`](crate::Connection::address) says which broker the connection is
//!   on, and [`ConnectionStats::recoveries`](crate::ConnectionStats::recoveries) counts them.
//! - [`blocking`](crate::blocking) inherits all of it: a `drain_events` loop goes on, and
//!   sees the steps as [`Event::Recovery`](crate::blocking::Event::Recovery).
//!
//! **Testing an application's own recovery.** lepus's tests put a small TCP proxy between
//! client and broker (`crates/lepus/tests/support/proxy.rs`) that can cut every connection,
//! freeze the network (so that heartbeats find the link dead) or pass bytes on slowly;
//! `rabbitmqctl close_connection` and `stop_app`/`start_app` do the same from the broker's
//! side.
//!
//! # Acknowledgements belong to their channel
//!
//! Delivery tags are numbered per channel, and RabbitMQ closes a channel with 406 when it gets
//! an ack for a tag it did not deliver there. A [`Delivery`](crate::Delivery) therefore carries
//! its channel's id and *generation*, a number that changes each time the id is reused; acking
//! after the channel closed, or on its successor with the same id, fails locally with
//! [`Error::ChannelNotOpen`](crate::Error::ChannelNotOpen) and sends nothing.
//!
//! # Closing
//!
//! [`Connection::close`](crate::Connection::close) queues `connection.close` behind everything
//! already published, so it is a flush; it then waits for close-ok. From the moment close is
//! sent, the core discards every frame but close and close-ok, as the spec asks.
//!
//! The close timeout bounds the time *without progress*: lepus counts the bytes each write
//! moves, and a close goes on as long as the socket keeps taking them, so a backlog of
//! megabytes is written to the end however slow the link. Only when nothing moves for the
//! whole timeout (a broker that stopped reading, a dead link) does it give up, and then it
//! says what was lost: [`Error::Unsent`](crate::Error::Unsent) carries the number of
//! published messages not completely written (lepus records where each publish ends in the
//! output stream, and counts the ones the writes have not reached). A connection that fails
//! with publishes still queued (the broker closed it, the link broke) reports the same error
//! from a later `close()`, and warns through `tracing`.
//!
//! Once everything is written, the close waits the close timeout for close-ok. A broker that
//! publishers outpaced holds megabytes in its socket buffers and answers only after working
//! through them, and RabbitMQ drops whatever it has not read when the client closes the
//! socket (it even does so when it sees a FIN while busy). So a close that gives up on
//! close-ok returns [`Error::Timeout`](crate::Error::Timeout) but leaves the socket open:
//! the reader goes on reading, and only the broker's close-ok (or its closing the socket, or a
//! minute) ends it.
//!
//! **Only `close().await` guarantees the flush.** Dropping every handle (connections,
//! channels and consumers) without it queues `connection.close` behind what was published,
//! writes what the socket takes at once from the dropping thread, and lets a background task
//! finish the close while the runtime runs. When the runtime shuts down first (an `async fn
//! main` returning, the end of a `#[tokio::test]`), the writer task is dropped: it writes what
//! the socket takes at once, without blocking, and over plain TCP hands the rest of the close
//! (writing the remainder, waiting for close-ok) to a thread of its own that works on a
//! duplicate of the socket. It never sends FIN before close-ok, because RabbitMQ drops what
//! it has not read yet when it sees one while busy. If the process exits first, whatever was
//! not written by then is lost; a `tracing` warning gives the number of messages. Over TLS
//! there is no such thread: what the socket does not take at once is lost, with the same
//! warning.
//!
//! A dropped [`Consumer`](crate::Consumer) cancels itself and gives its buffered deliveries
//! back to the queue.
//!
//! # Observability
//!
//! Three views, from cheapest to richest:
//!
//! - [`Connection::stats`](crate::Connection::stats): reads, writes, bytes, messages
//!   published and written, recoveries and replays, with no dependency and no feature.
//! - `tracing` spans after OpenTelemetry's messaging conventions, always compiled in (see
//!   [`telemetry`](crate::telemetry)): `publish` around [`Channel::basic_publish`],
//!   `process` for each delivery from when a consumer hands it over until it is dropped,
//!   `receive` for `basic.get`, and `ack`/`nack`/`reject` under the delivery's span.
//!   Connection and channel lifecycle and recovery steps are `tracing` events (connection
//!   opened, closed or ended, channel opened, reconnecting, queue renamed, recovered, gave
//!   up). Without a subscriber a span is one cached check and allocates nothing: the
//!   allocation test counts no allocation per published or consumed message with the spans
//!   compiled in.
//! - With the `otel` feature the trace crosses the broker: a publish writes its span's
//!   context into the message headers (`traceparent`, `tracestate`), and the consumer's
//!   `process` span continues it, whichever client published (OpenTelemetry's pika
//!   instrumentation is tested both ways). With the `metrics` feature the same points count
//!   into the `metrics` facade (messages sent and consumed, operation durations, confirms by
//!   outcome and their latency, returns, redeliveries, settlements, recoveries, blocked time,
//!   bytes, consumer batches).
//!
//! A worked example, `examples/trace_tree.rs` (`cargo run -p lepus --features otel --example
//! trace_tree`): a handler `POST /orders` publishes an order to the topic exchange
//! `example.shop` with routing key `order.created`; a consumer of `example.orders` stores it
//! and acks. Exported by OpenTelemetry's SDK (in memory here; OTLP to Jaeger or Tempo shows
//! the same tree) and printed with each span's kind, duration and main attributes:
//!
//! ```text
//! trace acaea63156aabf3e32f1bd681ffb1e1d
//! └─ POST /orders [Internal] 1.15 ms
//!    └─ publish example.shop:order.created [Producer] 0.14 ms  messaging.destination.name=example.shop:order.created messaging.message.id=order-42
//!       └─ process example.shop:order.created:example.orders [Consumer] 4.97 ms  messaging.rabbitmq.message.delivery_tag=1 messaging.destination.name=example.shop:order.created:example.orders messaging.message.id=order-42
//!          ├─ store order [Internal] 3.22 ms
//!          └─ ack example.shop:order.created [Client] 0.08 ms  messaging.rabbitmq.message.delivery_tag=1 messaging.destination.name=example.shop:order.created
//! ```
//!
//! One trace id runs from the HTTP handler through the broker into the consumer's work: the
//! `process` span is the `publish` span's child because the message carried
//! `traceparent = 00-acaea63156aabf3e32f1bd681ffb1e1d-<publish span id>-01`. The
//! application's own span (`store order`) hangs under `process` because it was created with
//! `parent: delivery.span()`; in the messaging layer, handlers run inside that span already.
//!
//! [`Channel::basic_publish`]: crate::Channel::basic_publish
