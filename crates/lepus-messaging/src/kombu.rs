//! Coming from kombu: each kombu call and its lepus-messaging equivalent.
//!
//! This page has no items; it is documentation only. `conn` is a [`Connection`] (async) or a
//! [`blocking::Connection`](crate::blocking::Connection) (the same calls without `.await`,
//! finishing a publish with `.send()`), `producer` a [`Producer`], `consumer` a
//! [`Consumer`] and `message` a [`Message`]. Add `?` after every call that returns a
//! `Result`.
//!
//! What lepus does differently, on purpose:
//!
//! - **Confirms are on by default.** A publish returns once the broker took the message; a
//!   nack is [`Error::Nacked`] and an unroutable mandatory message [`Error::Returned`], tied to
//!   that publish (kombu needs `confirm_publish` in the transport options and an `on_return`
//!   callback drained from the event loop). [`Publish::pipelined`] keeps thousands in flight.
//! - **The declaration cache compares whole definitions**, not names: kombu's
//!   `maybe_declare` skips a `Queue('jobs', max_length=10)` after a `Queue('jobs')`; lepus
//!   declares it (and the broker says 406). Expiring queues are never cached, whether the
//!   expiry is typed or a raw `x-expires` (kombu checks only the raw key).
//! - **Consumer tags** are the broker's (`amq.ctag-…`) unless a prefix is set, then
//!   `{prefix}{n}` per consumer; kombu's default tags are a process-global `None1`, `None2`, …
//! - **`text/plain` is always decoded** as text, like `application/data` as bytes: decoding
//!   either runs no code. kombu trusts `application/text` but refuses `text/plain` when an
//!   explicit accept list leaves it out. pickle is never decoded, even when listed.
//! - **Undecodable or refused messages** are settled by a policy (default: rejected without
//!   requeue, so a dead-letter exchange catches them, with one log line), instead of raising
//!   out of `drain_events` or, in `ConsumerMixin`, being acked (dropped).
//! - **A handler's error or panic** does not end the consumer: the message is rejected (or
//!   requeued, per policy) and the loop goes on. A message the handler leaves unsettled is
//!   acked when it returns `Ok`.
//! - **Recovery is underneath**: lepus reconnects, restores the topology and consumers, and
//!   publishes again what lost its confirm. kombu's `ensure`/`autoretry` wrappers map to a
//!   [`RetryPolicy`], which retries only connection losses, never a 404 or 406.
//! - **Decompression is bounded** by [`Connection::max_message_size`]: a compression bomb is
//!   refused, not inflated.
//!
//! # Connection
//!
//! - `conn = Connection('amqp://guest:guest@localhost//')` → `let conn = Connection::connect("amqp://guest:guest@localhost:5672/%2f").await?;`
//! - `conn.default_channel` → `conn.default_channel().await?` (a [`lepus::Channel`])
//! - `conn.maybe_declare(entity)` / `kombu.common.maybe_declare(entity, channel)` → `conn.maybe_declare(entity).await?` (`true` if it sent the declaration)
//! - `conn.declared_entities.clear()` → `conn.forget_declarations()`
//! - `conn.Producer(serializer='json')` → `conn.producer().serializer("json").build()?`
//! - `conn.Consumer(queues, callbacks=[cb], accept=['json'])` → `conn.consumer(queues).accept(Accept::new(conn.registry(), ["json"])?).consume().await?`
//! - `conn.release()` / `conn.close()` → `conn.close().await?`
//!
//! # Entities
//!
//! - `Exchange('logs', type='topic')` → `Exchange::with_kind("logs", ExchangeKind::Topic)`
//! - `Exchange('logs', durable=False, delivery_mode='transient')` → `Exchange::new("logs").transient()`
//! - `Exchange('logs', auto_delete=True, arguments={'alternate-exchange': 'ae'})` → `Exchange::new("logs").auto_delete(true).alternate_exchange("ae")`
//! - `exchange.declare(channel=ch)` → `exchange.declare(&ch).await?`
//! - `exchange.bind_to(source, routing_key='k')` → `exchange.bind_to(&ch, "source", "k", FieldTable::new()).await?`
//! - `exchange.delete(if_unused=True)` → `exchange.delete(&ch, true).await?`
//! - `Queue('jobs', exchange=logs, routing_key='app.*')` → `Queue::new("jobs").exchange(logs).routing_key("app.*")`
//! - `Queue('jobs', bindings=[binding(logs, 'a'), binding(audit)])` → `Queue::new("jobs").binding(Binding::new(logs).routing_key("a")).binding(Binding::new(audit))`
//! - `Queue('', exclusive=True)` → `Queue::server_named()` (or `Queue::new("").exclusive(true)`)
//! - `Queue('jobs', message_ttl=60, expires=600, max_length=1000, max_priority=10)` → `Queue::new("jobs").message_ttl(Duration::from_secs(60)).expires(Duration::from_secs(600)).max_length(1000).max_priority(10)`
//! - `Queue('jobs', queue_arguments={'x-queue-type': 'quorum', 'x-delivery-limit': 5})` → `Queue::new("jobs").queue_type(QueueType::Quorum).delivery_limit(5)` (also: `overflow`, `dead_letter_exchange`, `dead_letter_routing_key`, `max_length_bytes`, `single_active_consumer`, `consumer_timeout`; raw keys with `.argument("x-…", value)`)
//! - `Queue(..., consumer_arguments={'x-priority': 5})` → `.consumer_arguments(FieldTable::new().with("x-priority", 5))`, or `ConsumerBuilder::priority(5)`
//! - `name = queue.declare()` (server-named: written back into `queue.name`) → `let name = queue.declare(&ch).await?.name;` (entities are values: keep the returned name, or `queue.with_name(name)`)
//! - `queue.queue_declare(passive=True)` → `queue.declare_passive(&ch).await?`
//! - `queue.purge()` → `queue.purge(&ch).await?`
//! - `queue.delete(if_unused=True, if_empty=True)` → `queue.delete(&ch, true, true).await?`
//! - `queue.get(no_ack=False, accept=['json'])` → `conn.get(&queue, false, Accept::default()).await?` (`None` when empty)
//!
//! # Producer
//!
//! - `producer.publish({'a': 1}, routing_key='jobs')` → `producer.publish(&json!({"a": 1})).routing_key("jobs").await?` (any `Serialize` value: structs, maps, vectors)
//! - `producer.publish(body, exchange=logs, routing_key='k', declare=[queue])` → `producer.publish(&body).exchange(logs).routing_key("k").declare(queue).await?`
//! - `producer.publish(body, serializer='msgpack', compression='zlib')` → `.serializer("msgpack").compression("zlib")`
//! - `producer.publish(body, headers={'k': 'v'}, priority=5, expiration=30, delivery_mode=1)` → `.header("k", "v").priority(5).expiration(Duration::from_secs(30)).delivery_mode(DeliveryMode::Transient)`
//! - `producer.publish(body, correlation_id=cid, reply_to=q.name, message_id=mid)` → `.correlation_id(cid).reply_to(q.name()).message_id(mid)`; other properties through `.properties(BasicProperties { … })`
//! - `producer.publish(b'raw bytes', content_type='application/octet-stream', content_encoding='binary')` → `producer.publish_bytes(bytes).content_type("application/octet-stream", "binary")`
//! - `producer.publish('text')` (no serializer: `text/plain`) → `producer.publish_text("text")`
//! - `producer.publish(body, mandatory=True)` + `on_return` → `.mandatory(true)`; the publish fails with [`Error::Returned`]
//! - `Connection(transport_options={'confirm_publish': True})` → the default; `ProducerBuilder::confirms(false)` to turn confirms off
//! - `producer.publish(body, retry=True, retry_policy={'max_retries': 3, 'interval_start': 0, 'interval_step': 0.2, 'interval_max': 1})` → `.retry(RetryPolicy { max_retries: Some(3), interval_start: Duration::ZERO, interval_step: Duration::from_millis(200), interval_max: Duration::from_secs(1) })` (that is `RetryPolicy::default()`)
//! - many publishes, then wait → `let c = producer.publish(&v).pipelined().await?;` for each, then `c.await?` in any order
//!
//! # Consumer
//!
//! - `Consumer(ch, queues=[q], callbacks=[on_body], accept=['json'])` + `drain_events()` loop → `consumer.run_typed(|body: T, message| async move { … Ok::<_, E>(()) }).await?`
//! - `Consumer(ch, queues=[q], on_message=on_message)` → `consumer.run(|message| async move { … }).await?`
//! - iterating messages yourself → `while let Some(message) = consumer.recv().await { let message = message?; … }` (`Consumer` is a `Stream`)
//! - `Consumer(..., prefetch_count=10)` / `consumer.qos(prefetch_count=10)` → `.prefetch(10)`
//! - `Consumer(..., tag_prefix='worker-')` → `.tag_prefix("worker-")`
//! - `Consumer(..., no_ack=True)` → `.no_ack(true)`
//! - `Consumer(..., auto_declare=False)` → `.auto_declare(false)`
//! - `Consumer(..., on_decode_error=cb)` → `.on_decode_error(DecodeErrorPolicy::Callback(Arc::new(|message, error| { … })))`
//! - `consumer.cancel()` → `consumer.cancel().await?`
//! - `with Consumer(...):` → a scope: dropping the consumer cancels it and requeues what it buffered
//!
//! # Message
//!
//! - `message.ack()` / `message.reject()` / `message.requeue()` → the same (`message.nack(requeue)` too)
//! - settling twice (`MessageStateError`) → [`Error::MessageState`]
//! - `message.acknowledged` → `message.acknowledged()`
//! - `message.decode()` / `message.payload` → `message.decode::<T>()?` / `message.payload()?`
//! - `message.body` (decompressed) → `message.body()`; the wire bytes: `message.raw_body()`
//! - `message.headers`, `message.properties`, `message.content_type`, `message.content_encoding` → the same, as methods
//! - `message.delivery_info['routing_key']` (and `exchange`, `consumer_tag`, `delivery_tag`, `redelivered`) → `message.routing_key()`, …
//!
//! # Simple queues, RPC, broadcast
//!
//! - `conn.SimpleQueue('jobs')` → `SimpleQueue::new(&conn, "jobs").await?` (`SimpleQueue::from_queue(&conn, queue).build().await?` for a `Queue` of your own; `.serializer(..)`, `.compression(..)`, `.accept(..)`, `.prefetch(..)` on the builder)
//! - `q.put(body, serializer='msgpack', headers={...}, compression='zlib')` → `q.put(&body).serializer("msgpack").header("k", "v").compression("zlib").await?` (confirmed by the broker)
//! - `q.get(timeout=5)` → `q.get(Duration::from_secs(5)).await?`; kombu's `Empty` → `Err(Error::Timeout(_))`; ack with `message.ack()?` as in kombu
//! - `q.get_nowait()` / `q.get(block=False)` → `q.get_nowait().await?` (`None` instead of raising `Empty`)
//! - `q.qsize()` / `len(q)` → `q.len().await?` (or `q.qsize()`); `q.clear()` → `q.clear().await?`; `q.close()` → `q.close().await?`
//! - `conn.SimpleBuffer('progress')` → `SimpleBuffer::new(&conn, "progress").await?` (transient, exclusive, auto-delete, no-ack; the same methods)
//! - `send_reply(exchange='', req=message, msg=reply, producer=producer)` → `send_reply(&producer, &message, &reply)?.await?` (the request's `reply_to`, `correlation_id` and serializer; more properties on the returned `Publish`)
//! - a consumer loop that answers with `send_reply` and acks → `RpcServer::builder(&conn, queue).concurrency(n).build()?.serve(|req: Req, _message| async move { Ok::<_, E>(resp) }).await?`
//! - publish with `reply_to` and `correlation_id`, then `collect_replies(conn, channel, reply_queue)` → `RpcClient::new(&conn).await?.call::<Req, Resp>("queue", &req, timeout).await?` (RabbitMQ's direct reply-to, consumed before the first request: no reply queue; many calls in flight on one client; `Error::Returned` means no queue took the request, `Error::Timeout` no reply)
//! - `Broadcast('news')` → `Broadcast::new("news")`; `Consumer(conn, [Broadcast('news')])` → `Broadcast::new("news").consumer(&conn).consume().await?` (a fresh auto-delete `bcast.<id>` queue per consumer); publishing → `broadcast.producer(&conn).build()?.publish(&body).await?`; `Broadcast('news', queue='q', unique=True)` → `.queue("q").unique(true)`
//! - `kombu.common.uuid()` correlation ids → made by `RpcClient` (a unique prefix per client and a counter)
//!
//! # Workers (`ConsumerMixin`)
//!
//! | kombu | lepus-messaging |
//! |---|---|
//! | `class W(ConsumerMixin)` with `self.connection` | `Worker::connect(uri)` / `Worker::builder(conn, options)` |
//! | `get_consumers(Consumer, channel)` returning `[Consumer(queues, callbacks=[cb])]` | `.handle(builder.consumer(queues), handler)` or `.handle_typed(..)` (the handler gets `(body, message)`), once per consumer |
//! | the callback calls `message.ack()` | return `Ok(())`: acked after the handler; `Err` or a panic: rejected or requeued per `.on_error(..)`, bounded by `.max_attempts(n)` |
//! | `prefetch_count` | `.concurrency(n)`: n handlers at once, prefetch n |
//! | `run()` / `should_stop = True` | `worker.run().await` / `worker.shutdown_handle().shutdown()`; `.stop_on_signals(true)` for SIGTERM and Ctrl-C |
//! | the reconnect loop, `connect_max_retries`, "Connection to broker lost" | lepus's automatic recovery (`lepus::RecoveryPolicy`): the worker keeps running, and reports `WorkerEvent::ConnectionLost` / `ConnectionRevived` |
//! | `on_connection_revived`, `on_consume_ready`, `on_consume_end` | `WorkerEvent::ConnectionRevived`, `ConsumeReady`, `ConsumeEnd` from `worker.events()` |
//! | `on_decode_error` (default: log and **ack**) | the consumer's [`DecodeErrorPolicy`](crate::DecodeErrorPolicy) (default: **reject**, to the dead-letter exchange; `DecodeErrorPolicy::Ack` for kombu's behaviour) |
//! | on exit, consumers cancelled | consumers cancelled, handlers in progress finished (within `.shutdown_timeout`) and settled, then the connections closed (`.keep_connection(true)` keeps it) |
//!
//! `ConsumerProducerMixin`'s `self.producer` (a producer on a second, lazily cloned
//! connection, closed in `on_consume_end`) is `Worker::producer()` /
//! `WorkerBuilder::producer()`: clone the `WorkerProducer` into the handler and call
//! `.producer().await?`. The second connection is opened on first use with the worker's
//! options, so a publisher blocked by the broker never stalls the consumers, and it closes
//! with the worker. [`blocking::Worker`](crate::blocking::Worker) is the same without async,
//! with handlers on a pool of `concurrency` threads.
//!
//! # Pools
//!
//! kombu pools connections and producers because a Python connection serves one thread at a
//! time. Here the types are the pool:
//!
//! - A [`Connection`] is `Clone + Send + Sync` and multiplexes every task of the process over
//!   one socket: make one at start-up and clone it where needed (`kombu.pools.connections` →
//!   a clone). Channels are opened per producer or consumer, not per task.
//! - A [`Producer`] is `Clone + Send + Sync` and spreads concurrent publishes over a bounded
//!   set of channels ([`ProducerBuilder::channels`](crate::ProducerBuilder::channels),
//!   default 1), opened on first use and replaced after a channel error
//!   (`kombu.pools.producers[conn].acquire()` → a clone of one producer). Publishes never
//!   wait for a free channel: they are pipelined on the channels there are.
//! - The limit is the broker's: a connection has at most the negotiated `channel_max`
//!   channels (2,047 unless `ConnectionOptions::channel_max` or the broker says fewer); one more fails with
//!   [`lepus::Error::InvalidArgument`] ("all N channels are in use") instead of kombu's
//!   `ChannelLimitExceeded`. A consumer takes one channel, a producer at most its `channels`.
//! - A second connection is worth it for publishers that must not stall consumers while the
//!   broker blocks publishing (`connection.blocked`), as kombu's `ConsumerProducerMixin` does.
//!
//! # Serialization and compression
//!
//! - `kombu.serialization.registry.register('proto', encoder, decoder, content_type, content_encoding)` → implement [`serializer::Serializer`](crate::serializer::Serializer) and `registry.register(it)`, then `Connection::with_registry`
//! - `accept=['json', 'msgpack']` → `Accept::new(conn.registry(), ["json", "msgpack"])?`
//! - `enable_insecure_serializers(['msgpack'])` → list it in the consumer's [`Accept`]
//! - `kombu.utils.json` type markers (`datetime`, `Decimal`, `UUID`, `bytes`) → decoded into the field's Rust type; sent with the `with`-modules of [`serializer::markers`](crate::serializer::markers)
//! - `compression='gzip'` (a zlib stream, header `application/x-gzip`) → `.compression("zlib")` (or `"gzip"`); bzip2, lzma/xz, brotli and zstd behind cargo features of the same names
//!
//! [`Connection`]: crate::Connection
//! [`Connection::max_message_size`]: crate::Connection::max_message_size
//! [`Producer`]: crate::Producer
//! [`Consumer`]: crate::Consumer
//! [`Message`]: crate::Message
//! [`Accept`]: crate::Accept
//! [`RetryPolicy`]: crate::RetryPolicy
//! [`Publish::pipelined`]: crate::Publish::pipelined
//! [`Error::Nacked`]: crate::Error::Nacked
//! [`Error::Returned`]: crate::Error::Returned
//! [`Error::MessageState`]: crate::Error::MessageState
