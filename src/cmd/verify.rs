//! (being written)

use std::process::ExitCode;

use super::GlobalArgs;

#[derive(Debug, clap::Args)]
pub(crate) struct Args {}

impl Args {
    pub(crate) async fn run(self, _global: &GlobalArgs) -> anyhow::Result<ExitCode> {
        anyhow::bail!("This command is being written")
    }
}
