//! `kib conformance`: proves an image works as a Cluster API + KubeVirt node.
//!
//! Two profiles:
//! - [`direct`] (default) boots the image once with QEMU the way KubeVirt does (overlay grown
//!   beyond the image, virtio disk, i6300esb watchdog, guest agent channel, CABPK-shaped user
//!   data on a ConfigDrive as CAPK delivers it) and runs every [`Check`] against that VM;
//! - [`cluster`] renders the manifests for kind + KubeVirt + CDI + Cluster API + CAPK and runs
//!   a workload cluster from the image (needs internet and a container engine).
//!
//! The framework follows youki's `contest`: a [`Check`] has a `name`, a `can_run` that returns
//! the skip reason, and a `run` that returns [`CheckResult::Pass`], `Fail(reason)` or
//! `Skip(reason)`. A skip is never a pass. Results go into a [`Report`] (table, JSON, JUnit).
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use kib_conformance::direct::{self, DirectOptions, NullReporter};
//! let opts = DirectOptions::new("out/node.qcow2", "/tmp/kc");
//! let run = direct::run(opts, &NullReporter).await?;
//! assert!(run.report.passed, "{}", run.report.to_table());
//! # Ok(()) }
//! ```
//!
//! Nothing here prints: progress goes through [`direct::Reporter`], failures are typed errors.

pub mod check;
pub mod checks;
pub mod cluster;
pub mod context;
pub mod direct;
pub mod image;
pub mod manifest;
pub mod report;
pub mod ssh_shell;
pub mod userdata;

#[cfg(test)]
pub(crate) mod testing;

pub use check::{Check, CheckResult, Status};
pub use context::Context;
pub use report::{CheckReport, Report};
