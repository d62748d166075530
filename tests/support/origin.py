#!/usr/bin/env python3
"""A plain-HTTP origin server for the forwarding tests (127.0.0.1 only).

usage: origin.py PORTFILE LOGFILE
Binds 127.0.0.1:0, writes its port to PORTFILE, and appends one JSON line per request to
LOGFILE: method, path, headers, the client's port (one per TCP connection), and the SHA-256
and length of the request body (chunked bodies de-chunked). GET answers "hello from
origin\n"; POST/PUT answer the body's SHA-256. HTTP/1.1 keep-alive.
"""
import hashlib, http.server, json, sys, threading

portfile, logfile = sys.argv[1], sys.argv[2]
lock = threading.Lock()


class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *a):
        pass

    def body(self):
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            data = b""
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return data
                data += self.rfile.read(size)
                self.rfile.readline()
        n = int(self.headers.get("Content-Length", "0"))
        return self.rfile.read(n) if n else b""

    def record(self, body):
        entry = {
            "method": self.command,
            "path": self.path,
            "headers": {k.lower(): v for k, v in self.headers.items()},
            "client_port": self.client_address[1],
            "body_len": len(body),
            "body_sha256": hashlib.sha256(body).hexdigest(),
        }
        with lock, open(logfile, "a") as f:
            f.write(json.dumps(entry) + "\n")

    def answer(self, payload):
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def do_GET(self):
        self.record(b"")
        self.answer(b"hello from origin\n")

    def do_POST(self):
        b = self.body()
        self.record(b)
        self.answer(hashlib.sha256(b).hexdigest().encode() + b"\n")

    do_PUT = do_POST


srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
with open(portfile + ".tmp", "w") as f:
    f.write(str(srv.server_address[1]))
import os
os.rename(portfile + ".tmp", portfile)
srv.serve_forever()
