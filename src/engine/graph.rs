//! The executable graph: node specifications, the actions providers plug in, and structural validation.

use std::collections::HashMap;
use std::error::Error as StdError;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::wait::NodeCtx;

/// A boxed, sendable future; the same type as `futures::future::BoxFuture`.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The four layers of an environment, in gate order: no node of a layer starts until every node of
/// all lower layers has converged.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Layer {
    Cloud,
    Cluster,
    Addons,
    Apps,
}

impl Layer {
    /// Every layer, in gate order.
    pub const ALL: [Layer; 4] = [Layer::Cloud, Layer::Cluster, Layer::Addons, Layer::Apps];

    /// The lowercase name used on the command line, in events and in reports.
    pub fn as_str(self) -> &'static str {
        match self {
            Layer::Cloud => "cloud",
            Layer::Cluster => "cluster",
            Layer::Addons => "addons",
            Layer::Apps => "apps",
        }
    }

    /// Position in gate order (0 for cloud).
    pub fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for Layer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Error for a layer name that is not one of `cloud`, `cluster`, `addons`, `apps`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown layer `{0}` (expected one of: cloud, cluster, addons, apps)")]
pub struct UnknownLayer(pub String);

impl std::str::FromStr for Layer {
    type Err = UnknownLayer;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Layer::ALL
            .into_iter()
            .find(|l| l.as_str() == s)
            .ok_or_else(|| UnknownLayer(s.to_string()))
    }
}

/// What the engine needs to know about one node; the work itself is its [`Action`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeSpec {
    /// Stable id, e.g. `cloud/subnet/public-a` or `apps/web`.
    pub id: String,
    pub layer: Layer,
    /// Ids of nodes that must succeed before this one starts (same or lower layer).
    pub depends_on: Vec<String>,
    /// Deadline over all attempts of this node, retries and backoff included.
    pub timeout: Duration,
    /// What the node converges, phrased so that "waiting for <description>" reads well.
    pub description: String,
}

impl NodeSpec {
    /// A spec with no dependencies.
    pub fn new(
        id: impl Into<String>,
        layer: Layer,
        timeout: Duration,
        description: impl Into<String>,
    ) -> Self {
        NodeSpec {
            id: id.into(),
            layer,
            depends_on: Vec::new(),
            timeout,
            description: description.into(),
        }
    }

    /// Adds dependencies (builder style).
    pub fn depends_on<I, S>(mut self, deps: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.depends_on.extend(deps.into_iter().map(Into::into));
        self
    }
}

/// One idempotent attempt at converging a node. The engine owns the loop: it retries transient
/// errors with backoff and enforces the node timeout, so an action must not loop or sleep on its
/// own except through [`NodeCtx::wait_until`].
///
/// An attempt may be dropped at an await point when the run timeout expires, so it must leave
/// nothing behind that a later idempotent attempt could not pick up.
pub trait Action: Send + Sync + 'static {
    fn run(&self, ctx: NodeCtx) -> BoxFuture<'static, Result<NodeOutcome, NodeError>>;
}

/// What a successful attempt did.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeOutcome {
    Created,
    Updated,
    Replaced,
    Deleted,
    Unchanged,
    /// Generic success for nodes that check or wait rather than change something.
    Converged,
}

impl NodeOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            NodeOutcome::Created => "created",
            NodeOutcome::Updated => "updated",
            NodeOutcome::Replaced => "replaced",
            NodeOutcome::Deleted => "deleted",
            NodeOutcome::Unchanged => "unchanged",
            NodeOutcome::Converged => "converged",
        }
    }
}

impl fmt::Display for NodeOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Whether retrying the same attempt can help.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ErrorKind {
    /// Throttling, timeouts, not-yet-consistent reads: retried with backoff until the node timeout.
    Transient,
    /// Invalid input, missing permission, a conflict a retry cannot fix: fails the node at once.
    Permanent,
    /// The run was cancelled (Ctrl-C) while the attempt waited: the node ends cancelled, not failed.
    Cancelled,
}

/// The error of one attempt. The message must not contain secret values (see [`crate::report`]).
#[derive(Debug)]
pub struct NodeError {
    pub kind: ErrorKind,
    pub message: String,
    pub source: Option<Box<dyn StdError + Send + Sync>>,
}

impl NodeError {
    pub fn transient(message: impl Into<String>) -> Self {
        NodeError {
            kind: ErrorKind::Transient,
            message: message.into(),
            source: None,
        }
    }

    pub fn permanent(message: impl Into<String>) -> Self {
        NodeError {
            kind: ErrorKind::Permanent,
            message: message.into(),
            source: None,
        }
    }

    /// The attempt stopped because the run was cancelled; the message says what it was doing.
    pub fn cancelled(message: impl Into<String>) -> Self {
        NodeError {
            kind: ErrorKind::Cancelled,
            message: message.into(),
            source: None,
        }
    }

    /// Attaches the underlying cause; it is shown after the message in events and reports.
    pub fn with_source(mut self, source: impl Into<Box<dyn StdError + Send + Sync>>) -> Self {
        self.source = Some(source.into());
        self
    }

    pub fn is_transient(&self) -> bool {
        self.kind == ErrorKind::Transient
    }

    /// The message followed by every cause, joined with ": " (what events and reports show).
    pub fn chain(&self) -> String {
        let mut out = self.message.clone();
        let mut next: Option<&(dyn StdError + 'static)> = self.source.as_deref().map(|e| e as _);
        while let Some(err) = next {
            out.push_str(": ");
            out.push_str(&err.to_string());
            next = err.source();
        }
        out
    }
}

impl fmt::Display for NodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl StdError for NodeError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        self.source.as_deref().map(|e| e as _)
    }
}

/// A structural problem with a graph.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GraphError {
    #[error("duplicate node id `{0}`")]
    DuplicateId(String),
    #[error("node `{node}` depends on unknown node `{dependency}`")]
    UnknownDependency { node: String, dependency: String },
    #[error(
        "node `{node}` (layer {layer}) depends on `{dependency}` in the later layer {dependency_layer}"
    )]
    LaterLayer {
        node: String,
        layer: Layer,
        dependency: String,
        dependency_layer: Layer,
    },
    /// The cycle as a path that returns to its start, e.g. `["a", "b", "a"]`.
    #[error("dependency cycle: {}", .0.join(" -> "))]
    Cycle(Vec<String>),
}

pub(crate) struct Node {
    pub(crate) spec: NodeSpec,
    pub(crate) action: Arc<dyn Action>,
}

/// Nodes and their dependency edges; layer gates are implied by each node's layer.
#[derive(Default)]
pub struct Graph {
    pub(crate) nodes: Vec<Node>,
    index: HashMap<String, usize>,
}

impl fmt::Debug for Graph {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Graph")
            .field(
                "nodes",
                &self.nodes.iter().map(|n| &n.spec).collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl Graph {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a node; dependencies may name nodes added later ([`Graph::validate`] checks them).
    pub fn add(&mut self, spec: NodeSpec, action: Arc<dyn Action>) -> Result<(), GraphError> {
        if self.index.contains_key(&spec.id) {
            return Err(GraphError::DuplicateId(spec.id));
        }
        self.index.insert(spec.id.clone(), self.nodes.len());
        self.nodes.push(Node { spec, action });
        Ok(())
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    pub fn get(&self, id: &str) -> Option<&NodeSpec> {
        self.index.get(id).map(|&i| &self.nodes[i].spec)
    }

    /// The node specs in insertion order.
    pub fn specs(&self) -> impl Iterator<Item = &NodeSpec> {
        self.nodes.iter().map(|n| &n.spec)
    }

    pub(crate) fn position(&self, id: &str) -> Option<usize> {
        self.index.get(id).copied()
    }

    /// Checks that every dependency exists, lies in the same or a lower layer, and that the
    /// dependencies form no cycle. Reports the first problem in insertion order.
    pub fn validate(&self) -> Result<(), GraphError> {
        for node in &self.nodes {
            for dep in &node.spec.depends_on {
                let Some(&d) = self.index.get(dep) else {
                    return Err(GraphError::UnknownDependency {
                        node: node.spec.id.clone(),
                        dependency: dep.clone(),
                    });
                };
                let dep_layer = self.nodes[d].spec.layer;
                if dep_layer > node.spec.layer {
                    return Err(GraphError::LaterLayer {
                        node: node.spec.id.clone(),
                        layer: node.spec.layer,
                        dependency: dep.clone(),
                        dependency_layer: dep_layer,
                    });
                }
            }
        }
        match self.find_cycle() {
            Some(cycle) => Err(GraphError::Cycle(cycle)),
            None => Ok(()),
        }
    }

    /// Iterative depth-first search; a back edge closes a cycle, which is read off the stack.
    fn find_cycle(&self) -> Option<Vec<String>> {
        #[derive(Clone, Copy, PartialEq)]
        enum Mark {
            New,
            OnStack,
            Done,
        }
        let deps: Vec<Vec<usize>> = self
            .nodes
            .iter()
            .map(|n| {
                n.spec
                    .depends_on
                    .iter()
                    .filter_map(|d| self.index.get(d).copied())
                    .collect()
            })
            .collect();
        let mut mark = vec![Mark::New; self.nodes.len()];
        for root in 0..self.nodes.len() {
            if mark[root] != Mark::New {
                continue;
            }
            // (node, index of the next dependency to visit)
            let mut stack: Vec<(usize, usize)> = vec![(root, 0)];
            mark[root] = Mark::OnStack;
            while let Some(top) = stack.last_mut() {
                let (node, next) = *top;
                if next < deps[node].len() {
                    top.1 += 1;
                    let dep = deps[node][next];
                    match mark[dep] {
                        Mark::New => {
                            mark[dep] = Mark::OnStack;
                            stack.push((dep, 0));
                        }
                        Mark::OnStack => {
                            let start = stack.iter().position(|&(n, _)| n == dep).unwrap_or(0);
                            let mut path: Vec<String> = stack[start..]
                                .iter()
                                .map(|&(n, _)| self.nodes[n].spec.id.clone())
                                .collect();
                            path.push(self.nodes[dep].spec.id.clone());
                            return Some(path);
                        }
                        Mark::Done => {}
                    }
                } else {
                    mark[node] = Mark::Done;
                    stack.pop();
                }
            }
        }
        None
    }
}
