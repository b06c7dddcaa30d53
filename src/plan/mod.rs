//! The plan: the desired-state graph of every layer, computed before anything runs.

mod graph;

pub use graph::{build, PlanGraph, PlanNode};
