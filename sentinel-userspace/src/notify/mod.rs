//! Telling people and systems: alert sinks (JSON lines, webhook) and token revocation at the
//! identity provider.

pub mod alerts;
pub mod http;
pub mod revoke;
