//! GREASE values (RFC 8701): `0x?a?a` with both bytes equal.
//!
//! Clients sprinkle them into cipher suites, extensions, groups, signature algorithms and
//! versions so that servers keep tolerating unknown values. They carry no meaning, change
//! from one connection to the next, and are left out of every list and fingerprint.

/// True for the sixteen reserved GREASE values `0x0a0a, 0x1a1a, …, 0xfafa`.
///
/// Both bytes must be equal: `0x1a2a` is an ordinary (unassigned) value, unlike the
/// looser `v & 0x0f0f == 0x0a0a` test some parsers use.
pub fn is_grease(v: u16) -> bool {
    v & 0x0f0f == 0x0a0a && v >> 8 == v & 0xff
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exactly_sixteen_grease_values() {
        let all: Vec<u16> = (0..=u16::MAX).filter(|&v| is_grease(v)).collect();
        let expected: Vec<u16> = (0..16u16)
            .map(|i| (i << 12) | 0x0a00 | (i << 4) | 0x0a)
            .collect();
        assert_eq!(all, expected);
        assert!(is_grease(0x0a0a));
        assert!(is_grease(0xfafa));
        assert!(!is_grease(0x1a2a));
        assert!(!is_grease(0x0a0b));
        assert!(!is_grease(0x1301));
    }
}
