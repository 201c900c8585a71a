//! The subcommands: one file and one `Args` struct each, with an async `run`.

mod build;
mod conformance;
mod doctor;
mod generate_key_pair;
mod package;
mod publish;
mod sign;
mod verify;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::cli::GlobalArgs;

/// kib — the Kubernetes Image Builder.
///
/// Turns a Rocky Linux 10 cloud image into a Kubernetes node image for Cluster API on
/// KubeVirt: `kib build` makes the qcow2, `kib publish` ships it as a KubeVirt containerDisk
/// to any OCI registry and signs it, `kib verify` checks the signature.
#[derive(Debug, Parser)]
#[command(name = "kib", version, propagate_version = true, max_term_width = 100)]
pub(crate) struct Cli {
    #[command(flatten)]
    pub(crate) global: GlobalArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Build a node image: boot the base cloud image in QEMU, provision it, export a qcow2.
    Build(build::Args),
    /// Prove an image works as a Cluster API + KubeVirt node (QEMU here, or kind + CAPK).
    Conformance(conformance::Args),
    /// Check that this host has what `kib build` needs, and say how to install what is missing.
    Doctor(doctor::Args),
    /// Write the containerDisk OCI image layout for a qcow2 (no registry needed).
    Package(package::Args),
    /// Push a qcow2 as a KubeVirt containerDisk to an OCI registry, and sign it.
    Publish(publish::Args),
    /// Sign a pushed image with a cosign-compatible key.
    Sign(sign::Args),
    /// Verify an image's cosign signature.
    Verify(verify::Args),
    /// Write a new cosign-compatible key pair (`cosign.key`, `cosign.pub`).
    GenerateKeyPair(generate_key_pair::Args),
}

pub(crate) async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let global = cli.global;
    match cli.command {
        Command::Build(args) => args.run(&global).await,
        Command::Conformance(args) => args.run(&global).await,
        Command::Doctor(args) => args.run(&global).await,
        Command::Package(args) => args.run(&global).await,
        Command::Publish(args) => args.run(&global).await,
        Command::Sign(args) => args.run(&global).await,
        Command::Verify(args) => args.run(&global).await,
        Command::GenerateKeyPair(args) => args.run(&global).await,
    }
}
