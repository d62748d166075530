//! The first bytes of one direction of a TCP stream, in order: enough for a ClientHello or
//! a ServerHello, and never more than `cap` bytes from the stream's start.
//!
//! Segments are placed by sequence number (modulo 2^32) relative to the stream's first
//! byte. Bytes that continue the in-order prefix are appended; bytes after a gap wait in a
//! small sorted list until the gap fills (out-of-order delivery, or a capture that saw a
//! retransmission before the original). Overlaps — retransmissions — keep the bytes seen
//! first. Bytes before the start or past `cap` are ignored, out-of-order bytes are bounded
//! by `cap` and by [`MAX_PIECES`], so one stream holds at most about `2 × cap`.

/// Out-of-order pieces kept at most.
pub const MAX_PIECES: usize = 64;

#[derive(Debug)]
struct Piece {
    off: usize,
    bytes: Vec<u8>,
}

#[derive(Debug, Default)]
pub struct Stream {
    /// Sequence number of stream byte 0, once known.
    start: Option<u32>,
    /// Stream bytes `0..data.len()`, in order.
    data: Vec<u8>,
    /// Bytes after a gap, sorted by offset.
    pieces: Vec<Piece>,
    piece_bytes: usize,
}

impl Stream {
    /// Sets where the stream starts (the SYN's sequence number + 1). Ignored once bytes
    /// have been placed.
    pub fn set_start(&mut self, seq: u32) {
        if self.data.is_empty() && self.pieces.is_empty() {
            self.start = Some(seq);
        }
    }

    pub fn has_start(&self) -> bool {
        self.start.is_some()
    }

    /// The in-order bytes so far.
    pub fn data(&self) -> &[u8] {
        &self.data
    }

    /// Bytes of memory held.
    pub fn held(&self) -> usize {
        self.data.capacity()
            + self
                .pieces
                .iter()
                .map(|p| p.bytes.capacity())
                .sum::<usize>()
    }

    /// Frees everything (the hello was found, or the stream is no longer needed).
    pub fn clear(&mut self) {
        self.data = Vec::new();
        self.pieces = Vec::new();
        self.piece_bytes = 0;
    }

    /// Drops the first `n` in-order bytes (a STARTTLS prelude already read): the stream
    /// starts after them, and `cap` counts from there.
    pub fn consume(&mut self, n: usize) {
        let n = n.min(self.data.len());
        if n == 0 {
            return;
        }
        self.data.drain(..n);
        if let Some(start) = &mut self.start {
            *start = start.wrapping_add(u32::try_from(n).unwrap_or(u32::MAX));
        }
        // Pieces lie past the in-order data, so past what was consumed.
        for p in &mut self.pieces {
            p.off = p.off.saturating_sub(n);
        }
    }

    /// Places a segment; returns true when the in-order prefix grew. The first segment of
    /// a stream whose start is unknown defines the start.
    pub fn add(&mut self, seq: u32, payload: &[u8], cap: usize) -> bool {
        if payload.is_empty() {
            return false;
        }
        let start = *self.start.get_or_insert(seq);
        // Signed distance from the start, modulo 2^32.
        let rel = i64::from(seq.wrapping_sub(start) as i32);
        let (off, payload) = if rel < 0 {
            let skip = usize::try_from(-rel).unwrap_or(usize::MAX);
            match payload.get(skip..) {
                Some(p) if !p.is_empty() => (0usize, p),
                _ => return false,
            }
        } else {
            (usize::try_from(rel).unwrap_or(usize::MAX), payload)
        };
        if off >= cap {
            return false;
        }
        let take = payload.len().min(cap - off);
        let payload = payload.get(..take).unwrap_or_default();
        let have = self.data.len();
        if off > have {
            self.keep_piece(off, payload, cap);
            return false;
        }
        let end = off + payload.len();
        if end <= have {
            return false;
        }
        self.data
            .extend_from_slice(payload.get(have - off..).unwrap_or_default());
        self.drain_pieces();
        true
    }

    /// Keeps bytes that arrived after a gap (bounded like the in-order bytes).
    fn keep_piece(&mut self, off: usize, bytes: &[u8], cap: usize) {
        if self.pieces.len() >= MAX_PIECES || self.piece_bytes + bytes.len() > cap {
            return;
        }
        let at = self.pieces.partition_point(|p| p.off <= off);
        self.piece_bytes += bytes.len();
        self.pieces.insert(
            at,
            Piece {
                off,
                bytes: bytes.to_vec(),
            },
        );
    }

    /// Appends the pieces that now continue the in-order prefix.
    fn drain_pieces(&mut self) {
        while let Some(first) = self.pieces.first() {
            let have = self.data.len();
            if first.off > have {
                return;
            }
            let piece = self.pieces.remove(0);
            self.piece_bytes -= piece.bytes.len();
            let end = piece.off + piece.bytes.len();
            if end > have {
                self.data
                    .extend_from_slice(piece.bytes.get(have - piece.off..).unwrap_or_default());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CAP: usize = 1000;

    #[test]
    fn in_order_out_of_order_and_retransmitted() {
        let mut s = Stream::default();
        s.set_start(100);
        assert!(!s.add(105, b"fgh", CAP), "after a gap");
        assert!(s.add(100, b"abc", CAP));
        assert_eq!(s.data(), b"abc");
        assert!(!s.add(100, b"XYZ", CAP), "a retransmission changes nothing");
        assert!(s.add(102, b"cde", CAP), "overlap: the new tail is kept");
        assert_eq!(s.data(), b"abcdefgh", "the waiting piece joined");
        assert!(!s.add(90, b"0123456789", CAP), "before the start");
        assert!(s.add(95, b"01234abcdefghi", CAP));
        assert_eq!(s.data(), b"abcdefghi");
    }

    #[test]
    fn wraps_around_and_caps() {
        let mut s = Stream::default();
        s.set_start(u32::MAX - 1);
        assert!(s.add(u32::MAX - 1, b"ab", CAP));
        assert!(s.add(0, b"cd", CAP), "sequence numbers wrap");
        assert_eq!(s.data(), b"abcd");
        let mut c = Stream::default();
        assert!(
            c.add(7, &[1; 2000], CAP),
            "the first segment sets the start"
        );
        assert_eq!(c.data().len(), CAP);
        assert!(!c.add(7 + 1000, b"x", CAP), "past the cap");
    }

    #[test]
    fn pieces_are_bounded() {
        let mut s = Stream::default();
        s.set_start(0);
        for i in 0..200u32 {
            s.add(10 + i * 2, b"x", CAP);
        }
        assert!(s.pieces.len() <= MAX_PIECES);
        s.clear();
        assert_eq!(s.held(), 0);
    }
}
