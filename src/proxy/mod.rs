//! One connection's path, in the order a connection takes it:
//!
//! - `listener`: the accept loop; `connection`: admission at accept, a balancer's PROXY
//!   header (`proxy_protocol`), and the hand-off to the mode's task.
//! - The tasks, each owning its `ConnectionRecord` until the event line: `connect` (the
//!   proxy listener; reads the head with `request`, checks `authority`), `transparent`
//!   (redirected connections; `original_dst`) and `http_forward` (plain HTTP, one record
//!   per request). They fail with `error::ConnError`; `refusal` is the HTTP answer.
//! - `session`: what a task hands to its phases, and the common end (metric, event line).
//! - `upstream`: parent or direct (`parent`, `dial`).
//! - `tunnel`: a STARTTLS port's cleartext prelude (`prelude`), the first-flight peek
//!   (`peek`), its judgement (`first_flight`), the ServerHello tap and the final verdict
//!   (`handshake`), the pumps, the upgrade.
//!
//! Wired together by `app`; shared state is `crate::shared::Shared`.

pub mod authority;
pub mod connect;
pub mod connection;
pub mod dial;
pub mod error;
pub mod first_flight;
pub mod handshake;
pub mod http_forward;
pub mod listener;
pub mod original_dst;
pub mod parent;
pub mod peek;
pub mod prelude;
pub mod proxy_protocol;
pub mod refusal;
pub mod request;
pub mod retired;
pub mod session;
pub mod transparent;
pub mod tunnel;
pub mod upstream;
