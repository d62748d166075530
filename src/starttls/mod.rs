//! STARTTLS: the cleartext prelude of mail, directory and chat protocols before their TLS
//! handshake. Pure: bytes in, where TLS begins out.
//!
//! Each direction of a session is read by its own [`Scanner`], which splits it into the
//! protocol's units (lines for SMTP, IMAP and POP3; BER messages for LDAP; XML tags for
//! XMPP) and notes the upgrade request (`STARTTLS`, `STLS`, the StartTLS extended
//! operation, `<starttls/>`) and its acceptance (`220`, the tagged `OK`, `+OK`, a success
//! extended response, `<proceed/>`). TLS begins where a unit would begin and the byte there
//! is a TLS record's first byte: no unit of these protocols starts with 0x15 or 0x16 (text
//! and XML start with a printable character, an LDAP message with 0x30). That needs no
//! clock and no view of the other direction, so the proxy and `analyze` (which reassembles
//! each direction on its own) read a session the same way.
//!
//! A scanner keeps a bounded prefix of the current unit and nothing else.

mod scan;

pub use scan::{Role, Scan, Scanner};

/// A protocol that upgrades to TLS in-band.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Protocol {
    Smtp,
    Imap,
    Pop3,
    Ldap,
    Xmpp,
}

impl Protocol {
    pub const ALL: [Protocol; 5] = [
        Protocol::Smtp,
        Protocol::Imap,
        Protocol::Pop3,
        Protocol::Ldap,
        Protocol::Xmpp,
    ];

    /// The name in the event line, the config table and the metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Smtp => "smtp",
            Protocol::Imap => "imap",
            Protocol::Pop3 => "pop3",
            Protocol::Ldap => "ldap",
            Protocol::Xmpp => "xmpp",
        }
    }
}

impl std::fmt::Display for Protocol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}
