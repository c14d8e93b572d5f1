//! The control socket: `reload` and `status` over line-delimited JSON.

use std::path::Path;

/// `stayup reload`: asks the daemon for a reload and prints the outcome.
/// Returns the exit status: 0 committed or unchanged, 1 rejected, 2 unreachable.
pub async fn cli_reload(_config: &Path, _json: bool) -> u8 {
    eprintln!("stayup reload: the control socket is not available in this build");
    2
}

/// `stayup status`: prints the daemon's status. 0, or 2 unreachable.
pub async fn cli_status(_config: &Path, _json: bool) -> u8 {
    eprintln!("stayup status: the control socket is not available in this build");
    2
}
