//! The basic class: publishing and routing, consumers and deliveries, settling, transactions
//! and confirms.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use lepus_wire::method::{basic, confirm, tx};
use lepus_wire::{BasicProperties, ContentHeader, FieldTable, FieldValue, ReplyCode, ShortStr};

use super::conn::{short, ChanConsumer, Conn, Incoming, TxSettle, Unacked};
use super::entities::{no_exchange, no_queue, usable};
use super::{Broker, Fail, Res};
use crate::broker::dead_letter::{self, DeadLetter, Reason};
use crate::broker::exchange::Destination;
use crate::broker::queue::{ConsumerRef, Content, Entry, Overflow, Queue, QueueType};
use crate::broker::{Clock, ConnId, Vhost};

const REPLY_TO: &str = "amq.rabbitmq.reply-to";

/// Output a connection may hold unwritten before its consumers get nothing more: what a
/// socket's buffers are to RabbitMQ, so a client that stops reading leaves the messages in
/// their queues instead of in the broker's output.
pub(crate) const OUT_HIGH_WATER: usize = 256 * 1024;

/// How a delivery is settled.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Settle {
    Ack,
    Requeue,
    Discard,
}

impl Settle {
    pub(crate) fn reject(requeue: bool) -> Self {
        if requeue {
            Self::Requeue
        } else {
            Self::Discard
        }
    }
}

/// A complete message received from a client.
#[derive(Debug)]
pub(crate) struct Published {
    pub(crate) publish: basic::Publish,
    pub(crate) properties: BasicProperties,
    /// The content header frame as received; empty once the properties were changed.
    pub(crate) header: Bytes,
    pub(crate) body: Bytes,
}

/// What enqueueing did with a message.
enum Stored {
    Yes,
    Rejected,
}

impl Broker {
    pub(crate) fn basic_publish(&mut self, id: ConnId, channel: u16, m: basic::Publish) -> Res {
        let ch = self
            .conns
            .get_mut(&id)
            .and_then(|c| c.channels.get_mut(&channel))
            .ok_or_else(|| Fail::new(ReplyCode::CHANNEL_ERROR, "expected 'channel.open'"))?;
        ch.incoming = Some(Incoming {
            publish: m,
            properties: None,
            header: Bytes::new(),
            size: 0,
            body: BytesMut::new(),
            first: None,
        });
        Ok(())
    }

    pub(crate) fn content_header(
        &mut self,
        id: ConnId,
        channel: u16,
        header: ContentHeader,
        raw: Bytes,
    ) -> Res {
        let max = self.config.max_message_size;
        let incoming = self
            .conns
            .get_mut(&id)
            .and_then(|c| c.channels.get_mut(&channel))
            .and_then(|ch| ch.incoming.as_mut())
            .filter(|i| i.properties.is_none())
            .ok_or_else(|| Fail::new(ReplyCode::UNEXPECTED_FRAME, "unexpected content header"))?;
        if header.body_size > max {
            if let Some(ch) = self
                .conns
                .get_mut(&id)
                .and_then(|c| c.channels.get_mut(&channel))
            {
                ch.incoming = None;
            }
            return Err(Fail::new(
                ReplyCode::PRECONDITION_FAILED,
                format!(
                    "message size {} is larger than configured max size {max}",
                    header.body_size
                ),
            ));
        }
        incoming.properties = Some(header.properties);
        incoming.header = raw;
        incoming.size = header.body_size;
        if header.body_size == 0 {
            return match self.content_body(id, channel, Bytes::new())? {
                Some(done) => {
                    let now = self.conns.get(&id).map(|c| c.last_recv);
                    match now {
                        Some(now) => self.publish(id, channel, done, now),
                        None => Ok(()),
                    }
                }
                None => Ok(()),
            };
        }
        Ok(())
    }

    /// Adds a body frame; returns the message once it is complete.
    pub(crate) fn content_body(
        &mut self,
        id: ConnId,
        channel: u16,
        body: Bytes,
    ) -> Result<Option<Published>, Fail> {
        let ch = self
            .conns
            .get_mut(&id)
            .and_then(|c| c.channels.get_mut(&channel))
            .ok_or_else(|| Fail::new(ReplyCode::UNEXPECTED_FRAME, "unexpected content body"))?;
        let incoming = ch
            .incoming
            .as_mut()
            .filter(|i| i.properties.is_some())
            .ok_or_else(|| Fail::new(ReplyCode::UNEXPECTED_FRAME, "unexpected content body"))?;
        let have = incoming.body.len() + incoming.first.as_ref().map_or(0, Bytes::len);
        if (have + body.len()) as u64 > incoming.size {
            return Err(Fail::new(
                ReplyCode::FRAME_ERROR,
                "content body is larger than its header said",
            ));
        }
        if have == 0 && body.len() as u64 == incoming.size {
            incoming.first = Some(body);
        } else {
            if let Some(first) = incoming.first.take() {
                incoming.body.extend_from_slice(&first);
            }
            incoming.body.extend_from_slice(&body);
        }
        let have = incoming.body.len() + incoming.first.as_ref().map_or(0, Bytes::len);
        if (have as u64) < incoming.size {
            return Ok(None);
        }
        let Some(done) = ch.incoming.take() else {
            return Ok(None);
        };
        let body = match done.first {
            Some(b) => b,
            None => done.body.freeze(),
        };
        Ok(Some(Published {
            publish: done.publish,
            properties: done.properties.unwrap_or_default(),
            header: done.header,
            body,
        }))
    }

    /// Routes a complete message, or holds it in the channel's transaction.
    pub(crate) fn publish(&mut self, id: ConnId, channel: u16, p: Published, now: Instant) -> Res {
        let vname = self.vhost_of(id);
        let Published {
            publish,
            mut properties,
            mut header,
            body,
        } = p;
        let exchange = publish.exchange.as_str().unwrap_or_default();
        let vhost = self
            .vhosts
            .get(&*vname)
            .ok_or_else(|| no_exchange(exchange, &vname))?;
        if !exchange.is_empty() {
            let x = vhost
                .exchanges
                .get(exchange)
                .ok_or_else(|| no_exchange(exchange, &vname))?;
            if x.internal {
                return Err(Fail::new(
                    ReplyCode::ACCESS_REFUSED,
                    format!("cannot publish to internal exchange '{exchange}' in vhost '{vname}'"),
                ));
            }
        }
        if properties
            .reply_to
            .as_ref()
            .is_some_and(|r| r.as_bytes() == REPLY_TO.as_bytes())
        {
            let address = self
                .conns
                .get(&id)
                .and_then(|c| c.channels.get(&channel))
                .and_then(|ch| ch.reply_to.as_ref())
                .map(|(_, address)| address.clone())
                .ok_or_else(|| {
                    Fail::new(
                        ReplyCode::PRECONDITION_FAILED,
                        "fast reply consumer does not exist",
                    )
                })?;
            properties.reply_to = Some(short(&address));
            header = Bytes::new();
        }
        if let Some(expiration) = &properties.expiration {
            let text = expiration.to_string_lossy();
            if text.parse::<u64>().is_err() {
                return Err(Fail::new(
                    ReplyCode::PRECONDITION_FAILED,
                    format!("invalid expiration '{text}': {{error,{{not_an_integer,\"{text}\"}}}}"),
                ));
            }
        }
        let ch = self
            .conns
            .get_mut(&id)
            .and_then(|c| c.channels.get_mut(&channel))
            .ok_or_else(|| Fail::new(ReplyCode::CHANNEL_ERROR, "expected 'channel.open'"))?;
        if let Some(tx) = ch.tx.as_mut() {
            tx.publishes.push(Published {
                publish,
                properties,
                header,
                body,
            });
            return Ok(());
        }
        let confirming = ch.confirm;
        if confirming {
            ch.publish_seq += 1;
        }
        let seq = ch.publish_seq;
        let (_, rejected) = self.route_and_store(
            id,
            channel,
            &vname,
            Published {
                publish,
                properties,
                header,
                body,
            },
            now,
        );
        if confirming {
            let conn = self.conns.get_mut(&id);
            if let Some(conn) = conn {
                if rejected {
                    flush_confirms_of(conn, channel, seq - 1);
                    conn.send(
                        channel,
                        &basic::Nack {
                            delivery_tag: seq,
                            multiple: false,
                            requeue: false,
                        },
                    );
                    if let Some(ch) = conn.channels.get_mut(&channel) {
                        ch.confirmed = seq;
                    }
                    self.wake(id);
                }
            }
        }
        Ok(())
    }

    /// Routes a message from channel `channel` of `id` and stores it in the queues it reaches;
    /// returns whether it reached any, and whether a full queue refused it.
    #[allow(clippy::too_many_arguments)]
    fn route_and_store(
        &mut self,
        id: ConnId,
        channel: u16,
        vname: &str,
        message: Published,
        now: Instant,
    ) -> (bool, bool) {
        let Published {
            publish,
            mut properties,
            mut header,
            body,
        } = message;
        let Some(vhost) = self.vhosts.get_mut(vname) else {
            return (false, false);
        };
        let exchange = publish.exchange.as_str().unwrap_or_default();
        let key = publish.routing_key.as_str().unwrap_or_default();
        // Direct reply-to: straight to the waiting consumer.
        if exchange.is_empty() && key.starts_with("amq.rabbitmq.reply-to.") {
            let content = content_of(header, &properties, body, &publish);
            let target = self.reply_to.get(key).copied();
            let delivered = match target {
                Some((conn, ch)) => deliver_reply(&mut self.conns, conn, ch, &content),
                None => false,
            };
            if let Some((conn, _)) = target.filter(|_| delivered) {
                self.wake(conn);
            } else if publish.mandatory {
                self.send_return(id, channel, &content);
            }
            return (delivered, false);
        }
        // Sender-selected distribution: the CC and BCC headers add routing keys, and BCC is
        // taken out of the message.
        let mut targets = std::mem::take(&mut self.scratch);
        targets.clear();
        let headers = properties.headers.as_ref();
        let extra = |name: &str| {
            headers
                .and_then(|h| h.get(name))
                .and_then(FieldValue::as_array)
                .unwrap_or_default()
        };
        let (cc, bcc) = (extra("CC"), extra("BCC"));
        if cc.is_empty() && bcc.is_empty() {
            route(vhost, exchange, &[key], headers, &mut targets);
        } else {
            let keys: Vec<&str> = std::iter::once(key)
                .chain(cc.iter().chain(bcc).filter_map(FieldValue::as_str))
                .collect();
            route(vhost, exchange, &keys, headers, &mut targets);
        }
        if !bcc.is_empty() {
            if let Some(h) = properties.headers.as_mut() {
                h.remove("BCC");
                header = Bytes::new();
            }
        }
        let ttl = properties
            .expiration
            .as_ref()
            .and_then(|e| e.as_str())
            .and_then(|e| e.parse::<u64>().ok())
            .map(Duration::from_millis);
        let content = Arc::new(content_of(header, &properties, body, &publish));
        let template = Entry {
            content,
            seq: 0,
            redelivered: false,
            expires_at: None,
            priority: 0,
            returns: 0,
        };
        let mut rejected = false;
        let unix = self.clock.unix_secs(now);
        for name in &targets {
            let Some(q) = vhost.queues.get_mut(&**name) else {
                continue;
            };
            match store(q, vname, template.clone(), ttl, now, unix, &mut self.dead) {
                Stored::Yes => {
                    if !q.consumers.is_empty() {
                        dispatch(
                            q,
                            &mut self.conns,
                            &mut self.woken,
                            &mut self.dead,
                            vname,
                            self.clock,
                            now,
                        );
                    }
                    // A TTL of 0 that no consumer took at once: gone now, not at the next tick.
                    if ttl.is_some_and(|t| t.is_zero())
                        || q.args.message_ttl.is_some_and(|t| t.is_zero())
                    {
                        while let Some(expired) = q.pop_expired(now) {
                            expire(q, vname, expired, unix, &mut self.dead);
                        }
                    }
                }
                Stored::Rejected => rejected = true,
            }
        }
        let routed = !targets.is_empty();
        self.scratch = targets;
        if !routed && publish.mandatory {
            self.send_return(id, channel, &template.content);
        }
        (routed, rejected)
    }

    fn send_return(&mut self, id: ConnId, channel: u16, content: &Content) {
        if let Some(conn) = self.conns.get_mut(&id) {
            conn.send(
                channel,
                &basic::Return {
                    reply_code: ReplyCode::NO_ROUTE,
                    reply_text: ShortStr::from_static("NO_ROUTE"),
                    exchange: content.exchange.clone(),
                    routing_key: content.routing_key.clone(),
                },
            );
            conn.send_content(channel, content);
        }
        self.wake(id);
    }

    /// Sends the confirms a connection's channels owe, coalesced with `multiple`.
    pub(crate) fn flush_confirms(&mut self, id: ConnId) {
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        let pending: Vec<(u16, u64)> = conn
            .channels
            .iter()
            .filter(|(_, ch)| ch.confirm && ch.publish_seq > ch.confirmed)
            .map(|(id, ch)| (*id, ch.publish_seq))
            .collect();
        if pending.is_empty() {
            return;
        }
        for (channel, upto) in pending {
            flush_confirms_of(conn, channel, upto);
        }
        self.wake(id);
    }

    /// Delivers dead letters and runs deliveries for queues that may have work, until nothing
    /// is left to do.
    pub(crate) fn run_pending(&mut self, now: Instant) {
        loop {
            if !self.dead.is_empty() {
                let letters = std::mem::take(&mut self.dead);
                for letter in letters {
                    self.deliver_dead_letter(letter, now);
                }
                continue;
            }
            let Some((vname, qname)) = self.dirty.pop() else {
                break;
            };
            let Some(q) = self
                .vhosts
                .get_mut(&*vname)
                .and_then(|v| v.queues.get_mut(&*qname))
            else {
                continue;
            };
            dispatch(
                q,
                &mut self.conns,
                &mut self.woken,
                &mut self.dead,
                &vname,
                self.clock,
                now,
            );
        }
    }

    fn deliver_dead_letter(&mut self, letter: DeadLetter, now: Instant) {
        let Some(vhost) = self.vhosts.get_mut(&letter.vhost) else {
            return;
        };
        let mut targets = Vec::new();
        let keys: Vec<&str> = letter.routing_keys.iter().map(String::as_str).collect();
        route(
            vhost,
            &letter.exchange,
            &keys,
            letter.entry.content.properties().headers.as_ref(),
            &mut targets,
        );
        let unix = self.clock.unix_secs(now);
        for name in targets {
            if dead_letter::is_cycle(&letter.entry, &name) {
                continue;
            }
            let Some(q) = vhost.queues.get_mut(&*name) else {
                continue;
            };
            // Dead-lettering took the message's own expiration away: only the queue's applies.
            let entry = letter.entry.clone();
            if let Stored::Yes = store(q, &letter.vhost, entry, None, now, unix, &mut self.dead) {
                dispatch(
                    q,
                    &mut self.conns,
                    &mut self.woken,
                    &mut self.dead,
                    &letter.vhost,
                    self.clock,
                    now,
                );
            }
        }
    }

    pub(crate) fn basic_qos(&mut self, id: ConnId, channel: u16, m: basic::Qos) -> Res {
        if m.prefetch_size != 0 {
            return Err(Fail::new(
                ReplyCode::NOT_IMPLEMENTED,
                format!("prefetch_size!=0 ({})", m.prefetch_size),
            ));
        }
        if let Some(ch) = self
            .conns
            .get_mut(&id)
            .and_then(|c| c.channels.get_mut(&channel))
        {
            if m.global {
                ch.global_prefetch = m.prefetch_count;
            } else {
                ch.prefetch = m.prefetch_count;
            }
        }
        self.reply(id, channel, &basic::QosOk);
        self.redispatch_channel(id, channel);
        Ok(())
    }

    pub(crate) fn basic_consume(
        &mut self,
        id: ConnId,
        channel: u16,
        m: basic::Consume,
        now: Instant,
    ) -> Res {
        let vname = self.vhost_of(id);
        let queue = self.queue_name(id, channel, &m.queue)?;
        let tag = if m.consumer_tag.is_empty() {
            short(&self.generate_name("amq.ctag-"))
        } else {
            m.consumer_tag.clone()
        };
        let ch = self
            .conns
            .get(&id)
            .and_then(|c| c.channels.get(&channel))
            .ok_or_else(|| Fail::new(ReplyCode::CHANNEL_ERROR, "expected 'channel.open'"))?;
        if ch.consumers.contains_key(&tag) || ch.reply_to.as_ref().is_some_and(|(t, _)| *t == tag) {
            return Err(Fail::new(
                ReplyCode::NOT_ALLOWED,
                format!("attempt to reuse consumer tag '{}'", tag.to_string_lossy()),
            ));
        }
        if queue == REPLY_TO {
            if !m.no_ack {
                return Err(Fail::new(
                    ReplyCode::PRECONDITION_FAILED,
                    "reply consumer cannot acknowledge",
                ));
            }
            let address = self.generate_name("amq.rabbitmq.reply-to.");
            self.reply_to.insert(address.clone(), (id, channel));
            if let Some(ch) = self
                .conns
                .get_mut(&id)
                .and_then(|c| c.channels.get_mut(&channel))
            {
                ch.reply_to = Some((tag.clone(), address));
            }
            if !m.nowait {
                self.reply(id, channel, &basic::ConsumeOk { consumer_tag: tag });
            }
            return Ok(());
        }
        let prefetch = ch.prefetch;
        let vhost = self
            .vhosts
            .get_mut(&*vname)
            .ok_or_else(|| no_queue(&queue, &vname))?;
        let q = usable(vhost, &vname, &queue, id)?;
        if q.consumers.iter().any(|c| c.exclusive) || (m.exclusive && !q.consumers.is_empty()) {
            return Err(Fail::new(
                ReplyCode::ACCESS_REFUSED,
                format!("queue '{queue}' in vhost '{vname}' in exclusive use"),
            ));
        }
        let priority = m
            .arguments
            .get("x-priority")
            .and_then(FieldValue::as_i64)
            .unwrap_or(0);
        q.consumers.push(ConsumerRef {
            conn: id,
            channel,
            tag: tag.clone(),
            priority,
            exclusive: m.exclusive,
        });
        q.had_consumer = true;
        q.last_used = now;
        let qname = q.name.clone();
        if let Some(ch) = self
            .conns
            .get_mut(&id)
            .and_then(|c| c.channels.get_mut(&channel))
        {
            ch.consumers.insert(
                tag.clone(),
                ChanConsumer {
                    queue: qname.clone(),
                    no_ack: m.no_ack,
                    prefetch,
                    unacked: 0,
                },
            );
        }
        if !m.nowait {
            self.reply(id, channel, &basic::ConsumeOk { consumer_tag: tag });
        }
        self.dirty.push((vname, qname));
        Ok(())
    }

    pub(crate) fn basic_cancel(
        &mut self,
        id: ConnId,
        channel: u16,
        m: basic::Cancel,
        now: Instant,
    ) -> Res {
        self.remove_consumer(id, channel, &m.consumer_tag, now);
        if !m.nowait {
            self.reply(
                id,
                channel,
                &basic::CancelOk {
                    consumer_tag: m.consumer_tag,
                },
            );
        }
        Ok(())
    }

    /// Removes a consumer from its channel and queue; an auto-delete queue left without
    /// consumers is deleted.
    fn remove_consumer(&mut self, id: ConnId, channel: u16, tag: &ShortStr, now: Instant) {
        let vname = self.vhost_of(id);
        let Some(ch) = self
            .conns
            .get_mut(&id)
            .and_then(|c| c.channels.get_mut(&channel))
        else {
            return;
        };
        if ch.reply_to.as_ref().is_some_and(|(t, _)| t == tag) {
            if let Some((_, address)) = ch.reply_to.take() {
                self.reply_to.remove(&address);
            }
            return;
        }
        let Some(consumer) = ch.consumers.remove(tag) else {
            return;
        };
        // Deliveries in its window stop counting against the channel's global prefetch.
        ch.consumer_unacked = ch.consumer_unacked.saturating_sub(consumer.unacked);
        for u in ch.unacked.values_mut() {
            if u.consumer.as_ref() == Some(tag) {
                u.consumer = None;
            }
        }
        let Some(q) = self
            .vhosts
            .get_mut(&*vname)
            .and_then(|v| v.queues.get_mut(&*consumer.queue))
        else {
            return;
        };
        q.consumers
            .retain(|c| !(c.conn == id && c.channel == channel && c.tag == *tag));
        q.last_used = now;
        if q.consumers.is_empty() && q.auto_delete && q.had_consumer {
            let name = q.name.clone();
            self.delete_queue(&vname, &name, now);
        } else {
            // Single active consumer: the next in line takes over.
            self.dirty.push((vname, consumer.queue));
        }
    }

    pub(crate) fn basic_get(
        &mut self,
        id: ConnId,
        channel: u16,
        m: basic::Get,
        now: Instant,
    ) -> Res {
        let vname = self.vhost_of(id);
        let queue = self.queue_name(id, channel, &m.queue)?;
        let unix = self.clock.unix_secs(now);
        let vhost = self
            .vhosts
            .get_mut(&*vname)
            .ok_or_else(|| no_queue(&queue, &vname))?;
        let q = usable(vhost, &vname, &queue, id)?;
        q.last_used = now;
        while let Some(expired) = q.pop_expired(now) {
            expire(q, &vname, expired, unix, &mut self.dead);
        }
        let entry = q.pop();
        // What the get brought to the head may have expired already.
        while let Some(expired) = q.pop_expired(now) {
            expire(q, &vname, expired, unix, &mut self.dead);
        }
        let remaining = q.ready_count();
        let qname = q.name.clone();
        let quorum = q.args.queue_type == QueueType::Quorum;
        if entry.is_some() && !m.no_ack {
            q.unacked += 1;
        }
        let Some(conn) = self.conns.get_mut(&id) else {
            return Ok(());
        };
        match entry {
            None => conn.send(channel, &basic::GetEmpty),
            Some(entry) => {
                let Some(ch) = conn.channels.get_mut(&channel) else {
                    return Ok(());
                };
                let tag = ch.next_tag;
                ch.next_tag += 1;
                conn.send(
                    channel,
                    &basic::GetOk {
                        delivery_tag: tag,
                        redelivered: entry.redelivered,
                        exchange: entry.content.exchange.clone(),
                        routing_key: entry.content.routing_key.clone(),
                        message_count: remaining as u32,
                    },
                );
                let shown = counted(quorum, &entry);
                let content = shown.as_ref().map_or(&entry.content, |e| &e.content);
                conn.send_content(channel, content);
                if !m.no_ack {
                    if let Some(ch) = conn.channels.get_mut(&channel) {
                        ch.unacked.insert(
                            tag,
                            Unacked {
                                queue: qname,
                                entry,
                                consumer: None,
                            },
                        );
                    }
                }
            }
        }
        self.wake(id);
        Ok(())
    }

    /// `basic.ack`, `basic.nack` and `basic.reject`.
    pub(crate) fn settle(
        &mut self,
        id: ConnId,
        channel: u16,
        tag: u64,
        multiple: bool,
        how: Settle,
        now: Instant,
    ) -> Res {
        let ch = self
            .conns
            .get_mut(&id)
            .and_then(|c| c.channels.get_mut(&channel))
            .ok_or_else(|| Fail::new(ReplyCode::CHANNEL_ERROR, "expected 'channel.open'"))?;
        let taken: Vec<(u64, Unacked)> = if multiple {
            if tag != 0 && !ch.unacked.contains_key(&tag) {
                return Err(unknown_tag(tag));
            }
            let rest = if tag == 0 {
                std::mem::take(&mut ch.unacked)
            } else {
                let rest = ch.unacked.split_off(&(tag + 1));
                std::mem::replace(&mut ch.unacked, rest)
            };
            rest.into_iter().collect()
        } else {
            let u = ch.unacked.remove(&tag).ok_or_else(|| unknown_tag(tag))?;
            vec![(tag, u)]
        };
        for (_, u) in &taken {
            ch.settled(u.consumer.as_ref());
        }
        if let Some(tx) = ch.tx.as_mut() {
            for (tag, u) in taken {
                tx.settles.push((
                    tag,
                    match how {
                        Settle::Ack => TxSettle::Ack(u),
                        Settle::Requeue => TxSettle::Requeue(u),
                        Settle::Discard => TxSettle::Discard(u),
                    },
                ));
            }
            return Ok(());
        }
        for (_, u) in taken {
            self.apply_settle(id, u, how, now);
        }
        self.redispatch_channel(id, channel);
        Ok(())
    }

    /// Acts on one settled delivery in its queue.
    fn apply_settle(&mut self, id: ConnId, u: Unacked, how: Settle, now: Instant) {
        let vname = self.vhost_of(id);
        let unix = self.clock.unix_secs(now);
        let Some(q) = self
            .vhosts
            .get_mut(&*vname)
            .and_then(|v| v.queues.get_mut(&*u.queue))
        else {
            // The queue was deleted meanwhile: settling succeeds and the message is gone.
            return;
        };
        q.unacked = q.unacked.saturating_sub(1);
        match how {
            Settle::Ack => {}
            Settle::Requeue
                if q.args.queue_type == QueueType::Quorum
                    && q.args
                        .delivery_limit
                        .is_some_and(|limit| u64::from(u.entry.returns) >= limit) =>
            {
                // A quorum queue gives up on a message returned more often than its limit.
                let mut entry = u.entry;
                entry.returns += 1;
                self.dead
                    .extend(q.dead_letter(&vname, entry, Reason::DeliveryLimit, unix));
            }
            Settle::Requeue => {
                q.requeue(u.entry);
                // Back at the head over a length limit: drop-head drops it again at once.
                if q.args.overflow.unwrap_or(Overflow::DropHead) == Overflow::DropHead {
                    while q.over_limit() {
                        let Some(dropped) = q.pop_oldest_lowest() else {
                            break;
                        };
                        self.dead
                            .extend(q.dead_letter(&vname, dropped, Reason::MaxLen, unix));
                    }
                }
                self.dirty.push((vname, u.queue));
            }
            Settle::Discard => {
                self.dead
                    .extend(q.dead_letter(&vname, u.entry, Reason::Rejected, unix));
            }
        }
    }

    pub(crate) fn basic_recover(
        &mut self,
        id: ConnId,
        channel: u16,
        requeue: bool,
        reply: bool,
        now: Instant,
    ) -> Res {
        if !requeue {
            return Err(Fail::new(ReplyCode::NOT_IMPLEMENTED, "requeue=false"));
        }
        let Some(ch) = self
            .conns
            .get_mut(&id)
            .and_then(|c| c.channels.get_mut(&channel))
        else {
            return Ok(());
        };
        let all = std::mem::take(&mut ch.unacked);
        for u in all.values() {
            ch.settled(u.consumer.as_ref());
        }
        for (_, u) in all {
            self.apply_settle(id, u, Settle::Requeue, now);
        }
        if reply {
            self.reply(id, channel, &basic::RecoverOk);
        }
        Ok(())
    }

    /// Runs deliveries for every queue the channel consumes from (its window opened).
    pub(crate) fn redispatch_channel(&mut self, id: ConnId, channel: u16) {
        let vname = self.vhost_of(id);
        let Some(ch) = self.conns.get(&id).and_then(|c| c.channels.get(&channel)) else {
            return;
        };
        let mut queues: Vec<Arc<str>> = ch.consumers.values().map(|c| c.queue.clone()).collect();
        queues.sort();
        queues.dedup();
        for q in queues {
            self.dirty.push((vname.clone(), q));
        }
    }

    /// Releases what a closing channel holds: its consumers go, its unacked messages are
    /// requeued, a transaction and a message being received are dropped.
    pub(crate) fn release_channel(&mut self, id: ConnId, channel: u16, now: Instant) {
        let Some(ch) = self
            .conns
            .get_mut(&id)
            .and_then(|c| c.channels.get_mut(&channel))
        else {
            return;
        };
        let tags: Vec<ShortStr> = ch.consumers.keys().cloned().collect();
        let reply = ch.reply_to.as_ref().map(|(t, _)| t.clone());
        let tx = ch.tx.take();
        ch.incoming = None;
        for tag in tags.iter().chain(reply.iter()) {
            self.remove_consumer(id, channel, tag, now);
        }
        let Some(ch) = self
            .conns
            .get_mut(&id)
            .and_then(|c| c.channels.get_mut(&channel))
        else {
            return;
        };
        let mut all: Vec<(u64, Unacked)> = std::mem::take(&mut ch.unacked).into_iter().collect();
        if let Some(tx) = tx {
            for (tag, s) in tx.settles {
                let u = match s {
                    TxSettle::Ack(u) | TxSettle::Requeue(u) | TxSettle::Discard(u) => u,
                };
                all.push((tag, u));
            }
        }
        all.sort_by_key(|(tag, _)| *tag);
        ch.consumer_unacked = 0;
        for (_, u) in all {
            self.apply_settle(id, u, Settle::Requeue, now);
        }
    }

    pub(crate) fn tx_select(&mut self, id: ConnId, channel: u16) -> Res {
        let ch = self.channel_mut(id, channel)?;
        if ch.confirm {
            return Err(Fail::new(
                ReplyCode::PRECONDITION_FAILED,
                "cannot switch from confirm to tx mode",
            ));
        }
        if ch.tx.is_none() {
            ch.tx = Some(Default::default());
        }
        self.reply(id, channel, &tx::SelectOk);
        Ok(())
    }

    pub(crate) fn tx_commit(&mut self, id: ConnId, channel: u16, now: Instant) -> Res {
        let vname = self.vhost_of(id);
        let ch = self.channel_mut(id, channel)?;
        let Some(tx) = ch.tx.as_mut() else {
            return Err(Fail::new(
                ReplyCode::PRECONDITION_FAILED,
                "channel is not transactional",
            ));
        };
        let publishes = std::mem::take(&mut tx.publishes);
        let settles = std::mem::take(&mut tx.settles);
        for message in publishes {
            self.route_and_store(id, channel, &vname, message, now);
        }
        for (_, s) in settles {
            match s {
                TxSettle::Ack(u) => self.apply_settle(id, u, Settle::Ack, now),
                TxSettle::Requeue(u) => self.apply_settle(id, u, Settle::Requeue, now),
                TxSettle::Discard(u) => self.apply_settle(id, u, Settle::Discard, now),
            }
        }
        self.reply(id, channel, &tx::CommitOk);
        self.redispatch_channel(id, channel);
        Ok(())
    }

    pub(crate) fn tx_rollback(&mut self, id: ConnId, channel: u16) -> Res {
        let ch = self.channel_mut(id, channel)?;
        let Some(tx) = ch.tx.as_mut() else {
            return Err(Fail::new(
                ReplyCode::PRECONDITION_FAILED,
                "channel is not transactional",
            ));
        };
        tx.publishes.clear();
        // Settlements are undone: the deliveries are unacked again.
        let settles = std::mem::take(&mut tx.settles);
        for (tag, s) in settles {
            let u = match s {
                TxSettle::Ack(u) | TxSettle::Requeue(u) | TxSettle::Discard(u) => u,
            };
            if let Some(c) = u.consumer.as_ref().and_then(|t| ch.consumers.get_mut(t)) {
                c.unacked += 1;
                ch.consumer_unacked += 1;
            }
            ch.unacked.insert(tag, u);
        }
        self.reply(id, channel, &tx::RollbackOk);
        Ok(())
    }

    pub(crate) fn confirm_select(&mut self, id: ConnId, channel: u16, m: confirm::Select) -> Res {
        let ch = self.channel_mut(id, channel)?;
        if ch.tx.is_some() {
            return Err(Fail::new(
                ReplyCode::PRECONDITION_FAILED,
                "cannot switch from tx to confirm mode",
            ));
        }
        ch.confirm = true;
        if !m.nowait {
            self.reply(id, channel, &confirm::SelectOk);
        }
        Ok(())
    }

    fn channel_mut(&mut self, id: ConnId, channel: u16) -> Result<&mut super::conn::Channel, Fail> {
        self.conns
            .get_mut(&id)
            .and_then(|c| c.channels.get_mut(&channel))
            .ok_or_else(|| Fail::new(ReplyCode::CHANNEL_ERROR, "expected 'channel.open'"))
    }
}

fn unknown_tag(tag: u64) -> Fail {
    Fail::new(
        ReplyCode::PRECONDITION_FAILED,
        format!("unknown delivery tag {tag}"),
    )
}

/// Sends the acks a channel owes up to `upto`: one ack, with `multiple` when it covers more.
fn flush_confirms_of(conn: &mut Conn, channel: u16, upto: u64) {
    let Some(ch) = conn.channels.get_mut(&channel) else {
        return;
    };
    if upto <= ch.confirmed {
        return;
    }
    let multiple = upto > ch.confirmed + 1;
    ch.confirmed = upto;
    conn.send(
        channel,
        &basic::Ack {
            delivery_tag: upto,
            multiple,
        },
    );
}

/// Delivers a direct reply-to message to the channel waiting for it.
fn deliver_reply(
    conns: &mut std::collections::BTreeMap<ConnId, Conn>,
    conn: ConnId,
    channel: u16,
    content: &Content,
) -> bool {
    let Some(c) = conns.get_mut(&conn) else {
        return false;
    };
    let Some(ch) = c.channels.get_mut(&channel) else {
        return false;
    };
    let Some((tag, _)) = ch.reply_to.clone() else {
        return false;
    };
    let delivery_tag = ch.next_tag;
    ch.next_tag += 1;
    c.send(
        channel,
        &basic::Deliver {
            consumer_tag: tag,
            delivery_tag,
            redelivered: false,
            exchange: content.exchange.clone(),
            routing_key: content.routing_key.clone(),
        },
    );
    c.send_content(channel, content);
    true
}

/// A published message's content: its header frame as received when the properties were not
/// changed on the way (`header` is then not empty), encoded again otherwise.
fn content_of(
    header: Bytes,
    properties: &BasicProperties,
    body: Bytes,
    publish: &basic::Publish,
) -> Content {
    let (exchange, key) = (publish.exchange.clone(), publish.routing_key.clone());
    if header.is_empty() {
        Content::new(properties, body, exchange, key)
    } else {
        Content::received(header, properties, body, exchange, key)
    }
}

/// The queues a message published to `exchange` with `keys` reaches: through bindings,
/// exchange-to-exchange bindings and alternate exchanges.
pub(crate) fn route(
    vhost: &Vhost,
    exchange: &str,
    keys: &[&str],
    headers: Option<&FieldTable>,
    out: &mut Vec<Arc<str>>,
) {
    if exchange.is_empty() {
        for key in keys {
            if let Some(q) = vhost.queues.get(*key) {
                if !out.contains(&q.name) {
                    out.push(q.name.clone());
                }
            }
        }
        return;
    }
    let mut visited: Vec<&str> = Vec::new();
    let mut work: Vec<&str> = vec![exchange];
    while let Some(name) = work.pop() {
        if visited.contains(&name) {
            continue;
        }
        visited.push(name);
        let Some(x) = vhost.exchanges.get(name) else {
            continue;
        };
        let before = out.len();
        let mut dests = Vec::new();
        for key in keys {
            x.matches(key, headers, &mut dests);
        }
        let mut onward = false;
        for d in dests {
            match d {
                Destination::Queue(q) => {
                    if let Some(q) = vhost.queues.get(q.as_str()) {
                        if !out.contains(&q.name) {
                            out.push(q.name.clone());
                        }
                    }
                }
                Destination::Exchange(e) => {
                    onward = true;
                    work.push(e.as_str());
                }
            }
        }
        if out.len() == before && !onward {
            if let Some(ae) = x.alternate() {
                work.push(ae);
            }
        }
    }
}

/// Stores a new message in `q`, applying its length limits and TTL.
fn store(
    q: &mut Queue,
    vname: &str,
    mut entry: Entry,
    ttl: Option<Duration>,
    now: Instant,
    unix: u64,
    dead: &mut Vec<DeadLetter>,
) -> Stored {
    q.stamp(&mut entry, ttl, now);
    let overflow = q.args.overflow.unwrap_or(Overflow::DropHead);
    if overflow != Overflow::DropHead && q.would_overflow(entry.size()) {
        if overflow == Overflow::RejectPublishDlx {
            dead.extend(q.dead_letter(vname, entry, Reason::MaxLen, unix));
        }
        return Stored::Rejected;
    }
    q.push(entry);
    while q.over_limit() {
        let Some(dropped) = q.pop_oldest_lowest() else {
            break;
        };
        dead.extend(q.dead_letter(vname, dropped, Reason::MaxLen, unix));
    }
    Stored::Yes
}

fn expire(q: &Queue, vname: &str, entry: Entry, unix: u64, dead: &mut Vec<DeadLetter>) {
    dead.extend(q.dead_letter(vname, entry, Reason::Expired, unix));
}

/// Picks the consumer of `q` to deliver to next: among those with room in their window, the
/// highest priority, round-robin within it. With single active consumer only the first.
fn choose(q: &Queue, conns: &std::collections::BTreeMap<ConnId, Conn>) -> Option<usize> {
    let n = q.consumers.len();
    let has_room = |c: &ConsumerRef| {
        conns
            .get(&c.conn)
            .filter(|conn| conn.out.len() < OUT_HIGH_WATER)
            .and_then(|conn| conn.channels.get(&c.channel))
            .is_some_and(|ch| ch.can_take(&c.tag))
    };
    if q.args.single_active_consumer {
        return q.consumers.first().filter(|c| has_room(c)).map(|_| 0);
    }
    let mut best: Option<(i64, usize)> = None;
    for k in 0..n {
        let i = (q.next_consumer + k) % n;
        let Some(c) = q.consumers.get(i) else {
            continue;
        };
        if best.is_some_and(|(p, _)| p >= c.priority) || !has_room(c) {
            continue;
        }
        best = Some((c.priority, i));
    }
    best.map(|(_, i)| i)
}

/// Delivers ready messages of `q` to its consumers while they have room.
pub(crate) fn dispatch(
    q: &mut Queue,
    conns: &mut std::collections::BTreeMap<ConnId, Conn>,
    woken: &mut Vec<ConnId>,
    dead: &mut Vec<DeadLetter>,
    vname: &str,
    clock: Clock,
    now: Instant,
) {
    while q.ready_count() > 0 && !q.consumers.is_empty() {
        // A message past its TTL at the head is dead, not delivered (strictly past: a message
        // with TTL 0 still goes to a consumer ready for it).
        if q.peek().and_then(|e| e.expires_at).is_some_and(|t| t < now) {
            if let Some(e) = q.pop() {
                expire(q, vname, e, clock.unix_secs(now), dead);
            }
            continue;
        }
        let Some(i) = choose(q, conns) else {
            break;
        };
        let Some(c) = q.consumers.get(i).cloned() else {
            break;
        };
        q.next_consumer = i + 1;
        let Some(entry) = q.pop() else {
            break;
        };
        let Some(conn) = conns.get_mut(&c.conn) else {
            q.requeue(entry);
            break;
        };
        let Some(ch) = conn.channels.get_mut(&c.channel) else {
            q.requeue(entry);
            break;
        };
        let tag = ch.next_tag;
        ch.next_tag += 1;
        let no_ack = ch.consumers.get(&c.tag).is_none_or(|cc| cc.no_ack);
        if !no_ack {
            if let Some(cc) = ch.consumers.get_mut(&c.tag) {
                cc.unacked += 1;
            }
            ch.consumer_unacked += 1;
        }
        match counted(q.args.queue_type == QueueType::Quorum, &entry) {
            Some(shown) => conn.send_deliver(c.channel, &c.tag, tag, &shown),
            None => conn.send_deliver(c.channel, &c.tag, tag, &entry),
        }
        if !no_ack {
            if let Some(ch) = conn.channels.get_mut(&c.channel) {
                ch.unacked.insert(
                    tag,
                    Unacked {
                        queue: q.name.clone(),
                        entry,
                        consumer: Some(c.tag.clone()),
                    },
                );
            }
            q.unacked += 1;
        }
        if !conn.woken {
            conn.woken = true;
            woken.push(c.conn);
        }
    }
}

/// The entry as delivered when it must show more than it holds: a message a quorum queue got
/// back carries `x-delivery-count`, the number of returns.
fn counted(quorum: bool, entry: &Entry) -> Option<Entry> {
    if !quorum || entry.returns == 0 {
        return None;
    }
    let c = &entry.content;
    let mut properties = c.properties();
    properties
        .headers
        .get_or_insert_with(FieldTable::new)
        .insert(
            ShortStr::from_static("x-delivery-count"),
            FieldValue::I64(i64::from(entry.returns)),
        );
    let mut shown = entry.clone();
    shown.content = Arc::new(Content::new(
        &properties,
        c.body.clone(),
        c.exchange.clone(),
        c.routing_key.clone(),
    ));
    Some(shown)
}
