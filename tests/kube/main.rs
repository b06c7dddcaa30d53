//! phoenix's Kubernetes side against the real control plane (testenv): the provider that applies, waits and
//! prunes, the control-plane gate (with moto, whose instances become the cluster's nodes), and the test bed's own
//! conformance suite.

mod cluster;
mod conformance;
mod provider;
