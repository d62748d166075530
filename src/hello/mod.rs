//! Pure TLS hello core: framing, ClientHello/ServerHello summaries, names, fingerprints,
//! legacy verdict. No I/O.
