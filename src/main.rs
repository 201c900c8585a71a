//! `kib`, the Kubernetes Image Builder command line.
//!
//! This crate is the CLI only: argument parsing (`cli.rs`, `cmd/`, with the helpers several
//! subcommands share in `common/`), progress drawing (`reporter.rs`) and the error renderer
//! (`error_render.rs`). All the work happens in the library crates.

mod cli;
mod cmd;
mod common;
mod error_render;
mod logging;
mod reporter;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = cmd::Cli::parse();
    logging::init(&cli.global);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(err) => {
            return error_render::render(
                &anyhow::Error::new(err).context("Failed to start the async runtime"),
            );
        }
    };
    match runtime.block_on(cmd::run(cli)) {
        Ok(code) => code,
        Err(err) => error_render::render(&err),
    }
}
