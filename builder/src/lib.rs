//! The builder: boots a cloud image in QEMU, provisions it over SSH, cleans it and exports a
//! compact qcow2 with a build manifest.
//!
//! The pieces, in the order a build uses them:
//! - [`config`]: `kib.toml` and its overrides;
//! - [`checksum`] and [`cache`]: the base image, verified and cached by checksum;
//! - [`seed`]: cloud-init seeds (NoCloud for builds, ConfigDrive as CAPK delivers user data);
//! - [`vm`]: the VM runner interface and its QEMU implementation, driven over [`qmp`];
//! - [`ssh`]: the russh client (ephemeral keys, host key pinning, timeouts);
//! - [`provision`]: the provisioners (ansible, shell, file);
//! - [`export`] and [`manifest`]: the output qcow2, its checksum and `build-manifest.json`;
//! - [`build`]: the pipeline that ties them together, reporting through [`Reporter`].
//!
//! Nothing here prints: progress goes through [`Reporter`], failures are typed errors.

pub mod build;
pub mod cache;
pub mod checksum;
pub mod config;
pub mod export;
pub mod manifest;
pub mod provision;
pub mod qmp;
pub mod reporter;
pub mod seed;
pub mod ssh;
pub mod vm;

pub use build::{BuildError, BuildOutput, BuildRequest, OnError, build};
pub use reporter::{NullReporter, Reporter, Stage};
