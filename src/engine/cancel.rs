//! Cooperative cancellation of a run: Ctrl-C asks the engine to start nothing new and to let
//! in-flight nodes finish or time out.

use std::sync::Arc;

use tokio::sync::watch;

/// A clonable cancellation flag. All clones observe the same cancellation.
#[derive(Clone, Debug)]
pub struct CancelToken {
    tx: Arc<watch::Sender<bool>>,
}

impl Default for CancelToken {
    fn default() -> Self {
        Self::new()
    }
}

impl CancelToken {
    pub fn new() -> Self {
        CancelToken {
            tx: Arc::new(watch::Sender::new(false)),
        }
    }

    /// Requests cancellation; idempotent.
    pub fn cancel(&self) {
        self.tx.send_replace(true);
    }

    pub fn is_cancelled(&self) -> bool {
        *self.tx.borrow()
    }

    /// Completes once [`CancelToken::cancel`] has been called (at once if it already was).
    /// Cancel-safe: dropping the future only drops a watch receiver.
    pub async fn cancelled(&self) {
        let mut rx = self.tx.subscribe();
        // `wait_for` fails only when the sender is gone; `self` holds it, so this cannot happen
        // while we are awaiting.
        let _ = rx.wait_for(|cancelled| *cancelled).await;
    }

    /// A token cancelled by the first Ctrl-C. A second Ctrl-C exits the process at once with
    /// status 130, leaving an audit record in state "running" that `phoenix history` shows as
    /// interrupted.
    ///
    /// Inside a Tokio runtime the listener is a task on it; outside one it runs on a small
    /// dedicated thread.
    pub fn on_ctrl_c() -> CancelToken {
        let token = CancelToken::new();
        let listener = token.clone();
        match tokio::runtime::Handle::try_current() {
            Ok(handle) => {
                handle.spawn(listener.listen_ctrl_c());
            }
            Err(_) => {
                let spawned = std::thread::Builder::new()
                    .name("phoenix-ctrl-c".into())
                    .spawn(move || {
                        match tokio::runtime::Builder::new_current_thread()
                            .enable_all()
                            .build()
                        {
                            Ok(rt) => rt.block_on(listener.listen_ctrl_c()),
                            Err(err) => {
                                eprintln!("warning: Ctrl-C handling unavailable: {err}")
                            }
                        }
                    });
                if let Err(err) = spawned {
                    eprintln!("warning: Ctrl-C handling unavailable: {err}");
                }
            }
        }
        token
    }

    async fn listen_ctrl_c(self) {
        if let Err(err) = tokio::signal::ctrl_c().await {
            eprintln!("warning: Ctrl-C handling unavailable: {err}");
            return;
        }
        eprintln!(
            "cancelling: no new work will start; waiting for in-flight work (Ctrl-C again to abort)"
        );
        self.cancel();
        if tokio::signal::ctrl_c().await.is_ok() {
            eprintln!("aborted");
            std::process::exit(130);
        }
    }
}
