//! `kib generate-key-pair`: writes `cosign.key` (encrypted) and `cosign.pub`, in cosign's
//! format. The password comes from `COSIGN_PASSWORD` or a prompt (asked twice).

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use kib_signer::keys::generate_key_pair;

use crate::cli::{GlobalArgs, OutputFormat};
use crate::error_render::HintExt as _;

#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Write `<PREFIX>.key` and `<PREFIX>.pub`.
    #[arg(long, default_value = "cosign", value_name = "PREFIX")]
    output_key_prefix: PathBuf,
    /// Overwrite existing key files.
    #[arg(long)]
    force: bool,
    /// How to print the written paths on stdout.
    #[arg(long, value_enum, default_value_t)]
    output: OutputFormat,
}

impl Args {
    pub(crate) async fn run(self, _global: &GlobalArgs) -> anyhow::Result<ExitCode> {
        let password = crate::common::signing::password(true)?;
        let prefix = self.output_key_prefix;
        let force = self.force;
        let files =
            tokio::task::spawn_blocking(move || generate_key_pair(&prefix, &password, force))
                .await?
                .hinted()?;
        let mut out = std::io::stdout().lock();
        match self.output {
            OutputFormat::Json => writeln!(out, "{}", serde_json::to_string(&files)?)?,
            OutputFormat::Text => {
                writeln!(out, "{}", files.private_key.display())?;
                writeln!(out, "{}", files.public_key.display())?;
            }
        }
        let _ = writeln!(
            std::io::stderr(),
            "Wrote the private key `{}` and the public key `{}`",
            files.private_key.display(),
            files.public_key.display()
        );
        Ok(ExitCode::SUCCESS)
    }
}
