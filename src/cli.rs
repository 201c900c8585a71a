//! The options every subcommand shares: [`GlobalArgs`] and the `--output` [`OutputFormat`].
//! A leaf: `cmd/`, `logging.rs` and `reporter.rs` import it; it imports none of them.

use clap::{Args, ValueEnum};

/// Options every subcommand takes.
#[derive(Debug, Args)]
pub(crate) struct GlobalArgs {
    /// Show more: `-v` for debug logs, `-vv` for trace. `RUST_LOG` overrides both.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub(crate) verbose: u8,
    /// Show only errors.
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    pub(crate) quiet: bool,
    /// Never draw progress bars (they are also hidden when stderr is not a terminal).
    #[arg(long, global = true, env = "KIB_NO_PROGRESS", value_parser = clap::builder::FalseyValueParser::new())]
    pub(crate) no_progress: bool,
}

/// How results are written to stdout.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, ValueEnum)]
pub(crate) enum OutputFormat {
    /// For people.
    #[default]
    Text,
    /// One JSON document, for CI.
    Json,
}
