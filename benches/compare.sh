#!/usr/bin/env bash
# Compares tlspeek with direct connections, a floor (HAProxy forwarding TCP, no CONNECT;
# once copying through user space, its default, and once with splice(2), as tlspeek's
# pass-through does), Squid (plain CONNECT, and ssl_bump peek + splice logging SNI and TLS version) and
# tinyproxy, on 127.0.0.1 only, with tlspeek-loadgen, and prints one table of ratios to
# direct (medians over the runs). The TLS upstream is nginx (what users run); the load
# generator's own server is a second upstream, so both figures are visible.
#
# Usage: benches/compare.sh [--runs N] [--quick] [--idle-tunnels K] [--big-idle K]
#                           [--only LIST] [--results FILE] [--no-strace] [--dry-run]
#                           [--help]
#
# Installs nginx, haproxy, squid-openssl, tinyproxy and strace with apt when they are
# missing (idempotent), stops Debian's own daemons if the packages started them, builds
# tlspeek and the load generator (release), starts every upstream and proxy in the
# foreground with a private config under a temporary directory, runs the scenarios with
# the targets alternating within each run, and stops everything it started when it ends
# (also on Ctrl-C).
set -euo pipefail

usage() {
  sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'
  cat <<'EOF'

Options:
  --runs N          runs of every scenario per target (default 5); medians are reported
  --quick           small sizes and counts, one run (a check that everything works)
  --idle-tunnels K  idle tunnels per proxy for the RSS comparison (default 1000)
  --big-idle K      tunnels tlspeek alone must hold at once (default 8000; 0 to skip)
  --only LIST       comma-separated targets (direct,floor,floor-splice,tlspeek,tlspeek-copy,
                    squid-peek,squid-connect,tinyproxy); tlspeek-copy is tlspeek with
                    TLSPEEK_SPLICE=0 (its copy path), floor-splice HAProxy with splice
  --no-strace       skip the syscall count (a separate, untimed run under strace -c -f)
  --results FILE    also keep the raw JSON lines there
  --dry-run         check the script and print the plan; install and start nothing
  --help            this text
Environment: CARGO_TARGET_DIR (where cargo builds; default ./target).
EOF
}

RUNS=5
QUICK=0
IDLE_K=1000
BIG_IDLE=8000
ONLY="direct,floor,floor-splice,tlspeek,tlspeek-copy,squid-peek,squid-connect,tinyproxy"
RESULTS=""
DRY=0
STRACE=1
while [ $# -gt 0 ]; do
  case "$1" in
    --runs) RUNS="$2"; shift 2 ;;
    --quick) QUICK=1; shift ;;
    --idle-tunnels) IDLE_K="$2"; shift 2 ;;
    --big-idle) BIG_IDLE="$2"; shift 2 ;;
    --only) ONLY="$2"; shift 2 ;;
    --results) RESULTS="$2"; shift 2 ;;
    --dry-run) DRY=1; shift ;;
    --no-strace) STRACE=0; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "unknown option: $1 (see --help)" >&2; exit 2 ;;
  esac
done

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
BIN="$TARGET_DIR/release"

# Scenario sizes.
if [ "$QUICK" = 1 ]; then
  RUNS=1; HS_N=200; HS_C=8; LAT_N=50; RAW_BYTES=$((32 << 20)); TLS_BYTES=$((16 << 20))
  IDLE_K=$(( IDLE_K < 50 ? IDLE_K : 50 )); BIG_IDLE=0; HOLD=1s; SC_N=100
else
  # LAT_N: the c=1 run gives the p50 and the c=1 CPU per connection; the kernel counts CPU
  # time in 10 ms ticks, so 2,000 connections read it in 5 µs steps (400 gave 25 µs).
  HS_N=3000; HS_C=32; LAT_N=2000; RAW_BYTES=$((512 << 20)); TLS_BYTES=$((256 << 20)); HOLD=3s
  SC_N=1000
fi
MULTI=4 # streams in the several-tunnels scenario

PORT_TLSPEEK=23128; PORT_ADMIN=29748; PORT_SQUID_PEEK=23129; PORT_SQUID_CONNECT=23130
PORT_TINYPROXY=23131; PORT_NGINX=23140
# The floor's frontends: one per upstream (HAProxy forwards TCP; the client connects to it
# as to the server).
PORT_FLOOR_NGINX=23141; PORT_FLOOR_TLS=23142; PORT_FLOOR_RAW=23143
# The same with splice(2) (HAProxy's option splice-request/splice-response).
PORT_SPLICE_NGINX=23144; PORT_SPLICE_TLS=23145; PORT_SPLICE_RAW=23146
# tlspeek on its copy path (TLSPEEK_SPLICE=0).
PORT_TLSPEEK_COPY=23132; PORT_ADMIN_COPY=29749

plan() {
  cat <<EOF
plan:
  packages: nginx haproxy squid-openssl tinyproxy strace (apt-get, only when missing)
  build:    cargo build --release -p tlspeek -p tlspeek-loadgen   (into $TARGET_DIR)
  upstream: nginx 127.0.0.1:$PORT_NGINX (TLS 1.2/1.3, ECDSA P-256: GET / and GET /bulk/N)
            $BIN/tlspeek-loadgen serve                              (TLS + raw, 127.0.0.1)
  floor:    haproxy mode tcp 127.0.0.1:$PORT_FLOOR_NGINX/$PORT_FLOOR_TLS/$PORT_FLOOR_RAW (no CONNECT),
            and with splice 127.0.0.1:$PORT_SPLICE_NGINX/$PORT_SPLICE_TLS/$PORT_SPLICE_RAW
  proxies:  tlspeek 127.0.0.1:$PORT_TLSPEEK (and TLSPEEK_SPLICE=0 127.0.0.1:$PORT_TLSPEEK_COPY), squid peek+splice 127.0.0.1:$PORT_SQUID_PEEK,
            squid CONNECT 127.0.0.1:$PORT_SQUID_CONNECT, tinyproxy 127.0.0.1:$PORT_TINYPROXY
  targets:  $ONLY
  runs:     $RUNS, targets alternating within each run
  per run:  to nginx: handshake -n $HS_N -c $HS_C (rate, proxy CPU/conn); -n $LAT_N -c 1
            (p50, CPU/conn); tls-down ${TLS_BYTES} B;
            to the loadgen server: handshake -n $HS_N -c $HS_C; tls-down ${TLS_BYTES} B;
            raw throughput down/up ${RAW_BYTES} B x1, down $((RAW_BYTES / MULTI)) B x$MULTI;
            idle -k $IDLE_K --hold $HOLD (RSS/tunnel)
  syscalls: per proxy, untimed: strace -c -f on every thread during handshake -n $SC_N -c 8
            to nginx; total calls / connections (--no-strace skips it)
  then:     tlspeek alone: idle -k $BIG_IDLE (0 = skipped)
EOF
}

if [ "$DRY" = 1 ]; then
  plan
  for c in python3 awk; do
    command -v "$c" >/dev/null || { echo "missing: $c" >&2; exit 1; }
  done
  echo "dry run: nothing installed or started"
  exit 0
fi

want() { case ",$ONLY," in *",$1,"*) return 0 ;; *) return 1 ;; esac; }

# --- install (idempotent) -------------------------------------------------------------
pkgs=()
for p in nginx haproxy squid-openssl tinyproxy strace; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || pkgs+=("$p")
done
if [ "${#pkgs[@]}" -gt 0 ]; then
  echo "installing: ${pkgs[*]}" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${pkgs[@]}" </dev/null >&2
fi
# Debian's own daemons, if the packages started them: stop them (by their pid files).
for pf in /run/squid.pid /var/run/squid.pid /run/tinyproxy/tinyproxy.pid /run/nginx.pid \
  /run/haproxy.pid; do
  if [ -s "$pf" ]; then
    pid=$(cat "$pf")
    if [ -d "/proc/$pid" ] && grep -qE '^(squid|tinyproxy|nginx|haproxy)' "/proc/$pid/comm"; then
      echo "stopping the packaged daemon $(cat "/proc/$pid/comm") ($pid)" >&2
      kill "$pid" 2>/dev/null || true
    fi
  fi
done

# --- build ------------------------------------------------------------------------------
(cd "$ROOT" && cargo build --release --locked -q -p tlspeek -p tlspeek-loadgen)

# --- start ------------------------------------------------------------------------------
W=$(mktemp -d /tmp/tlspeek-compare.XXXXXX)
chmod 755 "$W"
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  # Squid takes up to shutdown_lifetime (1 s) to stop; then whatever is left is killed.
  for _ in $(seq 1 30); do
    alive=0
    for p in "${PIDS[@]}"; do [ -d "/proc/$p" ] && alive=1; done
    [ "$alive" = 0 ] && break
    sleep 0.1
  done
  for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  if [ -n "${KEEP:-}" ]; then echo "kept $W" >&2; else rm -rf "$W"; fi
}
trap cleanup EXIT INT TERM

wait_port() { # port
  for _ in $(seq 1 200); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.05
  done
  echo "nothing listens on 127.0.0.1:$1" >&2
  return 1
}

ulimit -n 20000 2>/dev/null || true

for p in $PORT_TLSPEEK $PORT_ADMIN $PORT_SQUID_PEEK $PORT_SQUID_CONNECT $PORT_TINYPROXY \
  $PORT_NGINX $PORT_FLOOR_NGINX $PORT_FLOOR_TLS $PORT_FLOOR_RAW $PORT_SPLICE_NGINX \
  $PORT_SPLICE_TLS $PORT_SPLICE_RAW $PORT_TLSPEEK_COPY $PORT_ADMIN_COPY; do
  if (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
    echo "127.0.0.1:$p is already in use: stop what listens there first" >&2
    exit 1
  fi
done

"$BIN/tlspeek-loadgen" serve --lifetime 2h >"$W/serve.json" 2>"$W/serve.err" &
PIDS+=($!)
for _ in $(seq 1 100); do [ -s "$W/serve.json" ] && break; sleep 0.05; done
TLS=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["tls"])' "$W/serve.json")
RAW=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["raw"])' "$W/serve.json")
TLS_PORT=${TLS##*:}; RAW_PORT=${RAW##*:}

# nginx: the TLS upstream users run. GET / answers a few bytes; GET /bulk/N the bulk file
# (TLS_BYTES of it, which is what the load generator asks for).
d="$W/nginx"; mkdir -p "$d/www"; chmod 755 "$d" "$d/www"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
  -subj "/CN=localhost" -addext "subjectAltName=DNS:localhost" \
  -keyout "$d/key.pem" -out "$d/cert.pem" >/dev/null 2>&1
chmod 644 "$d/key.pem" "$d/cert.pem"
truncate -s "$TLS_BYTES" "$d/www/bulk.bin"; chmod 644 "$d/www/bulk.bin"
cat >"$d/nginx.conf" <<EOF
worker_processes auto;
daemon off;
pid $d/nginx.pid;
error_log $d/error.log error;
events { worker_connections 20000; }
http {
  access_log off;
  sendfile off;
  server {
    listen 127.0.0.1:$PORT_NGINX ssl;
    ssl_certificate $d/cert.pem;
    ssl_certificate_key $d/key.pem;
    ssl_protocols TLSv1.2 TLSv1.3;
    ssl_session_tickets off;
    root $d/www;
    location = / { return 200 "ok\n"; }
    location /bulk/ { try_files /bulk.bin =404; }
  }
}
EOF
nginx -c "$d/nginx.conf" -e "$d/error.log" 2>>"$d/stderr.log" &
PIDS+=($!)
NGX="127.0.0.1:$PORT_NGINX"

wait_port "$PORT_NGINX" || { cat "$W/nginx/error.log" "$W/nginx/stderr.log" >&2; exit 1; }

declare -A PROXY PID_OF FRONT
PROXY[direct]=""

# The floor: HAProxy in TCP mode, what the kernel costs per forwarded connection here. It
# is connected to as if it were the server (no CONNECT): one frontend per upstream, which
# FRONT maps to ("target|upstream" -> frontend).
start_haproxy() { # target nginx-port tls-port raw-port extra-defaults-line
  local d="$W/$1"; mkdir -p "$d"
  cat >"$d/haproxy.cfg" <<EOF
global
  maxconn 4000
defaults
  mode tcp
  timeout connect 10s
  timeout client 10m
  timeout server 10m
  $5
listen to_nginx
  bind 127.0.0.1:$2
  server nginx $NGX
listen to_tls
  bind 127.0.0.1:$3
  server tls $TLS
listen to_raw
  bind 127.0.0.1:$4
  server raw $RAW
EOF
  haproxy -db -f "$d/haproxy.cfg" 2>"$d/stderr.log" &
  PIDS+=($!); PID_OF[$1]=$!; PROXY[$1]=""
  FRONT["$1|$NGX"]="127.0.0.1:$2"
  FRONT["$1|$TLS"]="127.0.0.1:$3"
  FRONT["$1|$RAW"]="127.0.0.1:$4"
  local p
  for p in "$2" "$3" "$4"; do
    wait_port "$p" || { cat "$d/stderr.log" >&2; exit 1; }
  done
}
want floor && start_haproxy floor $PORT_FLOOR_NGINX $PORT_FLOOR_TLS $PORT_FLOOR_RAW ""
want floor-splice && start_haproxy floor-splice $PORT_SPLICE_NGINX $PORT_SPLICE_TLS \
  $PORT_SPLICE_RAW "option splice-request
  option splice-response"

start_tlspeek() { # target port admin-port splice(1/0)
  cat >"$W/$1.toml" <<EOF
[proxy]
listen = "127.0.0.1:$2"
deny_destinations = []
allowed_ports = [$TLS_PORT, $RAW_PORT, $PORT_NGINX]
max_connections = 20000
max_connections_per_source = 20000
# The load generator runs on this host; at an egress the callers are other hosts, which are
# never looked up. TLSPEEK_NAME_LOCAL=true measures a host-local deployment instead.
name_local_processes = ${TLSPEEK_NAME_LOCAL:-false}
[admin]
listen = "127.0.0.1:$3"
[events]
path = "$W/$1-events.jsonl"
EOF
  TLSPEEK_SPLICE=$4 "$BIN/tlspeek" run --config "$W/$1.toml" 2>"$W/$1.err" &
  PIDS+=($!); PID_OF[$1]=$!; PROXY[$1]="127.0.0.1:$2"
  wait_port "$2"
}
want tlspeek && start_tlspeek tlspeek $PORT_TLSPEEK $PORT_ADMIN 1
want tlspeek-copy && start_tlspeek tlspeek-copy $PORT_TLSPEEK_COPY $PORT_ADMIN_COPY 0

squid_conf() { # name port extra-http-port-options extra-lines
  local d="$W/$1"
  mkdir -p "$d"; chown proxy:proxy "$d"
  cat >"$d/squid.conf" <<EOF
http_port 127.0.0.1:$2 $3
pid_filename $d/squid.pid
cache_log $d/cache.log
logformat tlspeek_bench %ts.%03tu %>a %rm %ru %ssl::>sni %ssl::>received_hello_version %ssl::>received_supported_version %ssl::bump_mode %Ss/%>Hs %<st
access_log stdio:$d/access.log tlspeek_bench
cache deny all
cache_mem 8 MB
coredump_dir $d
max_filedescriptors 20000
shutdown_lifetime 1 seconds
client_persistent_connections off
acl bench_ports port $TLS_PORT $RAW_PORT $PORT_NGINX
acl CONNECT method CONNECT
acl loopback src 127.0.0.0/8
http_access allow CONNECT bench_ports loopback
# What on_unsupported_protocol tunnels (a non-TLS first flight after a peek) is checked
# again without the CONNECT method.
http_access allow bench_ports loopback
http_access deny all
$4
EOF
  echo "$d/squid.conf"
}

start_squid() { # name port
  local conf="$1"
  squid -N -f "$conf" 2>>"$(dirname "$conf")/stderr.log" &
  local pid=$!
  PIDS+=($pid)
  wait_port "$2" || { tail -5 "$(dirname "$conf")/stderr.log" "$(dirname "$conf")/cache.log" >&2; return 1; }
  LAST_PID=$pid
}

if want squid-connect; then
  conf=$(squid_conf squid-connect "$PORT_SQUID_CONNECT" "" "")
  start_squid "$conf" "$PORT_SQUID_CONNECT"
  PID_OF[squid-connect]=$LAST_PID; PROXY[squid-connect]="127.0.0.1:$PORT_SQUID_CONNECT"
fi

if want squid-peek; then
  d="$W/squid-peek"; mkdir -p "$d"; chown proxy:proxy "$d"
  # Its own CA: ssl_bump needs one configured even when it only peeks and splices.
  openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=tlspeek bench squid CA" \
    -keyout "$d/ca.key" -out "$d/ca.pem" >/dev/null 2>&1
  chown proxy:proxy "$d/ca.key" "$d/ca.pem"
  conf=$(squid_conf squid-peek "$PORT_SQUID_PEEK" \
    "ssl-bump tls-cert=$d/ca.pem tls-key=$d/ca.key generate-host-certificates=off" \
    "acl step1 at_step SslBump1
ssl_bump peek step1
ssl_bump splice all
on_unsupported_protocol tunnel all")
  start_squid "$conf" "$PORT_SQUID_PEEK"
  PID_OF[squid-peek]=$LAST_PID; PROXY[squid-peek]="127.0.0.1:$PORT_SQUID_PEEK"
fi

if want tinyproxy; then
  d="$W/tinyproxy"; mkdir -p "$d"; chown tinyproxy:tinyproxy "$d" 2>/dev/null || chmod 777 "$d"
  cat >"$d/tinyproxy.conf" <<EOF
User tinyproxy
Group tinyproxy
Port $PORT_TINYPROXY
Listen 127.0.0.1
Timeout 600
MaxClients 20000
LogFile "$d/tinyproxy.log"
LogLevel Error
Allow 127.0.0.1
ConnectPort $TLS_PORT
ConnectPort $RAW_PORT
ConnectPort $PORT_NGINX
DisableViaHeader Yes
EOF
  tinyproxy -d -c "$d/tinyproxy.conf" 2>"$d/stderr.log" &
  PIDS+=($!); PID_OF[tinyproxy]=$!; PROXY[tinyproxy]="127.0.0.1:$PORT_TINYPROXY"
  wait_port "$PORT_TINYPROXY"
fi

TARGETS=()
for t in direct floor floor-splice tlspeek tlspeek-copy squid-peek squid-connect tinyproxy; do want "$t" && TARGETS+=("$t"); done

OUT="$W/results.jsonl"
: >"$OUT"

lg() { # target scenario run args...
  local target="$1" scenario="$2" run="$3"; shift 3
  local via=(--direct)
  [ -n "${PROXY[$target]}" ] && via=(--proxy "${PROXY[$target]}")
  # A floor is connected to as if it were the server: its frontend for that upstream.
  local args=("${@:2}") i
  for i in "${!args[@]}"; do
    [ -n "${args[$i]}" ] && [ -n "${FRONT["$target|${args[$i]}"]:-}" ] &&
      args[$i]="${FRONT["$target|${args[$i]}"]}"
  done
  local line
  if line=$("$BIN/tlspeek-loadgen" "$1" "${via[@]}" "${args[@]}" 2>>"$W/loadgen.err"); then
    echo "{\"target\":\"$target\",\"scenario\":\"$scenario\",\"run\":$run,\"r\":$line}" >>"$OUT"
  else
    echo "{\"target\":\"$target\",\"scenario\":\"$scenario\",\"run\":$run,\"failed\":true}" >>"$OUT"
    echo "  $target $scenario run $run FAILED: $(tail -1 "$W/loadgen.err")" >&2
  fi
}

pid_args() { [ -n "${PID_OF[$1]:-}" ] && echo "--pid ${PID_OF[$1]}"; }

echo "versions: $("$BIN/tlspeek" --version 2>&1 | head -1); $(nginx -v 2>&1 | head -1); $(haproxy -v | head -1); $(squid -v | head -1); $(tinyproxy -v 2>&1 | head -1); kernel $(uname -r); $(nproc) cores" >&2
for run in $(seq 1 "$RUNS"); do
  # Rotate the order each run, so no target always goes first.
  n=${#TARGETS[@]}
  order=()
  for i in $(seq 0 $((n - 1))); do order+=("${TARGETS[$(( (i + run) % n ))]}"); done
  echo "run $run/$RUNS: ${order[*]}" >&2
  for t in "${order[@]}"; do
    # shellcheck disable=SC2046
    lg "$t" rate "$run" handshake --target "$NGX" -n "$HS_N" -c "$HS_C" $(pid_args "$t")
    # shellcheck disable=SC2046
    lg "$t" latency "$run" handshake --target "$NGX" -n "$LAT_N" -c 1 $(pid_args "$t")
    # shellcheck disable=SC2046
    lg "$t" rate_lg "$run" handshake --target "$TLS" -n "$HS_N" -c "$HS_C" $(pid_args "$t")
    # shellcheck disable=SC2046
    lg "$t" raw_down "$run" throughput --target "$RAW" --dir down --bytes "$RAW_BYTES" $(pid_args "$t")
    # shellcheck disable=SC2046
    lg "$t" raw_up "$run" throughput --target "$RAW" --dir up --bytes "$RAW_BYTES" $(pid_args "$t")
    lg "$t" raw_down_multi "$run" throughput --target "$RAW" --dir down --streams "$MULTI" \
      --bytes $((RAW_BYTES / MULTI))
    lg "$t" tls_down "$run" throughput --target "$NGX" --dir tls-down --bytes "$TLS_BYTES"
    lg "$t" tls_down_lg "$run" throughput --target "$TLS" --dir tls-down --bytes "$TLS_BYTES"
    if [ "$t" != direct ]; then
      # shellcheck disable=SC2046
      lg "$t" idle "$run" idle --target "$TLS" -k "$IDLE_K" --hold "$HOLD" $(pid_args "$t")
    fi
  done
done

# Syscalls per connection: strace -c -f on every thread of each proxy, in a separate run
# (strace slows what it traces; nothing here is timed).
if [ "$STRACE" = 1 ]; then
  for t in "${TARGETS[@]}"; do
    [ "$t" = direct ] && continue
    pid=${PID_OF[$t]:-}
    [ -n "$pid" ] || continue
    strace -c -f -p "$pid" -o "$W/strace.$t" 2>/dev/null &
    spid=$!
    sleep 1
    lg "$t" strace_run 1 handshake --target "$NGX" -n "$SC_N" -c 8
    kill -INT "$spid" 2>/dev/null || true
    wait "$spid" 2>/dev/null || true
    calls=$(awk '$NF == "total" { print $4 }' "$W/strace.$t" 2>/dev/null)
    if [ -n "$calls" ]; then
      echo "{\"target\":\"$t\",\"scenario\":\"syscalls\",\"run\":1,\"r\":{\"per_conn\":$(python3 -c "print($calls / $SC_N)")}}" >>"$OUT"
    fi
  done
fi

if want tlspeek && [ "$BIG_IDLE" -gt 0 ]; then
  echo "tlspeek alone: $BIG_IDLE idle tunnels" >&2
  lg tlspeek big_idle 1 idle --target "$TLS" -k "$BIG_IDLE" --hold 5s --open-concurrency 64 \
    --pid "${PID_OF[tlspeek]}"
  echo "{\"target\":\"tlspeek\",\"scenario\":\"fd_limit\",\"run\":1,\"r\":{\"hard\":$(ulimit -Hn)}}" >>"$OUT"
fi

[ -n "$RESULTS" ] && cp "$OUT" "$RESULTS"

python3 - "$OUT" "${TARGETS[@]}" <<'EOF'
import json, statistics, sys
path, targets = sys.argv[1], sys.argv[2:]
rows = [json.loads(l) for l in open(path) if l.strip()]
def runs(target, scenario):
    return {r["run"]: r.get("r") for r in rows if r["target"] == target and r["scenario"] == scenario}
def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None
def ratio(target, scenario, key):
    d, t = runs("direct", scenario), runs(target, scenario)
    return med([t[k][key] / d[k][key] for k in t if t[k] and d.get(k) and d[k][key]])
def value(target, scenario, key):
    return med([r[key] for r in runs(target, scenario).values() if r and r.get(key) is not None])
def added(target, scenario, key):
    d, t = runs("direct", scenario), runs(target, scenario)
    return med([t[k][key] - d[k][key] for k in t if t[k] and d.get(k)])
def failed(target):
    return sum(1 for r in rows if r["target"] == target and r.get("failed"))
def fmt(v, f):
    return "—" if v is None else f.format(v)
names = {"direct": "direct", "floor": "HAProxy TCP (floor)",
         "floor-splice": "HAProxy TCP splice", "tlspeek": "tlspeek",
         "tlspeek-copy": "tlspeek, copy path",
         "squid-peek": "Squid peek+splice",
         "squid-connect": "Squid CONNECT", "tinyproxy": "tinyproxy"}
proxies = [t for t in targets if t != "direct"]
lines = []
lines.append("| metric (median of runs) | direct | " + " | ".join(names[t] for t in proxies) + " |")
lines.append("| --- | --- |" + " --- |" * len(proxies))
def row(label, direct_cell, cells):
    lines.append(f"| {label} | {direct_cell} | " + " | ".join(cells) + " |")
for sc, label in [("raw_down", "raw tunnel throughput, down, 1 stream"),
                  ("raw_up", "raw tunnel throughput, up, 1 stream"),
                  ("raw_down_multi", "raw tunnel throughput, down, 4 streams"),
                  ("tls_down", "TLS bulk download through the tunnel, nginx"),
                  ("tls_down_lg", "TLS bulk download through the tunnel, loadgen server")]:
    row(label + " (× direct)", fmt(value("direct", sc, "mb_per_s"), "{:.0f} MB/s"),
        [fmt(ratio(t, sc, "mb_per_s"), "{:.2f}×") for t in proxies])
row("connections/s at concurrency 32, nginx (× direct)",
    fmt(value("direct", "rate", "conn_per_s"), "{:.0f}/s"),
    [fmt(ratio(t, "rate", "conn_per_s"), "{:.2f}×") for t in proxies])
row("connections/s at concurrency 32, loadgen server (× direct)",
    fmt(value("direct", "rate_lg", "conn_per_s"), "{:.0f}/s"),
    [fmt(ratio(t, "rate_lg", "conn_per_s"), "{:.2f}×") for t in proxies])
row("added p50 latency per connection, concurrency 1, nginx",
    fmt(value("direct", "latency", "p50_us"), "{:.0f} µs"),
    [fmt(added(t, "latency", "p50_us"), "+{:.0f} µs") for t in proxies])
row("proxy CPU per connection, c=32 / c=1, nginx (utime+stime / N)", "—",
    [fmt(value(t, "rate", "proxy_cpu_us_per_conn"), "{:.0f}") + " / "
     + fmt(value(t, "latency", "proxy_cpu_us_per_conn"), "{:.0f} µs") for t in proxies])
row("syscalls per connection (strace -c -f, separate run)", "—",
    [fmt(value(t, "syscalls", "per_conn"), "{:.1f}") for t in proxies])
row("proxy CPU per GB, raw down / up (1 stream)", "—",
    [fmt(value(t, "raw_down", "proxy_cpu_s_per_gb"), "{:.2f}") + " / "
     + fmt(value(t, "raw_up", "proxy_cpu_s_per_gb"), "{:.2f} s") for t in proxies])
# RSS: the first run's figure. Later runs mostly reuse memory the allocator kept from the
# earlier ones, so their growth per tunnel understates what holding tunnels costs.
def first(target, scenario, key):
    r = runs(target, scenario)
    return r[min(r)].get(key) if r and r[min(r)] else None
row("proxy RSS per idle tunnel (first run, cold)", "—",
    [fmt(first(t, "idle", "rss_per_tunnel_kib"), "{:.1f} KiB") for t in proxies])
row("failed loadgen runs", str(failed("direct")), [str(failed(t)) for t in proxies])
print("\n".join(lines))
big = runs("tlspeek", "big_idle")
if big:
    b = list(big.values())[0]
    fd = list(runs("tlspeek", "fd_limit").values())[0]
    if b:
        print(f"\ntlspeek alone, {b['tunnels']} idle tunnels held at once (open files hard limit "
              f"{fd['hard']}): {b['open_errors']} failed to open, {b['check_errors']} failed "
              f"the GET after the hold, {b['rss_per_tunnel_kib']:.1f} KiB RSS per tunnel")
    else:
        print("\ntlspeek alone: the big idle run FAILED (see above)")
EOF
