//! Helpers more than one subcommand uses. Subcommands import these, never each other.

pub(crate) mod image_args;
pub(crate) mod registry_args;
pub(crate) mod signal;
pub(crate) mod signing;
