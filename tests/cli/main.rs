//! CLI tests
#![allow(clippy::print_stderr, clippy::print_stdout)] // tests report timings and logs

mod attest;
mod build;
mod cluster;
mod common;
mod conformance;
mod cosign;
mod publish;
mod registry_tls;
mod release;
mod rocky;
mod sign;
mod verify_hostile;
