//! Exchange and queue methods: declare, delete, bind, unbind, purge.

use std::sync::Arc;
use std::time::Instant;

use lepus_wire::method::{exchange as exchange_m, queue as queue_m};
use lepus_wire::{FieldTable, FieldValue, ReplyCode, ShortStr};

use super::conn::short;
use super::{Broker, Fail, Res};
use crate::broker::exchange::{Binding, Destination, Exchange, ExchangeKind};
use crate::broker::queue::{Queue, QueueArgs};
use crate::broker::{show_value, type_name, ConnId, Vhost};

/// The queue arguments RabbitMQ compares when a queue is declared again.
const EQUIVALENT_ARGS: &[&str] = &[
    "x-expires",
    "x-message-ttl",
    "x-dead-letter-exchange",
    "x-dead-letter-routing-key",
    "x-max-length",
    "x-max-length-bytes",
    "x-max-priority",
    "x-overflow",
    "x-queue-mode",
    "x-queue-type",
    "x-single-active-consumer",
    "x-delivery-limit",
    "x-quorum-initial-group-size",
];

pub(crate) fn no_queue(name: &str, vhost: &str) -> Fail {
    Fail::new(
        ReplyCode::NOT_FOUND,
        format!("no queue '{name}' in vhost '{vhost}'"),
    )
}

pub(crate) fn no_exchange(name: &str, vhost: &str) -> Fail {
    Fail::new(
        ReplyCode::NOT_FOUND,
        format!("no exchange '{name}' in vhost '{vhost}'"),
    )
}

pub(crate) fn locked(name: &str, vhost: &str) -> Fail {
    Fail::new(
        ReplyCode::RESOURCE_LOCKED,
        format!("cannot obtain exclusive access to locked queue '{name}' in vhost '{vhost}'. It could be originally declared on another connection or the exclusive property value does not match that of the original declaration."),
    )
}

fn default_exchange_refused() -> Fail {
    Fail::new(
        ReplyCode::ACCESS_REFUSED,
        "operation not permitted on the default exchange",
    )
}

fn reserved(kind: &str, name: &str) -> Fail {
    Fail::new(
        ReplyCode::ACCESS_REFUSED,
        format!("{kind} name '{name}' contains reserved prefix 'amq.*'"),
    )
}

fn inequivalent(
    arg: &str,
    kind: &str,
    name: &str,
    vhost: &str,
    received: String,
    current: String,
) -> Fail {
    Fail::new(
        ReplyCode::PRECONDITION_FAILED,
        format!("inequivalent arg '{arg}' for {kind} '{name}' in vhost '{vhost}': received {received} but current is {current}"),
    )
}

/// Equal as RabbitMQ's equivalence check sees it: integers by value, whatever their width.
fn same_value(a: &FieldValue, b: &FieldValue) -> bool {
    let float = |v: &FieldValue| matches!(v, FieldValue::F32(_) | FieldValue::F64(_));
    match (a.as_i64(), b.as_i64()) {
        (Some(x), Some(y)) if !float(a) && !float(b) => x == y,
        _ => a == b,
    }
}

fn describe(v: Option<&FieldValue>) -> String {
    match v {
        None => "none".to_owned(),
        Some(v) => format!("the value '{}' of type '{}'", show_value(v), type_name(v)),
    }
}

/// A queue `id` may use: it exists and is not another connection's exclusive queue.
pub(crate) fn usable<'a>(
    vhost: &'a mut Vhost,
    vname: &str,
    name: &str,
    id: ConnId,
) -> Result<&'a mut Queue, Fail> {
    let q = vhost
        .queues
        .get_mut(name)
        .ok_or_else(|| no_queue(name, vname))?;
    if q.owner.is_some_and(|owner| owner != id) {
        return Err(locked(name, vname));
    }
    Ok(q)
}

impl Broker {
    pub(crate) fn exchange_declare(
        &mut self,
        id: ConnId,
        channel: u16,
        m: exchange_m::Declare,
    ) -> Res {
        let vname = self.vhost_of(id);
        let name = m.exchange.to_string_lossy().into_owned();
        if name.is_empty() {
            return Err(default_exchange_refused());
        }
        let vhost = self
            .vhosts
            .get_mut(&*vname)
            .ok_or_else(|| no_exchange(&name, &vname))?;
        if m.passive {
            if !vhost.exchanges.contains_key(&name) {
                return Err(no_exchange(&name, &vname));
            }
        } else {
            let kind_name = m.kind.to_string_lossy();
            let Some(kind) = ExchangeKind::parse(&kind_name) else {
                return Err(Fail::new(
                    ReplyCode::COMMAND_INVALID,
                    format!("unknown exchange type '{kind_name}'"),
                ));
            };
            if let Some(x) = vhost.exchanges.get(&name) {
                let checks = [
                    ("type", kind.as_str().to_owned(), x.kind.as_str().to_owned()),
                    ("durable", m.durable.to_string(), x.durable.to_string()),
                    (
                        "auto_delete",
                        m.auto_delete.to_string(),
                        x.auto_delete.to_string(),
                    ),
                    ("internal", m.internal.to_string(), x.internal.to_string()),
                ];
                for (arg, new, old) in checks {
                    if new != old {
                        return Err(inequivalent(
                            arg,
                            "exchange",
                            &name,
                            &vname,
                            format!("'{new}'"),
                            format!("'{old}'"),
                        ));
                    }
                }
                let new = m.arguments.get("alternate-exchange");
                let old = x.arguments.get("alternate-exchange");
                if new != old {
                    return Err(inequivalent(
                        "alternate-exchange",
                        "exchange",
                        &name,
                        &vname,
                        describe(new),
                        describe(old),
                    ));
                }
            } else {
                // Only creating an `amq.` exchange is refused: redeclaring one as it is passes.
                if name.starts_with("amq.") {
                    return Err(reserved("exchange", &name));
                }
                let mut x = Exchange::new(&name, kind);
                x.durable = m.durable;
                x.auto_delete = m.auto_delete;
                x.internal = m.internal;
                x.arguments = m.arguments;
                vhost.exchanges.insert(name, x);
            }
        }
        if !m.nowait {
            self.reply(id, channel, &exchange_m::DeclareOk);
        }
        Ok(())
    }

    pub(crate) fn exchange_delete(
        &mut self,
        id: ConnId,
        channel: u16,
        m: exchange_m::Delete,
        now: Instant,
    ) -> Res {
        let vname = self.vhost_of(id);
        let name = m.exchange.to_string_lossy().into_owned();
        if name.is_empty() {
            return Err(default_exchange_refused());
        }
        if name.starts_with("amq.") {
            return Err(reserved("exchange", &name));
        }
        let vhost = self
            .vhosts
            .get_mut(&*vname)
            .ok_or_else(|| no_exchange(&name, &vname))?;
        if let Some(x) = vhost.exchanges.get(&name) {
            if m.if_unused && !x.bindings.is_empty() {
                return Err(Fail::new(
                    ReplyCode::PRECONDITION_FAILED,
                    format!("exchange '{name}' in vhost '{vname}' in use"),
                ));
            }
            self.delete_exchange(&vname, &name, now);
        }
        if !m.nowait {
            self.reply(id, channel, &exchange_m::DeleteOk);
        }
        Ok(())
    }

    /// Removes an exchange and every binding to it.
    fn delete_exchange(&mut self, vname: &str, name: &str, now: Instant) {
        let Some(vhost) = self.vhosts.get_mut(vname) else {
            return;
        };
        vhost.exchanges.remove(name);
        self.unbind_everywhere(vname, &Destination::Exchange(name.to_owned()), now);
    }

    /// Removes every binding to `gone`; auto-delete exchanges left without bindings go too.
    fn unbind_everywhere(&mut self, vname: &str, gone: &Destination, now: Instant) {
        let Some(vhost) = self.vhosts.get_mut(vname) else {
            return;
        };
        let mut emptied = Vec::new();
        for x in vhost.exchanges.values_mut() {
            let before = x.bindings.len();
            x.bindings.retain(|b| b.destination != *gone);
            if before > 0 && x.bindings.is_empty() && x.auto_delete {
                emptied.push(x.name.clone());
            }
        }
        for x in emptied {
            self.delete_exchange(vname, &x, now);
        }
    }

    /// `exchange.bind` (`bind` true) or `exchange.unbind`.
    pub(crate) fn exchange_bind(
        &mut self,
        id: ConnId,
        channel: u16,
        m: exchange_m::Bind,
        bind: bool,
        now: Instant,
    ) -> Res {
        let vname = self.vhost_of(id);
        let source = m.source.to_string_lossy().into_owned();
        let destination = m.destination.to_string_lossy().into_owned();
        if source.is_empty() || destination.is_empty() {
            return Err(default_exchange_refused());
        }
        let vhost = self
            .vhosts
            .get_mut(&*vname)
            .ok_or_else(|| no_exchange(&source, &vname))?;
        if !vhost.exchanges.contains_key(&destination) {
            return Err(no_exchange(&destination, &vname));
        }
        let binding = Binding {
            destination: Destination::Exchange(destination),
            key: m.routing_key.to_string_lossy().into_owned(),
            arguments: m.arguments,
        };
        self.change_binding(&vname, &source, binding, bind, now)?;
        if !m.nowait {
            if bind {
                self.reply(id, channel, &exchange_m::BindOk);
            } else {
                self.reply(id, channel, &exchange_m::UnbindOk);
            }
        }
        Ok(())
    }

    /// Adds or removes a binding from exchange `source`.
    fn change_binding(
        &mut self,
        vname: &str,
        source: &str,
        binding: Binding,
        bind: bool,
        now: Instant,
    ) -> Res {
        let vhost = self
            .vhosts
            .get_mut(vname)
            .ok_or_else(|| no_exchange(source, vname))?;
        let x = vhost
            .exchanges
            .get_mut(source)
            .ok_or_else(|| no_exchange(source, vname))?;
        if bind {
            if !x.bindings.contains(&binding) {
                x.bindings.push(binding);
            }
        } else {
            let before = x.bindings.len();
            x.bindings.retain(|b| *b != binding);
            if before > 0 && x.bindings.is_empty() && x.auto_delete {
                let name = x.name.clone();
                self.delete_exchange(vname, &name, now);
            }
        }
        Ok(())
    }

    pub(crate) fn queue_declare(
        &mut self,
        id: ConnId,
        channel: u16,
        m: queue_m::Declare,
        now: Instant,
    ) -> Res {
        let vname = self.vhost_of(id);
        let mut name = m.queue.to_string_lossy().into_owned();
        let generated = name.is_empty() && !m.passive;
        if generated {
            name = self.generate_name("amq.gen-");
        } else if name.is_empty() {
            name = self
                .last_queue(id, channel)
                .ok_or_else(|| no_queue("", &vname))?;
        }
        let vhost = self
            .vhosts
            .get_mut(&*vname)
            .ok_or_else(|| no_queue(&name, &vname))?;
        let (message_count, consumer_count) = if m.passive {
            let q = usable(vhost, &vname, &name, id)?;
            q.last_used = now;
            (q.ready_count(), q.consumers.len())
        } else if let Some(q) = vhost.queues.get_mut(&name) {
            if q.owner.is_some_and(|o| o != id) || q.owner.is_some() != m.exclusive {
                return Err(locked(&name, &vname));
            }
            for (arg, new, old) in [
                ("durable", m.durable, q.durable),
                ("auto_delete", m.auto_delete, q.auto_delete),
            ] {
                if new != old {
                    return Err(inequivalent(
                        arg,
                        "queue",
                        &name,
                        &vname,
                        format!("'{new}'"),
                        format!("'{old}'"),
                    ));
                }
            }
            for arg in EQUIVALENT_ARGS {
                let new = m.arguments.get(arg);
                let old = q.arguments.get(arg);
                let (received, current) = match (new, old) {
                    (None, None) => continue,
                    (Some(a), Some(b)) if same_value(a, b) => continue,
                    // Both given: RabbitMQ prints the bare values.
                    (Some(a), Some(b)) => (
                        format!("'{}'", show_value(a)),
                        format!("'{}'", show_value(b)),
                    ),
                    (a, b) => (describe(a), describe(b)),
                };
                return Err(inequivalent(arg, "queue", &name, &vname, received, current));
            }
            q.last_used = now;
            (q.ready_count(), q.consumers.len())
        } else {
            if name.starts_with("amq.") && !generated {
                return Err(reserved("queue", &name));
            }
            // A dead-letter exchange that does not exist yet is accepted, as RabbitMQ does.
            let args = QueueArgs::parse(&m.arguments, m.durable, m.exclusive, m.auto_delete)
                .map_err(|e| Fail::new(ReplyCode::PRECONDITION_FAILED, e.text(&name, &vname)))?;
            let queue = Queue::new(
                Arc::from(name.as_str()),
                m.durable,
                m.auto_delete,
                m.exclusive.then_some(id),
                m.arguments,
                args,
                now,
            );
            vhost.queues.insert(name.clone(), queue);
            (0, 0)
        };
        self.set_last_queue(id, channel, &name);
        if !m.nowait {
            self.reply(
                id,
                channel,
                &queue_m::DeclareOk {
                    queue: short(&name),
                    message_count: message_count as u32,
                    consumer_count: consumer_count as u32,
                },
            );
        }
        Ok(())
    }

    fn last_queue(&self, id: ConnId, channel: u16) -> Option<String> {
        self.conns
            .get(&id)?
            .channels
            .get(&channel)?
            .last_queue
            .clone()
    }

    fn set_last_queue(&mut self, id: ConnId, channel: u16, name: &str) {
        if let Some(ch) = self
            .conns
            .get_mut(&id)
            .and_then(|c| c.channels.get_mut(&channel))
        {
            ch.last_queue = Some(name.to_owned());
        }
    }

    /// The queue a method names, or the channel's last declared queue for an empty name.
    pub(crate) fn queue_name(
        &self,
        id: ConnId,
        channel: u16,
        name: &ShortStr,
    ) -> Result<String, Fail> {
        if name.is_empty() {
            return self
                .last_queue(id, channel)
                .ok_or_else(|| Fail::new(ReplyCode::NOT_FOUND, "no previously declared queue"));
        }
        Ok(name.to_string_lossy().into_owned())
    }

    pub(crate) fn queue_bind(
        &mut self,
        id: ConnId,
        channel: u16,
        m: queue_m::Bind,
        now: Instant,
    ) -> Res {
        self.queue_binding(
            id,
            channel,
            m.queue,
            m.exchange,
            m.routing_key,
            m.arguments,
            true,
            now,
        )?;
        if !m.nowait {
            self.reply(id, channel, &queue_m::BindOk);
        }
        Ok(())
    }

    pub(crate) fn queue_unbind(
        &mut self,
        id: ConnId,
        channel: u16,
        m: queue_m::Unbind,
        now: Instant,
    ) -> Res {
        self.queue_binding(
            id,
            channel,
            m.queue,
            m.exchange,
            m.routing_key,
            m.arguments,
            false,
            now,
        )?;
        self.reply(id, channel, &queue_m::UnbindOk);
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn queue_binding(
        &mut self,
        id: ConnId,
        channel: u16,
        queue: ShortStr,
        exchange: ShortStr,
        key: ShortStr,
        arguments: FieldTable,
        bind: bool,
        now: Instant,
    ) -> Res {
        let vname = self.vhost_of(id);
        let queue = self.queue_name(id, channel, &queue)?;
        let exchange = exchange.to_string_lossy().into_owned();
        if exchange.is_empty() {
            return Err(default_exchange_refused());
        }
        let vhost = self
            .vhosts
            .get_mut(&*vname)
            .ok_or_else(|| no_queue(&queue, &vname))?;
        usable(vhost, &vname, &queue, id)?;
        if !vhost.exchanges.contains_key(&exchange) {
            return Err(no_exchange(&exchange, &vname));
        }
        let binding = Binding {
            destination: Destination::Queue(queue),
            key: key.to_string_lossy().into_owned(),
            arguments,
        };
        self.change_binding(&vname, &exchange, binding, bind, now)
    }

    pub(crate) fn queue_purge(&mut self, id: ConnId, channel: u16, m: queue_m::Purge) -> Res {
        let vname = self.vhost_of(id);
        let name = self.queue_name(id, channel, &m.queue)?;
        let vhost = self
            .vhosts
            .get_mut(&*vname)
            .ok_or_else(|| no_queue(&name, &vname))?;
        let n = usable(vhost, &vname, &name, id)?.purge();
        if !m.nowait {
            self.reply(
                id,
                channel,
                &queue_m::PurgeOk {
                    message_count: n as u32,
                },
            );
        }
        Ok(())
    }

    pub(crate) fn queue_delete_method(
        &mut self,
        id: ConnId,
        channel: u16,
        m: queue_m::Delete,
        now: Instant,
    ) -> Res {
        let vname = self.vhost_of(id);
        let name = self.queue_name(id, channel, &m.queue)?;
        let vhost = self
            .vhosts
            .get_mut(&*vname)
            .ok_or_else(|| no_queue(&name, &vname))?;
        let count = match usable(vhost, &vname, &name, id) {
            Ok(q) => {
                if m.if_unused && !q.consumers.is_empty() {
                    return Err(Fail::new(
                        ReplyCode::PRECONDITION_FAILED,
                        format!("queue '{name}' in vhost '{vname}' in use"),
                    ));
                }
                if m.if_empty && q.ready_count() > 0 {
                    return Err(Fail::new(
                        ReplyCode::PRECONDITION_FAILED,
                        format!("queue '{name}' in vhost '{vname}' not empty"),
                    ));
                }
                let n = q.ready_count();
                self.delete_queue(&vname, &name, now);
                n
            }
            // Deleting a queue that does not exist succeeds, as in RabbitMQ.
            Err(f) if f.code == ReplyCode::NOT_FOUND => 0,
            Err(f) => return Err(f),
        };
        if !m.nowait {
            self.reply(
                id,
                channel,
                &queue_m::DeleteOk {
                    message_count: count as u32,
                },
            );
        }
        Ok(())
    }

    /// Deletes a queue: its bindings go, its consumers are told (`basic.cancel`), its ready
    /// messages are dropped.
    pub(crate) fn delete_queue(&mut self, vname: &str, name: &str, now: Instant) {
        let Some(vhost) = self.vhosts.get_mut(vname) else {
            return;
        };
        let Some(queue) = vhost.queues.remove(name) else {
            return;
        };
        self.unbind_everywhere(vname, &Destination::Queue(name.to_owned()), now);
        for c in queue.consumers {
            let Some(conn) = self.conns.get_mut(&c.conn) else {
                continue;
            };
            let notify = conn.cancel_notify;
            if let Some(ch) = conn.channels.get_mut(&c.channel) {
                ch.consumers.remove(&c.tag);
                if notify && !ch.closing {
                    conn.send(
                        c.channel,
                        &lepus_wire::method::basic::Cancel {
                            consumer_tag: c.tag.clone(),
                            nowait: true,
                        },
                    );
                }
            }
            self.wake(c.conn);
        }
    }
}
