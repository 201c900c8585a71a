//! Test helpers the kib crates share, so that no crate copies its own.
//!
//! - [`fixture`]: the offline Debian 12 fixture base image the VM tests boot instead of Rocky
//!   Linux ([`fixture::fixture_image`]), and [`fixture::repo_root`].
//! - [`registry`]: a real local registry as a guard, and [`registry::require`] for tools.
//! - [`images`]: hostile and plain disk images made by `qemu-img`.
//! - [`tools`]: host tools as test assertions ([`tools::run_tool`], [`tools::sha256sum`],
//!   [`tools::files_in`]).

pub mod fixture;
pub mod images;
pub mod registry;
pub mod tools;

pub use fixture::{FixtureError, fixture_image, repo_root};
