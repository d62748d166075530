//! A bounds-checked big-endian cursor over peer bytes.
//!
//! Every read returns `None` instead of panicking when the bytes run out, so the parsers
//! built on it can turn any short or lying length field into "malformed" with `?`.

/// Cursor over a byte slice; reads advance it, failed reads leave it unspecified.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    pub(crate) fn new(buf: &'a [u8]) -> Self {
        Reader { rest: buf }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.rest.is_empty()
    }

    /// The bytes not read yet.
    pub(crate) fn rest(self) -> &'a [u8] {
        self.rest
    }

    pub(crate) fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if n > self.rest.len() {
            return None;
        }
        let (head, tail) = self.rest.split_at(n);
        self.rest = tail;
        Some(head)
    }

    pub(crate) fn u8(&mut self) -> Option<u8> {
        let (&b, tail) = self.rest.split_first()?;
        self.rest = tail;
        Some(b)
    }

    pub(crate) fn u16(&mut self) -> Option<u16> {
        let b = self.take(2)?;
        Some(u16::from_be_bytes([*b.first()?, *b.get(1)?]))
    }

    /// A vector with a one-byte length prefix (`opaque x<0..2^8-1>`).
    pub(crate) fn vec8(&mut self) -> Option<&'a [u8]> {
        let n = self.u8()?;
        self.take(usize::from(n))
    }

    /// A vector with a two-byte length prefix (`opaque x<0..2^16-1>`).
    pub(crate) fn vec16(&mut self) -> Option<&'a [u8]> {
        let n = self.u16()?;
        self.take(usize::from(n))
    }
}

/// Big-endian u16 items of a list whose byte length must be even.
pub(crate) fn u16_items(list: &[u8]) -> Option<impl Iterator<Item = u16> + '_> {
    if list.len() % 2 != 0 {
        return None;
    }
    Some(list.chunks_exact(2).map(|c| {
        u16::from_be_bytes([
            c.first().copied().unwrap_or(0),
            c.get(1).copied().unwrap_or(0),
        ])
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_fail_instead_of_panicking() {
        let mut r = Reader::new(&[0x01, 0x02, 0x03]);
        assert_eq!(r.u16(), Some(0x0102));
        assert_eq!(r.u16(), None);
        let mut r = Reader::new(&[0x00, 0x05, 0xaa]);
        assert_eq!(r.vec16(), None, "length larger than the rest");
        let mut r = Reader::new(&[0x02, 0xaa, 0xbb, 0xcc]);
        assert_eq!(r.vec8(), Some(&[0xaa, 0xbb][..]));
        assert_eq!(r.u8(), Some(0xcc));
        assert!(r.is_empty());
        assert_eq!(r.u8(), None);
    }

    #[test]
    fn u16_items_rejects_odd_lengths() {
        assert!(u16_items(&[1, 2, 3]).is_none());
        let v: Vec<u16> = u16_items(&[0x13, 0x01, 0x00, 0x2f])
            .into_iter()
            .flatten()
            .collect();
        assert_eq!(v, vec![0x1301, 0x002f]);
    }
}
