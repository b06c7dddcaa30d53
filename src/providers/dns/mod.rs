//! The DNS cutover on Route 53: the records `spec.dns` declares, pointed at the deployment's
//! instances as the last step of a rebuild and waited for until in sync; ownership by a TXT
//! mark next to each name; drift; and the teardown of the records a deployment owns.
//! See docs/dns.md.

mod apply;
mod client;
pub mod records;

pub use apply::{
    copy_suffix, cutover_nodes, cutover_specs, delete_node, drift, read_name, read_zone,
    resolve_zone, DnsOptions, DnsTarget, Zone, DELETE_NODE,
};
pub use client::{connect, DnsError, Route53, CONTROL_PLANE_REGION};
