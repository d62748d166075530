//! Stream adapters for the upgrade path: TLS libraries want `AsyncRead + AsyncWrite`
//! values, while a tunnel's sockets are shared (`&TcpStream`) by the tasks that already use
//! them; and the client's ClientHello has already been read (peeked), so OpenSSL must see
//! those held bytes first, then the socket.

use std::io;
use std::net::Shutdown;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// A shared socket as an async stream, driven by readiness + `try_read`/`try_write`.
pub struct SharedStream<'a>(pub &'a TcpStream);

impl AsyncRead for SharedStream<'_> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            ready!(self.0.poll_read_ready(cx))?;
            match self.0.try_read(buf.initialize_unfilled()) {
                Ok(n) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

impl AsyncWrite for SharedStream<'_> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        loop {
            ready!(self.0.poll_write_ready(cx))?;
            match self.0.try_write(data) {
                Ok(n) => return Poll::Ready(Ok(n)),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // ENOTCONN (the peer is already gone) is not an error worth reporting here.
        let _ = socket2::SockRef::from(self.0).shutdown(Shutdown::Write);
        Poll::Ready(Ok(()))
    }
}

/// Reads `prefix` first, then the stream; writes go to the stream.
pub struct PrefixedStream<'a> {
    prefix: Vec<u8>,
    pos: usize,
    inner: SharedStream<'a>,
}

impl<'a> PrefixedStream<'a> {
    pub fn new(prefix: Vec<u8>, inner: &'a TcpStream) -> PrefixedStream<'a> {
        PrefixedStream {
            prefix,
            pos: 0,
            inner: SharedStream(inner),
        }
    }
}

impl AsyncRead for PrefixedStream<'_> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if let Some(rest) = self.prefix.get(self.pos..).filter(|r| !r.is_empty()) {
            let n = rest.len().min(buf.remaining());
            buf.put_slice(rest.get(..n).unwrap_or_default());
            self.pos += n;
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for PrefixedStream<'_> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, data)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn prefix_then_socket() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let client = tokio::spawn(async move {
            let mut c = TcpStream::connect(addr).await.unwrap();
            c.write_all(b" world").await.unwrap();
            let mut back = [0u8; 2];
            c.read_exact(&mut back).await.unwrap();
            back
        });
        let (s, _) = l.accept().await.unwrap();
        let mut p = PrefixedStream::new(b"hello".to_vec(), &s);
        let mut got = vec![0u8; 11];
        p.read_exact(&mut got).await.unwrap();
        assert_eq!(got, b"hello world");
        p.write_all(b"ok").await.unwrap();
        assert_eq!(&client.await.unwrap(), b"ok");
    }
}
