#!/usr/bin/env python3
"""Save the first flight (through the end of the ClientHello's last record) of the next
connection to 127.0.0.1:PORT, then close it.

usage: sink.py PORT OUT [TIMEOUT_SECONDS]

Nothing answers the client: the hello is all that is wanted, and a client that then fails
is expected. Exits 0 when OUT was written, 1 on a timeout or a first flight that is not a
TLS hello (SSLv2-format hellos are saved too).
"""

import socket
import sys


def hello_end(buf):
    """End of the record that completes the ClientHello, or None if more is needed."""
    if buf and buf[0] & 0x80:  # SSLv2-format hello: 2-byte header
        if len(buf) < 2:
            return None
        n = 2 + (((buf[0] & 0x7F) << 8) | buf[1])
        return n if len(buf) >= n else None
    off, payload = 0, b""
    while len(buf) >= off + 5:
        if buf[off] != 0x16:
            raise ValueError("not a handshake record")
        end = off + 5 + int.from_bytes(buf[off + 3 : off + 5], "big")
        if len(buf) < end:
            return None
        payload += buf[off + 5 : end]
        off = end
        if len(payload) >= 4 and len(payload) >= 4 + int.from_bytes(payload[1:4], "big"):
            return off
    return None


def main():
    port, out = int(sys.argv[1]), sys.argv[2]
    timeout = float(sys.argv[3]) if len(sys.argv) > 3 else 20
    ls = socket.socket()
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind(("127.0.0.1", port))
    ls.listen(1)
    ls.settimeout(timeout)
    c, _ = ls.accept()
    c.settimeout(timeout)
    buf = b""
    while True:
        data = c.recv(65536)
        if not data:
            sys.exit(1)
        buf += data
        end = hello_end(buf)
        if end is not None:
            with open(out, "wb") as f:
                f.write(buf[:end])
            c.close()
            return


if __name__ == "__main__":
    try:
        main()
    except (OSError, ValueError) as e:
        print(f"sink: {e}", file=sys.stderr)
        sys.exit(1)
