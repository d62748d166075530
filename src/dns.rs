//! Reverse DNS (PTR) names of sources, for people who think in host names. Lookups are
//! asynchronous and never on a connection's critical path: a connection asks for its
//! source's name at accept and uses whatever the cache holds when it writes its record.
//! Names are forward-confirmed (the name must resolve back to the address), validated as
//! host names, cached for `cache_ttl`, and bounded: a fixed number of lookups in flight
//! and of cache entries. PTR names are shown beside the IP; they never choose a rule and
//! never replace a configured `[[sources]]` name.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;

use crate::names::HostName;
use crate::telemetry::Metrics;

/// Lookups in flight at most (each may hold a blocking thread for the resolver's timeout).
const MAX_IN_FLIGHT: usize = 8;
const MAX_ENTRIES: usize = 10_000;
/// A lookup taking longer is abandoned (and its address cached as unnamed).
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(3);

enum Entry {
    Pending,
    Done {
        name: Option<String>,
        expires: Instant,
    },
}

pub struct ReverseDns {
    cache: Mutex<HashMap<IpAddr, Entry>>,
    ttl: Duration,
    slots: Arc<Semaphore>,
    metrics: Arc<Metrics>,
}

impl ReverseDns {
    pub fn new(ttl: Duration, metrics: Arc<Metrics>) -> Arc<ReverseDns> {
        Arc::new(ReverseDns {
            cache: Mutex::new(HashMap::new()),
            ttl,
            slots: Arc::new(Semaphore::new(MAX_IN_FLIGHT)),
            metrics,
        })
    }

    /// The cached, confirmed name of `ip`, if known now.
    pub fn cached(&self, ip: IpAddr) -> Option<String> {
        let ip = ip.to_canonical();
        let cache = self.cache.lock().ok()?;
        match cache.get(&ip) {
            Some(Entry::Done { name, expires }) if *expires > Instant::now() => name.clone(),
            _ => None,
        }
    }

    /// Starts a lookup of `ip` in the background unless one is cached or running. Never
    /// waits; when every slot is busy the lookup is simply not made this time.
    pub fn lookup_later(self: &Arc<Self>, ip: IpAddr) {
        let ip = ip.to_canonical();
        // The cache first: most connections come from a source already looked up.
        let permit = {
            let Ok(mut cache) = self.cache.lock() else {
                return;
            };
            match cache.get(&ip) {
                Some(Entry::Pending) => return,
                Some(Entry::Done { expires, .. }) if *expires > Instant::now() => return,
                _ => {}
            }
            let Ok(permit) = self.slots.clone().try_acquire_owned() else {
                return;
            };
            if cache.len() >= MAX_ENTRIES {
                let now = Instant::now();
                cache.retain(|_, e| match e {
                    Entry::Pending => true,
                    Entry::Done { expires, .. } => *expires > now,
                });
                if cache.len() >= MAX_ENTRIES {
                    return;
                }
            }
            cache.insert(ip, Entry::Pending);
            permit
        };
        let this = self.clone();
        tokio::spawn(async move {
            // The permit moves into the blocking call: a resolver that hangs keeps its slot
            // until it returns, so hung lookups can never pile up threads.
            let lookup = tokio::task::spawn_blocking(move || {
                let _permit = permit;
                confirmed_name(ip)
            });
            let (name, result) = match tokio::time::timeout(LOOKUP_TIMEOUT, lookup).await {
                Ok(Ok(r)) => r,
                _ => (None, "timeout"),
            };
            this.metrics.ptr_lookups.with_label_values(&[result]).inc();
            if let Ok(mut cache) = this.cache.lock() {
                cache.insert(
                    ip,
                    Entry::Done {
                        name,
                        expires: Instant::now() + this.ttl,
                    },
                );
            }
        });
    }
}

/// PTR lookup, then forward confirmation. Returns the name (if confirmed) and a result label.
fn confirmed_name(ip: IpAddr) -> (Option<String>, &'static str) {
    let Ok(raw) = dns_lookup::lookup_addr(&ip) else {
        return (None, "none");
    };
    let Some(name) = HostName::parse(&raw) else {
        return (None, "none");
    };
    match dns_lookup::lookup_host(name.as_str()) {
        Ok(addrs) if addrs.iter().any(|a| a.to_canonical() == ip) => {
            (Some(name.to_string()), "found")
        }
        _ => (None, "unconfirmed"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn loopback_resolves_and_confirms_through_the_system_resolver() {
        let m = Arc::new(Metrics::new(100, Duration::from_secs(60)).unwrap());
        let dns = ReverseDns::new(Duration::from_secs(60), m.clone());
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        assert_eq!(dns.cached(ip), None);
        dns.lookup_later(ip);
        let end = Instant::now() + Duration::from_secs(5);
        while m.ptr_lookups.with_label_values(&["found"]).get()
            + m.ptr_lookups.with_label_values(&["none"]).get()
            + m.ptr_lookups.with_label_values(&["unconfirmed"]).get()
            == 0
        {
            assert!(Instant::now() < end, "lookup never finished");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // /etc/hosts maps 127.0.0.1 to localhost on Debian.
        assert_eq!(dns.cached(ip).as_deref(), Some("localhost"));
    }
}

/// Addresses of the watched destinations, so a caller that sends no SNI (Windows XP/2003
/// SChannel, Java 6 — the worst legacy callers) is still labelled with the watched name its
/// original destination belongs to, rather than `other`. Exact patterns are resolved in the
/// background every few minutes; `*.` patterns cannot be, and are left out.
#[derive(Default)]
pub struct WatchedAddresses {
    map: arc_swap::ArcSwap<HashMap<IpAddr, HostName>>,
}

/// How often the watched names are resolved again.
pub const WATCHED_REFRESH: Duration = Duration::from_secs(300);

impl WatchedAddresses {
    pub fn name_of(&self, ip: IpAddr) -> Option<HostName> {
        self.map.load().get(&ip.to_canonical()).cloned()
    }

    /// Resolves every exact watched name at once (each lookup bounded to 5 s) and swaps
    /// the map in.
    pub async fn refresh(&self, patterns: &crate::names::HostPatterns) {
        let mut lookups = tokio::task::JoinSet::new();
        for p in &patterns.0 {
            if let crate::names::HostPattern::Exact(name) = p {
                let name = name.clone();
                lookups.spawn(async move {
                    let host = name.as_str().to_string();
                    let lookup = tokio::net::lookup_host((host, 443));
                    let ips: Vec<IpAddr> =
                        match tokio::time::timeout(Duration::from_secs(5), lookup).await {
                            Ok(Ok(addrs)) => addrs.map(|a| a.ip().to_canonical()).collect(),
                            _ => Vec::new(),
                        };
                    (name, ips)
                });
            }
        }
        let mut map = HashMap::new();
        while let Some(Ok((name, ips))) = lookups.join_next().await {
            for ip in ips {
                map.entry(ip).or_insert_with(|| name.clone());
            }
        }
        self.map.store(Arc::new(map));
    }
}
