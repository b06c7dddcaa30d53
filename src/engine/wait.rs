//! What an action sees of the engine: its node id, progress reporting, the cancel token, and the
//! one sanctioned way to wait for something (poll with a deadline that names what it waited for).

use std::future::Future;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use super::cancel::CancelToken;
use super::graph::{Layer, NodeError};
use crate::report::events::{Event, EventSink};
use crate::report::format_duration;

/// The result of one poll in [`NodeCtx::wait_for_state`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Check<T> {
    /// The condition holds; the wait returns this value.
    Ready(T),
    /// Not yet; the string is the observed state (e.g. "pending", "2/3 replicas ready"), reported
    /// as progress when it changes and named in the timeout error.
    Waiting(String),
}

/// State the engine shares with the running attempts of one node.
#[derive(Debug, Default)]
pub(crate) struct NodeShared {
    pub(crate) last_progress: Mutex<Option<String>>,
    pub(crate) last_error: Mutex<Option<String>>,
    pub(crate) attempts: AtomicU32,
}

impl NodeShared {
    pub(crate) fn last_progress(&self) -> Option<String> {
        self.last_progress
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    pub(crate) fn last_error(&self) -> Option<String> {
        self.last_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    pub(crate) fn set_last_error(&self, error: String) {
        *self
            .last_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(error);
    }

    pub(crate) fn attempts(&self) -> u32 {
        self.attempts.load(Ordering::SeqCst)
    }
}

/// Handed to every attempt of an [`Action`](super::Action).
#[derive(Clone, Debug)]
pub struct NodeCtx {
    id: Arc<str>,
    layer: Layer,
    events: EventSink,
    cancel: CancelToken,
    shared: Arc<NodeShared>,
}

impl NodeCtx {
    pub(crate) fn new(
        id: &str,
        layer: Layer,
        events: EventSink,
        cancel: CancelToken,
        shared: Arc<NodeShared>,
    ) -> Self {
        NodeCtx {
            id: Arc::from(id),
            layer,
            events,
            cancel,
            shared,
        }
    }

    /// A context outside any engine run, for unit-testing actions: progress goes to `events`.
    pub fn standalone(id: &str, layer: Layer, events: EventSink, cancel: CancelToken) -> Self {
        let shared = Arc::new(NodeShared::default());
        shared.attempts.store(1, Ordering::SeqCst);
        NodeCtx::new(id, layer, events, cancel, shared)
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn layer(&self) -> Layer {
        self.layer
    }

    /// The number of the current attempt, starting at 1.
    pub fn attempt(&self) -> u32 {
        self.shared.attempts()
    }

    /// Reports what the node is doing now. The last message is shown on the node's progress line
    /// and named if the node times out. Never put secret values in it.
    pub fn progress(&self, message: impl Into<String>) {
        let message = message.into();
        *self
            .shared
            .last_progress
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(message.clone());
        self.events.emit(Event::NodeProgress {
            id: self.id.to_string(),
            message,
        });
    }

    /// Records what the node did in the run's audit trail (and shows it as progress): for
    /// actions an operator must be able to account for later. Never put secret values in it.
    pub fn audit(&self, message: impl Into<String>) {
        let message = message.into();
        self.events.emit(Event::NodeAudit {
            id: self.id.to_string(),
            message: message.clone(),
        });
        self.progress(message);
    }

    pub fn last_progress(&self) -> Option<String> {
        self.shared.last_progress()
    }

    /// The run's cancel token. The engine lets in-flight attempts finish after a cancel; an action
    /// may consult it to stop early at a safe point.
    pub fn cancel_token(&self) -> &CancelToken {
        &self.cancel
    }

    pub fn is_cancelled(&self) -> bool {
        self.cancel.is_cancelled()
    }

    /// Polls `check` every `poll_interval` until it returns `Some`, for at most `timeout`; then
    /// fails (permanently) with "timed out after 5m waiting for <what>". Transient errors from
    /// `check` are tolerated until the deadline and named in the timeout error; permanent ones
    /// end the wait at once.
    pub async fn wait_until<T, F, Fut>(
        &self,
        what: &str,
        timeout: Duration,
        poll_interval: Duration,
        mut check: F,
    ) -> Result<T, NodeError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<Option<T>, NodeError>>,
    {
        self.wait_inner(what, timeout, poll_interval, || {
            let fut = check();
            async move {
                fut.await.map(|found| match found {
                    Some(value) => Poll::Ready(value),
                    None => Poll::Waiting(None),
                })
            }
        })
        .await
    }

    /// Like [`NodeCtx::wait_until`], with the observed state reported by the check: each change
    /// is emitted as progress, and the last one is named in the timeout error
    /// ("timed out after 5m waiting for instance i-1 running (last observed: pending)").
    pub async fn wait_for_state<T, F, Fut>(
        &self,
        what: &str,
        timeout: Duration,
        poll_interval: Duration,
        mut check: F,
    ) -> Result<T, NodeError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<Check<T>, NodeError>>,
    {
        self.wait_inner(what, timeout, poll_interval, || {
            let fut = check();
            async move {
                fut.await.map(|checked| match checked {
                    Check::Ready(value) => Poll::Ready(value),
                    Check::Waiting(state) => Poll::Waiting(Some(state)),
                })
            }
        })
        .await
    }

    async fn wait_inner<T, F, Fut>(
        &self,
        what: &str,
        timeout: Duration,
        poll_interval: Duration,
        mut check: F,
    ) -> Result<T, NodeError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<Poll<T>, NodeError>>,
    {
        let poll_interval = poll_interval.max(Duration::from_millis(1));
        self.progress(format!("waiting for {what}"));
        let mut observed: Option<String> = None;
        let polling = async {
            loop {
                let state = match check().await {
                    Ok(Poll::Ready(value)) => return Ok(value),
                    Ok(Poll::Waiting(state)) => state,
                    Err(err) if err.is_transient() => Some(format!("error: {}", err.chain())),
                    Err(err) => return Err(err),
                };
                if let Some(state) = state {
                    if observed.as_deref() != Some(state.as_str()) {
                        self.progress(format!("waiting for {what}: {state}"));
                        observed = Some(state);
                    }
                }
                tokio::time::sleep(poll_interval).await;
            }
        };
        let bounded = tokio::time::timeout(timeout, polling);
        let outcome = tokio::select! {
            // Cancel-safe: dropping the poll loop drops at most one in-flight read; waits only observe.
            outcome = bounded => outcome,
            // Cancel-safe: waiting on the token only drops a watch receiver when it loses.
            () = self.cancel.cancelled() => {
                let mut message = format!("cancelled while waiting for {what}");
                if let Some(state) = self.observed_state(what) {
                    message.push_str(&format!(" (last observed: {state})"));
                }
                return Err(NodeError::cancelled(message));
            }
        };
        match outcome {
            Ok(result) => result,
            Err(_elapsed) => {
                let mut message = format!(
                    "timed out after {} waiting for {what}",
                    format_duration(timeout)
                );
                if let Some(state) = observed {
                    message.push_str(&format!(" (last observed: {state})"));
                }
                Err(NodeError::permanent(message))
            }
        }
    }
}

impl NodeCtx {
    /// The state this node's current wait for `what` last reported, from its progress message.
    fn observed_state(&self, what: &str) -> Option<String> {
        let last = self.last_progress()?;
        last.strip_prefix(&format!("waiting for {what}: "))
            .map(str::to_string)
    }
}

enum Poll<T> {
    Ready(T),
    Waiting(Option<String>),
}
