//! Cancellation: what `kib build` and `kib conformance` wait on to stop their VMs and clean
//! up.

/// Completes on Ctrl-C (SIGINT) or SIGTERM (what CI runners send to cancel a job), so that the
/// build can stop QEMU and clean up instead of dying with it running.
pub(crate) async fn interrupted() {
    use tokio::signal::unix::{SignalKind, signal};
    // SIGHUP (the terminal closed) is handled like SIGTERM: stop and clean up (issue #16.6).
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::hangup()),
    ) {
        (Ok(mut term), Ok(mut hup)) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
                _ = hup.recv() => {}
            }
        }
        (Ok(mut term), Err(_)) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        (Err(_), _) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
