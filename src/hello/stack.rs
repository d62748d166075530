//! The TLS stack behind a ClientHello (`tls_library`), from real hellos of each library.
//!
//! The knowledge is `config/tls_stacks.tsv`: labelled real hellos (recorded on enterprise
//! endpoints with the process that sent them, and generated here by running each
//! library), each with its source; `scripts/stacks/build_table.py` writes it. A hello is
//! compared on what survives a version pin or a fallback retry: the extension set and
//! order, the cipher order, the groups and the signature algorithms (GREASE values count
//! as one value, the padding extension not at all). An identical shape in the table is
//! `exact`; otherwise the nearest entries by similarity name the family when they are
//! close enough and clearly closer than any other family's (`structural`); else
//! `unknown`: a wrong family is worse than none. Pure (the table is compiled in), and
//! cached by shape.

use hashbrown::HashMap;
use std::hash::{BuildHasher, Hash};
use std::sync::{Arc, Mutex, OnceLock};

use super::ClientHelloSummary;

/// The embedded table.
pub const TLS_STACKS_TSV: &str = include_str!("../../config/tls_stacks.tsv");

/// A TLS library family: the values of `tls_library`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TlsLibrary {
    Schannel,
    Openssl,
    Boringssl,
    Nss,
    Java,
    Securetransport,
    Gnutls,
    Go,
    Rustls,
    Mbedtls,
    Wolfssl,
    Unknown,
}

impl TlsLibrary {
    pub const ALL: [TlsLibrary; 12] = [
        TlsLibrary::Schannel,
        TlsLibrary::Openssl,
        TlsLibrary::Boringssl,
        TlsLibrary::Nss,
        TlsLibrary::Java,
        TlsLibrary::Securetransport,
        TlsLibrary::Gnutls,
        TlsLibrary::Go,
        TlsLibrary::Rustls,
        TlsLibrary::Mbedtls,
        TlsLibrary::Wolfssl,
        TlsLibrary::Unknown,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            TlsLibrary::Schannel => "schannel",
            TlsLibrary::Openssl => "openssl",
            TlsLibrary::Boringssl => "boringssl",
            TlsLibrary::Nss => "nss",
            TlsLibrary::Java => "java",
            TlsLibrary::Securetransport => "securetransport",
            TlsLibrary::Gnutls => "gnutls",
            TlsLibrary::Go => "go",
            TlsLibrary::Rustls => "rustls",
            TlsLibrary::Mbedtls => "mbedtls",
            TlsLibrary::Wolfssl => "wolfssl",
            TlsLibrary::Unknown => "unknown",
        }
    }

    pub fn parse(s: &str) -> Option<TlsLibrary> {
        TlsLibrary::ALL.into_iter().find(|l| l.as_str() == s)
    }

    /// What a report calls the family when nothing finer is known.
    pub fn display(self) -> &'static str {
        match self {
            TlsLibrary::Schannel => "Windows SChannel",
            TlsLibrary::Openssl => "OpenSSL / LibreSSL",
            TlsLibrary::Boringssl => "BoringSSL (Chromium, Electron, Android)",
            TlsLibrary::Nss => "NSS (Firefox, Thunderbird)",
            TlsLibrary::Java => "Java JSSE",
            TlsLibrary::Securetransport => "Apple SecureTransport / Network.framework",
            TlsLibrary::Gnutls => "GnuTLS",
            TlsLibrary::Go => "Go crypto/tls",
            TlsLibrary::Rustls => "rustls",
            TlsLibrary::Mbedtls => "Mbed TLS",
            TlsLibrary::Wolfssl => "wolfSSL",
            TlsLibrary::Unknown => "unknown",
        }
    }
}

/// GREASE values (RFC 8701) all count as this one.
const GREASE: u16 = 0x0a0a;
/// Values of one list a hello is compared on, at most.
pub const MAX_COMPARED: usize = 128;
/// The padding extension: its presence depends on the hello's length, not the library.
const PADDING: u16 = 0x0015;

fn norm(v: u16) -> u16 {
    if super::is_grease(v) { GREASE } else { v }
}

/// `list` with a GREASE value put back at each of `positions` (indices as sent).
fn with_grease(list: &[u16], positions: &[u8]) -> Vec<u16> {
    let mut out = Vec::with_capacity(list.len() + positions.len());
    let mut rest = list.iter().map(|&v| norm(v));
    for &p in positions {
        while out.len() < usize::from(p) {
            match rest.next() {
                Some(v) => out.push(v),
                None => break,
            }
        }
        out.push(GREASE);
    }
    out.extend(rest);
    out
}

/// What the classifier compares: orders as sent, GREASE folded, padding left out.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Default)]
pub struct Shape {
    pub ciphers: Vec<u16>,
    pub extensions: Vec<u16>,
    pub groups: Vec<u16>,
    pub sig_algs: Vec<u16>,
}

impl Shape {
    pub fn of(h: &ClientHelloSummary) -> Shape {
        // SSLv2-format suites (3 bytes) keep their low 16 bits: their order still counts.
        let ciphers: Vec<u16> = h.cipher_suites.iter().map(|&c| c as u16).collect();
        let mut shape = Shape {
            ciphers: with_grease(&ciphers, &h.grease.ciphers),
            extensions: with_grease(&h.extensions, &h.grease.extensions)
                .into_iter()
                .filter(|&e| e != PADDING)
                .collect(),
            groups: with_grease(&h.groups, &h.grease.groups),
            sig_algs: h.signature_algorithms.iter().map(|&s| norm(s)).collect(),
        };
        shape.truncate();
        shape
    }

    /// A peer may offer thousands of values; comparing orders costs the product of two
    /// lengths, so only the first `MAX_COMPARED` of each list count (real hellos have
    /// fewer), in the table as on the wire.
    fn truncate(&mut self) {
        for list in [
            &mut self.ciphers,
            &mut self.extensions,
            &mut self.groups,
            &mut self.sig_algs,
        ] {
            list.truncate(MAX_COMPARED);
        }
    }

    /// What JA3 hashes (GREASE out; the version is the caller's): ciphers and extensions
    /// in order, and the groups.
    pub fn ja3_key(&self) -> (Vec<u16>, Vec<u16>, Vec<u16>) {
        let strip = |v: &[u16]| v.iter().copied().filter(|&x| x != GREASE).collect();
        (
            strip(&self.ciphers),
            strip(&self.extensions),
            strip(&self.groups),
        )
    }

    /// What JA4 hashes (GREASE out): ciphers and extensions sorted, the signature
    /// algorithms in order.
    pub fn ja4_key(&self) -> (Vec<u16>, Vec<u16>, Vec<u16>) {
        let sorted = |v: &[u16]| {
            let mut s: Vec<u16> = v.iter().copied().filter(|&x| x != GREASE).collect();
            s.sort_unstable();
            s
        };
        (
            sorted(&self.ciphers),
            sorted(&self.extensions),
            self.sig_algs
                .iter()
                .copied()
                .filter(|&x| x != GREASE)
                .collect(),
        )
    }

    /// The shape's hash: fixed (the table's entries and the hellos of the process agree),
    /// and cheaper than SipHash over four lists. A hit is always checked or harmless: the
    /// exact table compares the whole shape, and two shapes of the verdict cache share a
    /// key with odds of about 2^-64 each.
    fn key(&self) -> u64 {
        foldhash::fast::FixedState::default().hash_one(self)
    }
}

/// 256-bit set of hashed values, for a fast first look.
#[derive(Clone, Copy, Debug, Default)]
struct Bits([u64; 4]);

impl Bits {
    fn of(v: &[u16]) -> Bits {
        let mut b = [0u64; 4];
        for &x in v {
            let h = (u32::from(x).wrapping_mul(2_654_435_761) >> 24) as usize;
            if let Some(w) = b.get_mut(h / 64) {
                *w |= 1 << (h % 64);
            }
        }
        Bits(b)
    }

    fn jaccard(&self, o: &Bits) -> f32 {
        let (mut i, mut u) = (0u32, 0u32);
        for (a, b) in self.0.iter().zip(o.0.iter()) {
            i += (a & b).count_ones();
            u += (a | b).count_ones();
        }
        if u == 0 { 1.0 } else { i as f32 / u as f32 }
    }
}

/// One labelled real hello of the table.
#[derive(Clone, Debug)]
pub struct Entry {
    pub library: TlsLibrary,
    pub software: String,
    pub source: String,
    /// The highest version it offers (for the test set's legacy figures).
    pub max_version: u16,
    pub shape: Shape,
    ext_bits: Bits,
    cipher_bits: Bits,
    /// `shape`'s lists sorted, for the set overlaps of `similarity` (made once, when the
    /// table is read; the orders are `shape`'s own).
    sorted: SortedLists,
}

#[derive(Debug, thiserror::Error)]
#[error("config/tls_stacks.tsv line {line}: {reason}")]
pub struct TableError {
    pub line: usize,
    pub reason: String,
}

/// How the library was named.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StackConfidence {
    /// The same shape is in the table, under one library only.
    Exact,
    /// Close to one library's hellos, and clearly closer than to any other's.
    Structural,
    Unknown,
}

/// The classifier's answer.
#[derive(Clone, Debug, PartialEq)]
pub struct StackVerdict {
    pub library: TlsLibrary,
    pub confidence: StackConfidence,
    /// The finer software of an exact match.
    pub software: Option<String>,
    /// Similarity to the nearest entry of the named library (1.0 for exact).
    pub similarity: f32,
}

impl Entry {
    /// Has `other` the same JA3 or the same JA4 fingerprint (the same highest version, and
    /// the same `Shape::ja3_key` or `Shape::ja4_key`)?
    pub fn same_fingerprint(&self, other: &Entry) -> bool {
        self.max_version == other.max_version
            && (self.shape.ja3_key() == other.shape.ja3_key()
                || self.shape.ja4_key() == other.shape.ja4_key())
    }
}

impl StackVerdict {
    fn unknown(similarity: f32) -> StackVerdict {
        StackVerdict {
            library: TlsLibrary::Unknown,
            confidence: StackConfidence::Unknown,
            software: None,
            similarity,
        }
    }
}

/// The nearest entry must be at least this similar...
pub const MIN_SIMILARITY: f32 = 0.70;
/// ...and this much more similar than the nearest entry of any other library.
pub const MIN_MARGIN: f32 = 0.03;
/// Entries compared in full after the first look.
const CANDIDATES: usize = 30;

pub struct StackTable {
    entries: Vec<Entry>,
    /// Entries by their shape's hash (`Shape::key`; a hit is checked against the shape).
    exact: HashMap<u64, Vec<usize>>,
    cache: Mutex<HashMap<u64, StackVerdict>>,
    /// The first look's candidates, each with the parts of its similarity that do not
    /// depend on the extension order, by the hello with its extensions sorted: a library
    /// that shuffles its extension order per connection (Chrome, rustls) misses the verdict
    /// cache every time, but not this one, and then only the extension orders are compared.
    candidates: Mutex<HashMap<Shape, Arc<Candidates>>>,
}

/// Candidates cached (`StackTable::candidates`); a full cache starts over.
const CANDIDATES_CACHE_MAX: usize = 1024;

const CACHE_MAX: usize = 4096;

fn hex_list(s: &str) -> Result<Vec<u16>, String> {
    if s.is_empty() || s == "-" {
        return Ok(Vec::new());
    }
    s.split(',')
        .map(|x| {
            if x == "gg" {
                Ok(GREASE)
            } else {
                u16::from_str_radix(x, 16).map_err(|_| format!("{x:?} is not a 4-digit hex value"))
            }
        })
        .collect()
}

impl StackTable {
    /// Parses the table: `library software source max_version ciphers extensions groups
    /// sig_algs`, tab-separated; `#` starts a comment line.
    pub fn parse(text: &str) -> Result<StackTable, TableError> {
        let mut entries = Vec::new();
        for (i, line) in text.lines().enumerate() {
            if line.starts_with('#') || line.trim().is_empty() || line.starts_with("library\t") {
                continue;
            }
            let err = |reason: String| TableError {
                line: i + 1,
                reason,
            };
            let f: Vec<&str> = line.split('\t').collect();
            let [
                lib,
                software,
                source,
                max_version,
                ciphers,
                exts,
                groups,
                sigs,
            ] = f[..]
            else {
                return Err(err(format!("{} fields, 8 wanted", f.len())));
            };
            let library = TlsLibrary::parse(lib).ok_or_else(|| err(format!("library {lib:?}")))?;
            let mut shape = Shape {
                ciphers: hex_list(ciphers).map_err(err)?,
                extensions: hex_list(exts)
                    .map_err(err)?
                    .into_iter()
                    .filter(|&e| e != PADDING)
                    .collect(),
                groups: hex_list(groups).map_err(err)?,
                sig_algs: hex_list(sigs).map_err(err)?,
            };
            shape.truncate();
            let max_version = u16::from_str_radix(max_version, 16)
                .map_err(|_| err(format!("max_version {max_version:?}")))?;
            entries.push(Entry {
                library,
                software: software.to_string(),
                source: source.to_string(),
                max_version,
                ext_bits: Bits::of(&shape.extensions),
                cipher_bits: Bits::of(&shape.ciphers),
                sorted: SortedLists::of(&shape),
                shape,
            });
        }
        Ok(StackTable::from_entries(entries))
    }

    pub fn from_entries(entries: Vec<Entry>) -> StackTable {
        let mut exact: HashMap<u64, Vec<usize>> = HashMap::new();
        for (i, e) in entries.iter().enumerate() {
            exact.entry(e.shape.key()).or_default().push(i);
        }
        StackTable {
            entries,
            exact,
            cache: Mutex::new(HashMap::new()),
            candidates: Mutex::new(HashMap::new()),
        }
    }

    /// The embedded table (parsed once; a broken one names nothing, and the tests fail).
    pub fn embedded() -> &'static StackTable {
        static T: OnceLock<StackTable> = OnceLock::new();
        T.get_or_init(|| {
            StackTable::parse(TLS_STACKS_TSV).unwrap_or_else(|e| {
                tracing::error!(error = %e, "the TLS stack table is invalid; tls_library is unknown");
                StackTable::from_entries(Vec::new())
            })
        })
    }

    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    /// The library of `shape` (cached). An exact shape first; then, for a shape whose
    /// extension orders have agreed (`Votes`), the pinned verdict; else the nearest
    /// entries, and the order's vote.
    pub fn classify(&self, shape: &Shape) -> StackVerdict {
        let key = shape.key();
        if let Some(v) = cached(&self.cache, &key) {
            return v;
        }
        if let Some(v) = self.exact_match(shape, key, &|_| false) {
            keep(&self.cache, key, v.clone());
            return v;
        }
        let first = self.cached_candidates(shape);
        // Not kept in the verdict cache: a library that shuffles would fill it with one
        // order per connection and push out the shapes that repeat.
        if let Some(v) = first.votes.pinned() {
            return v;
        }
        let v = self.nearest(&List::of(&shape.extensions), &first);
        first.votes.count(order_key(&shape.extensions), &v);
        keep(&self.cache, key, v.clone());
        v
    }

    /// The candidates of `shape`'s extension set (cached by the shape with its extensions
    /// sorted), with the votes of its orders.
    fn cached_candidates(&self, shape: &Shape) -> Arc<Candidates> {
        let mut order_free = shape.clone();
        order_free.extensions.sort_unstable();
        cached(&self.candidates, &order_free).unwrap_or_else(|| {
            let first = Arc::new(self.candidates_of(shape, |_| false));
            keep_within(
                &self.candidates,
                CANDIDATES_CACHE_MAX,
                order_free,
                first.clone(),
            );
            first
        })
    }

    /// The library of `shape`, ignoring the entries `skip` names (the measurement leaves
    /// out the entry under test and every entry with its fingerprint). Not cached, never
    /// pinned: an exact shape, else the nearest entries.
    pub fn classify_without(&self, shape: &Shape, skip: impl Fn(&Entry) -> bool) -> StackVerdict {
        if let Some(v) = self.exact_match(shape, shape.key(), &skip) {
            return v;
        }
        let first = self.candidates_of(shape, &skip);
        self.nearest(&List::of(&shape.extensions), &first)
    }

    /// The first look's entries, each with the order-free parts of its similarity.
    fn candidates_of(&self, shape: &Shape, skip: impl Fn(&Entry) -> bool) -> Candidates {
        let mine = Prepared::of(shape);
        let (eb, cb) = (
            Bits::of(&mine.extensions.order),
            Bits::of(&mine.ciphers.order),
        );
        let mut list = self
            .first_look(eb, cb, skip)
            .into_iter()
            .filter_map(|i| Some(mine.candidate(i, self.entries.get(i)?)))
            .collect::<Vec<_>>();
        // Entries of one library often share an extension order (its versions differ in
        // ciphers): their order term is computed once.
        for k in 0..list.len() {
            let first = (0..k).find(|&j| list[j].extension_lookup == list[k].extension_lookup);
            list[k].same_order_as = first.unwrap_or(k);
        }
        Candidates {
            hello_values: mine.extensions.values(),
            list,
            votes: Votes::default(),
        }
    }

    /// The first look: the CANDIDATES entries whose extension and cipher sets are most
    /// alike (ties by table order), best first, found without sorting the whole table.
    fn first_look(&self, eb: Bits, cb: Bits, skip: impl Fn(&Entry) -> bool) -> Vec<usize> {
        let mut first: Vec<(f32, usize)> = self
            .entries
            .iter()
            .enumerate()
            .filter(|(_, e)| !skip(e))
            .map(|(i, e)| (eb.jaccard(&e.ext_bits) + cb.jaccard(&e.cipher_bits), i))
            .collect();
        let by_score = |a: &(f32, usize), b: &(f32, usize)| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1));
        if first.len() > CANDIDATES {
            first.select_nth_unstable_by(CANDIDATES - 1, by_score);
            first.truncate(CANDIDATES);
        }
        first.sort_unstable_by(by_score);
        first.into_iter().map(|(_, i)| i).collect()
    }

    /// The verdict from the first look's candidates: the library of the most similar,
    /// when it is similar enough and clearly ahead of the next library.
    fn nearest(&self, extensions: &List, first: &Candidates) -> StackVerdict {
        // The candidates' extension indexes hold for a hello with the values they were
        // made from (a cache hit: the same values in another order).
        let same_values = extensions.has_values(&first.hello_values);
        let mut best: Vec<(TlsLibrary, f32, usize)> = Vec::new();
        // The order term of each candidate computed so far (a hit: the same value).
        let mut orders: [Option<f32>; CANDIDATES] = [None; CANDIDATES];
        for (k, c) in first.list.iter().enumerate() {
            let i = c.entry;
            let Some(e) = self.entries.get(i) else {
                continue;
            };
            let s = if same_values {
                let order = match orders.get(c.same_order_as).copied().flatten() {
                    Some(order) => order,
                    None => extensions.order_at(&c.extension_lookup, e.shape.extensions.len()),
                };
                if let Some(slot) = orders.get_mut(k) {
                    *slot = Some(order);
                }
                c.with_order(order)
            } else {
                c.similarity(extensions, false, &e.shape)
            };
            match best.iter_mut().find(|b| b.0 == e.library) {
                Some(b) if b.1 >= s => {}
                Some(b) => *b = (e.library, s, i),
                None => best.push((e.library, s, i)),
            }
        }
        best.sort_unstable_by(|a, b| b.1.total_cmp(&a.1));
        let Some(&(library, s, _)) = best.first() else {
            return StackVerdict::unknown(0.0);
        };
        let runner_up = best.get(1).map_or(0.0, |b| b.1);
        if s < MIN_SIMILARITY || s - runner_up < MIN_MARGIN {
            return StackVerdict::unknown(s);
        }
        StackVerdict {
            library,
            confidence: StackConfidence::Structural,
            software: None,
            similarity: s,
        }
    }

    /// The entries with exactly `shape` (`key` is its `Shape::key`), when they agree.
    fn exact_match(
        &self,
        shape: &Shape,
        key: u64,
        skip: &impl Fn(&Entry) -> bool,
    ) -> Option<StackVerdict> {
        let hits: Vec<&Entry> = self
            .exact
            .get(&key)?
            .iter()
            .filter_map(|&i| self.entries.get(i))
            .filter(|e| e.shape == *shape && !skip(e))
            .collect();
        let first = hits.first()?;
        if hits.iter().any(|e| e.library != first.library) {
            return None;
        }
        Some(StackVerdict {
            library: first.library,
            confidence: StackConfidence::Exact,
            software: Some(first.software.clone()),
            similarity: 1.0,
        })
    }
}

/// A cached value, if any.
fn cached<K: std::hash::Hash + Eq, V: Clone>(cache: &Mutex<HashMap<K, V>>, key: &K) -> Option<V> {
    cache.lock().ok().and_then(|c| c.get(key).cloned())
}

/// Keeps a value; a full cache (`CACHE_MAX`) starts over.
fn keep<K: std::hash::Hash + Eq, V>(cache: &Mutex<HashMap<K, V>>, key: K, value: V) {
    keep_within(cache, CACHE_MAX, key, value);
}

/// Keeps a value; a cache with `max` values starts over.
fn keep_within<K: std::hash::Hash + Eq, V>(
    cache: &Mutex<HashMap<K, V>>,
    max: usize,
    key: K,
    value: V,
) {
    if let Ok(mut c) = cache.lock() {
        if c.len() >= max {
            c.clear();
        }
        c.insert(key, value);
    }
}

/// The library of a hello, from the embedded table.
pub fn classify_stack(h: &ClientHelloSummary) -> StackVerdict {
    StackTable::embedded().classify(&Shape::of(h))
}

fn jaccard(a: &[u16], b: &[u16]) -> f32 {
    if a.is_empty() && b.is_empty() {
        return 1.0;
    }
    let inter = a.iter().filter(|x| b.contains(x)).count();
    let union = a.len() + b.iter().filter(|x| !a.contains(x)).count();
    inter as f32 / union.max(1) as f32
}

/// One list of a hello, prepared for comparisons with the table's entries: its values
/// sorted (set overlap by one merge walk) and, per value, the positions where it stands (a
/// bit each, for the bit-parallel LCS). A hello is prepared once per verdict; an entry
/// keeps only its sorted values (`SortedLists`), since the LCS is the same length whichever
/// side holds the positions.
#[derive(Clone, Debug, Default)]
struct List {
    order: Vec<u16>,
    sorted: Vec<u16>,
    /// (value, positions among the first `MAX_COMPARED`), sorted by value.
    positions: Vec<(u16, u128)>,
}

impl List {
    fn of(order: &[u16]) -> List {
        let mut sorted = order.to_vec();
        sorted.sort_unstable();
        let mut positions: Vec<(u16, u128)> = Vec::with_capacity(order.len().min(MAX_COMPARED));
        for (j, &v) in order.iter().take(MAX_COMPARED).enumerate() {
            match positions.iter_mut().find(|(x, _)| *x == v) {
                Some((_, m)) => *m |= 1u128 << j,
                None => positions.push((v, 1u128 << j)),
            }
        }
        positions.sort_unstable_by_key(|(v, _)| *v);
        List {
            order: order.to_vec(),
            sorted,
            positions,
        }
    }

    /// |a ∩ b| / |a ∪ b|, counting each of `self`'s values present in `other` (repeats
    /// too), over `self`'s length plus `other`'s values absent from `self`. `other` is
    /// sorted.
    fn jaccard(&self, other: &[u16]) -> f32 {
        let (a, b) = (&self.sorted, other);
        if a.is_empty() && b.is_empty() {
            return 1.0;
        }
        let (mut i, mut j, mut inter, mut extra) = (0, 0, 0usize, 0usize);
        while i < a.len() || j < b.len() {
            let v = match (a.get(i), b.get(j)) {
                (Some(&x), Some(&y)) => x.min(y),
                (Some(&x), None) => x,
                (None, Some(&y)) => y,
                (None, None) => break,
            };
            let run = |list: &[u16], from: usize| {
                list.get(from..)
                    .map_or(0, |r| r.iter().take_while(|&&x| x == v).count())
            };
            let (ca, cb) = (run(a, i), run(b, j));
            if cb > 0 {
                inter += ca;
            }
            if ca == 0 {
                extra += cb;
            }
            i += ca;
            j += cb;
        }
        inter as f32 / (a.len() + extra).max(1) as f32
    }

    /// `order(self, other)`: the LCS share, walking `other`'s values and looking up
    /// `self`'s positions per value (the LCS of two lists has one length either way).
    fn order(&self, other: &[u16]) -> f32 {
        let masks = other.iter().take(MAX_COMPARED).map(|x| self.mask_of(*x));
        self.share(other.len(), masks)
    }

    /// Where `v` stands in `positions`, if this list has it.
    fn index_of(&self, v: u16) -> Option<usize> {
        self.positions.binary_search_by_key(&v, |(y, _)| *y).ok()
    }

    /// The positions of `v` in this list (a bit each), 0 when it is absent.
    fn mask_of(&self, v: u16) -> u128 {
        self.index_of(v)
            .and_then(|k| self.positions.get(k))
            .map_or(0, |(_, m)| *m)
    }

    /// Where each of `other`'s values stands in `positions` (`ABSENT` when it is not
    /// there): `order_at` then looks each up by index instead of searching. Made once per
    /// candidate; valid for any list with the same values.
    fn lookup_of(&self, other: &[u16]) -> Box<[u8]> {
        other
            .iter()
            .take(MAX_COMPARED)
            .map(|&v| {
                self.index_of(v)
                    .and_then(|k| u8::try_from(k).ok())
                    .unwrap_or(ABSENT)
            })
            .collect()
    }

    /// `order(self, other)` with `other` given as `lookup_of(other)`, made from a list
    /// with the same values as this one (in any order): the same figure to the bit.
    fn order_at(&self, lookup: &[u8], other_len: usize) -> f32 {
        let masks = lookup
            .iter()
            .map(|&k| self.positions.get(usize::from(k)).map_or(0, |&(_, m)| m));
        self.share(other_len, masks)
    }

    /// This list's distinct values, sorted.
    fn values(&self) -> Box<[u16]> {
        self.positions.iter().map(|&(v, _)| v).collect()
    }

    /// Whether this list's distinct values are `values` (what `order_at` needs).
    fn has_values(&self, values: &[u16]) -> bool {
        self.positions.len() == values.len()
            && self
                .positions
                .iter()
                .zip(values)
                .all(|(&(v, _), &w)| v == w)
    }

    /// The LCS share of `self` and another list of `other_len` values, whose values'
    /// masks in `self` (in its order, at most `MAX_COMPARED`) are `masks`: bit-parallel
    /// LCS over 128-bit words (Hyyrö).
    fn share(&self, other_len: usize, masks: impl Iterator<Item = u128>) -> f32 {
        let b = &self.order;
        if other_len == 0 && b.is_empty() {
            return 1.0;
        }
        let lcs = if b.is_empty() {
            0
        } else {
            let n = b.len().min(MAX_COMPARED);
            let mut v: u128 = !0;
            for matches in masks {
                let u = v & matches;
                v = v.wrapping_add(u) | (v & !matches);
            }
            let beyond = if n >= 128 { 0 } else { !0u128 << n };
            (v | beyond).count_zeros()
        };
        2.0 * lcs as f32 / (other_len + b.len()) as f32
    }
}

/// `List::lookup_of`'s index for a value the hello does not have (a list holds at most
/// `MAX_COMPARED` = 128 distinct values, so 255 is never an index).
const ABSENT: u8 = u8::MAX;

/// An entry's lists, sorted (the other side of `List::jaccard`).
#[derive(Clone, Debug, Default)]
struct SortedLists {
    extensions: Box<[u16]>,
    ciphers: Box<[u16]>,
}

impl SortedLists {
    fn of(s: &Shape) -> SortedLists {
        let sorted = |v: &[u16]| {
            let mut v = v.to_vec();
            v.sort_unstable();
            v.into_boxed_slice()
        };
        SortedLists {
            extensions: sorted(&s.extensions),
            ciphers: sorted(&s.ciphers),
        }
    }
}

/// The first look's candidates for one hello, and the hello's distinct extension values
/// (the candidates' extension indexes hold for a hello with these values).
#[derive(Debug)]
struct Candidates {
    hello_values: Box<[u16]>,
    list: Vec<Candidate>,
    votes: Votes,
}

/// Distinct extension orders of one extension set that must agree before their verdict is
/// pinned.
const PIN_AFTER: usize = 8;

/// The verdicts of one extension set's orders (one `Candidates`). A library that shuffles
/// its extensions for every connection (Chrome, Firefox, rustls) gets the same verdict
/// whatever the order: once `PIN_AFTER` distinct orders have agreed on the library, its
/// confidence and its software, that verdict is pinned, and a new order costs no nearest
/// match and no verdict-cache entry. One order that disagrees (a shape near a margin)
/// means every order is computed, for good. A pinned verdict keeps the first order's
/// similarity. An order that repeats (a library with a fixed order) counts once, so it
/// pins nothing: it stays in the verdict cache.
#[derive(Debug, Default)]
struct Votes(Mutex<Tally>);

#[derive(Debug, Default)]
enum Tally {
    #[default]
    None,
    /// Every order so far gave `verdict`; `orders` holds each order's key once.
    Agreeing {
        verdict: StackVerdict,
        orders: Vec<u64>,
    },
    Pinned(StackVerdict),
    Split,
}

impl Votes {
    fn pinned(&self) -> Option<StackVerdict> {
        match &*self.0.lock().ok()? {
            Tally::Pinned(v) => Some(v.clone()),
            _ => None,
        }
    }

    /// The verdict `v` computed for the order whose key is `order`.
    fn count(&self, order: u64, v: &StackVerdict) {
        let Ok(mut tally) = self.0.lock() else {
            return;
        };
        let agrees = |w: &StackVerdict| {
            w.library == v.library && w.confidence == v.confidence && w.software == v.software
        };
        *tally = match std::mem::take(&mut *tally) {
            Tally::None => Tally::Agreeing {
                verdict: v.clone(),
                orders: vec![order],
            },
            Tally::Agreeing {
                verdict,
                mut orders,
            } if agrees(&verdict) => {
                if !orders.contains(&order) {
                    orders.push(order);
                }
                if orders.len() >= PIN_AFTER {
                    Tally::Pinned(verdict)
                } else {
                    Tally::Agreeing { verdict, orders }
                }
            }
            Tally::Agreeing { .. } | Tally::Split => Tally::Split,
            pinned @ Tally::Pinned(_) => pinned,
        };
    }
}

/// One extension order's key (for `Votes`: which orders were seen).
fn order_key(extensions: &[u16]) -> u64 {
    foldhash::fast::FixedState::default().hash_one(extensions)
}

/// A candidate entry with the order-free terms of its similarity (`Prepared::candidate`).
#[derive(Clone, Debug)]
struct Candidate {
    entry: usize,
    /// The entry's extension order as indexes into the hello's positions
    /// (`List::lookup_of`): the order term without a search per value.
    extension_lookup: Box<[u8]>,
    /// The first candidate in the list with the same `extension_lookup` (this one's
    /// index when none is before it): the same order term for a hello with the values.
    same_order_as: usize,
    extension_set: f32,
    cipher_order: f32,
    cipher_set: f32,
    group_order: f32,
    sig_alg_order: f32,
}

/// A hello's four lists, prepared (see `List`).
#[derive(Clone, Debug, Default)]
struct Prepared {
    extensions: List,
    ciphers: List,
    groups: List,
    sig_algs: List,
}

impl Prepared {
    fn of(s: &Shape) -> Prepared {
        Prepared {
            extensions: List::of(&s.extensions),
            ciphers: List::of(&s.ciphers),
            groups: List::of(&s.groups),
            sig_algs: List::of(&s.sig_algs),
        }
    }

    /// Entry `i` as a candidate: the parts of `similarity` that the hello's extension
    /// order does not change.
    fn candidate(&self, i: usize, e: &Entry) -> Candidate {
        Candidate {
            entry: i,
            extension_lookup: self.extensions.lookup_of(&e.shape.extensions),
            same_order_as: 0,
            extension_set: self.extensions.jaccard(&e.sorted.extensions),
            cipher_order: self.ciphers.order(&e.shape.ciphers),
            cipher_set: self.ciphers.jaccard(&e.sorted.ciphers),
            group_order: self.groups.order(&e.shape.groups),
            sig_alg_order: self.sig_algs.order(&e.shape.sig_algs),
        }
    }
}

impl Candidate {
    /// `similarity(hello, other)`, with `extensions` the hello's prepared extension list
    /// (the candidate was made from a hello with the same lists, perhaps in another
    /// extension order): the same figure to the bit, the same terms summed in the same
    /// order.
    fn similarity(&self, extensions: &List, same_values: bool, other: &Shape) -> f32 {
        let order = if same_values {
            extensions.order_at(&self.extension_lookup, other.extensions.len())
        } else {
            extensions.order(&other.extensions)
        };
        self.with_order(order)
    }

    /// The similarity with `order` as its extension order term (the terms summed in
    /// `similarity`'s order).
    fn with_order(&self, order: f32) -> f32 {
        0.3 * self.extension_set
            + 0.2 * order
            + 0.2 * self.cipher_order
            + 0.1 * self.cipher_set
            + 0.1 * self.group_order
            + 0.1 * self.sig_alg_order
    }
}

/// Longest common subsequence, as a share of both lengths: how alike two orders are.
fn order(a: &[u16], b: &[u16]) -> f32 {
    if a.is_empty() && b.is_empty() {
        return 1.0;
    }
    2.0 * lcs_len(a, b) as f32 / (a.len() + b.len()) as f32
}

/// The length of the longest common subsequence, bit-parallel over `b`'s positions
/// (Hyyrö's form of Allison and Dix's algorithm): one 128-bit word holds a row of the
/// table, so a row costs a few word operations instead of `b.len()` cells. Both lists are
/// at most `MAX_COMPARED` (= 128) long (`Shape::truncate`); longer ones are cut.
fn lcs_len(a: &[u16], b: &[u16]) -> u32 {
    let b = b.get(..MAX_COMPARED).unwrap_or(b);
    if b.is_empty() {
        return 0;
    }
    let mut v: u128 = !0;
    for &x in a.get(..MAX_COMPARED).unwrap_or(a) {
        let mut matches: u128 = 0;
        for (j, &y) in b.iter().enumerate() {
            matches |= u128::from(y == x) << j;
        }
        let u = v & matches;
        v = v.wrapping_add(u) | (v & !matches);
    }
    // The zeros among the low b.len() bits count the common subsequence.
    let beyond = if b.len() >= 128 { 0 } else { !0u128 << b.len() };
    (v | beyond).count_zeros()
}

/// How alike two hellos are, 0 to 1: the extension set weighs most, then the extension
/// and cipher orders, then the cipher set, the groups and the signature algorithms. (The
/// verdict uses `Candidate::similarity`, the same figure from prepared lists; this plain
/// form is the reference it is tested against.)
pub fn similarity(a: &Shape, b: &Shape) -> f32 {
    0.3 * jaccard(&a.extensions, &b.extensions)
        + 0.2 * order(&a.extensions, &b.extensions)
        + 0.2 * order(&a.ciphers, &b.ciphers)
        + 0.1 * jaccard(&a.ciphers, &b.ciphers)
        + 0.1 * order(&a.groups, &b.groups)
        + 0.1 * order(&a.sig_algs, &b.sig_algs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hello_with_thousands_of_values_is_compared_on_its_first_ones() {
        let bytes = include_bytes!("../../tests/fixtures/curl_tls10.bin");
        let super::super::Detection::Hello(mut h) =
            super::super::detect_client_hello(bytes, 1 << 16)
        else {
            panic!("fixture");
        };
        h.cipher_suites = (1..=5000).collect();
        let shape = Shape::of(&h);
        assert_eq!(shape.ciphers.len(), MAX_COMPARED);
        let t = StackTable::parse(TLS_STACKS_TSV).unwrap();
        let _ = t.classify(&shape);
    }

    /// A small deterministic generator: `next(n)` is in `0..n`.
    fn xorshift(mut seed: u64) -> impl FnMut(u64) -> u64 {
        move |n| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        }
    }

    /// Shuffles `list` in place (Fisher-Yates) with `next`.
    fn shuffle(list: &mut [u16], next: &mut impl FnMut(u64) -> u64) {
        for i in (1..list.len()).rev() {
            let j = next(i as u64 + 1) as usize;
            list.swap(i, j);
        }
    }

    /// The textbook table, to check the bit-parallel form against.
    fn lcs_table(a: &[u16], b: &[u16]) -> u32 {
        let mut prev = vec![0u32; b.len() + 1];
        for x in a {
            let mut cur = vec![0u32; b.len() + 1];
            for (j, y) in b.iter().enumerate() {
                cur[j + 1] = if x == y {
                    prev[j] + 1
                } else {
                    prev[j + 1].max(cur[j])
                };
            }
            prev = cur;
        }
        prev[b.len()]
    }

    #[test]
    fn prepared_lists_give_the_same_similarity_to_the_bit() {
        let mut next = xorshift(0x9e37_79b9_7f4a_7c15u64);
        let mut list = |alphabet: u64, max: u64| -> Vec<u16> {
            let n = next(max + 1) as usize;
            (0..n).map(|_| next(alphabet) as u16).collect()
        };
        let t = StackTable::parse(TLS_STACKS_TSV).unwrap();
        for round in 0..2000 {
            // Small alphabets repeat values (GREASE folds to one), the hard case.
            let alphabet = [3, 12, 60, 65_536][round % 4];
            let mut shape = || Shape {
                ciphers: list(alphabet, 40),
                extensions: list(alphabet, 24),
                groups: list(alphabet, 8),
                sig_algs: list(alphabet, 16),
            };
            let (a, b) = (shape(), shape());
            let e = &t.entries[round % t.entries.len()];
            let mine = Prepared::of(&a);
            let fast = mine
                .candidate(0, e)
                .similarity(&mine.extensions, true, &e.shape);
            assert_eq!(fast.to_bits(), similarity(&a, &e.shape).to_bits());
            // Against a random entry too (random lists on both sides).
            let other = Entry {
                sorted: SortedLists::of(&b),
                shape: b.clone(),
                ..e.clone()
            };
            let fast = mine
                .candidate(0, &other)
                .similarity(&mine.extensions, true, &b);
            assert_eq!(
                fast.to_bits(),
                similarity(&a, &b).to_bits(),
                "{a:?} / {b:?}"
            );
            // The candidate's order-free terms stand for a hello with its extensions in
            // another order: only the extension order is compared again.
            let mut shuffled = a.clone();
            shuffled.extensions.reverse();
            let again = Prepared::of(&shuffled);
            assert!(again.extensions.has_values(&mine.extensions.values()));
            let fast = mine
                .candidate(0, &other)
                .similarity(&again.extensions, true, &b);
            assert_eq!(fast.to_bits(), similarity(&shuffled, &b).to_bits());
            // The search (taken for a hello with other values) gives the same figure.
            let searched = mine
                .candidate(0, &other)
                .similarity(&again.extensions, false, &b);
            assert_eq!(searched.to_bits(), fast.to_bits());
            // A hello with other values is told apart.
            let mut changed = shuffled.clone();
            changed.extensions.push(0xfe0d);
            let changed_list = Prepared::of(&changed).extensions;
            assert!(!changed_list.has_values(&mine.extensions.values()));
        }
    }

    #[test]
    fn pinned_verdicts_of_shuffled_real_hellos_are_the_computed_ones() {
        let mut next = xorshift(0x2545_f491_4f6c_dd1d);
        let t = StackTable::parse(TLS_STACKS_TSV).unwrap();
        let (mut total, mut differ, mut pinned) = (0usize, 0usize, 0usize);
        let shufflable = t.entries.iter().filter(|e| e.shape.extensions.len() >= 6);
        for e in shufflable.step_by(3) {
            let mut shape = e.shape.clone();
            // One order after another, as a shuffling library sends them: the first
            // PIN_AFTER are computed and vote, the rest may find the verdict pinned.
            for _ in 0..2 * PIN_AFTER {
                shuffle(&mut shape.extensions, &mut next);
                let got = t.classify(&shape);
                let computed = t.classify_without(&shape, |_| false);
                total += 1;
                differ += usize::from(
                    got.library != computed.library || got.confidence != computed.confidence,
                );
            }
            pinned += usize::from(t.cached_candidates(&shape).votes.pinned().is_some());
        }
        eprintln!("{differ} of {total} shuffled hellos named otherwise; {pinned} sets pinned");
        assert!(pinned > 100, "{pinned} extension sets pinned");
        // Pinning may name an order otherwise than computing it would (an order near a
        // margin that the first orders did not show); it must stay rare.
        assert!(differ * 200 <= total, "{differ} of {total} differ");
    }

    #[test]
    fn only_distinct_orders_that_agree_pin_a_verdict() {
        let v = |library| StackVerdict {
            library,
            confidence: StackConfidence::Structural,
            software: None,
            similarity: 0.9,
        };
        let repeated = Votes::default();
        for _ in 0..3 * PIN_AFTER {
            repeated.count(7, &v(TlsLibrary::Rustls));
        }
        assert!(
            repeated.pinned().is_none(),
            "one order repeated pins nothing"
        );
        let agreeing = Votes::default();
        for k in 0..PIN_AFTER as u64 {
            assert!(agreeing.pinned().is_none(), "pinned after {k} orders");
            agreeing.count(k, &v(TlsLibrary::Rustls));
        }
        let pinned = agreeing.pinned().map(|p| p.library);
        assert_eq!(pinned, Some(TlsLibrary::Rustls));
        let split = Votes::default();
        split.count(0, &v(TlsLibrary::Rustls));
        split.count(1, &v(TlsLibrary::Openssl));
        for k in 2..4 * PIN_AFTER as u64 {
            split.count(k, &v(TlsLibrary::Rustls));
        }
        assert!(split.pinned().is_none(), "a disagreement unpins for good");
    }

    #[test]
    fn cached_candidates_give_the_uncached_verdict_for_shuffled_extensions() {
        let mut next = xorshift(0x853c_49e6_748f_ea9bu64);
        let t = StackTable::parse(TLS_STACKS_TSV).unwrap();
        let (mut named, mut compared) = (0, 0);
        for e in t.entries.iter().step_by(9) {
            for _ in 0..4 {
                // Shuffled (Fisher-Yates) and one entry dropped, so no exact match.
                let mut shape = e.shape.clone();
                shuffle(&mut shape.extensions, &mut next);
                shape.ciphers.pop();
                // Entries that differ only in their extension order share an extension
                // set, which may be pinned by now (that is the test above).
                let pinned = t.cached_candidates(&shape).votes.pinned().is_some();
                let cached = t.classify(&shape);
                let plain = t.classify_without(&shape, |_| false);
                named += usize::from(plain.library != TlsLibrary::Unknown);
                if pinned {
                    continue;
                }
                assert_eq!(cached.library, plain.library, "{shape:?}");
                assert_eq!(cached.confidence, plain.confidence);
                assert_eq!(cached.similarity.to_bits(), plain.similarity.to_bits());
                compared += 1;
            }
        }
        // The candidates cache was used: shuffles of one entry share its key.
        assert!(!t.candidates.lock().unwrap().is_empty());
        assert!(named > 100, "{named} named");
        assert!(compared > 500, "{compared} compared unpinned");
    }

    /// The verdict from every candidate's plain `similarity`: the best per library, the
    /// same thresholds (`nearest` without its prepared lists and shared order terms).
    fn nearest_of_every_candidate(t: &StackTable, shape: &Shape) -> (TlsLibrary, u32) {
        let first = t.candidates_of(shape, |_| false);
        let mut best: Vec<(TlsLibrary, f32)> = Vec::new();
        for c in &first.list {
            let e = &t.entries[c.entry];
            let s = similarity(shape, &e.shape);
            match best.iter_mut().find(|b| b.0 == e.library) {
                Some(b) => b.1 = b.1.max(s),
                None => best.push((e.library, s)),
            }
        }
        best.sort_by(|a, b| b.1.total_cmp(&a.1));
        let (library, s) = best[0];
        let runner_up = best.get(1).map_or(0.0, |b| b.1);
        if s < MIN_SIMILARITY || s - runner_up < MIN_MARGIN {
            return (TlsLibrary::Unknown, s.to_bits());
        }
        (library, s.to_bits())
    }

    #[test]
    fn shared_order_terms_give_the_verdict_of_every_candidate() {
        let mut next = xorshift(0x2545_f491_4f6c_dd1du64);
        let t = StackTable::parse(TLS_STACKS_TSV).unwrap();
        let (mut named, mut unknown, mut shared) = (0, 0, 0);
        for e in t.entries.iter().step_by(3) {
            for round in 0..3 {
                let mut shape = e.shape.clone();
                shuffle(&mut shape.extensions, &mut next);
                // Near the entry and farther from it.
                match round {
                    0 => drop(shape.ciphers.pop()),
                    1 => shape.extensions.truncate(shape.extensions.len() / 2),
                    _ => shape.extensions.push(next(65_536) as u16),
                }
                let (library, bits) = nearest_of_every_candidate(&t, &shape);
                let first = t.candidates_of(&shape, |_| false);
                shared += first
                    .list
                    .iter()
                    .enumerate()
                    .filter(|(k, c)| c.same_order_as != *k)
                    .count();
                let v = t.nearest(&List::of(&shape.extensions), &first);
                assert_eq!(
                    (v.library, v.similarity.to_bits()),
                    (library, bits),
                    "{shape:?}"
                );
                if library == TlsLibrary::Unknown {
                    unknown += 1;
                } else {
                    named += 1;
                }
            }
        }
        assert!(
            named > 100 && unknown > 10,
            "{named} named, {unknown} unknown"
        );
        assert!(
            shared > 1000,
            "only {shared} candidates shared an order term"
        );
    }

    #[test]
    fn the_bit_parallel_lcs_agrees_with_the_table() {
        // Small alphabets make many repeats, the hard case; lengths up to 128 both sides.
        let mut next = xorshift(0x2545_f491_4f6c_dd1du64);
        for round in 0..3000 {
            let alphabet = [2, 5, 40, 65_536][round % 4];
            let la = next(129) as usize;
            let lb = next(129) as usize;
            let a: Vec<u16> = (0..la).map(|_| next(alphabet) as u16).collect();
            let b: Vec<u16> = (0..lb).map(|_| next(alphabet) as u16).collect();
            assert_eq!(lcs_len(&a, &b), lcs_table(&a, &b), "{a:?} / {b:?}");
        }
        assert_eq!(lcs_len(&[], &[1]), 0);
        assert_eq!(lcs_len(&[1, 2, 3], &[]), 0);
    }

    #[test]
    fn grease_goes_back_where_it_was_sent() {
        assert_eq!(with_grease(&[1, 2, 3], &[0, 4]), [GREASE, 1, 2, 3, GREASE]);
        assert_eq!(with_grease(&[1, 2], &[1]), [1, GREASE, 2]);
        assert_eq!(with_grease(&[], &[0]), [GREASE]);
    }

    #[test]
    fn grease_folds_and_orders_compare() {
        assert_eq!(norm(0x3a3a), GREASE);
        assert_eq!(norm(0x3a4a), 0x3a4a);
        assert!((order(&[1, 2, 3], &[1, 2, 3]) - 1.0).abs() < 1e-6);
        assert!((order(&[1, 2, 3], &[3, 2, 1]) - 1.0 / 3.0).abs() < 1e-6);
        assert!((jaccard(&[1, 2], &[2, 3]) - 1.0 / 3.0).abs() < 1e-6);
    }

    #[test]
    fn the_embedded_table_parses_and_every_library_names_itself() {
        let t = StackTable::parse(TLS_STACKS_TSV).unwrap();
        assert!(t.entries().len() >= 300, "{} entries", t.entries().len());
        for l in TlsLibrary::ALL {
            assert_eq!(TlsLibrary::parse(l.as_str()), Some(l));
        }
    }

    #[test]
    fn a_bad_line_is_named() {
        let e = StackTable::parse("# c\nopenssl\tx\ty\t0303\tzz\t-\t-\t-\n")
            .err()
            .unwrap();
        assert_eq!(e.line, 2);
        assert!(StackTable::parse("nope\tx\ty\t0303\t-\t-\t-\t-\n").is_err());
    }
}
