#!/usr/bin/env bash
# Soak: a bounded run of mixed traffic through one tlspeek on 127.0.0.1, sampling its
# memory (VmRSS), open descriptors and tlspeek_active_tunnels every few seconds, then
# printing whether anything grew. Not part of CI.
#
#   scripts/soak.sh [SECONDS]        (default 600; up to an hour: scripts/soak.sh 3600)
#
# Traffic (all to servers this script starts on 127.0.0.1):
#   - curl through the proxy with TLS 1.0, 1.1, 1.2 and 1.3 to `openssl s_server -www`
#   - raw tunnels to an echo server: a real ClientHello (or random bytes), then up to
#     256 KiB of random data, SHA-256 of the echo checked
#   - TLS bulk downloads: 2 streams, each fetching a 32 MiB body from nginx over TLS
#     through a CONNECT tunnel, SHA-256 checked (the scenario of the one stalled run)
#   - raw downloads (8 MiB from a source server) and raw uploads (8 MiB into a sink that
#     answers with their SHA-256) through tunnels
#   - SOAK_BUSY (default 2) niced busy loops beside it, so the proxy shares the cores
# Every transfer reports its progress; a stall detector (SOAK_STALL seconds without a byte,
# default 10) dumps the proxy's view of that tunnel from /debug/tunnels (bytes, idle time,
# each direction's path and wait, the buffer and pipe pools) and fails the run.
#   - refusals: port not allowed (403), denied destination (403), malformed (400), wrong
#     method (405), and hostile first flights (SSLv2 with a lying length, 16 MiB claim)
#   - clients that reset mid-hello and clients that say nothing (hello_timeout)
# Also checked: one event line per connection. The event file is removed at the end
# (SOAK_KEEP=1 keeps it); samples.csv stays in the printed directory.
# Needs: curl, openssl, python3, nginx (Debian package; only its binary is used, with a
# config of this script's own). Uses TLSPEEK_BIN if set, else builds the release binary.
set -euo pipefail

secs="${1:-600}"
interval="${SOAK_INTERVAL:-5}"
root="$(cd "$(dirname "$0")/.." && pwd)"
for c in curl openssl python3 nginx; do
  command -v "$c" >/dev/null || { echo "soak: $c missing" >&2; exit 2; }
done
bin="${TLSPEEK_BIN:-}"
if [ -z "$bin" ]; then
  (cd "$root" && cargo build --release --quiet)
  bin="${CARGO_TARGET_DIR:-$root/target}/release/tlspeek"
fi

work="$(mktemp -d /tmp/tlspeek-soak.XXXXXX)"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() {
  for _ in $(seq 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.1
  done
  echo "soak: nothing listens on $1" >&2; exit 1
}

openssl req -x509 -newkey rsa:2048 -nodes -days 2 -keyout "$work/key.pem" -out "$work/crt.pem" \
  -subj /CN=login.microsoftonline.com -addext subjectAltName=DNS:login.microsoftonline.com \
  >/dev/null 2>&1
tls_port="$(free_port)"
openssl s_server -accept "127.0.0.1:$tls_port" -cert "$work/crt.pem" -key "$work/key.pem" \
  -www -quiet -cipher 'ALL:@SECLEVEL=0' -min_protocol TLSv1 >/dev/null 2>&1 </dev/null &
pids+=($!)
wait_port "$tls_port"

# nginx as the TLS bulk upstream: one 32 MiB body.
bulk_port="$(free_port)"
mkdir -p "$work/www" "$work/nginx"
head -c $((32 * 1024 * 1024)) /dev/urandom >"$work/www/bulk.bin"
cat >"$work/nginx/nginx.conf" <<NGINX
user root;
worker_processes 1;
pid $work/nginx/nginx.pid;
error_log $work/nginx/error.log;
events { worker_connections 1024; }
http {
  access_log off;
  client_body_temp_path $work/nginx;
  proxy_temp_path $work/nginx;
  fastcgi_temp_path $work/nginx;
  uwsgi_temp_path $work/nginx;
  scgi_temp_path $work/nginx;
  sendfile on;
  server {
    listen 127.0.0.1:$bulk_port ssl;
    ssl_certificate $work/crt.pem;
    ssl_certificate_key $work/key.pem;
    ssl_protocols TLSv1.2 TLSv1.3;
    root $work/www;
  }
}
NGINX
nginx -c "$work/nginx/nginx.conf" -p "$work/nginx" -g 'daemon off;' 2>"$work/nginx/stderr" &
pids+=($!)
wait_port "$bulk_port"
for _ in $(seq "${SOAK_BUSY:-2}"); do
  nice -n 19 sh -c 'while :; do :; done' &
  pids+=($!)
done

proxy_port="$(free_port)"
admin_port="$(free_port)"
echo_port="$(free_port)"
source_port="$(free_port)"
sink_port="$(free_port)"
cat >"$work/tlspeek.toml" <<EOF
[proxy]
listen = "127.0.0.1:$proxy_port"
allowed_ports = [$tls_port, $echo_port, $bulk_port, $source_port, $sink_port]
deny_destinations = ["127.0.0.2/32"]
hello_timeout = "1s"
idle_timeout = "30s"
[admin]
listen = "127.0.0.1:$admin_port"
[events]
path = "$work/events.jsonl"
[inventory]
path = "$work/inventory.sqlite"
EOF
RUST_LOG=warn "$bin" run --config "$work/tlspeek.toml" 2>"$work/tlspeek.err" >/dev/null &
tlspeek_pid=$!
pids+=($tlspeek_pid)
wait_port "$proxy_port"
wait_port "$admin_port"

echo "soak: tlspeek pid $tlspeek_pid, ${secs}s of traffic, sampling every ${interval}s ($work)"
export SOAK_SECS="$secs" SOAK_INTERVAL="$interval" PROXY="$proxy_port" ADMIN="$admin_port" \
  TLS_PORT="$tls_port" ECHO_PORT="$echo_port" PID="$tlspeek_pid" WORK="$work" \
  HELLO="$root/tests/fixtures/curl_tls12.bin" BULK_PORT="$bulk_port" SOURCE_PORT="$source_port" \
  SINK_PORT="$sink_port" STALL="${SOAK_STALL:-10}"
python3 - <<'PY'
import hashlib, json, os, random, socket, ssl, struct, subprocess, threading, time

secs = float(os.environ["SOAK_SECS"]); interval = float(os.environ["SOAK_INTERVAL"])
proxy = int(os.environ["PROXY"]); admin = int(os.environ["ADMIN"])
tls_port = int(os.environ["TLS_PORT"]); echo_port = int(os.environ["ECHO_PORT"])
pid = int(os.environ["PID"]); work = os.environ["WORK"]
hello = open(os.environ["HELLO"], "rb").read()
bulk_port = int(os.environ["BULK_PORT"]); source_port = int(os.environ["SOURCE_PORT"])
sink_port = int(os.environ["SINK_PORT"]); stall_after = float(os.environ["STALL"])
bulk_sha = hashlib.sha256(open(os.path.join(work, "www", "bulk.bin"), "rb").read()).hexdigest()
RAW_SIZE = 8 * 1024 * 1024
stop = threading.Event()
lock = threading.Lock()
counts = {}
def count(k, n=1):
    with lock:
        counts[k] = counts.get(k, 0) + n

def raw_payload(seed):
    return random.Random(seed).randbytes(RAW_SIZE)

# The plain upstreams, one thread per connection: echo (sends back what it got), source
# (sends RAW_SIZE bytes chosen by the 8-byte seed the client sends first), sink (reads until
# EOF, answers with the SHA-256 of what it got).
def side_server(port, serve):
    l = socket.socket(); l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    l.bind(("127.0.0.1", port)); l.listen(1024)
    while True:
        c, _ = l.accept()
        def run(c):
            try:
                c.settimeout(120); serve(c)
            except OSError:
                pass
            finally:
                c.close()
        threading.Thread(target=run, args=(c,), daemon=True).start()
def echo(c):
    while True:
        b = c.recv(65536)
        if not b:
            break
        c.sendall(b)
    c.shutdown(socket.SHUT_WR)
def source(c):
    seed = b""
    while len(seed) < 8:
        b = c.recv(8 - len(seed))
        if not b:
            return
        seed += b
    c.sendall(raw_payload(int.from_bytes(seed, "big"))); c.shutdown(socket.SHUT_WR)
def sink(c):
    h = hashlib.sha256()
    while True:
        b = c.recv(65536)
        if not b:
            break
        h.update(b)
    c.sendall(h.hexdigest().encode()); c.shutdown(socket.SHUT_WR)
threading.Thread(target=side_server, args=(echo_port, echo), daemon=True).start()
threading.Thread(target=side_server, args=(source_port, source), daemon=True).start()
threading.Thread(target=side_server, args=(sink_port, sink), daemon=True).start()
time.sleep(0.3)

# Transfers in progress: id -> {kind, port, bytes, last, want, reported}; the stall
# detector reads it.
transfers = {}
transfer_ids = iter(range(1, 1 << 62))
def transfer_start(kind, port, want):
    with lock:
        i = next(transfer_ids)
        transfers[i] = {"kind": kind, "port": port, "bytes": 0, "last": time.time(), "want": want,
                        "reported": False}
    return i
def transfer_progress(i, n):
    with lock:
        t = transfers[i]; t["bytes"] += n; t["last"] = time.time()
def transfer_end(i):
    with lock:
        transfers.pop(i, None)

def connect(target, timeout=10):
    s = socket.create_connection(("127.0.0.1", proxy), timeout=timeout)
    s.sendall(b"CONNECT %s HTTP/1.1\r\nHost: x\r\n\r\n" % target.encode())
    head = b""
    while not head.endswith(b"\r\n\r\n"):
        b = s.recv(1)
        if not b:
            break
        head += b
    return s, head.split(b"\r\n")[0].decode(errors="replace")

def read_to_end(s):
    out = b""
    while True:
        b = s.recv(65536)
        if not b:
            return out
        out += b

def admin_get(path):
    """The body of GET path on the admin listener."""
    s = socket.create_connection(("127.0.0.1", admin), timeout=10)
    s.sendall(b"GET %s HTTP/1.0\r\nHost: x\r\n\r\n" % path.encode())
    out = read_to_end(s)
    s.close()
    return out.split(b"\r\n\r\n", 1)[-1].decode(errors="replace")

def metrics():
    return admin_get("/metrics")

def metric(text, name):
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            total += float(line.rsplit(" ", 1)[1])
    return total

def curl_worker():
    versions = [["--tlsv1.0", "--tls-max", "1.0"], ["--tlsv1.1", "--tls-max", "1.1"],
                ["--tlsv1.2", "--tls-max", "1.2"], ["--tlsv1.3"]]
    i = 0
    while not stop.is_set():
        v = versions[i % 4]; i += 1
        r = subprocess.run(["curl", "-sSk", "-m", "10", "-x", "http://127.0.0.1:%d" % proxy,
                            "--connect-to", "login.microsoftonline.com:443:127.0.0.1:%d" % tls_port,
                            "--ciphers", "DEFAULT:@SECLEVEL=0", *v,
                            "https://login.microsoftonline.com/", "-o", "/dev/null", "-w", "%{http_code}"],
                           capture_output=True, text=True)
        count("curl_ok" if r.stdout.strip() == "200" else "curl_failed")

def tunnel_worker(seed):
    rnd = random.Random(seed)
    while not stop.is_set():
        try:
            s, status = connect("127.0.0.1:%d" % echo_port)
            if " 200 " not in status:
                count("tunnel_refused"); s.close(); continue
            data = (hello if rnd.random() < 0.5 else b"") + rnd.randbytes(rnd.randint(0, 256 * 1024))
            want = hashlib.sha256(data).hexdigest()
            def send():
                try:
                    s.sendall(data); s.shutdown(socket.SHUT_WR)
                except OSError:
                    pass
            w = threading.Thread(target=send); w.start()
            h = hashlib.sha256(); n = 0
            while True:
                b = s.recv(65536)
                if not b:
                    break
                h.update(b); n += len(b)
            w.join(); s.close()
            count("tunnel_ok" if h.hexdigest() == want and n == len(data) else "tunnel_checksum_mismatch")
        except OSError:
            count("tunnel_error")

def hostile_worker(seed):
    rnd = random.Random(seed)
    cases = ["port", "denied", "bad", "method", "sslv2", "claim16m", "reset", "silent"]
    while not stop.is_set():
        k = rnd.choice(cases)
        try:
            if k == "port":
                s, st = connect("127.0.0.1:22"); ok = " 403 " in st
            elif k == "denied":
                s, st = connect("127.0.0.2:%d" % echo_port); ok = " 403 " in st
            elif k == "bad":
                s, st = connect("bad\r\nhost:%d" % echo_port); ok = " 400 " in st
            elif k == "method":
                s = socket.create_connection(("127.0.0.1", proxy), timeout=10)
                s.sendall(b"DELETE / HTTP/1.1\r\n\r\n"); ok = b" 405 " in s.recv(100)
            elif k in ("sslv2", "claim16m"):
                s, st = connect("127.0.0.1:%d" % echo_port)
                first = (b"\x80\xff\x01\x03\x01\x00\x03\x00\x00\x00\x10" if k == "sslv2"
                         else b"\x16\x03\x01\x00\x40\x01\xff\xff\xff") + rnd.randbytes(100)
                s.sendall(first); got = b""
                while len(got) < len(first):
                    b = s.recv(4096)
                    if not b:
                        break
                    got += b
                ok = got == first
            elif k == "reset":
                s, st = connect("127.0.0.1:%d" % echo_port)
                s.sendall(hello[:40])
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                ok = " 200 " in st
            else:
                s, st = connect("127.0.0.1:%d" % echo_port)
                s.settimeout(3)
                time.sleep(1.2)          # past hello_timeout: passed as kind "none"
                s.sendall(b"late"); ok = s.recv(4) == b"late"
            s.close()
            count("hostile_ok" if ok else "hostile_unexpected_" + k)
        except OSError as e:
            count("hostile_error_" + k)

def bulk_worker(seed):
    ctx = ssl.create_default_context(); ctx.check_hostname = False; ctx.verify_mode = ssl.CERT_NONE
    while not stop.is_set():
        i = None
        try:
            s, status = connect("127.0.0.1:%d" % bulk_port, timeout=120)
            if " 200 " not in status:
                count("bulk_refused"); s.close(); continue
            i = transfer_start("tls_bulk", s.getsockname()[1], 32 * 1024 * 1024)
            t = ctx.wrap_socket(s, server_hostname="login.microsoftonline.com")
            t.sendall(b"GET /bulk.bin HTTP/1.1\r\nHost: login.microsoftonline.com\r\nConnection: close\r\n\r\n")
            head = b""
            while b"\r\n\r\n" not in head:
                b = t.recv(16384)
                if not b:
                    break
                head += b
            head, body = head.split(b"\r\n\r\n", 1) if b"\r\n\r\n" in head else (head, b"")
            h = hashlib.sha256(body); n = len(body); transfer_progress(i, n)
            while True:
                b = t.recv(262144)
                if not b:
                    break
                h.update(b); n += len(b); transfer_progress(i, len(b))
            t.close()
            ok = head.startswith(b"HTTP/1.1 200") and n == 32 * 1024 * 1024 and h.hexdigest() == bulk_sha
            count("bulk_ok" if ok else "bulk_checksum_mismatch")
        except (OSError, ssl.SSLError):
            count("bulk_error")
        finally:
            if i is not None:
                transfer_end(i)

def raw_worker(seed, up):
    rnd = random.Random(seed)
    while not stop.is_set():
        i = None
        try:
            s, status = connect("127.0.0.1:%d" % (sink_port if up else source_port), timeout=120)
            if " 200 " not in status:
                count("raw_refused"); s.close(); continue
            s.settimeout(120)
            i = transfer_start("raw_up" if up else "raw_down", s.getsockname()[1], RAW_SIZE)
            key = rnd.getrandbits(63)
            data = raw_payload(key)
            if up:
                view = memoryview(data)
                for off in range(0, len(data), 262144):
                    piece = view[off:off + 262144]
                    s.sendall(piece); transfer_progress(i, len(piece))
                s.shutdown(socket.SHUT_WR)
                got = read_to_end(s)
                ok = got.decode(errors="replace") == hashlib.sha256(data).hexdigest()
            else:
                s.sendall(key.to_bytes(8, "big"))
                h = hashlib.sha256(); n = 0
                while True:
                    b = s.recv(262144)
                    if not b:
                        break
                    h.update(b); n += len(b); transfer_progress(i, len(b))
                ok = n == RAW_SIZE and h.hexdigest() == hashlib.sha256(data).hexdigest()
            s.close()
            count(("raw_up_ok" if up else "raw_down_ok") if ok else "raw_checksum_mismatch")
        except OSError:
            count("raw_error")
        finally:
            if i is not None:
                transfer_end(i)

def debug_tunnels():
    return json.loads(admin_get("/debug/tunnels"))

stalls = []
def stall_detector():
    while not stop.is_set():
        now = time.time()
        with lock:
            stalled = [(i, dict(t)) for i, t in transfers.items()
                       if now - t["last"] >= stall_after and not t["reported"]]
            for i, _ in stalled:
                transfers[i]["reported"] = True
        if stalled:
            try:
                view = debug_tunnels()
            except (OSError, ValueError) as e:
                view = {"error": str(e), "tunnels": []}
            for i, t in stalled:
                mine = [x for x in view.get("tunnels", []) if x.get("client", "").endswith(":%d" % t["port"])]
                # The kernel's view of the same sockets: bytes queued but unread (Recv-Q)
                # while the proxy's pump waits for "readable" would mean lost readiness.
                target = mine[0]["target"].rsplit(":", 1)[1] if mine else "0"
                ss = subprocess.run(["ss", "-tnio", "state", "established",
                                     "( sport = :%d or dport = :%d or dport = :%s )" % (t["port"], t["port"], target)],
                                    capture_output=True, text=True).stdout
                report = {"transfer": {k: t[k] for k in ("kind", "port", "bytes", "want")},
                          "stalled_for_s": round(now - t["last"], 1),
                          "proxy_view": mine[0] if mine else "not listed (the proxy has no open tunnel for this client port)",
                          "pipes": view.get("pipes"), "buffers_pooled": view.get("buffers_pooled"),
                          "open_tunnels": len(view.get("tunnels", [])),
                          "sockets": ss.splitlines()}
                print("soak: STALL " + json.dumps(report), flush=True)
                stalls.append(report)
        stop.wait(1)

samples = []
def sampler():
    t0 = time.time()
    while not stop.is_set():
        try:
            rss = int([l for l in open("/proc/%d/status" % pid) if l.startswith("VmRSS:")][0].split()[1])
            fds = len(os.listdir("/proc/%d/fd" % pid))
            active = metric(metrics(), "tlspeek_active_tunnels")
        except (OSError, IndexError):
            print("soak: tlspeek is gone"); os._exit(1)
        samples.append((round(time.time() - t0), rss, fds, active))
        stop.wait(interval)

idle_fds = len(os.listdir("/proc/%d/fd" % pid))
threads = [threading.Thread(target=curl_worker) for _ in range(2)]
threads += [threading.Thread(target=tunnel_worker, args=(i,)) for i in range(6)]
threads += [threading.Thread(target=hostile_worker, args=(100 + i,)) for i in range(3)]
threads += [threading.Thread(target=bulk_worker, args=(200 + i,)) for i in range(2)]
threads += [threading.Thread(target=raw_worker, args=(300, False)),
            threading.Thread(target=raw_worker, args=(301, True))]
sam = threading.Thread(target=sampler)
det = threading.Thread(target=stall_detector)
for t in threads + [sam, det]:
    t.start()
time.sleep(secs)
stop.set()
for t in threads + [sam, det]:
    t.join()

# Let the last connections end, then take the idle values again.
time.sleep(3)
m = metrics()
# Empty pipes kept in the zero-copy pool (two descriptors each) are reuse, not a leak; a
# pipe still in flight with no tunnel open is one.
# (The /metrics connection just made may still be closing: allow a few seconds.)
for _ in range(50):
    pool = debug_tunnels()["pipes"]
    end_fds = len(os.listdir("/proc/%d/fd" % pid)) - 2 * pool["pooled"]
    if end_fds <= idle_fds:
        break
    time.sleep(0.2)
if end_fds > idle_fds:
    print("soak: descriptors still open: " + ", ".join(
        "%s -> %s" % (fd, os.readlink("/proc/%d/fd/%s" % (pid, fd)))
        for fd in sorted(os.listdir("/proc/%d/fd" % pid), key=int)))
end_rss = int([l for l in open("/proc/%d/status" % pid) if l.startswith("VmRSS:")][0].split()[1])
end_active = metric(m, "tlspeek_active_tunnels")
conns = metric(m, "tlspeek_connections_total")
dropped = metric(m, "tlspeek_events_dropped_total") + metric(m, "tlspeek_event_log_errors_total")
with open(os.path.join(work, "events.jsonl"), "rb") as f:
    events = sum(1 for _ in f)
with open(os.path.join(work, "samples.csv"), "w") as f:
    f.write("t_s,rss_kib,fds,active_tunnels\n")
    for s in samples:
        f.write("%d,%d,%d,%d\n" % s)

n = len(samples)
q = max(1, n // 5)
early = samples[1:1 + q] or samples[:1]     # the first fifth, after the first sample
late = samples[-q:]
rss_early = max(s[1] for s in early); rss_late = max(s[1] for s in late)
fds_early = max(s[2] for s in early); fds_late = max(s[2] for s in late)
print("soak: %d samples over %ds" % (n, secs))
print("soak: traffic %s" % ", ".join("%s=%d" % kv for kv in sorted(counts.items())))
print("soak: connections by mode/outcome (nonzero): " + ", ".join(
    "%s/%s=%d" % (l.split('mode="')[1].split('"')[0], l.split('outcome="')[1].split('"')[0],
                  float(l.rsplit(" ", 1)[1]))
    for l in m.splitlines()
    if l.startswith("tlspeek_connections_total{") and float(l.rsplit(" ", 1)[1]) > 0))
print("soak: RSS KiB   first fifth max %d, last fifth max %d, after %d" % (rss_early, rss_late, end_rss))
print("soak: fds       idle %d, first fifth max %d, last fifth max %d, after %d (+%d pooled pipes)"
      % (idle_fds, fds_early, fds_late, end_fds, pool["pooled"]))
print("soak: pipes     pooled %d, in flight %d, closed holding bytes %d"
      % (pool["pooled"], pool["in_flight"], pool["closed_not_empty"]))
print("soak: active tunnels after: %d" % end_active)
print("soak: event lines %d for %d connections (%d dropped or failed)" % (events, conns, dropped))
print("soak: stalls (no byte for %gs): %d" % (stall_after, len(stalls)))
problems = []
if rss_late > rss_early * 1.10 + 8192:
    problems.append("RSS grew (%d -> %d KiB)" % (rss_early, rss_late))
if end_fds > idle_fds:
    problems.append("descriptors not back to idle (%d -> %d)" % (idle_fds, end_fds))
if events != conns or dropped:
    problems.append("event lines %d != connections %d (dropped/failed %d)" % (events, conns, dropped))
if pool["in_flight"] != 0:
    problems.append("%d pipes still in flight with no tunnel open" % pool["in_flight"])
if end_active != 0:
    problems.append("active tunnels not back to 0 (%d)" % end_active)
bad = {k: v for k, v in counts.items() if "mismatch" in k or "unexpected" in k or "error" in k or k == "curl_failed"}
if bad:
    problems.append("unexpected results: %s" % bad)
if stalls:
    problems.append("%d stalled transfer(s), see the STALL lines" % len(stalls))
print("soak: RESULT: " + ("nothing grew, every checksum matched" if not problems else "; ".join(problems)))
if os.environ.get("SOAK_KEEP") != "1":
    os.remove(os.path.join(work, "events.jsonl"))
print("soak: samples in %s/samples.csv" % work)
os._exit(1 if problems else 0)
PY
