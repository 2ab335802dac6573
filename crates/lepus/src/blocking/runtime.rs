//! The background I/O thread: a current-thread tokio runtime that runs the connection's driver
//! tasks while the user's threads do something else.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use tokio::runtime::Handle;
use tokio::sync::oneshot;

use crate::error::{Error, Result};

/// Owns the runtime thread of one blocking connection.
///
/// The thread sits in `Runtime::block_on` until [`shutdown`](Self::shutdown): that call is what
/// drives the runtime's socket and timer drivers, so the reader and writer tasks (heartbeats,
/// deliveries, confirms) make progress whether or not a user thread is inside a blocking call.
/// User threads enter the runtime with [`Handle::block_on`], which polls the call's future on
/// the user's thread and relies on this thread for I/O and timers (the arrangement tokio
/// documents for `Handle::block_on` on a current-thread runtime).
pub(super) struct Io {
    handle: Handle,
    /// Tells the thread to close the connection it is given (if any) and stop.
    stop: Mutex<Option<oneshot::Sender<Option<crate::Connection>>>>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl Io {
    /// Starts the runtime thread.
    pub(super) fn start() -> Result<Self> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| Error::Io(Arc::new(e)))?;
        let handle = runtime.handle().clone();
        let (stop, stopped) = oneshot::channel::<Option<crate::Connection>>();
        let thread = std::thread::Builder::new()
            .name("lepus-io".into())
            .spawn(move || {
                runtime.block_on(async move {
                    if let Ok(Some(conn)) = stopped.await {
                        // Flushes what was published (for as long as the socket keeps taking
                        // bytes), then waits for close-ok. Nobody is left to return an error
                        // to, so a loss is reported through `tracing`.
                        if let Err(e) = conn.close().await {
                            tracing::warn!(error = %e, "closing a dropped connection failed");
                        }
                    }
                });
                // Dropping the runtime here drops the driver tasks of the closed connection.
            })
            .map_err(|e| Error::Io(Arc::new(e)))?;
        Ok(Self {
            handle,
            stop: Mutex::new(Some(stop)),
            thread: Mutex::new(Some(thread)),
        })
    }

    /// Runs `future` to completion on the calling thread, inside this runtime.
    ///
    /// # Panics
    ///
    /// When called from an asynchronous execution context (inside a tokio task or
    /// `block_on`); tokio detects this and panics at the caller's location, since every public
    /// blocking method is `#[track_caller]`.
    #[track_caller]
    pub(super) fn block_on<F: Future>(&self, future: F) -> F::Output {
        self.handle.block_on(future)
    }

    /// Spawns a background task on the runtime; never blocks and never panics, so it is safe
    /// in `Drop`.
    pub(super) fn spawn<F>(&self, future: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        drop(self.handle.spawn(future));
    }

    /// Closes `conn` gracefully on the runtime thread, then stops the thread and waits for it.
    /// Later calls do nothing.
    pub(super) fn shutdown(&self, conn: Option<crate::Connection>) {
        let stop = self.stop.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(stop) = stop {
            let _ = stop.send(conn);
        }
        let thread = self.thread.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(thread) = thread {
            // Joining our own thread would never return; it cannot happen (no task on the
            // runtime owns a blocking handle), but be safe.
            if thread.thread().id() != std::thread::current().id() {
                let _ = thread.join();
            }
        }
    }
}

impl Drop for Io {
    fn drop(&mut self) {
        self.shutdown(None);
    }
}
