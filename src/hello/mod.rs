//! Pure TLS hello core: framing, ClientHello/ServerHello summaries, names, fingerprints,
//! legacy verdict. No I/O.
//! (Temporary interface stub on this branch; the real core lands from the `hello` branch.)

pub const MAX_HELLO_BYTES: usize = 64 * 1024;

pub enum Detection {
    NeedMore,
    Hello(Box<ClientHelloSummary>),
    NotTls,
    TooLarge,
}
pub fn detect_client_hello(_buf: &[u8], _max: usize) -> Detection {
    Detection::NotTls
}
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HelloFormat {
    Tls,
    Sslv2,
}
#[derive(Clone, Debug, PartialEq)]
pub struct ClientHelloSummary {
    pub format: HelloFormat,
    pub record_version: u16,
    pub client_version: u16,
    pub supported_versions: Vec<u16>,
    pub cipher_suites: Vec<u32>,
    pub extensions: Vec<u16>,
    pub sni: Option<String>,
    pub alpn: Vec<String>,
    pub alpn_first_raw: Option<Vec<u8>>,
    pub ech: bool,
    pub groups: Vec<u16>,
    pub point_formats: Vec<u8>,
    pub signature_algorithms: Vec<u16>,
    pub hello_len: usize,
}
impl ClientHelloSummary {
    pub fn max_version(&self) -> u16 {
        self.client_version
    }
    pub fn offers_3des(&self) -> bool {
        false
    }
    pub fn cipher_suites_hex(&self) -> Vec<String> {
        vec![]
    }
    pub fn ja3(&self) -> String {
        String::new()
    }
    pub fn ja3_hash(&self) -> String {
        String::new()
    }
    pub fn ja4(&self) -> String {
        String::new()
    }
}
pub fn version_name(_v: u16) -> &'static str {
    "unknown"
}
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum LegacyReason {
    NegotiatedSsl3,
    NegotiatedTls10,
    NegotiatedTls11,
    Negotiated3des,
    MaxVersionBelowTls12,
    Only3desCiphers,
}
impl LegacyReason {
    pub fn as_str(&self) -> &'static str {
        "x"
    }
}
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Verdict {
    pub legacy: bool,
    pub reasons: Vec<LegacyReason>,
}
pub fn classify_client_hello(_h: &ClientHelloSummary) -> Verdict {
    Verdict::default()
}
