//! tlspeek: an egress forward proxy that peeks every TLS ClientHello, finds legacy
//! (TLS 1.0/1.1, 3DES) callers, and counts them per source.
//!
//! The crate is a pure core (`hello`: bytes in, values out) and a thin async shell
//! around it (`proxy`, `admin`, `telemetry`).
// Lints: `[lints]` in Cargo.toml (unsafe code forbidden; no unwrap, expect or panic outside
// tests), for the library and the binary alike.

pub mod access;
pub mod admin;
pub mod analyze;
pub mod app;
pub mod clock;
pub mod commands;
pub mod config;
pub mod correlate;
pub mod dns;
pub mod hello;
pub mod inventory;
pub mod local_process;
pub mod names;
pub mod net;
pub mod policy;
pub mod proxy;
pub mod secrets;
pub mod shared;
pub mod starttls;
pub mod telemetry;
pub mod upgrade;
pub mod writer_thread;
