//! phoenix's test bed, shared by the integration-test binaries (tests/offline, tests/cloud, tests/kube,
//! tests/system): the servers a test starts on 127.0.0.1 and the clients for them. Every server is started by
//! the test that uses it, on an ephemeral port, and stopped when its guard is dropped.
//!
//! - [`moto`]: the EC2 test bed; [`ec2`]: the one way a test builds an EC2 client for it; [`route53`]: its
//!   hosted zones;
//! - [`control_plane`]: the real Kubernetes control plane (testenv), kube clients and kubectl;
//! - [`fault_proxy`], [`kube_proxy`]: loopback proxies injecting API faults; [`rewrite_proxy`]: one holding a
//!   state moto never reports (a snapshot pending, a Route 53 change PENDING);
//! - [`git`]: hermetic Git repositories, signing keys and a `git daemon`;
//! - [`bed`]: all of them together with the real `phoenix` binary, for end-to-end tests;
//! - [`tools`]: external tools (linters, shells) a test requires.

// `new` starts a server or makes a temporary directory: work to be owned by a test, not a default value.
#![allow(clippy::new_without_default)]

pub mod bed;
pub mod control_plane;
pub mod ec2;
pub mod fault_proxy;
pub mod git;
pub mod kube_proxy;
pub mod moto;
pub mod rewrite_proxy;
pub mod route53;
pub mod tools;

use std::path::{Path, PathBuf};

/// The repository's root (this crate lives in `crates/testkit`).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("the repository root exists")
}
