//! ClientHello extensions: walk the block and copy out the values tlspeek reports.
//!
//! The walk is done here rather than with tls-parser's extension parsers: those stop
//! quietly at the first extension they dislike (including valid but unusual contents of
//! extensions we do not read), and they fold every `0x?a?a` type into one GREASE value,
//! losing the exact type of a non-GREASE `0x1a2a`. Here the framing (type, length) must
//! cover the block exactly, the extensions tlspeek reads must be well formed, and the
//! contents of the others are not judged. When a type repeats (forbidden by RFC 8446
//! §4.2), every occurrence is listed and the first one's value is used.

use super::Malformed;
use super::client::ClientHelloSummary;
use super::grease::is_grease;
use super::reader::{Reader, u16_items};

pub(crate) const EXT_SERVER_NAME: u16 = 0x0000;
pub(crate) const EXT_SUPPORTED_GROUPS: u16 = 0x000a;
pub(crate) const EXT_EC_POINT_FORMATS: u16 = 0x000b;
pub(crate) const EXT_SIGNATURE_ALGORITHMS: u16 = 0x000d;
pub(crate) const EXT_ALPN: u16 = 0x0010;
pub(crate) const EXT_SUPPORTED_VERSIONS: u16 = 0x002b;
pub(crate) const EXT_ECH: u16 = 0xfe0d;

/// Fills the extension-derived fields of `h` from a ClientHello extension block (the bytes
/// after its 2-byte length).
pub(crate) fn parse_client_extensions(
    block: &[u8],
    h: &mut ClientHelloSummary,
) -> Result<(), Malformed> {
    let mut r = Reader::new(block);
    // Every extension takes at least 4 bytes; real hellos have fewer than 32.
    h.extensions.reserve_exact((block.len() / 4).min(32));
    // Which of the extensions we read have been seen (first occurrence wins).
    let mut seen = [false; 6];
    while !r.is_empty() {
        let ty = r.u16().ok_or(Malformed("extension header"))?;
        let data = r.vec16().ok_or(Malformed("extension length"))?;
        if is_grease(ty) {
            let at = h.extensions.len() + h.grease.extensions.len();
            h.grease.extensions.extend(u8::try_from(at).ok());
            continue;
        }
        h.extensions.push(ty);
        let slot = match ty {
            EXT_SERVER_NAME => 0,
            EXT_ALPN => 1,
            EXT_SUPPORTED_GROUPS => 2,
            EXT_EC_POINT_FORMATS => 3,
            EXT_SIGNATURE_ALGORITHMS => 4,
            EXT_SUPPORTED_VERSIONS => 5,
            EXT_ECH => {
                h.ech = true;
                continue;
            }
            _ => continue,
        };
        if let Some(s) = seen.get_mut(slot) {
            if *s {
                continue;
            }
            *s = true;
        }
        match ty {
            EXT_SERVER_NAME => {
                let (sni, cut) = parse_sni(data)?;
                h.sni = sni;
                h.sni_cut = cut;
            }
            EXT_ALPN => parse_alpn(data, h)?,
            EXT_SUPPORTED_GROUPS => {
                let list = whole(data, Reader::vec16)?;
                h.grease.groups =
                    super::client::grease_positions(u16_items(list).into_iter().flatten());
                h.groups = u16_list(list)?;
            }
            EXT_EC_POINT_FORMATS => h.point_formats = whole(data, Reader::vec8)?.to_vec(),
            EXT_SIGNATURE_ALGORITHMS => {
                h.signature_algorithms = u16_list(whole(data, Reader::vec16)?)?;
            }
            EXT_SUPPORTED_VERSIONS => {
                h.supported_versions = u16_list(whole(data, Reader::vec8)?)?;
            }
            _ => {}
        }
    }
    Ok(())
}

/// `data` must be exactly one length-prefixed vector.
fn whole<'a>(
    data: &'a [u8],
    read: impl FnOnce(&mut Reader<'a>) -> Option<&'a [u8]>,
) -> Result<&'a [u8], Malformed> {
    let mut r = Reader::new(data);
    match read(&mut r) {
        Some(v) if r.is_empty() => Ok(v),
        _ => Err(Malformed("extension contents")),
    }
}

fn u16_list(list: &[u8]) -> Result<Vec<u16>, Malformed> {
    let items = u16_items(list).ok_or(Malformed("odd list length"))?;
    let mut out = Vec::with_capacity(list.len() / 2);
    out.extend(items.filter(|&v| !is_grease(v)));
    Ok(out)
}

/// The most of an SNI kept: a DNS host name is at most 253 bytes, so anything longer is
/// abuse or garbage, and a 60 KB "name" must not be stored in every event line and row.
pub const MAX_SNI_BYTES: usize = 255;

/// First `host_name` (type 0) entry of a `ServerNameList`, at most `MAX_SNI_BYTES` of it
/// (cut at a character boundary), and whether it was cut. An empty extension (what a
/// server sends back) gives no name.
fn parse_sni(data: &[u8]) -> Result<(Option<String>, bool), Malformed> {
    if data.is_empty() {
        return Ok((None, false));
    }
    let mut names = Reader::new(whole(data, Reader::vec16)?);
    let (mut host, mut cut) = (None, false);
    while !names.is_empty() {
        let name_type = names.u8().ok_or(Malformed("server_name"))?;
        let name = names.vec16().ok_or(Malformed("server_name"))?;
        if name_type == 0 && host.is_none() {
            let mut text =
                String::from_utf8_lossy(&name[..name.len().min(MAX_SNI_BYTES)]).into_owned();
            cut = name.len() > MAX_SNI_BYTES;
            if text.len() > MAX_SNI_BYTES {
                // Replacement characters grew it: cut at the last boundary that fits.
                let mut end = MAX_SNI_BYTES;
                while !text.is_char_boundary(end) {
                    end -= 1;
                }
                text.truncate(end);
                cut = true;
            }
            host = Some(text);
        }
    }
    Ok((host, cut))
}

fn parse_alpn(data: &[u8], h: &mut ClientHelloSummary) -> Result<(), Malformed> {
    let mut names = Reader::new(whole(data, Reader::vec16)?);
    while !names.is_empty() {
        let name = names.vec8().ok_or(Malformed("alpn"))?;
        if h.alpn_first_raw.is_none() {
            h.alpn_first_raw = Some(name.to_vec());
        }
        h.alpn.push(String::from_utf8_lossy(name).into_owned());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::client::HelloFormat;
    use super::*;

    fn ext(ty: u16, data: &[u8]) -> Vec<u8> {
        let mut v = ty.to_be_bytes().to_vec();
        v.extend_from_slice(&(data.len() as u16).to_be_bytes());
        v.extend_from_slice(data);
        v
    }

    fn parse(block: &[u8]) -> Result<ClientHelloSummary, Malformed> {
        let mut h = ClientHelloSummary::empty(HelloFormat::Tls, 0x0301, 0x0303);
        parse_client_extensions(block, &mut h).map(|()| h)
    }

    #[test]
    fn reads_the_reported_extensions() {
        let mut block = ext(0x1a1a, &[]);
        block.extend(ext(0, b"\x00\x0e\x00\x00\x0bexample.com"));
        block.extend(ext(0x10, b"\x00\x0c\x02h2\x08http/1.1"));
        block.extend(ext(0x0a, &[0, 6, 0x2a, 0x2a, 0, 0x1d, 0, 0x17]));
        block.extend(ext(0x0b, &[1, 0]));
        block.extend(ext(0x0d, &[0, 4, 4, 3, 8, 4]));
        block.extend(ext(0x2b, &[6, 0x3a, 0x3a, 3, 4, 3, 3]));
        block.extend(ext(0xfe0d, &[1, 2, 3]));
        block.extend(ext(0x1a2a, &[]));
        let h = parse(&block).unwrap();
        assert_eq!(
            h.extensions,
            [0, 0x10, 0x0a, 0x0b, 0x0d, 0x2b, 0xfe0d, 0x1a2a]
        );
        assert_eq!(h.sni.as_deref(), Some("example.com"));
        assert_eq!(h.alpn, ["h2", "http/1.1"]);
        assert_eq!(h.alpn_first_raw.as_deref(), Some(&b"h2"[..]));
        assert_eq!(h.groups, [0x1d, 0x17]);
        assert_eq!(h.point_formats, [0]);
        assert_eq!(h.signature_algorithms, [0x0403, 0x0804]);
        assert_eq!(h.supported_versions, [0x0304, 0x0303]);
        assert!(h.ech);
    }

    #[test]
    fn unusual_contents_of_unread_extensions_are_accepted() {
        // encrypt_then_mac with a body, heartbeat empty: tls-parser rejects both.
        let mut block = ext(0x16, &[1, 2]);
        block.extend(ext(0x0f, &[]));
        let h = parse(&block).unwrap();
        assert_eq!(h.extensions, [0x16, 0x0f]);
    }

    #[test]
    fn lossy_text_and_raw_alpn() {
        let mut block = ext(0, b"\x00\x06\x00\x00\x03a\xffb");
        block.extend(ext(0x10, b"\x00\x03\x02\xabc"));
        let h = parse(&block).unwrap();
        assert_eq!(h.sni.as_deref(), Some("a\u{fffd}b"));
        assert_eq!(h.alpn, ["\u{fffd}c"]);
        assert_eq!(h.alpn_first_raw.as_deref(), Some(&[0xab, b'c'][..]));
    }

    #[test]
    fn first_occurrence_wins() {
        let mut block = ext(0, b"\x00\x04\x00\x00\x01a");
        block.extend(ext(0, b"\x00\x04\x00\x00\x01b"));
        let h = parse(&block).unwrap();
        assert_eq!(h.sni.as_deref(), Some("a"));
        assert_eq!(h.extensions, [0, 0]);
    }

    #[test]
    fn an_sni_longer_than_a_host_name_is_cut_and_flagged() {
        let long = vec![b'a'; 60_000];
        let mut list = vec![0u8];
        list.extend_from_slice(&(long.len() as u16).to_be_bytes());
        list.extend_from_slice(&long);
        let mut data = (list.len() as u16).to_be_bytes().to_vec();
        data.extend_from_slice(&list);
        let (sni, cut) = parse_sni(&data).unwrap();
        assert_eq!(sni.unwrap().len(), MAX_SNI_BYTES);
        assert!(cut);
        // Invalid bytes become U+FFFD (3 bytes): the cut stays within the cap.
        let bad = vec![0xffu8; 200];
        let mut list = vec![0u8];
        list.extend_from_slice(&(bad.len() as u16).to_be_bytes());
        list.extend_from_slice(&bad);
        let mut data = (list.len() as u16).to_be_bytes().to_vec();
        data.extend_from_slice(&list);
        let (sni, cut) = parse_sni(&data).unwrap();
        assert!(sni.unwrap().len() <= MAX_SNI_BYTES);
        assert!(cut);
        let (sni, cut) = parse_sni(b"\x00\x0e\x00\x00\x0bexample.com").unwrap();
        assert_eq!((sni.as_deref(), cut), (Some("example.com"), false));
    }

    #[test]
    fn empty_sni_extension_has_no_name() {
        let h = parse(&ext(0, &[])).unwrap();
        assert_eq!(h.sni, None);
        assert_eq!(h.extensions, [0]);
        let h = parse(&ext(0, b"\x00\x04\x01\x00\x01a")).unwrap();
        assert_eq!(h.sni, None, "only host_name entries count");
    }

    #[test]
    fn malformed_blocks() {
        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("truncated header", vec![0, 0, 0]),
            ("length past the end", vec![0, 0x15, 0, 5, 1]),
            ("sni list length", ext(0, b"\x00\x09\x00\x00\x01a")),
            ("sni name length", ext(0, b"\x00\x04\x00\x00\x05a")),
            ("alpn trailing byte", ext(0x10, b"\x00\x03\x02h2\x00")),
            ("alpn name length", ext(0x10, b"\x00\x03\x05h2")),
            ("groups odd", ext(0x0a, &[0, 3, 0, 0x1d, 0])),
            ("sigalgs short", ext(0x0d, &[0, 4, 4, 3])),
            ("versions odd", ext(0x2b, &[3, 3, 4, 3])),
            ("point formats", ext(0x0b, &[2, 0])),
        ];
        for (what, block) in cases {
            assert!(parse(&block).is_err(), "{what}");
        }
    }
}
