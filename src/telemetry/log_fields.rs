//! The text log's field formatter: the text of tracing-subscriber's `DefaultFields`,
//! written more cheaply when colours are off.
//!
//! Every connection's span formats its fields when it opens (id, mode, source) and when
//! its target is known, whether or not anything is ever logged in it. The default
//! formatter passes each field name through nu-ansi-term's styling even with colours off;
//! here integers, booleans, plain strings and `Display`/`Debug` values under plain names
//! are written straight to the line. Everything else — the message (which the default
//! formatter sanitises of terminal escapes), errors, `r#` and `log.` names, and every
//! field when colours are on — goes to the default formatter itself, so the text is the
//! same byte for byte (tested against `DefaultFields`).

use std::fmt;

use tracing::field::{Field, Visit};
use tracing_subscriber::field::{MakeVisitor, VisitFmt, VisitOutput};
use tracing_subscriber::fmt::format::{DefaultVisitor, Writer};

/// The field formatter of the text log (`fmt_fields`).
#[derive(Clone, Copy, Debug, Default)]
pub struct LogFields;

impl<'a> MakeVisitor<Writer<'a>> for LogFields {
    type Visitor = FieldVisitor<'a>;

    fn make_visitor(&self, target: Writer<'a>) -> FieldVisitor<'a> {
        FieldVisitor {
            writer: target,
            is_empty: true,
            result: Ok(()),
        }
    }
}

/// Writes one span's or event's fields: `name=value`, separated by spaces.
pub struct FieldVisitor<'a> {
    writer: Writer<'a>,
    /// No field written yet (the next one needs no separating space).
    is_empty: bool,
    result: fmt::Result,
}

impl FieldVisitor<'_> {
    /// Whether this formatter writes `field` itself: colours off, and a name the default
    /// formatter writes as it stands.
    fn writes_itself(&self, field: &Field) -> bool {
        let name = field.name();
        !self.writer.has_ansi_escapes()
            && name != "message"
            && !name.starts_with("r#")
            && !name.starts_with("log.")
    }

    /// Writes one field as `name=` followed by what `value` writes.
    fn field(&mut self, field: &Field, value: impl FnOnce(&mut Writer<'_>) -> fmt::Result) {
        if self.result.is_err() {
            return;
        }
        #[cfg(test)]
        tests::WRITTEN_HERE.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let separator = if self.is_empty { "" } else { " " };
        self.is_empty = false;
        self.result = write_field(&mut self.writer, separator, field.name(), value);
    }

    /// Hands one field to the default formatter.
    fn by_default(&mut self, field: &Field, record: impl FnOnce(&mut DefaultVisitor<'_>)) {
        if self.result.is_err() {
            return;
        }
        let mut v = DefaultVisitor::new(self.writer.by_ref(), self.is_empty);
        record(&mut v);
        self.result = v.finish();
        // The default formatter skips `log.` fields (tracing-log's metadata) unwritten.
        self.is_empty &= field.name().starts_with("log.");
    }
}

impl Visit for FieldVisitor<'_> {
    fn record_u64(&mut self, field: &Field, value: u64) {
        if self.writes_itself(field) {
            self.field(field, |w| w.write_str(itoa::Buffer::new().format(value)));
        } else {
            self.by_default(field, |v| v.record_u64(field, value));
        }
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        if self.writes_itself(field) {
            self.field(field, |w| w.write_str(itoa::Buffer::new().format(value)));
        } else {
            self.by_default(field, |v| v.record_i64(field, value));
        }
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        if self.writes_itself(field) {
            self.field(field, |w| w.write_str(if value { "true" } else { "false" }));
        } else {
            self.by_default(field, |v| v.record_bool(field, value));
        }
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        if !self.writes_itself(field) {
            self.by_default(field, |v| v.record_str(field, value));
        } else if value.bytes().all(quoted_as_is) {
            self.field(field, |w| {
                w.write_char('"')?;
                w.write_str(value)?;
                w.write_char('"')
            });
        } else {
            self.field(field, |w| write!(w, "{value:?}"));
        }
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.by_default(field, |v| v.record_error(field, value));
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if self.writes_itself(field) {
            self.field(field, |w| write!(w, "{value:?}"));
        } else {
            self.by_default(field, |v| v.record_debug(field, value));
        }
    }
}

/// `separator`, `name=`, then what `value` writes.
fn write_field(
    w: &mut Writer<'_>,
    separator: &str,
    name: &str,
    value: impl FnOnce(&mut Writer<'_>) -> fmt::Result,
) -> fmt::Result {
    w.write_str(separator)?;
    w.write_str(name)?;
    w.write_char('=')?;
    value(w)
}

/// A byte `str`'s `Debug` writes unchanged between its quotes: printable ASCII but the
/// quote and the backslash.
fn quoted_as_is(b: u8) -> bool {
    (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\'
}

impl VisitOutput<fmt::Result> for FieldVisitor<'_> {
    fn finish(self) -> fmt::Result {
        self.result
    }
}

impl VisitFmt for FieldVisitor<'_> {
    fn writer(&mut self) -> &mut dyn fmt::Write {
        &mut self.writer
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};
    use tracing::{error, info, info_span, warn};

    /// Fields this formatter wrote itself (not through the default formatter).
    pub(super) static WRITTEN_HERE: AtomicUsize = AtomicUsize::new(0);

    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl io::Write for Buffer {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[derive(Debug, thiserror::Error)]
    #[error("outer failed\u{1b}[31m")]
    struct Outer(#[source] io::Error);

    struct Shown(&'static str);
    impl fmt::Display for Shown {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str(self.0)
        }
    }

    /// Logs a fixed set of spans and events with fields of every kind.
    fn log_everything(strings: &[&str]) {
        let span = info_span!(
            "conn",
            id = 7u64,
            mode = "connect",
            src = %Shown("10.0.0.1:5000"),
            target = tracing::field::Empty
        );
        let _g = span.enter();
        span.record(
            "target",
            tracing::field::display(&Shown("login.example:443")),
        );
        info!(
            n = -3i64,
            big = u64::MAX,
            ok = true,
            no = false,
            f = 1.5f64,
            "plain message"
        );
        for s in strings {
            info!(value = *s, shown = %s, debugged = ?s, "message {s}");
            let inner = info_span!("inner", name = *s);
            let _i = inner.enter();
            warn!(r#type = *s, "log.target" = *s, after = 1u8, "in inner");
        }
        let e = Outer(io::Error::other("inner cause\u{7}"));
        error!(error = &e as &(dyn std::error::Error + 'static), "failed");
        info!(wide = 1u128 << 100, neg = -(1i128 << 100), bytes = ?b"\x00ab".as_slice());
        info!(only = 1u64);
        info!("log.skipped" = "x", then = 2u64);
    }

    fn text(fields: Option<LogFields>, strings: &[&str]) -> String {
        let buffer = Buffer::default();
        let out = buffer.clone();
        let builder = tracing_subscriber::fmt()
            .with_ansi(false)
            .without_time()
            .with_max_level(tracing::Level::TRACE)
            .with_writer(move || out.clone());
        match fields {
            Some(f) => tracing::subscriber::with_default(builder.fmt_fields(f).finish(), || {
                log_everything(strings)
            }),
            None => tracing::subscriber::with_default(builder.finish(), || log_everything(strings)),
        }
        let bytes = buffer.0.lock().unwrap().clone();
        String::from_utf8(bytes).unwrap()
    }

    #[test]
    fn the_text_is_the_default_formatters_byte_for_byte() {
        let mut strings = vec![
            "",
            "plain",
            "with space",
            "quote\"d",
            "back\\slash",
            "tab\there",
            "new\nline",
            "esc\u{1b}[31mred",
            "bell\u{7}",
            "del\u{7f}",
            "c1\u{85}\u{9b}",
            "é unicode ✓",
            "zero\u{200b}width",
            "combining\u{301}",
        ];
        let every_byte: Vec<String> = (0u8..0x80).map(|b| format!("x{}y", b as char)).collect();
        strings.extend(every_byte.iter().map(String::as_str));
        let before = WRITTEN_HERE.load(Ordering::Relaxed);
        let ours = text(Some(LogFields), &strings);
        // The fast path ran (the comparison is not of the default formatter with itself).
        assert!(WRITTEN_HERE.load(Ordering::Relaxed) >= before + 3 * strings.len());
        let theirs = text(None, &strings);
        assert!(
            theirs
                .contains("conn{id=7 mode=\"connect\" src=10.0.0.1:5000 target=login.example:443}")
        );
        assert!(theirs.lines().count() > strings.len() * 2);
        for (i, (a, b)) in ours.lines().zip(theirs.lines()).enumerate() {
            assert_eq!(a, b, "line {i} differs");
        }
        assert_eq!(ours, theirs);
    }
}
