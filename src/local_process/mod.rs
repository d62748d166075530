//! Which process of this host opened a caller's connection, when the caller runs on the
//! same Linux host as tlspeek (an explicit proxy on 127.0.0.1, or transparent mode with an
//! `iptables -t nat -A OUTPUT -m owner …` redirect). At accept, for loopback and local
//! sources only: the kernel names the socket's inode and uid (`sock_diag`), and a cached
//! inode → pid map of `/proc/*/fd` names the process (its exe, comm, and the user).
//!
//! Cost: a cache hit is one netlink round trip and a look at one process's descriptors.
//! A new socket of a process that called recently is found among that process's
//! descriptors (the last few owners are looked at first), so a busy local client does not
//! cost a walk per connection. Otherwise `/proc` is walked newest process first, stopping
//! at the owner (a new client is among the newest) and remembering every socket seen on
//! the way. Non-local sources never get here.

pub mod sock_diag;

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

/// A local caller's process.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocalProcess {
    pub pid: u32,
    /// `/proc/PID/exe` (empty when unreadable), else its `comm`.
    pub exe: String,
    pub comm: String,
    /// The socket owner's user name (its uid when it has no name).
    pub user: String,
}

/// The inode → pid map, bounded.
const MAX_CACHED: usize = 65_536;

/// How many recent owners are looked at before walking `/proc`.
const RECENT_OWNERS: usize = 16;

/// Descriptors of recent owners read per lookup at most: a local client holding tens of
/// thousands of sockets has its new connections found by a walk instead of costing a read
/// of all its descriptors each.
const MAX_RECENT_LINKS: usize = 4096;

/// Descriptors read by one walk of `/proc` at most.
const MAX_WALK_LINKS: usize = 65_536;

/// Walks that find no owner (a socket of another pid namespace, or of a process tlspeek
/// may not look into, or one closed meanwhile) allowed per second; past that, misses are
/// `unknown` without a walk until the second ends, so such callers cannot make every
/// connection read every descriptor on the host.
const FRUITLESS_WALKS_PER_SECOND: u32 = 8;

#[derive(Default)]
struct Cache {
    by_inode: HashMap<u64, u32>,
    /// The last owners found, most recent first.
    recent: VecDeque<u32>,
    /// The current second of fruitless walks: when it began and how many it has had.
    fruitless: Option<(std::time::Instant, u32)>,
}

impl Cache {
    fn owner_found(&mut self, pid: u32) -> Option<u32> {
        self.recent.retain(|p| *p != pid);
        self.recent.push_front(pid);
        self.recent.truncate(RECENT_OWNERS);
        Some(pid)
    }
}

/// The process namer: one per proxy.
#[derive(Default)]
pub struct LocalProcesses {
    cache: Mutex<Cache>,
    scans: AtomicU64,
}

/// Is the source on this host: loopback, or the address it reached us on?
pub fn is_local(peer: SocketAddr, accepted_on: SocketAddr) -> bool {
    let ip = peer.ip().to_canonical();
    ip.is_loopback() || ip == accepted_on.ip().to_canonical()
}

/// `socket:[12345]` → 12345.
fn socket_inode(link: &std::path::Path) -> Option<u64> {
    let s = link.to_str()?;
    s.strip_prefix("socket:[")?.strip_suffix(']')?.parse().ok()
}

/// The socket inodes a process holds; calls `seen` for each and stops when it says so,
/// or when `budget` descriptors have been read.
fn for_each_socket(pid: u32, budget: &mut usize, mut seen: impl FnMut(u64) -> bool) -> bool {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return false;
    };
    for entry in dir.flatten() {
        if *budget == 0 {
            return false;
        }
        *budget -= 1;
        if let Some(inode) = std::fs::read_link(entry.path())
            .ok()
            .and_then(|l| socket_inode(&l))
            && seen(inode)
        {
            return true;
        }
    }
    false
}

fn user_name(uid: u32) -> String {
    nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
        .ok()
        .flatten()
        .map_or_else(|| uid.to_string(), |u| u.name)
}

fn describe(pid: u32, uid: u32) -> LocalProcess {
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .map(|c| c.trim_end().to_string())
        .unwrap_or_default();
    let exe = std::fs::read_link(format!("/proc/{pid}/exe"))
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_else(|_| comm.clone());
    LocalProcess {
        pid,
        exe,
        comm,
        user: user_name(uid),
    }
}

impl LocalProcesses {
    /// The process that owns the TCP socket `local` ↔ `remote` (as that socket sees them:
    /// the caller's own address, and where it connected to). Blocking: call it off the
    /// async workers.
    pub fn name(&self, local: SocketAddr, remote: SocketAddr) -> Option<LocalProcess> {
        let owner = match sock_diag::lookup(local, remote) {
            Ok(Some(o)) => o,
            Ok(None) => return None,
            Err(e) => {
                tracing::debug!(error = %e, "sock_diag lookup failed");
                return None;
            }
        };
        let pid = self.pid_of(owner.inode)?;
        Some(describe(pid, owner.uid))
    }

    /// Full walks of `/proc` so far (cache misses).
    pub fn scans(&self) -> u64 {
        self.scans.load(Ordering::Relaxed)
    }

    fn pid_of(&self, inode: u64) -> Option<u32> {
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        let mut budget = MAX_RECENT_LINKS;
        if let Some(&pid) = cache.by_inode.get(&inode) {
            if for_each_socket(pid, &mut budget, |i| i == inode) {
                return cache.owner_found(pid);
            }
            cache.by_inode.remove(&inode);
        }
        let recent: Vec<u32> = cache.recent.iter().copied().collect();
        for pid in recent {
            if for_each_socket(pid, &mut budget, |i| i == inode) {
                return cache.owner_found(pid);
            }
        }
        if let Some((since, walks)) = cache.fruitless {
            if since.elapsed() >= std::time::Duration::from_secs(1) {
                cache.fruitless = None;
            } else if walks >= FRUITLESS_WALKS_PER_SECOND {
                return None;
            }
        }
        let mut budget = MAX_WALK_LINKS;
        self.scans.fetch_add(1, Ordering::Relaxed);
        let map = &mut cache.by_inode;
        if map.len() >= MAX_CACHED {
            map.clear();
        }
        let mut pids: Vec<u32> = std::fs::read_dir("/proc")
            .ok()?
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse().ok())
            .collect();
        // Newest first: pids grow until they wrap, and a caller is usually a new process.
        pids.sort_unstable_by(|a, b| b.cmp(a));
        let me = std::process::id();
        for pid in pids.into_iter().filter(|p| *p != me) {
            let found = for_each_socket(pid, &mut budget, |i| {
                if map.len() < MAX_CACHED {
                    map.insert(i, pid);
                }
                i == inode
            });
            if found {
                return cache.owner_found(pid);
            }
            if budget == 0 {
                break;
            }
        }
        let (since, walks) = cache
            .fruitless
            .unwrap_or_else(|| (std::time::Instant::now(), 0));
        cache.fruitless = Some((since, walks + 1));
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_child_process_is_named_by_its_connection() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        // A real other process (bash's /dev/tcp) holds the client socket.
        let mut child = std::process::Command::new("bash")
            .args([
                "-c",
                &format!(
                    "exec 3<>/dev/tcp/127.0.0.1/{port}; read -t 10 go; \
                     exec 4<>/dev/tcp/127.0.0.1/{port}; read -t 10 <&3"
                ),
            ])
            .stdin(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let (_conn, peer) = listener.accept().unwrap();
        let names = LocalProcesses::default();
        let accepted_on = listener.local_addr().unwrap();
        assert!(is_local(peer, accepted_on));
        let p = names.name(peer, accepted_on).expect("named");
        assert_eq!(p.pid, child.id());
        assert_eq!((p.comm.as_str(), p.exe.as_str()), ("bash", "/usr/bin/bash"));
        assert_eq!(p.user, user_name(nix::unistd::getuid().as_raw()));
        let scans = names.scans();
        assert_eq!(
            names.name(peer, accepted_on),
            Some(p),
            "again, from the cache"
        );
        assert_eq!(names.scans(), scans, "a cache hit walks nothing");
        // A second connection of the same process: found among its descriptors, no walk.
        use std::io::Write;
        child.stdin.take().unwrap().write_all(b"go\n").unwrap();
        let (_conn2, peer2) = listener.accept().unwrap();
        assert_eq!(
            names.name(peer2, accepted_on).map(|p| p.pid),
            Some(child.id())
        );
        assert_eq!(
            names.scans(),
            scans,
            "a recent owner's new socket walks nothing"
        );
        let _ = child.kill();
        let _ = child.wait();
        assert!(!is_local(
            "192.0.2.1:5".parse().unwrap(),
            "127.0.0.1:3128".parse().unwrap()
        ));
    }

    #[test]
    fn fruitless_walks_are_bounded_per_second() {
        // The client socket is this test's own: tlspeek never looks into itself, so every
        // walk for it finds nothing.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let accepted_on = listener.local_addr().unwrap();
        let _client = std::net::TcpStream::connect(accepted_on).unwrap();
        let (_conn, peer) = listener.accept().unwrap();
        let names = LocalProcesses::default();
        let started = std::time::Instant::now();
        for _ in 0..20 {
            assert_eq!(names.name(peer, accepted_on), None);
        }
        let walks = names.scans();
        if started.elapsed() < std::time::Duration::from_secs(1) {
            assert_eq!(walks, u64::from(FRUITLESS_WALKS_PER_SECOND));
        } else {
            assert!(walks < 20, "{walks} walks for 20 misses");
        }
    }
}
