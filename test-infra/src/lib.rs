//! Test helpers the kib crates share, so that no crate copies its own.
//!
//! - [`fixture`]: the offline Debian 12 fixture base image the VM tests boot instead of Rocky
//!   Linux ([`fixture::fixture_image`]), and [`fixture::repo_root`].

pub mod fixture;
pub mod registry;

pub use fixture::{FixtureError, fixture_image, repo_root};
