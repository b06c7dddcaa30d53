//! The real `phoenix` binary end to end on moto and the real control plane: what a user types and sees, with exit
//! codes, reports and everything phoenix leaves behind; faults, kills and secrets; and a regression test for each
//! fixed bug.

mod charts;
mod cli;
mod diff;
mod dns;
mod drill;
mod failover;
mod faults;
mod fleet;
mod rebuild;
mod regression;
mod resume;
mod review;
mod secrets;
mod volumes;
mod watch_cli;
