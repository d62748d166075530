//! Likely software behind a ClientHello, its TLS library, and the fix to apply.
//!
//! In order: a rule of `config/fingerprints.toml` that names the software by the
//! connection's own User-Agent or request (upgrade mode), or by an exact fingerprint
//! captured here; else the TLS library the hello's structure names (`hello::stack`, from
//! real hellos), refined to finer software by a structural rule of that same library;
//! else unknown, with the generic advice. The fix is the rule's, else the library's
//! (`[[library]]`). Pure: hello in, match out.

use std::sync::OnceLock;

use serde::{Deserialize, Serialize};

use crate::hello::{
    ClientHelloSummary, HelloFormat, StackConfidence, StackVerdict, TlsLibrary, version_name,
};

/// The embedded rules file.
pub const FINGERPRINTS_TOML: &str = include_str!("../../config/fingerprints.toml");

/// How a software family was identified.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Confidence {
    /// An exact JA4/JA3 fingerprint captured from that software.
    Exact,
    /// The HTTP User-Agent (upgrade mode).
    UserAgent,
    /// A JA4 → User-Agent pair learned in upgrade mode, applied to a later connection.
    Learned,
    /// The hello's structure is close to one library's real hellos only.
    Structural,
    /// A weaker structural guess.
    Heuristic,
    Unknown,
}

impl Confidence {
    pub fn as_str(self) -> &'static str {
        match self {
            Confidence::Exact => "exact",
            Confidence::UserAgent => "user_agent",
            Confidence::Learned => "learned",
            Confidence::Structural => "structural",
            Confidence::Heuristic => "heuristic",
            Confidence::Unknown => "unknown",
        }
    }

    /// The confidence stored as [`Confidence::as_str`] wrote it.
    pub fn parse(s: &str) -> Option<Confidence> {
        [
            Confidence::Exact,
            Confidence::UserAgent,
            Confidence::Learned,
            Confidence::Structural,
            Confidence::Heuristic,
            Confidence::Unknown,
        ]
        .into_iter()
        .find(|c| c.as_str() == s)
    }

    /// How much a match says, for keeping the better of two: exact, User-Agent, learned,
    /// structural, heuristic, unknown.
    pub fn rank(self) -> u8 {
        match self {
            Confidence::Exact => 5,
            Confidence::UserAgent => 4,
            Confidence::Learned => 3,
            Confidence::Structural => 2,
            Confidence::Heuristic => 1,
            Confidence::Unknown => 0,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SoftwareMatch {
    pub tls_library: TlsLibrary,
    /// The finer software (the field is `software` in reports).
    pub family: String,
    pub confidence: Confidence,
    pub fix: String,
}

pub const UNKNOWN_FAMILY: &str = "unknown";
pub const GENERIC_FIX: &str = "Find the process on the source host that connects to this \
destination at the time shown (Windows: Get-NetTCPConnection -RemoteAddress ... | Select \
OwningProcess, or netstat -abno; Linux: ss -tnp), then enable TLS 1.2 for its runtime: for \
.NET Framework set SchUseStrongCrypto=1 under HKLM\\SOFTWARE\\Microsoft\\.NETFramework\\v4.0.30319 \
and its Wow6432Node twin; for Java set -Djdk.tls.client.protocols=TLSv1.2; otherwise remove any \
setting that pins TLS 1.0/1.1 or 3DES, or upgrade the software.";

/// What a rule can look at.
#[derive(Clone, Copy)]
pub struct Facts<'a> {
    pub hello: &'a ClientHelloSummary,
    pub ja4: &'a str,
    pub ja3_hash: &'a str,
    pub user_agent: Option<&'a str>,
    /// "METHOD /path" of the first HTTP request (upgrade mode).
    pub request: Option<&'a str>,
}

#[derive(Deserialize)]
struct RulesFile {
    software: Vec<RawRule>,
    #[serde(default)]
    library: Vec<RawLibrary>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLibrary {
    name: String,
    fix: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    family: String,
    tls_library: String,
    fix: String,
    evidence: String,
    #[serde(default)]
    heuristic: bool,
    #[serde(default)]
    ja4: Vec<String>,
    #[serde(default)]
    ja3_hash: Vec<String>,
    format: Option<String>,
    #[serde(default)]
    max_version: Vec<String>,
    first_cipher: Option<String>,
    #[serde(default)]
    has_ciphers: Vec<String>,
    #[serde(default)]
    any_ciphers: Vec<String>,
    #[serde(default)]
    lacks_ciphers: Vec<String>,
    ciphers_subset_of: Option<Vec<String>>,
    #[serde(default)]
    has_extensions: Vec<String>,
    #[serde(default)]
    lacks_extensions: Vec<String>,
    user_agent_contains: Option<String>,
    request_contains: Option<String>,
}

#[derive(Debug)]
struct Rule {
    family: String,
    tls_library: TlsLibrary,
    fix: String,
    heuristic: bool,
    ja4: Vec<String>,
    ja3_hash: Vec<String>,
    format: Option<HelloFormat>,
    max_version: Vec<String>,
    first_cipher: Option<u32>,
    has_ciphers: Vec<u32>,
    any_ciphers: Vec<u32>,
    lacks_ciphers: Vec<u32>,
    ciphers_subset_of: Option<Vec<u32>>,
    has_extensions: Vec<u16>,
    lacks_extensions: Vec<u16>,
    user_agent_contains: Option<String>,
    request_contains: Option<String>,
}

/// The parsed rules.
#[derive(Debug)]
pub struct SoftwareDb {
    rules: Vec<Rule>,
    fixes: Vec<(TlsLibrary, String)>,
}

fn hex(s: &str) -> Result<u32, String> {
    let digits = s
        .strip_prefix("0x")
        .ok_or_else(|| format!("{s:?}: write codes as \"0x002f\""))?;
    u32::from_str_radix(digits, 16).map_err(|_| format!("{s:?} is not a hex code"))
}

fn hexes(v: &[String]) -> Result<Vec<u32>, String> {
    v.iter().map(|s| hex(s)).collect()
}

fn ext_codes(v: &[String]) -> Result<Vec<u16>, String> {
    v.iter()
        .map(|s| {
            hex(s)
                .and_then(|c| u16::try_from(c).map_err(|_| format!("{s:?}: not an extension type")))
        })
        .collect()
}

impl SoftwareDb {
    /// Parses a rules file; the error names the rule and the problem.
    pub fn parse(text: &str) -> Result<SoftwareDb, String> {
        let file: RulesFile = toml::from_str(text).map_err(|e| e.to_string())?;
        let mut rules = Vec::with_capacity(file.software.len());
        for (i, r) in file.software.into_iter().enumerate() {
            let at = |e: String| format!("software[{i}] ({}): {e}", r.family);
            if r.evidence.trim().is_empty() {
                return Err(at("every rule needs its evidence".into()));
            }
            let format = match r.format.as_deref() {
                None => None,
                Some("tls") => Some(HelloFormat::Tls),
                Some("sslv2") => Some(HelloFormat::Sslv2),
                Some(other) => return Err(at(format!("format {other:?}: \"tls\" or \"sslv2\""))),
            };
            let exact = !r.ja4.is_empty() || !r.ja3_hash.is_empty();
            if exact == r.heuristic && r.user_agent_contains.is_none() {
                return Err(at(
                    "a rule is either exact (ja4/ja3_hash) or heuristic = true".into(),
                ));
            }
            let tls_library = TlsLibrary::parse(&r.tls_library).ok_or_else(|| {
                at(format!(
                    "tls_library {:?} is not a known library",
                    r.tls_library
                ))
            })?;
            rules.push(Rule {
                tls_library,
                first_cipher: r.first_cipher.as_deref().map(hex).transpose().map_err(at)?,
                has_ciphers: hexes(&r.has_ciphers).map_err(at)?,
                any_ciphers: hexes(&r.any_ciphers).map_err(at)?,
                lacks_ciphers: hexes(&r.lacks_ciphers).map_err(at)?,
                ciphers_subset_of: r
                    .ciphers_subset_of
                    .as_deref()
                    .map(hexes)
                    .transpose()
                    .map_err(at)?,
                has_extensions: ext_codes(&r.has_extensions).map_err(at)?,
                lacks_extensions: ext_codes(&r.lacks_extensions).map_err(at)?,
                family: r.family,
                fix: r.fix,
                heuristic: r.heuristic,
                ja4: r.ja4,
                ja3_hash: r.ja3_hash,
                format,
                max_version: r.max_version,
                user_agent_contains: r.user_agent_contains,
                request_contains: r.request_contains,
            });
        }
        let mut fixes = Vec::new();
        for l in file.library {
            let lib = TlsLibrary::parse(&l.name)
                .ok_or_else(|| format!("library {:?} is not a known library", l.name))?;
            fixes.push((lib, l.fix));
        }
        Ok(SoftwareDb { rules, fixes })
    }

    /// The fix for a library, when no rule has a finer one.
    pub fn library_fix(&self, lib: TlsLibrary) -> &str {
        self.fixes
            .iter()
            .find(|(l, _)| *l == lib)
            .map_or(GENERIC_FIX, |(_, f)| f.as_str())
    }

    /// The embedded rules (parsed once). A broken embedded file is a build defect caught by
    /// the tests; at run time it degrades to "unknown" for everything.
    pub fn embedded() -> &'static SoftwareDb {
        static DB: OnceLock<SoftwareDb> = OnceLock::new();
        DB.get_or_init(|| {
            SoftwareDb::parse(FINGERPRINTS_TOML).unwrap_or_else(|e| {
                tracing::error!(error = %e, "config/fingerprints.toml is invalid; software is not identified");
                SoftwareDb {
                    rules: Vec::new(),
                    fixes: Vec::new(),
                }
            })
        })
    }

    /// The software of a hello whose library the classifier judged as `stack`.
    pub fn identify(&self, f: &Facts<'_>, stack: &StackVerdict) -> SoftwareMatch {
        // The connection's own words (User-Agent, request) or an exact fingerprint.
        if let Some(r) = self.rules.iter().find(|r| !r.heuristic && r.matches(f)) {
            let confidence = if r.ja4.is_empty() && r.ja3_hash.is_empty() {
                Confidence::UserAgent
            } else {
                Confidence::Exact
            };
            return self.by_rule(r, confidence, stack);
        }
        let (lib, confidence) =
            match stack.confidence {
                StackConfidence::Exact => (stack.library, Confidence::Exact),
                StackConfidence::Structural => (stack.library, Confidence::Structural),
                StackConfidence::Unknown => {
                    // A weaker guess that does not name a library (e.g. an SSLv2-format hello).
                    return match self.rules.iter().find(|r| {
                        r.heuristic && r.tls_library == TlsLibrary::Unknown && r.matches(f)
                    }) {
                        Some(r) => self.by_rule(r, Confidence::Heuristic, stack),
                        None => unknown(),
                    };
                }
            };
        // A structural rule of the same library may name finer software.
        if let Some(r) = self
            .rules
            .iter()
            .find(|r| r.heuristic && r.tls_library == lib && r.matches(f))
        {
            return self.by_rule(r, confidence, stack);
        }
        SoftwareMatch {
            tls_library: lib,
            family: match &stack.software {
                Some(s) => format!("{} ({s})", lib.display()),
                None => lib.display().to_string(),
            },
            confidence,
            fix: self.library_fix(lib).to_string(),
        }
    }

    /// Software named by a User-Agent learned for this hello's JA4 in upgrade mode: a
    /// User-Agent rule that matches it, with confidence `learned` and the evidence named.
    pub fn identify_learned(
        &self,
        f: &Facts<'_>,
        learned_ua: &str,
        stack: &StackVerdict,
    ) -> Option<SoftwareMatch> {
        let learned = Facts {
            user_agent: Some(learned_ua),
            request: None,
            ..*f
        };
        let r = self
            .rules
            .iter()
            .find(|r| !r.heuristic && r.user_agent_contains.is_some() && r.matches(&learned))?;
        let mut m = self.by_rule(r, Confidence::Learned, stack);
        m.family = format!(
            "{} (learned: User-Agent {learned_ua:?} seen with this JA4 in upgrade mode)",
            m.family
        );
        Some(m)
    }

    fn by_rule(&self, r: &Rule, confidence: Confidence, stack: &StackVerdict) -> SoftwareMatch {
        SoftwareMatch {
            tls_library: match r.tls_library {
                TlsLibrary::Unknown => stack.library,
                l => l,
            },
            family: r.family.clone(),
            confidence,
            fix: r.fix.clone(),
        }
    }
}

fn unknown() -> SoftwareMatch {
    SoftwareMatch {
        tls_library: TlsLibrary::Unknown,
        family: UNKNOWN_FAMILY.to_string(),
        confidence: Confidence::Unknown,
        fix: GENERIC_FIX.to_string(),
    }
}

impl Rule {
    fn matches(&self, f: &Facts<'_>) -> bool {
        let h = f.hello;
        let offers = |c: &u32| h.cipher_suites.contains(c);
        let has_ext = |e: &u16| h.extensions.contains(e);
        (self.ja4.is_empty() || self.ja4.iter().any(|j| j == f.ja4))
            && (self.ja3_hash.is_empty() || self.ja3_hash.iter().any(|j| j == f.ja3_hash))
            && self.format.is_none_or(|fmt| fmt == h.format)
            && (self.max_version.is_empty()
                || self
                    .max_version
                    .iter()
                    .any(|v| v == version_name(h.max_version())))
            && self
                .first_cipher
                .is_none_or(|c| h.cipher_suites.first() == Some(&c))
            && self.has_ciphers.iter().all(offers)
            && (self.any_ciphers.is_empty() || self.any_ciphers.iter().any(offers))
            && !self.lacks_ciphers.iter().any(offers)
            && self
                .ciphers_subset_of
                .as_ref()
                .is_none_or(|set| h.cipher_suites.iter().all(|c| set.contains(c)))
            && self.has_extensions.iter().all(has_ext)
            && !self.lacks_extensions.iter().any(has_ext)
            && self
                .user_agent_contains
                .as_ref()
                .is_none_or(|needle| f.user_agent.is_some_and(|ua| ua.contains(needle.as_str())))
            && self
                .request_contains
                .as_ref()
                .is_none_or(|needle| f.request.is_some_and(|r| r.contains(needle.as_str())))
    }
}

/// Identifies the software of a hello (and its HTTP request, when known).
pub fn identify(
    hello: &ClientHelloSummary,
    user_agent: Option<&str>,
    request: Option<&str>,
) -> SoftwareMatch {
    let ja4 = hello.ja4();
    let ja3_hash = hello.ja3_hash();
    let facts = Facts {
        hello,
        ja4: &ja4,
        ja3_hash: &ja3_hash,
        user_agent,
        request,
    };
    SoftwareDb::embedded().identify(&facts, &crate::hello::classify_stack(hello))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hello::{Detection, detect_client_hello};

    fn fixture(name: &str) -> ClientHelloSummary {
        let path = format!("{}/tests/fixtures/{name}.bin", env!("CARGO_MANIFEST_DIR"));
        match detect_client_hello(&std::fs::read(path).unwrap(), 1 << 16) {
            Detection::Hello(h) => *h,
            other => panic!("{name}: {other:?}"),
        }
    }

    /// A hand-built hello (the fields the rules look at).
    fn built(
        format: HelloFormat,
        version: u16,
        suites: &[u32],
        exts: &[u16],
    ) -> ClientHelloSummary {
        let mut h = detect_hello_template();
        h.format = format;
        h.client_version = version;
        h.supported_versions.clear();
        h.cipher_suites = suites.to_vec();
        h.extensions = exts.to_vec();
        h.alpn.clear();
        h.alpn_first_raw = None;
        h
    }

    fn detect_hello_template() -> ClientHelloSummary {
        fixture("curl_tls10")
    }

    fn family(h: &ClientHelloSummary, ua: Option<&str>, req: Option<&str>) -> (String, Confidence) {
        let m = identify(h, ua, req);
        (m.family, m.confidence)
    }

    #[test]
    fn the_embedded_rules_parse() {
        let db = SoftwareDb::parse(FINGERPRINTS_TOML).unwrap();
        assert!(db.rules.len() >= 15);
    }

    #[test]
    fn every_captured_client_is_named_exactly() {
        for (name, fam) in [
            ("curl_default", "curl (OpenSSL 3.0)"),
            ("curl_tls10", "curl (OpenSSL 3.0)"),
            ("curl_tls11", "curl (OpenSSL 3.0)"),
            ("curl_tls12", "curl (OpenSSL 3.0)"),
            ("curl_tls13", "curl (OpenSSL 3.0)"),
            ("openssl_default", "OpenSSL 3.0 (openssl s_client)"),
            ("openssl_tls10", "OpenSSL 3.0 (openssl s_client)"),
            ("openssl_tls13", "OpenSSL 3.0 (openssl s_client)"),
            ("python_default", "Python 3 ssl (OpenSSL 3.0)"),
            (
                "java17_httpclient",
                "Java 17 (JSSE, java.net.http.HttpClient)",
            ),
            ("node20_https", "Node.js 20 (https)"),
            ("gnutls_3des", "GnuTLS (gnutls-cli)"),
            ("chromium", "Chromium / Chrome"),
        ] {
            assert_eq!(
                family(&fixture(name), None, None),
                (fam.to_string(), Confidence::Exact),
                "{name}"
            );
        }
    }

    const SCHANNEL_TLS10: &[u32] = &[0xc00a, 0xc009, 0xc014, 0xc013, 0x0035, 0x002f, 0x000a];
    const SCHANNEL_EXTS: &[u16] = &[0x0000, 0x0005, 0x000a, 0x000b, 0x0017, 0xff01];

    /// What the embedded rules make of `h` when the classifier said `lib` (`None`: unknown).
    fn judged(
        h: &ClientHelloSummary,
        lib: Option<TlsLibrary>,
        ua: Option<&str>,
        req: Option<&str>,
    ) -> SoftwareMatch {
        let (ja4, ja3_hash) = (h.ja4(), h.ja3_hash());
        let facts = Facts {
            hello: h,
            ja4: &ja4,
            ja3_hash: &ja3_hash,
            user_agent: ua,
            request: req,
        };
        let stack = StackVerdict {
            library: lib.unwrap_or(TlsLibrary::Unknown),
            confidence: match lib {
                Some(_) => StackConfidence::Structural,
                None => StackConfidence::Unknown,
            },
            software: None,
            similarity: 0.9,
        };
        SoftwareDb::embedded().identify(&facts, &stack)
    }

    #[test]
    fn schannel_rules_refine_an_schannel_verdict_and_nothing_else() {
        let h = built(HelloFormat::Tls, 0x0301, SCHANNEL_TLS10, SCHANNEL_EXTS);
        let m = judged(&h, Some(TlsLibrary::Schannel), None, None);
        assert!(
            m.family
                .starts_with("Windows SChannel with TLS 1.0 default"),
            "{m:?}"
        );
        assert_eq!(
            (m.tls_library, m.confidence),
            (TlsLibrary::Schannel, Confidence::Structural)
        );
        // The same hello with RC4 still offered: Windows 7 / 2008 R2.
        let mut rc4 = SCHANNEL_TLS10.to_vec();
        rc4.extend([0x0005, 0x0004]);
        let h7 = built(HelloFormat::Tls, 0x0301, &rc4, SCHANNEL_EXTS);
        let m7 = judged(&h7, Some(TlsLibrary::Schannel), None, None);
        assert!(
            m7.family.starts_with("Windows 7 / Server 2008 R2"),
            "{m7:?}"
        );
        // Thin evidence: unknown, with the generic advice, never an SChannel guess.
        let none = judged(&h, None, None, None);
        assert_eq!(
            (none.tls_library, none.confidence),
            (TlsLibrary::Unknown, Confidence::Unknown)
        );
        assert_eq!(none.fix, GENERIC_FIX);
        // Another library's verdict keeps that library's fix.
        let o = judged(&h, Some(TlsLibrary::Openssl), None, None);
        assert_eq!(o.family, "OpenSSL / LibreSSL");
        assert!(
            !o.fix.contains("SchUseStrongCrypto") && !o.fix.contains("KB3140245"),
            "{o:?}"
        );
        // A TLS 1.2 SChannel hello is not the TLS 1.0 default.
        let h12 = built(HelloFormat::Tls, 0x0303, SCHANNEL_TLS10, SCHANNEL_EXTS);
        let m12 = judged(&h12, Some(TlsLibrary::Schannel), None, None);
        assert_eq!(m12.family, "Windows SChannel");
        assert!(m12.fix.contains("KB3140245") && m12.fix.contains("SchUseStrongCrypto"));
    }

    #[test]
    fn powershell_and_adal_by_their_requests() {
        let h = built(HelloFormat::Tls, 0x0301, SCHANNEL_TLS10, SCHANNEL_EXTS);
        let ua = "Mozilla/5.0 (Windows NT; Windows NT 10.0; en-US) WindowsPowerShell/5.1.14393.206";
        let ps = judged(&h, None, Some(ua), None);
        assert_eq!(
            (ps.family.as_str(), ps.confidence, ps.tls_library),
            (
                "Windows PowerShell 5.1 (.NET Framework)",
                Confidence::UserAgent,
                TlsLibrary::Schannel
            )
        );
        let adal = judged(
            &h,
            Some(TlsLibrary::Schannel),
            None,
            Some("POST /contoso.onmicrosoft.com/oauth2/token"),
        );
        assert!(adal.family.starts_with("ADAL"), "{adal:?}");
        assert_eq!(adal.confidence, Confidence::Structural);
        let msal = judged(
            &h,
            Some(TlsLibrary::Schannel),
            None,
            Some("POST /contoso.onmicrosoft.com/oauth2/v2.0/token"),
        );
        assert!(!msal.family.starts_with("ADAL"), "{msal:?}");
    }

    #[test]
    fn old_runtimes_by_structure() {
        let java6 = built(
            HelloFormat::Sslv2,
            0x0301,
            &[0x000004, 0x00000a, 0x010080],
            &[],
        );
        let j6 = judged(&java6, None, None, None);
        assert!(j6.family.starts_with("Java 6"), "{j6:?}");
        assert_eq!(
            (j6.tls_library, j6.confidence),
            (TlsLibrary::Unknown, Confidence::Heuristic)
        );
        let java7 = built(
            HelloFormat::Tls,
            0x0301,
            &[
                0xc009, 0xc013, 0x002f, 0xc004, 0xc00e, 0x0033, 0x0032, 0xc007, 0xc011, 0x0005,
                0xc008, 0xc012, 0x000a, 0x0004, 0x00ff,
            ],
            &[0x000a, 0x000b, 0x0000],
        );
        let j7 = judged(&java7, Some(TlsLibrary::Java), None, None);
        assert!(j7.family.starts_with("Java 7"), "{j7:?}");
        let heartbeat = built(
            HelloFormat::Tls,
            0x0303,
            &[0xc030, 0x009f, 0x00ff],
            &[0x0000, 0x000b, 0x000a, 0x0023, 0x000d, 0x000f],
        );
        let hb = judged(&heartbeat, Some(TlsLibrary::Openssl), None, None);
        assert!(hb.family.starts_with("OpenSSL 1.0.1/1.0.2"), "{hb:?}");
        let ossl098 = built(
            HelloFormat::Tls,
            0x0301,
            &[0x0039, 0x0038, 0x0035, 0x0016, 0x000a, 0x00ff],
            &[0x0000, 0x000b, 0x000a, 0x0023],
        );
        let o98 = judged(&ossl098, Some(TlsLibrary::Openssl), None, None);
        assert!(o98.family.starts_with("OpenSSL 0.9.8/1.0.0"), "{o98:?}");
        let unknown = built(HelloFormat::Tls, 0x0301, &[0x1234], &[0x0000]);
        let m = identify(&unknown, None, None);
        assert_eq!(
            (m.family.as_str(), m.confidence, m.tls_library),
            (UNKNOWN_FAMILY, Confidence::Unknown, TlsLibrary::Unknown)
        );
        assert!(m.fix.contains("SchUseStrongCrypto"));
    }

    #[test]
    fn a_user_agent_learned_for_a_ja4_names_later_connections() {
        let h = built(HelloFormat::Tls, 0x0301, SCHANNEL_TLS10, SCHANNEL_EXTS);
        let (ja4, ja3_hash) = (h.ja4(), h.ja3_hash());
        let facts = Facts {
            hello: &h,
            ja4: &ja4,
            ja3_hash: &ja3_hash,
            user_agent: None,
            request: None,
        };
        let stack = crate::hello::classify_stack(&h);
        let db = SoftwareDb::embedded();
        let m = db
            .identify_learned(
                &facts,
                "Mozilla/5.0 (Windows NT 10.0) WindowsPowerShell/5.1.19041.1",
                &stack,
            )
            .unwrap();
        assert_eq!(
            (m.confidence, m.tls_library),
            (Confidence::Learned, TlsLibrary::Schannel)
        );
        assert!(
            m.family.starts_with("Windows PowerShell 5.1") && m.family.contains("learned"),
            "{m:?}"
        );
        assert!(
            db.identify_learned(&facts, "curl/8.0", &stack).is_none(),
            "no rule names curl's User-Agent"
        );
        let mut o = super::super::Observation {
            ja4: ja4.clone(),
            ..Default::default()
        };
        o.identify(&h, None, None);
        o.identify_learned(&h, "WindowsPowerShell/5.1");
        assert_eq!(o.software_confidence, "learned");
        assert_eq!(o.user_agent.as_deref(), Some("WindowsPowerShell/5.1"));
    }

    #[test]
    fn every_library_has_its_fix() {
        let db = SoftwareDb::embedded();
        for l in TlsLibrary::ALL {
            let fix = db.library_fix(l);
            assert_eq!(l == TlsLibrary::Unknown, fix == GENERIC_FIX, "{l:?}");
        }
    }

    #[test]
    fn bad_rules_are_refused_with_their_name() {
        let rule = |extra: &str| {
            format!(
                "[[software]]\nfamily = \"x\"\ntls_library = \"openssl\"\nfix = \"f\"\nevidence = \"e\"\n{extra}"
            )
        };
        let e = SoftwareDb::parse(&rule("ja4 = [\"a\"]\nhas_ciphers = [\"002f\"]\n")).unwrap_err();
        assert!(e.contains("software[0] (x)") && e.contains("0x002f"), "{e}");
        let e = SoftwareDb::parse(&rule("max_version = [\"TLS1.0\"]\n")).unwrap_err();
        assert!(e.contains("heuristic"), "{e}");
        assert!(SoftwareDb::parse(&rule("bogus = 1\n")).is_err());
        let e = SoftwareDb::parse(&rule("heuristic = true\n").replace("openssl", "schanel"))
            .unwrap_err();
        assert!(e.contains("schanel"), "{e}");
    }
}
