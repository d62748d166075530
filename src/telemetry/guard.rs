//! Cardinality guard for metrics labelled by source and destination.
//!
//! Sources are strangers' addresses: without a bound, a scan or a large network turns
//! `/metrics` into millions of series. The guard keeps at most `max` series per metric and
//! reserves a quarter of them for legacy series, because finding legacy callers is the
//! point: a new legacy caller is never folded away. When the whole budget is full, the
//! least recently updated non-legacy series is evicted to make room; when every series is
//! legacy, a source that has no series yet still gets its own, and the source holding the
//! most series gives up its least recently updated one (so one client flooding distinct
//! watched names cannot hide a newcomer; its own excess folds into `other`). Non-legacy series from
//! unnamed sources fold into `source="other"` when their share is used up. Every fold and
//! every drop is counted in `tlspeek_label_overflow_total{metric}`. Series not updated for
//! `idle_expiry` are removed.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{Gauge, GaugeVec, IntCounter, IntCounterVec, Opts};

/// The label value that folded sources get.
pub const OTHER: &str = "other";

/// Labels of one observation. `source` is always the first label of a guarded metric.
pub struct Labels<'a> {
    /// Label values, `source` first.
    pub values: &'a [&'a str],
    /// A legacy series (kept first).
    pub legacy: bool,
    /// `source` is a per-IP value (foldable); named sources and "other" are bounded by config.
    pub source_is_ip: bool,
}

/// One series: when it was last updated, and its handle in the metric vector (an update
/// of a known series neither allocates nor looks the series up a second time).
struct Series<H> {
    last_used: Instant,
    legacy: bool,
    handle: H,
}

/// Label values as borrowed, to look a series up without building its owned key: hashes
/// as the `Vec<String>` key does (a slice of strings, length first).
struct View<'a>(&'a [&'a str]);

impl Hash for View<'_> {
    fn hash<S: Hasher>(&self, state: &mut S) {
        self.0.hash(state);
    }
}

impl hashbrown::Equivalent<Vec<String>> for View<'_> {
    fn equivalent(&self, key: &Vec<String>) -> bool {
        self.0.len() == key.len() && self.0.iter().zip(key).all(|(a, b)| *a == b.as_str())
    }
}

struct Budget<H> {
    series: hashbrown::HashMap<Vec<String>, Series<H>>,
    non_legacy: usize,
    /// Series per `source` label value.
    per_source: HashMap<String, usize>,
}

impl<H> Budget<H> {
    fn source_series(&self, source: &str) -> usize {
        self.per_source.get(source).copied().unwrap_or(0)
    }

    /// The handle of a known series, marked as used now.
    fn touch(&mut self, values: &[&str], legacy: bool, now: Instant) -> Option<&H> {
        let s = self.series.get_mut(&View(values))?;
        s.last_used = now;
        s.legacy |= legacy;
        Some(&s.handle)
    }

    fn forget(&mut self, key: &[String], legacy: bool) {
        if !legacy {
            self.non_legacy = self.non_legacy.saturating_sub(1);
        }
        if let Some(src) = key.first() {
            if let Some(n) = self.per_source.get_mut(src) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    self.per_source.remove(src);
                }
            }
        }
    }
}

/// The bookkeeping shared by guarded counters and gauges; `H` is the handle of one series
/// in the metric vector.
struct Guard<H> {
    name: String,
    max: usize,
    legacy_reserve: usize,
    idle_expiry: Duration,
    budget: Mutex<Budget<H>>,
    overflow: IntCounter,
}

impl<H: Clone> Guard<H> {
    fn new(name: String, max: usize, idle_expiry: Duration, overflow: IntCounter) -> Guard<H> {
        Guard {
            name,
            max,
            legacy_reserve: (max / 4).max(1),
            idle_expiry,
            budget: Mutex::new(Budget {
                series: hashbrown::HashMap::new(),
                non_legacy: 0,
                per_source: HashMap::new(),
            }),
            overflow,
        }
    }

    /// The series an observation goes to, as its handle; `None` when it is dropped.
    /// `make` creates a new series in the metric vector; `remove` deletes an evicted one.
    fn admit(
        &self,
        labels: &Labels<'_>,
        now: Instant,
        make: impl Fn(&[&str]) -> Option<H>,
        remove: impl Fn(&[String]),
    ) -> Option<H> {
        let Ok(mut b) = self.budget.lock() else {
            return None;
        };
        if let Some(h) = b.touch(labels.values, labels.legacy, now) {
            return Some(h.clone());
        }
        let non_legacy_cap = self.max.saturating_sub(self.legacy_reserve);
        let fits = if labels.legacy {
            b.series.len() < self.max
                || self.evict_oldest_non_legacy(&mut b, &remove)
                || (labels.source_is_ip
                    && b.source_series(labels.values.first().copied().unwrap_or(OTHER)) == 0
                    && self.evict_from_largest_source(&mut b, &remove))
        } else if labels.source_is_ip {
            b.series.len() < self.max && b.non_legacy < non_legacy_cap
        } else {
            // Named sources are bounded by the config; they may use the non-reserved room
            // that per-IP sources leave.
            b.series.len()
                < self
                    .max
                    .saturating_sub(self.legacy_reserve.saturating_sub(self.legacy_series(&b)))
        };
        if fits {
            return self.insert(&mut b, labels.values, labels.legacy, now, &make);
        }
        if !labels.legacy && !labels.source_is_ip {
            // Nothing to fold into: the source already is a name or "other".
            self.overflow.inc();
            return None;
        }
        // Fold the source into "other" (legacy series only get here when nothing could be
        // evicted, i.e. the whole budget is legacy).
        self.overflow.inc();
        let mut folded: Vec<&str> = labels.values.to_vec();
        if let Some(first) = folded.first_mut() {
            *first = OTHER;
        }
        if let Some(h) = b.touch(&folded, false, now) {
            return Some(h.clone());
        }
        if b.series.len() < self.max || self.evict_oldest_non_legacy(&mut b, &remove) {
            return self.insert(&mut b, &folded, labels.legacy, now, &make);
        }
        None
    }

    fn legacy_series(&self, b: &Budget<H>) -> usize {
        b.series.len().saturating_sub(b.non_legacy)
    }

    fn insert(
        &self,
        b: &mut Budget<H>,
        values: &[&str],
        legacy: bool,
        now: Instant,
        make: &impl Fn(&[&str]) -> Option<H>,
    ) -> Option<H> {
        let handle = make(values)?;
        if !legacy {
            b.non_legacy += 1;
        }
        if let Some(src) = values.first() {
            *b.per_source.entry((*src).to_string()).or_insert(0) += 1;
        }
        let key: Vec<String> = values.iter().map(|v| (*v).to_string()).collect();
        b.series.insert(
            key,
            Series {
                last_used: now,
                legacy,
                handle: handle.clone(),
            },
        );
        Some(handle)
    }

    fn evict_oldest_non_legacy(&self, b: &mut Budget<H>, remove: &impl Fn(&[String])) -> bool {
        let oldest = b
            .series
            .iter()
            .filter(|(_, s)| !s.legacy)
            .min_by_key(|(_, s)| s.last_used)
            .map(|(k, _)| k.clone());
        match oldest {
            Some(k) => {
                b.series.remove(&k);
                b.forget(&k, false);
                remove(&k);
                true
            }
            None => false,
        }
    }

    /// Makes room for a new legacy caller when every series is legacy: the least recently
    /// updated series of the source holding the most series goes. One client flooding
    /// distinct names thus pays for a newcomer, and cannot hide it.
    fn evict_from_largest_source(&self, b: &mut Budget<H>, remove: &impl Fn(&[String])) -> bool {
        let Some(most) = b.per_source.values().copied().max() else {
            return false;
        };
        // Among the largest sources (ties are common: one series each), the least recently
        // updated series goes.
        let victim = b
            .series
            .iter()
            .filter(|(k, _)| k.first().is_some_and(|src| b.source_series(src) == most))
            .min_by_key(|(_, s)| s.last_used)
            .map(|(k, s)| (k.clone(), s.legacy));
        match victim {
            Some((k, legacy)) => {
                b.series.remove(&k);
                b.forget(&k, legacy);
                remove(&k);
                self.overflow.inc();
                true
            }
            None => false,
        }
    }

    /// Removes series idle for longer than `idle_expiry`; returns how many.
    fn expire(&self, now: Instant, remove: impl Fn(&[String])) -> usize {
        let Ok(mut b) = self.budget.lock() else {
            return 0;
        };
        let expiry = self.idle_expiry;
        let stale: Vec<Vec<String>> = b
            .series
            .iter()
            .filter(|(_, s)| now.saturating_duration_since(s.last_used) >= expiry)
            .map(|(k, _)| k.clone())
            .collect();
        for k in &stale {
            if let Some(s) = b.series.remove(k) {
                b.forget(k, s.legacy);
            }
            remove(k);
        }
        stale.len()
    }

    fn len(&self) -> usize {
        self.budget.lock().map(|b| b.series.len()).unwrap_or(0)
    }
}

fn as_strs(k: &[String]) -> Vec<&str> {
    k.iter().map(String::as_str).collect()
}

/// A counter vector behind the cardinality guard.
pub struct GuardedCounter {
    vec: IntCounterVec,
    guard: Guard<IntCounter>,
}

impl GuardedCounter {
    pub fn new(
        opts: Opts,
        labels: &[&str],
        max: usize,
        idle_expiry: Duration,
        overflow: &IntCounterVec,
    ) -> prometheus::Result<GuardedCounter> {
        let name = opts.name.clone();
        let overflow = overflow.get_metric_with_label_values(&[&name])?;
        Ok(GuardedCounter {
            vec: IntCounterVec::new(opts, labels)?,
            guard: Guard::new(name, max, idle_expiry, overflow),
        })
    }

    pub fn inc(&self, labels: &Labels<'_>) {
        self.inc_at(labels, Instant::now());
    }

    pub fn inc_at(&self, labels: &Labels<'_>, now: Instant) {
        let make = |v: &[&str]| self.vec.get_metric_with_label_values(v).ok();
        if let Some(c) = self.guard.admit(labels, now, make, |k| self.remove(k)) {
            c.inc();
        }
    }

    fn remove(&self, k: &[String]) {
        let _ = self.vec.remove_label_values(&as_strs(k));
    }

    pub fn expire(&self, now: Instant) -> usize {
        self.guard.expire(now, |k| self.remove(k))
    }

    pub fn series(&self) -> usize {
        self.guard.len()
    }

    pub fn name(&self) -> &str {
        &self.guard.name
    }
}

impl Collector for GuardedCounter {
    fn desc(&self) -> Vec<&Desc> {
        self.vec.desc()
    }
    fn collect(&self) -> Vec<MetricFamily> {
        self.vec.collect()
    }
}

/// A gauge vector behind the cardinality guard (the last-legacy timestamp).
pub struct GuardedGauge {
    vec: GaugeVec,
    guard: Guard<Gauge>,
}

impl GuardedGauge {
    pub fn new(
        opts: Opts,
        labels: &[&str],
        max: usize,
        idle_expiry: Duration,
        overflow: &IntCounterVec,
    ) -> prometheus::Result<GuardedGauge> {
        let name = opts.name.clone();
        let overflow = overflow.get_metric_with_label_values(&[&name])?;
        Ok(GuardedGauge {
            vec: GaugeVec::new(opts, labels)?,
            guard: Guard::new(name, max, idle_expiry, overflow),
        })
    }

    pub fn set(&self, labels: &Labels<'_>, value: f64) {
        let make = |v: &[&str]| self.vec.get_metric_with_label_values(v).ok();
        if let Some(g) = self
            .guard
            .admit(labels, Instant::now(), make, |k| self.remove(k))
        {
            // Several connections may race; the gauge only moves forward.
            if value > g.get() {
                g.set(value);
            }
        }
    }

    fn remove(&self, k: &[String]) {
        let _ = self.vec.remove_label_values(&as_strs(k));
    }

    pub fn expire(&self, now: Instant) -> usize {
        self.guard.expire(now, |k| self.remove(k))
    }
}

impl Collector for GuardedGauge {
    fn desc(&self) -> Vec<&Desc> {
        self.vec.desc()
    }
    fn collect(&self) -> Vec<MetricFamily> {
        self.vec.collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus::Encoder;

    fn setup(max: usize) -> (GuardedCounter, IntCounterVec) {
        let overflow = IntCounterVec::new(Opts::new("overflow_total", "o"), &["metric"]).unwrap();
        let c = GuardedCounter::new(
            Opts::new("hellos_total", "h"),
            &["source", "destination"],
            max,
            Duration::from_secs(60),
            &overflow,
        )
        .unwrap();
        (c, overflow)
    }

    fn text(c: &GuardedCounter) -> String {
        let mut out = Vec::new();
        prometheus::TextEncoder::new()
            .encode(&c.collect(), &mut out)
            .unwrap();
        String::from_utf8(out).unwrap()
    }

    fn obs<'a>(v: &'a [&'a str], legacy: bool) -> Labels<'a> {
        Labels {
            values: v,
            legacy,
            source_is_ip: true,
        }
    }

    #[test]
    fn non_legacy_folds_into_other_and_is_counted() {
        let (c, overflow) = setup(8); // reserve 2, non-legacy cap 6
        for i in 0..10 {
            let ip = format!("10.0.0.{i}");
            c.inc(&obs(&[&ip, "x"], false));
        }
        let t = text(&c);
        assert!(t.contains("source=\"10.0.0.5\""), "{t}");
        assert!(!t.contains("source=\"10.0.0.6\""), "{t}");
        assert!(
            t.contains("hellos_total{destination=\"x\",source=\"other\"} 4"),
            "{t}"
        );
        assert_eq!(overflow.with_label_values(&["hellos_total"]).get(), 4);
    }

    #[test]
    fn a_new_legacy_caller_is_never_folded() {
        let (c, _) = setup(8);
        for i in 0..50 {
            let ip = format!("10.0.0.{i}");
            c.inc(&obs(&[&ip, "x"], false));
        }
        // The budget is full of non-legacy series and "other"; legacy callers still get
        // their own series, evicting non-legacy ones when needed.
        for i in 0..6 {
            let ip = format!("10.9.9.{i}");
            c.inc(&obs(&[&ip, "login"], true));
        }
        let t = text(&c);
        for i in 0..6 {
            assert!(t.contains(&format!("source=\"10.9.9.{i}\"")), "{i}: {t}");
        }
        assert!(c.series() <= 8);
    }

    #[test]
    fn when_all_series_are_legacy_a_new_source_still_gets_its_own() {
        let (c, overflow) = setup(4);
        let t0 = Instant::now();
        for i in 0..6 {
            let ip = format!("10.9.9.{i}");
            c.inc_at(&obs(&[&ip, "login"], true), t0 + Duration::from_millis(i));
        }
        assert_eq!(c.series(), 4);
        // Each newcomer took the place of the least recently updated series; each loss is
        // counted.
        assert_eq!(overflow.with_label_values(&["hellos_total"]).get(), 2);
        let t = text(&c);
        for i in 2..6 {
            assert!(t.contains(&format!("source=\"10.9.9.{i}\"")), "{t}");
        }
        assert!(!t.contains("source=\"other\""), "{t}");
    }

    #[test]
    fn a_flood_of_legacy_names_from_one_source_cannot_hide_a_new_caller() {
        let (c, overflow) = setup(20);
        for i in 0..100 {
            let name = format!("leg{i}.login.microsoftonline.com");
            c.inc(&obs(&["10.6.6.6", &name], true));
        }
        assert_eq!(c.series(), 20);
        let folded = overflow.with_label_values(&["hellos_total"]).get();
        assert!(folded >= 80, "the flood's excess folds ({folded})");
        for i in 0..5 {
            let ip = format!("10.9.9.{i}");
            c.inc(&obs(&[&ip, "login.microsoftonline.com"], true));
        }
        let t = text(&c);
        for i in 0..5 {
            assert!(
                t.contains(&format!("source=\"10.9.9.{i}\"")),
                "new caller {i} kept: {t}"
            );
        }
        assert!(c.series() <= 20);
        // A caller that already has a series folds its excess like the flooder does.
        c.inc(&obs(&["10.9.9.0", "login.microsoftonline.us"], true));
        assert!(c.series() <= 20);
        assert!(!text(&c).contains("source=\"10.9.9.0\",destination=\"login.microsoftonline.us\""));
    }

    #[test]
    fn a_known_series_is_found_by_its_borrowed_labels_and_keeps_its_handle() {
        let (c, overflow) = setup(8);
        let ip = String::from("10.1.2.3");
        for _ in 0..5 {
            c.inc(&obs(&[ip.as_str(), "login"], false));
        }
        c.inc(&obs(&["10.1.2.3", "graph"], false));
        assert_eq!(c.series(), 2);
        let t = text(&c);
        assert!(
            t.contains("hellos_total{destination=\"login\",source=\"10.1.2.3\"} 5"),
            "{t}"
        );
        assert!(
            t.contains("hellos_total{destination=\"graph\",source=\"10.1.2.3\"} 1"),
            "{t}"
        );
        assert_eq!(overflow.with_label_values(&["hellos_total"]).get(), 0);
        // An expired series is made anew: its handle is not the one removed from the vector.
        assert_eq!(c.expire(Instant::now() + Duration::from_secs(61)), 2);
        c.inc(&obs(&["10.1.2.3", "login"], false));
        let t = text(&c);
        assert!(
            t.contains("hellos_total{destination=\"login\",source=\"10.1.2.3\"} 1"),
            "{t}"
        );
        assert!(!t.contains("graph"), "{t}");
    }

    #[test]
    fn idle_series_expire() {
        let (c, _) = setup(8);
        let t0 = Instant::now();
        c.inc_at(&obs(&["10.0.0.1", "x"], false), t0);
        c.inc_at(&obs(&["10.0.0.2", "x"], true), t0 + Duration::from_secs(30));
        assert_eq!(c.expire(t0 + Duration::from_secs(61)), 1);
        let t = text(&c);
        assert!(!t.contains("10.0.0.1"), "{t}");
        assert!(t.contains("10.0.0.2"), "{t}");
        assert_eq!(c.series(), 1);
    }
}
