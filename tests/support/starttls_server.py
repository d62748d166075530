#!/usr/bin/env python3
"""A STARTTLS server for the tests: a small scripted responder speaks the protocol's
cleartext part (SMTP, IMAP, POP3, LDAP or XMPP), then the session continues over real TLS
(Python's ssl module, i.e. OpenSSL; TLS 1.0 and every cipher allowed, as a legacy server
would).

    starttls_server.py PROTOCOL HOST:PORT CERT KEY LOG

One JSON line per session in LOG: {"protocol", "upgraded", "tls_version", "lines"} and, for
mail sent with DATA, the SHA-256 of the message as received ("data_sha256"), so a test can
prove the bytes arrived unchanged.
"""
import time
import hashlib
import json
import socket
import ssl
import sys
import threading
import warnings

warnings.simplefilter("ignore", DeprecationWarning)  # TLS 1.0 is what these tests need

protocol, listen, cert, key, log_path = sys.argv[1:6]
host, port = listen.rsplit(":", 1)
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.minimum_version = ssl.TLSVersion.TLSv1
ctx.set_ciphers("ALL:@SECLEVEL=0")
ctx.load_cert_chain(cert, key)
log_lock = threading.Lock()

LDAP_OID = b"1.3.6.1.4.1.1466.20037"


def log(entry):
    with log_lock, open(log_path, "a") as f:
        f.write(json.dumps(entry) + "\n")


def read_ber(f):
    """One BER element (tag, length, content) from a file object; None at the end."""
    head = f.read(2)
    if len(head) < 2:
        return None
    tag, first = head[0], head[1]
    if first & 0x80:
        n = first & 0x7F
        length = int.from_bytes(f.read(n), "big")
    else:
        length = first
    return bytes([tag]), f.read(length)


def mail_after(f, send, entry):
    """SMTP commands (cleartext or TLS) until QUIT; DATA's message is hashed."""
    while True:
        line = f.readline()
        if not line:
            return False
        cmd = line.strip().upper()
        entry["lines"] += 1
        if cmd.startswith(b"EHLO"):
            send(b"250-smtp.test\r\n250-STARTTLS\r\n250-AUTH LOGIN PLAIN\r\n250 8BITMIME\r\n")
        elif cmd.startswith(b"HELO"):
            send(b"250 smtp.test\r\n")
        elif cmd == b"STARTTLS":
            send(b"220 2.0.0 Ready to start TLS\r\n")
            return True
        elif cmd == b"DATA":
            send(b"354 go ahead\r\n")
            body = b""
            while True:
                l2 = f.readline()
                if not l2 or l2 == b".\r\n":
                    break
                body += l2
            entry["data_sha256"] = hashlib.sha256(body).hexdigest()
            send(b"250 2.0.0 queued\r\n")
        elif cmd == b"QUIT":
            send(b"221 2.0.0 bye\r\n")
            return False
        else:
            send(b"250 ok\r\n")


def cleartext(c, f, entry):
    """The prelude; True when the client asked for TLS and was told to go ahead."""
    send = c.sendall
    if protocol == "smtp":
        # A moment before the greeting: `openssl s_client -proxy` reads the proxy's answer
        # through a buffer it then drops, so a greeting that arrives with the `200` is lost
        # and s_client waits for it forever (seen under load). Real clients keep it.
        time.sleep(0.3)
        send(b"220 smtp.test ESMTP ready\r\n")
        return mail_after(f, send, entry)
    if protocol == "imap":
        send(b"* OK [CAPABILITY IMAP4rev1 STARTTLS LOGINDISABLED] ready\r\n")
        while True:
            line = f.readline()
            if not line:
                return False
            entry["lines"] += 1
            parts = line.strip().split(b" ")
            tag, cmd = parts[0], (parts[1].upper() if len(parts) > 1 else b"")
            if cmd == b"CAPABILITY":
                send(b"* CAPABILITY IMAP4rev1 STARTTLS LOGINDISABLED\r\n" + tag + b" OK done\r\n")
            elif cmd == b"STARTTLS":
                send(tag + b" OK Begin TLS negotiation now\r\n")
                return True
            elif cmd == b"LOGOUT":
                send(b"* BYE\r\n" + tag + b" OK bye\r\n")
                return False
            else:
                send(tag + b" BAD unknown\r\n")
    if protocol == "pop3":
        send(b"+OK POP3 ready\r\n")
        while True:
            line = f.readline()
            if not line:
                return False
            entry["lines"] += 1
            cmd = line.strip().upper()
            if cmd == b"CAPA":
                send(b"+OK\r\nSTLS\r\nUSER\r\n.\r\n")
            elif cmd == b"STLS":
                send(b"+OK Begin TLS\r\n")
                return True
            elif cmd == b"QUIT":
                send(b"+OK bye\r\n")
                return False
            else:
                send(b"-ERR unknown\r\n")
    if protocol == "ldap":
        while True:
            el = read_ber(f)
            if el is None:
                return False
            entry["lines"] += 1
            _, msg = el
            # messageID INTEGER
            id_len = msg[1]
            msg_id = msg[2:2 + id_len]
            op = msg[2 + id_len]
            if op == 0x77 and LDAP_OID in msg:
                # ExtendedResponse: success, empty matchedDN and diagnosticMessage, the OID.
                body = b"\x0a\x01\x00\x04\x00\x04\x00" + b"\x8a" + bytes([len(LDAP_OID)]) + LDAP_OID
                resp = b"\x02" + bytes([id_len]) + msg_id + b"\x78" + bytes([len(body)]) + body
                send(b"\x30" + bytes([len(resp)]) + resp)
                return True
            if op == 0x42:  # unbind
                return False
            # Anything else: a BindResponse-like success.
            body = b"\x0a\x01\x00\x04\x00\x04\x00"
            resp = b"\x02" + bytes([id_len]) + msg_id + b"\x61" + bytes([len(body)]) + body
            send(b"\x30" + bytes([len(resp)]) + resp)
    if protocol == "xmpp":
        buf = b""
        features = (b"<stream:features><starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'>"
                    b"<required/></starttls></stream:features>")
        opened = False
        while True:
            chunk = c.recv(4096)
            if not chunk:
                return False
            buf += chunk
            entry["lines"] += 1
            if not opened and b"<stream:stream" in buf and buf.rstrip().endswith(b">"):
                opened = True
                send(b"<?xml version='1.0'?><stream:stream xmlns='jabber:client' "
                     b"xmlns:stream='http://etherx.jabber.org/streams' id='t1' from='xmpp.test' "
                     b"version='1.0'>" + features)
            if b"<starttls" in buf.split(b"<stream:stream", 1)[-1] and buf.rstrip().endswith(b">"):
                send(b"<proceed xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
                return True
    raise SystemExit("unknown protocol " + protocol)


def after_tls(t, entry):
    """A little of the protocol over TLS, until the client closes or quits."""
    f = t.makefile("rb")
    send = t.sendall
    if protocol == "smtp":
        mail_after(f, send, entry)
        return
    if protocol == "ldap":
        read_ber(f)
        return
    while True:
        line = f.readline() if protocol != "xmpp" else t.recv(4096)
        if not line:
            return
        entry["lines"] += 1
        up = line.strip().upper()
        if protocol == "imap":
            tag = line.strip().split(b" ")[0]
            send(tag + b" OK done\r\n")
            if b"LOGOUT" in up:
                return
        elif protocol == "pop3":
            send(b"+OK\r\n")
            if up == b"QUIT":
                return
        else:
            send(b"<presence/>")
            if b"</STREAM:STREAM>" in up:
                return


def session(c):
    entry = {"protocol": protocol, "upgraded": False, "tls_version": None, "lines": 0}
    try:
        f = c.makefile("rb")
        if cleartext(c, f, entry):
            t = ctx.wrap_socket(c, server_side=True)
            entry["upgraded"] = True
            entry["tls_version"] = t.version()
            after_tls(t, entry)
            try:
                t.unwrap()
            except (OSError, ssl.SSLError, ValueError):
                pass
    except (OSError, ssl.SSLError, IndexError) as e:
        entry["error"] = str(e)
    finally:
        log(entry)
        try:
            c.close()
        except OSError:
            pass


ls = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
ls.bind((host, int(port)))
ls.listen(16)
while True:
    conn, _ = ls.accept()
    threading.Thread(target=session, args=(conn,), daemon=True).start()
