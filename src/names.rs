//! Host names and host patterns.
//!
//! A connection is judged and labelled by one name: the SNI, else the CONNECT host,
//! normalized here (lowercase, one trailing dot removed) and kept only when it is a valid
//! DNS host name. Peer-controlled strings become a [`HostName`] only through
//! [`HostName::parse`], so nothing a stranger sends can pick a rule or a label except a
//! validated host name.

use std::fmt;

/// A validated, normalized DNS host name (lowercase, no trailing dot).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct HostName(String);

impl HostName {
    /// Normalizes and validates `raw`. Returns `None` for anything that is not a DNS host
    /// name: empty labels, labels over 63 bytes, names over 253 bytes, characters other
    /// than letters, digits, `-` and `_`, a label starting or ending with `-`, and IP
    /// address literals.
    pub fn parse(raw: &str) -> Option<HostName> {
        let trimmed = raw.strip_suffix('.').unwrap_or(raw);
        if trimmed.is_empty() || trimmed.len() > 253 {
            return None;
        }
        let mut all_numeric_last = false;
        for label in trimmed.split('.') {
            let bytes = label.as_bytes();
            if bytes.is_empty() || bytes.len() > 63 {
                return None;
            }
            if !bytes
                .iter()
                .all(|b| b.is_ascii_alphanumeric() || *b == b'-' || *b == b'_')
            {
                return None;
            }
            if bytes.first() == Some(&b'-') || bytes.last() == Some(&b'-') {
                return None;
            }
            all_numeric_last = bytes.iter().all(u8::is_ascii_digit);
        }
        // A name whose last label is all digits is an IPv4 literal (or a mistake), never a
        // host name a certificate could be issued for.
        if all_numeric_last {
            return None;
        }
        Some(HostName(trimmed.to_ascii_lowercase()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for HostName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A host pattern from the configuration: an exact name, `*.domain` (any name with one or
/// more labels in front of `domain`, not `domain` itself), or `label.*` (a first label
/// followed by anything, e.g. `certauth.*`). Patterns match whole labels only.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HostPattern {
    Exact(HostName),
    AnyBelow(HostName),
    FirstLabel(String),
}

impl HostPattern {
    /// Parses a pattern; the error says what is wrong with it.
    pub fn parse(raw: &str) -> Result<HostPattern, String> {
        if let Some(domain) = raw.strip_prefix("*.") {
            let name = HostName::parse(domain).ok_or_else(|| {
                format!("{raw:?} is not a host pattern: {domain:?} is not a host name")
            })?;
            return Ok(HostPattern::AnyBelow(name));
        }
        if let Some(label) = raw.strip_suffix(".*") {
            let name = HostName::parse(label)
                .filter(|n| !n.as_str().contains('.'))
                .ok_or_else(|| {
                    format!("{raw:?} is not a host pattern: {label:?} is not one label")
                })?;
            return Ok(HostPattern::FirstLabel(name.0));
        }
        if raw.contains('*') {
            return Err(format!(
                "{raw:?} is not a host pattern: '*' is allowed only as \"*.domain\" or \"label.*\""
            ));
        }
        HostName::parse(raw)
            .map(HostPattern::Exact)
            .ok_or_else(|| format!("{raw:?} is not a valid host name"))
    }

    pub fn matches(&self, host: &HostName) -> bool {
        let h = host.as_str();
        match self {
            HostPattern::Exact(n) => n.as_str() == h,
            HostPattern::AnyBelow(d) => h
                .strip_suffix(d.as_str())
                .is_some_and(|prefix| prefix.len() > 1 && prefix.ends_with('.')),
            HostPattern::FirstLabel(label) => h
                .strip_prefix(label.as_str())
                .is_some_and(|rest| rest.len() > 1 && rest.starts_with('.')),
        }
    }
}

impl fmt::Display for HostPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HostPattern::Exact(n) => write!(f, "{n}"),
            HostPattern::AnyBelow(d) => write!(f, "*.{d}"),
            HostPattern::FirstLabel(l) => write!(f, "{l}.*"),
        }
    }
}

/// An ordered list of patterns; returns the first that matches.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HostPatterns(pub Vec<HostPattern>);

impl HostPatterns {
    pub fn matches(&self, host: &HostName) -> bool {
        self.0.iter().any(|p| p.matches(host))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(s: &str) -> HostName {
        HostName::parse(s).unwrap()
    }

    #[test]
    fn normalizes_case_and_one_trailing_dot() {
        assert_eq!(
            h("LOGIN.MicrosoftOnline.COM.").as_str(),
            "login.microsoftonline.com"
        );
        assert_eq!(HostName::parse("login.microsoftonline.com.."), None);
    }

    #[test]
    fn rejects_what_is_not_a_host_name() {
        for bad in [
            "",
            ".",
            "a..b",
            "-a.com",
            "a-.com",
            "a b.com",
            "a\r\nb.com",
            "10.0.0.1",
            "[::1]",
            "::1",
            "é.com",
            "a.com/x",
            &"a".repeat(64),
            &format!("{}.com", ["a"; 130].join(".")),
        ] {
            assert_eq!(HostName::parse(bad), None, "{bad:?}");
        }
        assert!(HostName::parse("_ldap._tcp.example.com").is_some());
        assert!(HostName::parse("localhost").is_some());
        assert!(HostName::parse("1x.example.com").is_some());
    }

    #[test]
    fn patterns_match_whole_labels() {
        let any = HostPattern::parse("*.example.com").unwrap();
        assert!(any.matches(&h("a.example.com")));
        assert!(any.matches(&h("a.b.example.com")));
        assert!(!any.matches(&h("example.com")));
        assert!(!any.matches(&h("badexample.com")));
        let exact = HostPattern::parse("Login.MicrosoftOnline.com").unwrap();
        assert!(exact.matches(&h("LOGIN.MICROSOFTONLINE.COM.")));
        assert!(!exact.matches(&h("xlogin.microsoftonline.com")));
        let first = HostPattern::parse("certauth.*").unwrap();
        assert!(first.matches(&h("certauth.login.microsoftonline.com")));
        assert!(!first.matches(&h("certauthx.example.com")));
        assert!(!first.matches(&h("certauth")));
    }

    #[test]
    fn bad_patterns_say_why() {
        for bad in ["*", "*.", "a.*.com", "**.a.com", "a.b.*", "10.0.0.1"] {
            assert!(HostPattern::parse(bad).is_err(), "{bad:?}");
        }
        assert_eq!(
            HostPattern::parse("*.Example.com").unwrap().to_string(),
            "*.example.com"
        );
    }
}
