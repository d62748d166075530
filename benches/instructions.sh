#!/usr/bin/env bash
# User-space instructions tlspeek spends per proxied connection, counted by callgrind:
# a figure that does not move with the machine's speed or its neighbours, so a change of a
# few percent can be told apart on a noisy shared VM where timing cannot (the same binary
# counted twice has differed by 0.2% to 1%: count each binary twice). The kernel's share (the sockets) is not counted.
#
# Usage: benches/instructions.sh [--connections N] [--warmup N] [--bin PATH] [--help]
#
# Starts nginx (TLS 1.2/1.3, as in compare.sh) on 127.0.0.1 and `tlspeek run` under
# `valgrind --tool=callgrind` with the benchmark config (events on, local process naming
# off), makes --warmup handshakes through it (tables, pools, caches), zeroes the counters,
# makes --connections handshakes (CONNECT, TLS handshake, small GET; tlspeek-loadgen at
# c=4), dumps the counters and prints one JSON line: instructions per connection, and
# where the profile was kept (read it with callgrind_annotate). Installs valgrind and
# nginx with apt when missing; builds tlspeek and the load generator (release) unless
# --bin names a tlspeek binary; stops what it started.
set -euo pipefail
. "$(dirname "$0")/upstream.sh"   # wait_port, nginx_upstream, tlspeek_config

N=500
WARMUP=200
TLSPEEK=""
while [ $# -gt 0 ]; do
  case "$1" in
    --connections) N="$2"; shift 2 ;;
    --warmup) WARMUP="$2"; shift 2 ;;
    --bin) TLSPEEK="$2"; shift 2 ;;
    -h|--help) sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "unknown option: $1 (see --help)" >&2; exit 2 ;;
  esac
done

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
BIN="${CARGO_TARGET_DIR:-$ROOT/target}/release"
missing=()
command -v valgrind >/dev/null || missing+=(valgrind)
command -v nginx >/dev/null || missing+=(nginx)
if [ ${#missing[@]} -gt 0 ]; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  systemctl stop nginx 2>/dev/null || true
fi
(cd "$ROOT" && cargo build --release --locked -q -p tlspeek-loadgen)
if [ -z "$TLSPEEK" ]; then
  (cd "$ROOT" && cargo build --release --locked -q -p tlspeek)
  TLSPEEK="$BIN/tlspeek"
fi

W=$(mktemp -d /tmp/tlspeek-instructions.XXXXXX)
chmod 755 "$W"
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$W"
}
trap cleanup EXIT INT TERM

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
NGINX_PORT=$(free_port)
PROXY_PORT=$(free_port)
ADMIN_PORT=$(free_port)

nginx_upstream "$W" "$NGINX_PORT"
nginx -c "$W/nginx.conf" -e "$W/nginx-error.log" 2>>"$W/nginx-stderr.log" &
PIDS+=($!)
wait_port "$NGINX_PORT"

tlspeek_config "$W" "$PROXY_PORT" "$ADMIN_PORT" "$NGINX_PORT"
OUT="$W/callgrind.out"
valgrind --tool=callgrind --callgrind-out-file="$OUT" \
  "$TLSPEEK" run --config "$W/tlspeek.toml" >"$W/tlspeek.log" 2>&1 &
VG=$!
PIDS+=($VG)
wait_port "$PROXY_PORT"

load() { # connections
  "$BIN/tlspeek-loadgen" handshake --proxy "127.0.0.1:$PROXY_PORT" \
    --target "127.0.0.1:$NGINX_PORT" -n "$1" -c 4 --step-timeout 60s 2>/dev/null
}
ok() { python3 -c 'import json,sys; d=json.load(sys.stdin); sys.exit(0 if d["ok"]==int(sys.argv[1]) and d["errors"]==0 else 1)' "$1"; }

load "$WARMUP" | ok "$WARMUP" || { echo "warm-up handshakes failed" >&2; exit 1; }
sleep 1
callgrind_control -z "$VG" >/dev/null 2>&1
load "$N" | ok "$N" || { echo "measured handshakes failed" >&2; exit 1; }
sleep 1
callgrind_control -d "$VG" >/dev/null 2>&1
sleep 1
DUMP="$OUT.1"
[ -s "$DUMP" ] || { echo "callgrind wrote no dump" >&2; exit 1; }
total=$(awk '/^(summary|totals):/ { print $2; exit }' "$DUMP")
KEPT="/tmp/tlspeek-callgrind.$(date +%s).out"
cp "$DUMP" "$KEPT"
python3 -c 'import json,sys; t,n=int(sys.argv[1]),int(sys.argv[2]); print(json.dumps({"connections":n,"instructions":t,"instructions_per_conn":round(t/n),"profile":sys.argv[3]}))' \
  "$total" "$N" "$KEPT"
