//! One direction of a STARTTLS session, unit by unit, until TLS begins.

use super::Protocol;

/// Bytes of a unit kept for recognising a request or an answer: a command line, a tag or
/// the start of an LDAP message is far shorter.
const UNIT_PREFIX: usize = 128;

/// The StartTLS extended operation's name (RFC 4511 §4.14.1).
const LDAP_START_TLS_OID: &[u8] = b"1.3.6.1.4.1.1466.20037";

/// Which side of the session a scanner reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Client,
    Server,
}

/// What the bytes just fed were.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scan {
    /// All cleartext prelude.
    Prelude,
    /// TLS begins at this offset of the bytes just fed; the bytes before it are prelude.
    Tls(usize),
}

/// Where an LDAP message's BER encoding stands.
#[derive(Clone, Copy, Debug)]
enum Ber {
    Tag,
    Length,
    LongLength {
        left: u8,
        acc: usize,
    },
    Body {
        left: usize,
    },
    /// An encoding LDAP does not allow (indefinite or huge length): units are lost.
    Lost,
}

/// One direction of a session.
#[derive(Debug)]
pub struct Scanner {
    protocol: Protocol,
    role: Role,
    at_boundary: bool,
    unit: Vec<u8>,
    ber: Ber,
    fed: u64,
    asked: bool,
    last_unit_accepts: bool,
    tls: bool,
}

impl Scanner {
    pub fn new(protocol: Protocol, role: Role) -> Scanner {
        Scanner {
            protocol,
            role,
            at_boundary: true,
            unit: Vec::new(),
            ber: Ber::Tag,
            fed: 0,
            asked: false,
            last_unit_accepts: false,
            tls: false,
        }
    }

    /// Prelude bytes read so far.
    pub fn prelude_bytes(&self) -> u64 {
        self.fed
    }

    /// The client asked to upgrade (a client scanner's view).
    pub fn asked(&self) -> bool {
        self.asked
    }

    /// The server's last answer before its TLS was a positive answer to the upgrade (a
    /// server scanner's view, once TLS began).
    pub fn accepted(&self) -> bool {
        self.tls && self.last_unit_accepts
    }

    /// The server's last complete answer was a positive answer to the upgrade.
    pub fn last_answer_accepts(&self) -> bool {
        self.last_unit_accepts
    }

    /// TLS has begun on this side.
    pub fn tls(&self) -> bool {
        self.tls
    }

    /// The next bytes of this direction.
    pub fn feed(&mut self, bytes: &[u8]) -> Scan {
        if self.tls {
            return Scan::Tls(0);
        }
        for (i, &b) in bytes.iter().enumerate() {
            if self.at_boundary && self.tls_starts_with(b) {
                self.tls = true;
                return Scan::Tls(i);
            }
            if self.at_boundary {
                self.unit.clear();
                self.at_boundary = false;
            }
            self.fed += 1;
            if self.unit.len() < UNIT_PREFIX {
                self.unit.push(b);
            }
            if self.unit_ends_with(b) {
                self.finish_unit();
                self.at_boundary = true;
            }
        }
        Scan::Prelude
    }

    /// A TLS record's first byte where a unit would begin. The client's hello counts as
    /// the session's very first bytes (implicit TLS on a STARTTLS port) or once it asked;
    /// an SSLv2-compatible hello (high bit set) only once it asked, since text may carry
    /// 8-bit bytes. The server answers with a handshake or an alert record.
    fn tls_starts_with(&self, b: u8) -> bool {
        if matches!(self.ber, Ber::Lost) {
            return false;
        }
        match self.role {
            Role::Client => {
                (b == 0x16 && (self.fed == 0 || self.asked)) || (self.asked && b & 0x80 != 0)
            }
            Role::Server => b == 0x16 || b == 0x15,
        }
    }

    fn unit_ends_with(&mut self, b: u8) -> bool {
        match self.protocol {
            Protocol::Smtp | Protocol::Imap | Protocol::Pop3 => b == b'\n',
            Protocol::Xmpp => b == b'>',
            Protocol::Ldap => self.ber_step(b),
        }
    }

    /// One byte of an LDAP message; true when the message ends with it.
    fn ber_step(&mut self, b: u8) -> bool {
        let (next, ends) = match self.ber {
            Ber::Tag => (Ber::Length, false),
            Ber::Length => match b {
                0 => (Ber::Tag, true),
                1..=0x7f => (
                    Ber::Body {
                        left: usize::from(b),
                    },
                    false,
                ),
                0x81..=0x84 => (
                    Ber::LongLength {
                        left: b - 0x80,
                        acc: 0,
                    },
                    false,
                ),
                _ => (Ber::Lost, false),
            },
            Ber::LongLength { left, acc } => {
                let acc = (acc << 8) | usize::from(b);
                match (left - 1, acc) {
                    (0, 0) => (Ber::Tag, true),
                    (0, n) => (Ber::Body { left: n }, false),
                    (l, _) => (Ber::LongLength { left: l, acc }, false),
                }
            }
            Ber::Body { left: 1 } => (Ber::Tag, true),
            Ber::Body { left } => (Ber::Body { left: left - 1 }, false),
            Ber::Lost => (Ber::Lost, false),
        };
        self.ber = next;
        ends
    }

    fn finish_unit(&mut self) {
        let unit = self.unit.as_slice();
        match self.role {
            Role::Client => {
                if is_request(self.protocol, unit) {
                    self.asked = true;
                }
            }
            Role::Server => self.last_unit_accepts = is_acceptance(self.protocol, unit),
        }
    }
}

fn text(unit: &[u8]) -> &[u8] {
    unit.trim_ascii()
}

/// The `n`th space-separated word of a line.
fn word(unit: &[u8], n: usize) -> Option<&[u8]> {
    text(unit)
        .split(|&b| b == b' ')
        .filter(|w| !w.is_empty())
        .nth(n)
}

fn starts_with_ignore_case(s: &[u8], prefix: &[u8]) -> bool {
    s.get(..prefix.len())
        .is_some_and(|p| p.eq_ignore_ascii_case(prefix))
}

/// The client's upgrade request.
fn is_request(protocol: Protocol, unit: &[u8]) -> bool {
    match protocol {
        Protocol::Smtp => text(unit).eq_ignore_ascii_case(b"STARTTLS"),
        Protocol::Imap => {
            word(unit, 1).is_some_and(|w| w.eq_ignore_ascii_case(b"STARTTLS"))
                && word(unit, 2).is_none()
        }
        Protocol::Pop3 => text(unit).eq_ignore_ascii_case(b"STLS"),
        Protocol::Ldap => ldap_operation(unit).is_some_and(|(tag, body)| {
            tag == 0x77
                && body
                    .windows(LDAP_START_TLS_OID.len())
                    .any(|w| w == LDAP_START_TLS_OID)
        }),
        Protocol::Xmpp => starts_with_ignore_case(text(unit), b"<starttls"),
    }
}

/// The server's positive answer to it.
fn is_acceptance(protocol: Protocol, unit: &[u8]) -> bool {
    match protocol {
        Protocol::Smtp => text(unit).starts_with(b"220"),
        Protocol::Imap => {
            word(unit, 0).is_some_and(|w| w != b"*")
                && word(unit, 1).is_some_and(|w| w.eq_ignore_ascii_case(b"OK"))
        }
        Protocol::Pop3 => text(unit).starts_with(b"+OK"),
        // ExtendedResponse [APPLICATION 24] whose resultCode (ENUMERATED) is success (0).
        Protocol::Ldap => ldap_operation(unit)
            .is_some_and(|(tag, body)| tag == 0x78 && body.starts_with(&[0x0a, 0x01, 0x00])),
        Protocol::Xmpp => starts_with_ignore_case(text(unit), b"<proceed"),
    }
}

/// One BER element: its tag, and its content (cut at what `b` holds) and what follows.
fn tlv(b: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = b.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = match first {
        0..=0x7f => (usize::from(first), rest),
        0x81..=0x84 => {
            let n = usize::from(first - 0x80);
            let bytes = rest.get(..n)?;
            let len = bytes.iter().fold(0usize, |a, &x| (a << 8) | usize::from(x));
            (len, rest.get(n..)?)
        }
        _ => return None,
    };
    let end = len.min(rest.len());
    let (content, after) = rest.split_at(end);
    Some((tag, content, after))
}

/// An LDAPMessage's protocol operation: `SEQUENCE { messageID INTEGER, op }` → (op's tag,
/// op's content).
fn ldap_operation(unit: &[u8]) -> Option<(u8, &[u8])> {
    let (tag, message, _) = tlv(unit)?;
    if tag != 0x30 {
        return None;
    }
    let (id_tag, _, rest) = tlv(message)?;
    if id_tag != 0x02 {
        return None;
    }
    let (op, body, _) = tlv(rest)?;
    Some((op, body))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `chunks` one by one; returns where TLS began: (chunk index, offset).
    fn tls_at(s: &mut Scanner, chunks: &[&[u8]]) -> Option<(usize, usize)> {
        chunks
            .iter()
            .enumerate()
            .find_map(|(i, c)| match s.feed(c) {
                Scan::Tls(at) => Some((i, at)),
                Scan::Prelude => None,
            })
    }

    const HELLO: &[u8] = &[0x16, 0x03, 0x01, 0x00, 0x05, 1, 0, 0, 1, 0];

    #[test]
    fn smtp_client_and_server() {
        let mut c = Scanner::new(Protocol::Smtp, Role::Client);
        let hello_in_line = [b"EHLO printer\r\nSTARTTLS\r\n".as_slice(), HELLO].concat();
        assert_eq!(
            tls_at(&mut c, &[b"EHLO pr", b"inter\r\nSTART", b"TLS\r"]),
            None
        );
        assert!(!c.asked(), "the line is not over");
        assert_eq!(c.feed(b"\n"), Scan::Prelude);
        assert!(c.asked());
        assert_eq!(c.feed(HELLO), Scan::Tls(0));
        assert_eq!(c.prelude_bytes(), 24);
        // The same bytes in one piece.
        let mut c = Scanner::new(Protocol::Smtp, Role::Client);
        assert_eq!(c.feed(&hello_in_line), Scan::Tls(24));

        let mut s = Scanner::new(Protocol::Smtp, Role::Server);
        let answer =
            b"220 ready\r\n250-mx\r\n250-STARTTLS\r\n250 AUTH LOGIN\r\n220 2.0.0 go ahead\r\n";
        assert_eq!(s.feed(answer), Scan::Prelude);
        assert_eq!(s.feed(&[0x16, 0x03, 0x03]), Scan::Tls(0));
        assert!(s.accepted());
        // A refusal, then the client gives up: no TLS, not accepted.
        let mut s = Scanner::new(Protocol::Smtp, Role::Server);
        assert_eq!(
            s.feed(b"220 hi\r\n454 TLS not available\r\n221 bye\r\n"),
            Scan::Prelude
        );
        assert!(!s.accepted() && !s.tls());
    }

    #[test]
    fn a_client_that_never_asks_is_never_tls_after_its_first_byte() {
        // Plain SMTP on port 25: a body line may start with any byte.
        let mut c = Scanner::new(Protocol::Smtp, Role::Client);
        let session = [
            b"EHLO a\r\nDATA\r\n".as_slice(),
            &[0x16, 0x03, 0x01],
            b"\r\n.\r\n",
        ]
        .concat();
        assert_eq!(c.feed(&session), Scan::Prelude);
        // Implicit TLS: the hello is the first byte.
        let mut c = Scanner::new(Protocol::Smtp, Role::Client);
        assert_eq!(c.feed(HELLO), Scan::Tls(0));
        // 8-bit text is not an SSLv2 hello unless the client asked.
        let mut c = Scanner::new(Protocol::Pop3, Role::Client);
        assert_eq!(
            c.feed("USER \u{e9}\r\n\u{e9}t\u{e9}\r\n".as_bytes()),
            Scan::Prelude
        );
        assert_eq!(c.feed(b"STLS\r\n"), Scan::Prelude);
        assert_eq!(c.feed(&[0x80, 0x2e, 0x01]), Scan::Tls(0));
    }

    #[test]
    fn imap_and_pop3() {
        let mut c = Scanner::new(Protocol::Imap, Role::Client);
        assert_eq!(c.feed(b"a0 CAPABILITY\r\n"), Scan::Prelude);
        assert!(!c.asked());
        assert_eq!(c.feed(b"a1 starttls\r\n"), Scan::Prelude);
        assert!(c.asked());
        assert_eq!(c.feed(HELLO), Scan::Tls(0));
        let mut s = Scanner::new(Protocol::Imap, Role::Server);
        let answer = b"* OK IMAP4rev1 ready\r\n* CAPABILITY IMAP4rev1 STARTTLS\r\na0 OK done\r\na1 OK Begin TLS\r\n";
        assert_eq!(
            s.feed(&[answer.as_slice(), &[0x16]].concat()),
            Scan::Tls(answer.len())
        );
        assert!(s.accepted());
        let mut s = Scanner::new(Protocol::Imap, Role::Server);
        assert_eq!(s.feed(b"* OK hi\r\na1 BAD no\r\n\x16"), Scan::Tls(20));
        assert!(
            !s.accepted(),
            "TLS after a refusal is not an accepted upgrade"
        );

        let mut c = Scanner::new(Protocol::Pop3, Role::Client);
        assert_eq!(
            c.feed(&[b"CAPA\r\nSTLS\r\n".as_slice(), HELLO].concat()),
            Scan::Tls(12)
        );
        let mut s = Scanner::new(Protocol::Pop3, Role::Server);
        assert_eq!(
            s.feed(b"+OK POP3 ready\r\n+OK\r\nSTLS\r\n.\r\n+OK begin\r\n\x15\x03\x01"),
            Scan::Tls(41)
        );
        assert!(s.accepted());
    }

    /// `LDAPMessage { messageID 1, op }` with a short-form length.
    fn ldap_message(op: &[u8]) -> Vec<u8> {
        let mut body = vec![0x02, 0x01, 0x01];
        body.extend_from_slice(op);
        let mut m = vec![0x30, u8::try_from(body.len()).unwrap()];
        m.extend(body);
        m
    }

    #[test]
    fn ldap_extended_operation() {
        let mut req = vec![0x77, 0x18, 0x80, 0x16];
        req.extend_from_slice(LDAP_START_TLS_OID);
        let request = ldap_message(&req);
        let mut c = Scanner::new(Protocol::Ldap, Role::Client);
        // A bind first (any other operation), then StartTLS, split byte by byte.
        let bind = ldap_message(&[0x60, 0x07, 0x02, 0x01, 0x03, 0x04, 0x00, 0x80, 0x00]);
        assert_eq!(c.feed(&bind), Scan::Prelude);
        assert!(!c.asked());
        for b in &request {
            assert_eq!(c.feed(&[*b]), Scan::Prelude);
        }
        assert!(c.asked());
        assert_eq!(c.feed(HELLO), Scan::Tls(0));

        let ok = ldap_message(&[0x78, 0x07, 0x0a, 0x01, 0x00, 0x04, 0x00, 0x04, 0x00]);
        let mut s = Scanner::new(Protocol::Ldap, Role::Server);
        assert_eq!(
            s.feed(&[ok.as_slice(), &[0x16]].concat()),
            Scan::Tls(ok.len())
        );
        assert!(s.accepted());
        // protocolError (2): not accepted.
        let refused = ldap_message(&[0x78, 0x07, 0x0a, 0x01, 0x02, 0x04, 0x00, 0x04, 0x00]);
        let mut s = Scanner::new(Protocol::Ldap, Role::Server);
        assert_eq!(
            s.feed(&[refused.as_slice(), &[0x16]].concat()),
            Scan::Tls(refused.len())
        );
        assert!(!s.accepted());
        // A long-form length is one message; a 0x16 inside its body is not TLS.
        let mut long = vec![0x30, 0x81, 0x05, 0x02, 0x01, 0x01, 0x16, 0x00];
        long.push(0x16);
        let mut s = Scanner::new(Protocol::Ldap, Role::Server);
        assert_eq!(s.feed(&long), Scan::Tls(8));
        // An indefinite length: boundaries are lost, so TLS is never found.
        let mut s = Scanner::new(Protocol::Ldap, Role::Server);
        assert_eq!(s.feed(&[0x30, 0x80, 0x16, 0x16]), Scan::Prelude);
    }

    #[test]
    fn xmpp() {
        let mut c = Scanner::new(Protocol::Xmpp, Role::Client);
        let open =
            b"<?xml version='1.0'?><stream:stream to='x' xmlns='jabber:client' version='1.0'>";
        assert_eq!(c.feed(open), Scan::Prelude);
        assert_eq!(
            c.feed(b"<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>"),
            Scan::Prelude
        );
        assert!(c.asked());
        assert_eq!(c.feed(HELLO), Scan::Tls(0));
        let mut s = Scanner::new(Protocol::Xmpp, Role::Server);
        let answer = b"<stream:stream from='x' version='1.0'>\n<stream:features><starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'><required/></starttls></stream:features><proceed xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>";
        assert_eq!(
            s.feed(&[answer.as_slice(), &[0x16]].concat()),
            Scan::Tls(answer.len())
        );
        assert!(s.accepted());
    }

    #[test]
    fn any_split_finds_the_same_start() {
        let session = [b"a1 STARTTLS\r\n".as_slice(), HELLO].concat();
        for cut in 0..=session.len() {
            let mut c = Scanner::new(Protocol::Imap, Role::Client);
            let (a, b) = session.split_at(cut);
            let at = match (c.feed(a), c.feed(b)) {
                (Scan::Tls(at), _) => at,
                (Scan::Prelude, Scan::Tls(at)) => cut + at,
                other => panic!("no TLS at cut {cut}: {other:?}"),
            };
            assert_eq!(at, 13, "cut {cut}");
        }
    }
}
