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
    /// The signal handler is installed before this returns, so a Ctrl-C right after start is
    /// not lost. Inside a Tokio runtime the listener is a task on it; outside one it runs on a
    /// small dedicated thread. If the handler cannot be installed, a warning is printed and
    /// Ctrl-C keeps its default effect.
    pub fn on_ctrl_c() -> CancelToken {
        let token = CancelToken::new();
        let listener = token.clone();
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            match Interrupts::install() {
                Ok(interrupts) => {
                    handle.spawn(listener.listen(interrupts));
                }
                Err(err) => eprintln!("warning: Ctrl-C handling unavailable: {err}"),
            }
            return token;
        }
        let (installed_tx, installed_rx) = std::sync::mpsc::channel();
        let spawned = std::thread::Builder::new()
            .name("phoenix-ctrl-c".into())
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build();
                let runtime = match runtime {
                    Ok(runtime) => runtime,
                    Err(err) => {
                        let _ = installed_tx.send(Err(err));
                        return;
                    }
                };
                runtime.block_on(async move {
                    match Interrupts::install() {
                        Ok(interrupts) => {
                            let _ = installed_tx.send(Ok(()));
                            listener.listen(interrupts).await;
                        }
                        Err(err) => {
                            let _ = installed_tx.send(Err(err));
                        }
                    }
                });
            });
        let installed = match spawned {
            Ok(_) => installed_rx
                .recv()
                .unwrap_or_else(|_| Err(std::io::Error::other("listener thread ended"))),
            Err(err) => Err(err),
        };
        if let Err(err) = installed {
            eprintln!("warning: Ctrl-C handling unavailable: {err}");
        }
        token
    }

    async fn listen(self, mut interrupts: Interrupts) {
        if !interrupts.next().await {
            return;
        }
        eprintln!(
            "cancelling: no new work will start; waiting for in-flight work (Ctrl-C again to abort)"
        );
        self.cancel();
        if interrupts.next().await {
            eprintln!("aborted");
            std::process::exit(130);
        }
    }
}

/// SIGINT (Ctrl-C) deliveries, registered synchronously.
#[cfg(unix)]
struct Interrupts(tokio::signal::unix::Signal);

#[cfg(unix)]
impl Interrupts {
    /// Must run inside a Tokio runtime context.
    fn install() -> std::io::Result<Self> {
        use tokio::signal::unix::{signal, SignalKind};
        signal(SignalKind::interrupt()).map(Interrupts)
    }

    /// Waits for the next Ctrl-C; false if no more can arrive.
    async fn next(&mut self) -> bool {
        self.0.recv().await.is_some()
    }
}

/// Ctrl-C deliveries where only `tokio::signal::ctrl_c` exists (registered on first wait).
#[cfg(not(unix))]
struct Interrupts;

#[cfg(not(unix))]
impl Interrupts {
    fn install() -> std::io::Result<Self> {
        Ok(Interrupts)
    }

    async fn next(&mut self) -> bool {
        tokio::signal::ctrl_c().await.is_ok()
    }
}
