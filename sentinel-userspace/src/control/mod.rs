//! Control: the daemon's local HTTP/JSON API on a Unix socket, and the CLI's client for it.

pub mod api;
pub mod client;
pub mod server;

/// Default control socket.
pub const DEFAULT_SOCKET: &str = "/run/sentinel/sentinel.sock";
