//! Text as Windows tools write it: UTF-8 with or without BOM, UTF-16 with BOM (PowerShell,
//! Excel), CP932 without BOM (Japanese Excel's "CSV"); times as ISO 8601 or PowerShell's culture formats (`12/1/2026 9:14:07 AM`,
//! `2026/12/01 9:14:07`), all UTC.

/// Day and month order of a culture date such as `1/12/2026`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum DateOrder {
    /// en-US: month/day/year.
    Mdy,
    /// en-GB and most others: day/month/year.
    Dmy,
    /// Not given: a date whose day and month cannot be told apart (both 12 or less, and
    /// different) is refused, never guessed.
    #[default]
    Unsure,
}

/// Is `s` a culture date whose day and month cannot be told apart without `--date-order`?
pub fn ambiguous(s: &str) -> bool {
    parse_time(s, DateOrder::Unsure).is_none()
        && parse_time(s, DateOrder::Mdy).is_some()
        && parse_time(s, DateOrder::Dmy).is_some()
}

/// The file's text, its encoding found from its BOM (UTF-8 without one).
pub fn decode(bytes: &[u8]) -> Result<String, String> {
    let utf16 = |rest: &[u8], be: bool| {
        let units: Vec<u16> = rest
            .chunks_exact(2)
            .map(|c| {
                if be {
                    u16::from_be_bytes([c[0], c[1]])
                } else {
                    u16::from_le_bytes([c[0], c[1]])
                }
            })
            .collect();
        String::from_utf16(&units).map_err(|_| "invalid UTF-16".to_string())
    };
    match bytes {
        [0xef, 0xbb, 0xbf, rest @ ..] => {
            String::from_utf8(rest.to_vec()).map_err(|_| "invalid UTF-8".into())
        }
        [0xff, 0xfe, rest @ ..] => utf16(rest, false),
        [0xfe, 0xff, rest @ ..] => utf16(rest, true),
        _ => match std::str::from_utf8(bytes) {
            Ok(s) => Ok(s.to_string()),
            // Japanese Excel saves "CSV" in CP932 (WHATWG's Shift_JIS is Windows-31J).
            Err(_) => encoding_rs::SHIFT_JIS
                .decode_without_bom_handling_and_without_replacement(bytes)
                .map(|s| s.into_owned())
                .ok_or_else(|| "neither UTF-8, UTF-16 with a BOM, nor CP932 (Shift_JIS)".into()),
        },
    }
}

fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    // Howard Hinnant's algorithm: days since 1970-01-01.
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn unix(y: i64, mo: i64, d: i64, h: i64, mi: i64, s: f64) -> Option<f64> {
    // Years outside 1..=9999 are not dates an export writes (and keep the arithmetic small).
    let ok = (1..=9999).contains(&y)
        && (1..=12).contains(&mo)
        && (1..=31).contains(&d)
        && (0..24).contains(&h)
        && (0..60).contains(&mi)
        && (0.0..61.0).contains(&s);
    ok.then(|| (days_from_civil(y, mo, d) * 86_400 + h * 3600 + mi * 60) as f64 + s)
}

/// Unix seconds (with fraction) of a UTC time as exports write it; `None` if unreadable.
pub fn parse_time(s: &str, order: DateOrder) -> Option<f64> {
    let s = s.trim().trim_end_matches('Z').trim_end_matches(" UTC");
    let (date, time) = s.split_once(['T', ' '])?;
    let (time, pm) = match time.trim().rsplit_once(' ') {
        Some((t, "PM")) => (t, Some(true)),
        Some((t, "AM")) => (t, Some(false)),
        _ => (time.trim(), None),
    };
    // A zone suffix of ISO 8601 (+00:00): exports are UTC.
    let time = time.split(['+']).next().unwrap_or(time);
    let num = |x: &str| x.trim().parse::<i64>().ok();
    let (y, mo, d) = if date.contains('-') {
        let mut p = date.split('-');
        (num(p.next()?)?, num(p.next()?)?, num(p.next()?)?)
    } else {
        let p: Vec<&str> = date.split('/').collect();
        let [a, b, c] = p[..] else { return None };
        if a.len() == 4 {
            (num(a)?, num(b)?, num(c)?)
        } else {
            let (x, y) = (num(a)?, num(b)?);
            match order {
                DateOrder::Mdy => (num(c)?, x, y),
                DateOrder::Dmy => (num(c)?, y, x),
                DateOrder::Unsure if x > 12 || x == y => (num(c)?, y, x),
                DateOrder::Unsure if y > 12 => (num(c)?, x, y),
                DateOrder::Unsure => return None,
            }
        }
    };
    let mut t = time.split(':');
    let mut h = num(t.next()?)?;
    let mi = num(t.next()?)?;
    let sec: f64 = t.next().unwrap_or("0").parse().ok()?;
    match pm {
        Some(true) if h < 12 => h += 12,
        Some(false) if h == 12 => h = 0,
        _ => {}
    }
    unix(y, mo, d, h, mi, sec)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_as_exports_write_them() {
        let iso = parse_time("2026-12-01T09:14:07Z", DateOrder::Mdy).unwrap();
        assert_eq!(iso, 1_796_116_447.0);
        assert_eq!(
            parse_time("12/1/2026 9:14:07 AM", DateOrder::Mdy),
            Some(iso)
        );
        assert_eq!(parse_time("1/12/2026 09:14:07", DateOrder::Dmy), Some(iso));
        assert_eq!(parse_time("2026/12/01 9:14:07", DateOrder::Mdy), Some(iso));
        assert_eq!(
            parse_time("2026-12-01 09:14:07.250", DateOrder::Mdy),
            Some(iso + 0.25)
        );
        assert_eq!(
            parse_time("12/1/2026 9:14:07 PM", DateOrder::Mdy),
            Some(iso + 43_200.0)
        );
        assert_eq!(parse_time("yesterday", DateOrder::Mdy), None);
        assert_eq!(
            parse_time("9223372036854775807-12-01T09:14:07Z", DateOrder::Mdy),
            None
        );
        assert_eq!(parse_time("13/13/2026 9:14:07", DateOrder::Mdy), None);
        // Without --date-order: told apart when one part is above 12, else refused.
        assert_eq!(
            parse_time("12/13/2026 9:14:07", DateOrder::Unsure),
            parse_time("12/13/2026 9:14:07", DateOrder::Mdy)
        );
        assert_eq!(
            parse_time("13/12/2026 9:14:07", DateOrder::Unsure),
            parse_time("13/12/2026 9:14:07", DateOrder::Dmy)
        );
        assert_eq!(parse_time("1/12/2026 9:14:07", DateOrder::Unsure), None);
        assert!(ambiguous("1/12/2026 9:14:07") && !ambiguous("2026-12-01T09:14:07Z"));
        assert_eq!(
            parse_time("2026-12-01T09:14:07Z", DateOrder::Unsure),
            Some(iso)
        );
    }

    #[test]
    fn boms_choose_the_encoding() {
        assert_eq!(decode(b"\xef\xbb\xbfa,b").unwrap(), "a,b");
        let le: Vec<u8> = [0xff, 0xfe]
            .into_iter()
            .chain("é,x".encode_utf16().flat_map(u16::to_le_bytes))
            .collect();
        assert_eq!(decode(&le).unwrap(), "é,x");
        let be: Vec<u8> = [0xfe, 0xff]
            .into_iter()
            .chain("ja".encode_utf16().flat_map(u16::to_be_bytes))
            .collect();
        assert_eq!(decode(&be).unwrap(), "ja");
        assert!(decode(b"\xff\x00\x01").is_err());
        // CP932 as Japanese Excel writes it: 日付 (UTC),ユーザー名
        let (cp932, _, bad) =
            encoding_rs::SHIFT_JIS.encode("日付 (UTC),ユーザー名,サインインのエラー コード");
        assert!(!bad);
        assert_eq!(
            decode(&cp932).unwrap(),
            "日付 (UTC),ユーザー名,サインインのエラー コード"
        );
        assert!(decode(b"\x82\xff\xfd").is_err(), "neither UTF-8 nor CP932");
    }
}
