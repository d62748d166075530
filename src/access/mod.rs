//! Who may use the proxy, beyond the source allow-list: connection limits (global and per
//! source) and proxy authentication (Basic, argon2, a failure limit that concurrency
//! cannot race).

pub mod auth;
pub mod limits;
