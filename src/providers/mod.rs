//! Providers: the code that observes and changes real systems for each layer of the graph.

pub mod aws;
pub mod cluster;
pub mod kube;
