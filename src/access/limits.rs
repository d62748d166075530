//! Connection limits: `max_connections` in all and `max_connections_per_source` per
//! address. Taken without waiting at accept (a refused client is answered 503 at once);
//! resized in place on reload, so the counts of open connections survive a reload.

use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

pub struct Limits {
    open: AtomicUsize,
    max: AtomicUsize,
    /// Open connections per source (hashbrown's seeded hasher: a lookup on every accept
    /// and close costs a fraction of SipHash's).
    per_source: Mutex<hashbrown::HashMap<IpAddr, usize>>,
    max_per_source: AtomicUsize,
}

/// Held for the life of a connection; frees its slots when dropped.
pub struct Permit {
    limits: Arc<Limits>,
    ip: IpAddr,
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.limits.open.fetch_sub(1, Ordering::AcqRel);
        if let Ok(mut m) = self.limits.per_source.lock() {
            if let Some(n) = m.get_mut(&self.ip) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    m.remove(&self.ip);
                }
            }
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
pub enum LimitHit {
    Global,
    PerSource,
}

impl Limits {
    pub fn new(max_connections: usize, max_per_source: usize) -> Arc<Limits> {
        Arc::new(Limits {
            open: AtomicUsize::new(0),
            max: AtomicUsize::new(max_connections),
            per_source: Mutex::new(hashbrown::HashMap::new()),
            max_per_source: AtomicUsize::new(max_per_source),
        })
    }

    /// New bounds for new connections; open ones keep their slots.
    pub fn resize(&self, max_connections: usize, max_per_source: usize) {
        self.max.store(max_connections, Ordering::Release);
        self.max_per_source.store(max_per_source, Ordering::Release);
    }

    /// Takes a slot for `ip` without waiting.
    pub fn try_acquire(self: &Arc<Self>, ip: IpAddr) -> Result<Permit, LimitHit> {
        let ip = ip.to_canonical();
        let mut m = self.per_source.lock().map_err(|_| LimitHit::Global)?;
        let max = self.max.load(Ordering::Acquire);
        if self.open.fetch_add(1, Ordering::AcqRel) >= max {
            self.open.fetch_sub(1, Ordering::AcqRel);
            return Err(LimitHit::Global);
        }
        let n = m.entry(ip).or_insert(0);
        if *n >= self.max_per_source.load(Ordering::Acquire) {
            self.open.fetch_sub(1, Ordering::AcqRel);
            if *n == 0 {
                m.remove(&ip);
            }
            return Err(LimitHit::PerSource);
        }
        *n += 1;
        Ok(Permit {
            limits: self.clone(),
            ip,
        })
    }

    pub fn open(&self) -> usize {
        self.open.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_source_and_global_limits_and_resize() {
        let l = Limits::new(3, 2);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "::ffff:10.0.0.2".parse().unwrap();
        let p1 = l.try_acquire(a).unwrap();
        let _p2 = l.try_acquire(a).unwrap();
        assert_eq!(l.try_acquire(a).err(), Some(LimitHit::PerSource));
        let _p3 = l.try_acquire(b).unwrap();
        assert_eq!(l.try_acquire(b).err(), Some(LimitHit::Global));
        drop(p1);
        let _p4 = l.try_acquire(a).unwrap();
        assert_eq!(l.per_source.lock().unwrap().len(), 2);
        assert_eq!(l.open(), 3);
        // Reload: lower bounds apply to new connections, open ones stay counted.
        l.resize(2, 1);
        assert_eq!(
            l.try_acquire("10.0.0.3".parse().unwrap()).err(),
            Some(LimitHit::Global)
        );
        l.resize(10, 1);
        assert_eq!(l.try_acquire(a).err(), Some(LimitHit::PerSource));
        assert!(l.try_acquire("10.0.0.3".parse().unwrap()).is_ok());
    }
}
