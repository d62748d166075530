//! `TCP_NODELAY` on the clients' sockets (small TLS records must not wait on Nagle): set
//! once on each listener where accepted sockets inherit it (Linux), instead of once per
//! connection; per connection everywhere else, and whenever a listener could not take it.

use std::sync::atomic::{AtomicU8, Ordering};

use tokio::net::{TcpListener, TcpStream};

/// No listener set up yet.
const UNKNOWN: u8 = 0;
/// Every listener set so far passes `TCP_NODELAY` on to the sockets it accepts.
const INHERITED: u8 = 1;
/// A listener could not take it: set it per connection.
const PER_CONNECTION: u8 = 2;

static STATE: AtomicU8 = AtomicU8::new(UNKNOWN);

/// Sets `TCP_NODELAY` on a client listener, so that the sockets it accepts have it (Linux
/// copies a listener's TCP options to each accepted socket).
pub fn on_listener(listener: &TcpListener) {
    let inherited = cfg!(target_os = "linux")
        && socket2::SockRef::from(listener)
            .set_tcp_nodelay(true)
            .is_ok();
    if inherited {
        let _ = STATE.compare_exchange(UNKNOWN, INHERITED, Ordering::Relaxed, Ordering::Relaxed);
    } else {
        STATE.store(PER_CONNECTION, Ordering::Relaxed);
    }
}

/// Makes sure an accepted client socket has `TCP_NODELAY`: a syscall only when its
/// listener did not pass it on.
pub fn on_client(client: &TcpStream) {
    if STATE.load(Ordering::Relaxed) != INHERITED {
        let _ = client.set_nodelay(true);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn accepted(l: &TcpListener) -> TcpStream {
        let _c = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        l.accept().await.unwrap().0
    }

    #[tokio::test]
    async fn accepted_sockets_have_nodelay_from_their_listener() {
        let plain = TcpListener::bind("127.0.0.1:0").await.unwrap();
        assert!(!accepted(&plain).await.nodelay().unwrap(), "off by default");
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        on_listener(&l);
        let client = accepted(&l).await;
        on_client(&client);
        assert!(client.nodelay().unwrap());
        if cfg!(target_os = "linux") {
            assert_eq!(
                STATE.load(Ordering::Relaxed),
                INHERITED,
                "no call per connection"
            );
        }
    }
}
