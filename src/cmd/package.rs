//! `kib package`: the containerDisk as an OCI image layout directory, no registry needed.

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;

use crate::cli::GlobalArgs;
use crate::common::image_args::ImageArgs;

/// Write the containerDisk OCI image layout for a qcow2 (`skopeo copy oci:DIR …` reads it).
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    #[command(flatten)]
    image: ImageArgs,
    /// The OCI layout directory to write.
    #[arg(long, short, value_name = "DIR")]
    output: PathBuf,
}

impl Args {
    pub(crate) async fn run(self, global: &GlobalArgs) -> anyhow::Result<ExitCode> {
        let resolved = self.image.resolve()?;
        let tags = match resolved.tags {
            Ok(t) => t.all(),
            Err(e) => {
                tracing::warn!("no tag in index.json: {e:#}");
                Vec::new()
            }
        };
        let reporter = crate::reporter::PackageReporter::new(global);
        let output = self.output.clone();
        let image = tokio::task::spawn_blocking(move || {
            kib_packager::layout::write_layout(
                &output,
                &resolved.layer,
                &resolved.metadata,
                &tags,
                &reporter,
            )
        })
        .await
        .context("The packaging task failed")??;
        let mut out = std::io::stdout().lock();
        writeln!(out, "{}", image.manifest_digest)?;
        Ok(ExitCode::SUCCESS)
    }
}
