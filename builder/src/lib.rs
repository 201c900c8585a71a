//! The builder: boots a cloud image in QEMU, provisions it over SSH, cleans it and exports a
//! compact qcow2 with a build manifest.
//!
//! The pieces, in the order a build uses them:
//! - [`config`]: `kib.toml` and its overrides;
//! - [`checksum`] and [`cache`]: the base image, verified and cached by checksum (URLs shown
//!   through [`redact`], without credentials);
//! - the VM layer (runner, QMP/QGA, seeds, SSH) is the `kib-vm` crate, shared with
//!   `kib conformance`;
//! - [`provision`]: the provisioners (ansible, shell, file);
//! - [`export`] and [`manifest`]: the output qcow2, its checksum and `build-manifest.json`
//!   (assembled here; the data type is the leaf crate `kib-manifest`);
//! - [`pipeline`]: the pipeline that ties them together, reporting through [`Reporter`].
//!
//! Nothing here prints: progress goes through [`Reporter`], failures are typed errors.

pub mod cache;
pub mod checksum;
pub mod config;
pub mod export;
pub mod manifest;
pub mod pipeline;
pub mod provision;
pub mod redact;
pub mod reporter;

pub use pipeline::{BuildError, BuildOutput, BuildRequest, OnError, build};
pub use reporter::{NullReporter, Reporter, Stage};
