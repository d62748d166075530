//! One connection's path: the accept loop, the request head, admission, authentication,
//! the first-flight peek, the ServerHello watch, the tunnel and the plain-HTTP forwarder.
//! Wired together by `app`; shared state is `crate::shared::Shared`.

pub mod admission;
pub mod authority;
pub mod connection;
pub mod handshake;
pub mod http_forward;
pub mod listener;
pub mod parent;
pub mod peek;
pub mod proxy_protocol;
pub mod request;
pub mod transparent;
pub mod tunnel;
