//! The owner of a TCP socket of this host, by its four-tuple: one exact netlink
//! `sock_diag` request (`SOCK_DIAG_BY_FAMILY` with an `inet_diag_req_v2`), answered with
//! the socket's uid and inode. The messages are the kernel's fixed ABI
//! (`linux/inet_diag.h`, `linux/netlink.h`), encoded and decoded here as bytes.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsRawFd;

/// The socket's owner as the kernel reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SocketOwner {
    pub uid: u32,
    pub inode: u64,
}

const SOCK_DIAG_BY_FAMILY: u16 = 20;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLM_F_REQUEST: u16 = 1;
const NLMSG_HDRLEN: usize = 16;
/// `struct inet_diag_req_v2`.
const REQ_LEN: usize = 56;
/// `struct inet_diag_msg`.
const MSG_LEN: usize = 72;
const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;
const IPPROTO_TCP: u8 = 6;
const ENOENT: i32 = 2;

/// Both ends in one family (an IPv4 client seen on a dual-stack listener is IPv4).
fn same_family(local: SocketAddr, remote: SocketAddr) -> Option<(u8, SocketAddr, SocketAddr)> {
    let l = SocketAddr::new(local.ip().to_canonical(), local.port());
    let r = SocketAddr::new(remote.ip().to_canonical(), remote.port());
    match (l.ip(), r.ip()) {
        (IpAddr::V4(_), IpAddr::V4(_)) => Some((AF_INET, l, r)),
        (IpAddr::V6(_), IpAddr::V6(_)) => Some((AF_INET6, l, r)),
        _ => None,
    }
}

fn addr_bytes(ip: IpAddr) -> [u8; 16] {
    let mut out = [0u8; 16];
    match ip {
        IpAddr::V4(a) => out[..4].copy_from_slice(&a.octets()),
        IpAddr::V6(a) => out.copy_from_slice(&a.octets()),
    }
    out
}

/// The request for the TCP socket whose own address is `local` and whose peer is
/// `remote` (both as that socket sees them); `None` when they are of two families.
pub fn request(seq: u32, local: SocketAddr, remote: SocketAddr) -> Option<Vec<u8>> {
    let (family, l, r) = same_family(local, remote)?;
    let len = NLMSG_HDRLEN + REQ_LEN;
    let mut m = Vec::with_capacity(len);
    m.extend_from_slice(&(len as u32).to_ne_bytes());
    m.extend_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    m.extend_from_slice(&NLM_F_REQUEST.to_ne_bytes());
    m.extend_from_slice(&seq.to_ne_bytes());
    m.extend_from_slice(&0u32.to_ne_bytes());
    m.extend_from_slice(&[family, IPPROTO_TCP, 0, 0]);
    m.extend_from_slice(&u32::MAX.to_ne_bytes()); // every TCP state
    m.extend_from_slice(&l.port().to_be_bytes());
    m.extend_from_slice(&r.port().to_be_bytes());
    m.extend_from_slice(&addr_bytes(l.ip()));
    m.extend_from_slice(&addr_bytes(r.ip()));
    m.extend_from_slice(&0u32.to_ne_bytes()); // any interface
    m.extend_from_slice(&[0xff; 8]); // INET_DIAG_NOCOOKIE
    Some(m)
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

/// The kernel's answer: the socket's owner, `None` when it has no such socket (ENOENT),
/// an error for any other failure or a malformed answer.
pub fn parse_reply(mut b: &[u8]) -> io::Result<Option<SocketOwner>> {
    let bad = || io::Error::new(io::ErrorKind::InvalidData, "malformed sock_diag answer");
    while b.len() >= NLMSG_HDRLEN {
        let len = u32_at(b, 0).ok_or_else(bad)? as usize;
        let kind = u16_at(b, 4).ok_or_else(bad)?;
        if len < NLMSG_HDRLEN || len > b.len() {
            return Err(bad());
        }
        let body = &b[NLMSG_HDRLEN..len];
        match kind {
            NLMSG_ERROR => {
                let code = u32_at(body, 0).ok_or_else(bad)? as i32;
                return match -code {
                    0 | ENOENT => Ok(None),
                    e => Err(io::Error::from_raw_os_error(e)),
                };
            }
            NLMSG_DONE => return Ok(None),
            SOCK_DIAG_BY_FAMILY if body.len() >= MSG_LEN => {
                return Ok(Some(SocketOwner {
                    uid: u32_at(body, 64).ok_or_else(bad)?,
                    inode: u64::from(u32_at(body, 68).ok_or_else(bad)?),
                }));
            }
            _ => {}
        }
        // Messages are aligned to 4 bytes.
        let next = (len + 3) & !3;
        b = b.get(next..).unwrap_or(&[]);
    }
    Err(bad())
}

/// Asks the kernel who owns the TCP socket `local` ↔ `remote` (as that socket sees them).
pub fn lookup(local: SocketAddr, remote: SocketAddr) -> io::Result<Option<SocketOwner>> {
    use nix::sys::socket::{
        AddressFamily, MsgFlags, NetlinkAddr, SockFlag, SockProtocol, SockType, recv, sendto,
        setsockopt, socket, sockopt,
    };
    let Some(req) = request(1, local, remote) else {
        return Ok(None);
    };
    let fd = socket(
        AddressFamily::Netlink,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC,
        SockProtocol::NetlinkSockDiag,
    )?;
    // The kernel answers at once; the limit is for a kernel without sock_diag for TCP.
    setsockopt(
        &fd,
        sockopt::ReceiveTimeout,
        &nix::sys::time::TimeVal::new(1, 0),
    )?;
    sendto(
        fd.as_raw_fd(),
        &req,
        &NetlinkAddr::new(0, 0),
        MsgFlags::empty(),
    )?;
    let mut buf = [0u8; 4096];
    let n = recv(fd.as_raw_fd(), &mut buf, MsgFlags::empty())?;
    parse_reply(&buf[..n])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_request_is_the_kernels_layout() {
        let l: SocketAddr = "127.0.0.7:50123".parse().unwrap();
        let r: SocketAddr = "[::ffff:127.0.0.1]:3128".parse().unwrap();
        let m = request(9, l, r).unwrap();
        assert_eq!(m.len(), 72);
        assert_eq!(u32_at(&m, 0), Some(72));
        assert_eq!(u16_at(&m, 4), Some(20));
        assert_eq!(u32_at(&m, 8), Some(9));
        assert_eq!(&m[16..20], &[AF_INET, IPPROTO_TCP, 0, 0]);
        assert_eq!(&m[24..26], &50123u16.to_be_bytes());
        assert_eq!(&m[26..28], &3128u16.to_be_bytes());
        assert_eq!(&m[28..32], &[127, 0, 0, 7]);
        assert_eq!(&m[44..48], &[127, 0, 0, 1]);
        assert_eq!(&m[64..72], &[0xff; 8]);
        let v6: SocketAddr = "[2001:db8::1]:443".parse().unwrap();
        assert!(request(1, l, v6).is_none(), "two families");
    }

    #[test]
    fn answers_owner_absent_error_and_garbage() {
        let mut ok = vec![0u8; NLMSG_HDRLEN + MSG_LEN];
        ok[..4].copy_from_slice(&(88u32).to_ne_bytes());
        ok[4..6].copy_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
        ok[16 + 64..16 + 68].copy_from_slice(&65534u32.to_ne_bytes());
        ok[16 + 68..16 + 72].copy_from_slice(&123456u32.to_ne_bytes());
        assert_eq!(
            parse_reply(&ok).unwrap(),
            Some(SocketOwner {
                uid: 65534,
                inode: 123456
            })
        );
        let err = |code: i32| {
            let mut e = vec![0u8; 36];
            e[..4].copy_from_slice(&36u32.to_ne_bytes());
            e[4..6].copy_from_slice(&NLMSG_ERROR.to_ne_bytes());
            e[16..20].copy_from_slice(&code.to_ne_bytes());
            e
        };
        assert_eq!(parse_reply(&err(-2)).unwrap(), None);
        assert!(parse_reply(&err(-13)).is_err());
        assert!(parse_reply(&ok[..20]).is_err());
        assert!(parse_reply(&[0xff; 40]).is_err());
    }

    #[test]
    fn a_real_socket_of_this_process_is_found() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let owner = lookup(client.local_addr().unwrap(), client.peer_addr().unwrap())
            .unwrap()
            .expect("the kernel knows this socket");
        assert_eq!(owner.uid, nix::unistd::getuid().as_raw());
        let link = format!("socket:[{}]", owner.inode);
        let ours = std::fs::read_dir("/proc/self/fd").unwrap().any(|e| {
            std::fs::read_link(e.unwrap().path()).is_ok_and(|p| p.to_string_lossy() == link)
        });
        assert!(ours, "the inode is one of this process's sockets");
        let gone: SocketAddr = "127.0.0.1:1".parse().unwrap();
        assert_eq!(lookup(gone, listener.local_addr().unwrap()).unwrap(), None);
    }
}
