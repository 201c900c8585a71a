//! Logging policy: tracing with an EnvFilter. `-v` is `kib=debug`, `-vv` is trace, `-q` shows
//! only errors, and `RUST_LOG` wins over all of them. Logs go to stderr; stdout carries data.

use tracing_subscriber::EnvFilter;

use crate::cli::GlobalArgs;

pub(crate) fn init(global: &GlobalArgs) {
    let default = match (global.quiet, global.verbose) {
        (true, _) => "error",
        (false, 0) => "warn",
        (false, 1) => {
            "info,kib=debug,kib_vm=debug,kib_manifest=debug,kib_builder=debug,kib_packager=debug,kib_signer=debug,kib_conformance=debug"
        }
        (false, _) => {
            "debug,kib=trace,kib_vm=trace,kib_manifest=trace,kib_builder=trace,kib_packager=trace,kib_signer=trace,kib_conformance=trace"
        }
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colours only for a terminal: CI logs and `2> file` get plain text. NO_COLOR wins.
        .with_ansi(
            std::io::IsTerminal::is_terminal(&std::io::stderr())
                && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty()),
        )
        .with_target(global.verbose > 0)
        .without_time()
        .try_init();
}
