//! Which reply each synchronous request expects.
//!
//! The JSON spec marks methods synchronous but does not name their replies, so the pairs are
//! listed here from the spec's method descriptions.

use lepus_wire::method::{basic, channel, confirm, exchange, queue, tx};
use lepus_wire::{Method, MethodArgs};

/// An outstanding request and the replies that may answer it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Expected {
    /// The request's name, for error messages.
    pub(crate) request: &'static str,
    replies: &'static [(u16, u16)],
}

impl Expected {
    pub(crate) fn accepts(&self, reply: &Method) -> bool {
        self.accepts_ids(reply.class_id(), reply.method_id())
    }

    pub(crate) fn accepts_ids(&self, class_id: u16, method_id: u16) -> bool {
        self.replies.contains(&(class_id, method_id))
    }
}

const fn ids<M: MethodArgs>() -> (u16, u16) {
    (M::CLASS_ID, M::METHOD_ID)
}

macro_rules! expect {
    ($request:ty => $($reply:ty)|+) => {
        Some(Expected {
            request: <$request as MethodArgs>::NAME,
            replies: const { &[$(ids::<$reply>()),+] },
        })
    };
}

/// The replies `method` waits for, or `None` when it gets no reply (asynchronous or `nowait`).
pub(crate) fn expected(method: &Method) -> Option<Expected> {
    match method {
        Method::ChannelOpen(_) => expect!(channel::Open => channel::OpenOk),
        Method::ChannelFlow(_) => expect!(channel::Flow => channel::FlowOk),
        Method::ChannelClose(_) => expect!(channel::Close => channel::CloseOk),
        Method::ExchangeDeclare(m) if !m.nowait => {
            expect!(exchange::Declare => exchange::DeclareOk)
        }
        Method::ExchangeDelete(m) if !m.nowait => expect!(exchange::Delete => exchange::DeleteOk),
        Method::ExchangeBind(m) if !m.nowait => expect!(exchange::Bind => exchange::BindOk),
        Method::ExchangeUnbind(m) if !m.nowait => expect!(exchange::Unbind => exchange::UnbindOk),
        Method::QueueDeclare(m) if !m.nowait => expect!(queue::Declare => queue::DeclareOk),
        Method::QueueBind(m) if !m.nowait => expect!(queue::Bind => queue::BindOk),
        Method::QueuePurge(m) if !m.nowait => expect!(queue::Purge => queue::PurgeOk),
        Method::QueueDelete(m) if !m.nowait => expect!(queue::Delete => queue::DeleteOk),
        Method::QueueUnbind(_) => expect!(queue::Unbind => queue::UnbindOk),
        Method::BasicQos(_) => expect!(basic::Qos => basic::QosOk),
        Method::BasicConsume(m) if !m.nowait => expect!(basic::Consume => basic::ConsumeOk),
        Method::BasicCancel(m) if !m.nowait => expect!(basic::Cancel => basic::CancelOk),
        Method::BasicGet(_) => expect!(basic::Get => basic::GetOk | basic::GetEmpty),
        Method::BasicRecover(_) => expect!(basic::Recover => basic::RecoverOk),
        Method::TxSelect(_) => expect!(tx::Select => tx::SelectOk),
        Method::TxCommit(_) => expect!(tx::Commit => tx::CommitOk),
        Method::TxRollback(_) => expect!(tx::Rollback => tx::RollbackOk),
        Method::ConfirmSelect(m) if !m.nowait => expect!(confirm::Select => confirm::SelectOk),
        _ => None,
    }
}
