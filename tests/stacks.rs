//! The tls_library classifier measured on its labelled test set: the real hellos of
//! `config/tls_stacks.tsv` (Cisco Mercury's enterprise-endpoint hellos labelled by process,
//! and hellos generated here by each library). Each entry is classified with itself and
//! every entry of the same JA3 or JA4 fingerprint left out, so an exact match never counts: this is
//! the structural part alone. Prints recall and precision per family; fails below overall
//! recall 85%, overall precision 97% or SChannel recall 90%.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;

use tlspeek::hello::stack::{Entry, Shape, StackTable, TLS_STACKS_TSV};
use tlspeek::hello::{Detection, TlsLibrary, detect_client_hello};

#[derive(Default)]
struct Score {
    total: BTreeMap<TlsLibrary, u32>,
    right: BTreeMap<TlsLibrary, u32>,
    named_as: BTreeMap<TlsLibrary, u32>,
    named: u32,
    correct: u32,
    all: u32,
}

impl Score {
    fn add(&mut self, truth: TlsLibrary, said: TlsLibrary) {
        self.all += 1;
        *self.total.entry(truth).or_default() += 1;
        if said != TlsLibrary::Unknown {
            self.named += 1;
            *self.named_as.entry(said).or_default() += 1;
            if said == truth {
                self.correct += 1;
                *self.right.entry(truth).or_default() += 1;
            }
        }
    }
    fn recall(&self) -> f64 {
        f64::from(self.correct) / f64::from(self.all.max(1))
    }
    fn precision(&self) -> f64 {
        f64::from(self.correct) / f64::from(self.named.max(1))
    }
    fn family_recall(&self, l: TlsLibrary) -> f64 {
        f64::from(*self.right.get(&l).unwrap_or(&0)) / f64::from(*self.total.get(&l).unwrap_or(&1))
    }
    fn print(&self, title: &str) {
        println!(
            "{title}: {} hellos, recall {:.1}%, precision {:.1}%",
            self.all,
            100.0 * self.recall(),
            100.0 * self.precision()
        );
        println!("| tls_library | hellos | named right | recall | named as it | precision |");
        println!("| --- | --- | --- | --- | --- | --- |");
        for (l, n) in &self.total {
            let right = *self.right.get(l).unwrap_or(&0);
            let named = *self.named_as.get(l).unwrap_or(&0);
            println!(
                "| {} | {n} | {right} | {:.1}% | {named} | {} |",
                l.as_str(),
                100.0 * f64::from(right) / f64::from(*n),
                if named == 0 {
                    "-".to_string()
                } else {
                    format!("{:.1}%", 100.0 * f64::from(right) / f64::from(named))
                }
            );
        }
    }
}

fn group(e: &Entry) -> &str {
    e.source.split(':').next().unwrap_or("")
}

/// Classifies every entry with `leave_out(test, other)` entries ignored.
fn measure(
    t: &StackTable,
    keep: impl Fn(&Entry) -> bool,
    leave_out: impl Fn(&Entry, &Entry) -> bool,
) -> Score {
    let mut s = Score::default();
    for e in t.entries().iter().filter(|e| keep(e)) {
        let v = t.classify_without(&e.shape, |o| {
            std::ptr::eq(o, e) || e.same_fingerprint(o) || leave_out(e, o)
        });
        s.add(e.library, v.library);
    }
    s
}

#[test]
fn the_classifier_names_real_hellos_with_the_required_recall_and_precision() {
    let t = StackTable::parse(TLS_STACKS_TSV).unwrap();
    let families: std::collections::BTreeSet<_> = t.entries().iter().map(|e| e.library).collect();
    assert!(t.entries().len() >= 300, "{} hellos", t.entries().len());
    assert!(families.len() >= 8, "{families:?}");
    let all = measure(&t, |_| true, |_, _| false);
    all.print("all hellos, leave-one-out (same fingerprint left out)");
    let legacy = measure(&t, |e| e.max_version < 0x0303, |_, _| false);
    legacy.print("legacy hellos (highest offered version below TLS 1.2)");
    let by_source = measure(&t, |_| true, |e, o| group(e) == group(o));
    by_source.print("leave-one-source-out (mercury vs generated here)");
    assert!(all.recall() >= 0.85, "overall recall {:.3}", all.recall());
    assert!(
        all.precision() >= 0.97,
        "overall precision {:.3}",
        all.precision()
    );
    let sch = all.family_recall(TlsLibrary::Schannel);
    assert!(sch >= 0.90, "SChannel recall {sch:.3}");
}

#[test]
fn a_hello_read_from_the_wire_has_the_shape_its_table_row_says() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/stacks");
    let t = StackTable::parse(TLS_STACKS_TSV).unwrap();
    let mut checked = 0;
    for e in t.entries().iter().filter(|e| group(e) == "here") {
        let file = e.source.trim_start_matches("here:");
        let bytes = std::fs::read(format!("{dir}/{file}")).unwrap();
        let Detection::Hello(h) = detect_client_hello(&bytes, 1 << 16) else {
            panic!("{file}: not a hello");
        };
        assert_eq!(Shape::of(&h), e.shape, "{file}");
        let v = t.classify(&Shape::of(&h));
        assert_eq!(
            v.library, e.library,
            "{file}: its own exact shape names its library"
        );
        checked += 1;
    }
    assert!(checked >= 40, "{checked} generated hellos");
}
