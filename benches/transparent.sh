#!/usr/bin/env bash
# What the CONNECT exchange costs tlspeek at concurrency 1: the same handshake scenario
# through HAProxy (the floor, TCP), through tlspeek's CONNECT listener, and through
# tlspeek's transparent listener (iptables REDIRECT, no CONNECT: the client connects to the
# server's address, as it does through the floor), alternated, with the proxies' CPU per
# connection. The difference between tlspeek's two rows is the CONNECT round trip; the
# difference between the transparent row and the floor is tlspeek's own work.
#
# Usage: benches/transparent.sh [--rounds R] [-n N] [-c C] [--bin PATH] [--help]
#
# Runs everything in a network namespace of its own (`unshare -n`, loopback only), so the
# REDIRECT rule never touches the host's tables. The load generator runs as `nobody`, and
# only `nobody`'s connections to nginx's port are redirected (tlspeek's own connection
# upstream, as root, is not). Needs root, iptables, nginx and haproxy (installed with apt
# when missing); builds tlspeek and the load generator (release) unless --bin names a
# tlspeek binary. Prints one line per target: the median p50, the added p50 of each round
# (against that round's direct run) and the CPU per connection of each round.
set -euo pipefail
. "$(dirname "$0")/upstream.sh"   # wait_port, nginx_upstream, tlspeek_config

ROUNDS=6
N=1000
C=1
TLSPEEK=""
while [ $# -gt 0 ]; do
  case "$1" in
    --rounds) ROUNDS="$2"; shift 2 ;;
    -n) N="$2"; shift 2 ;;
    -c) C="$2"; shift 2 ;;
    --bin) TLSPEEK="$2"; shift 2 ;;
    -h|--help) sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "unknown option: $1 (see --help)" >&2; exit 2 ;;
  esac
done

if [ "${TRANSPARENT_INNER:-}" != 1 ]; then
  [ "$(id -u)" = 0 ] || { echo "needs root (unshare -n, iptables)" >&2; exit 1; }
  ROOT="$(cd "$(dirname "$0")/.." && pwd)"
  BIN="${CARGO_TARGET_DIR:-$ROOT/target}/release"
  missing=()
  command -v nginx >/dev/null || missing+=(nginx)
  command -v haproxy >/dev/null || missing+=(haproxy)
  command -v iptables >/dev/null || missing+=(iptables)
  if [ ${#missing[@]} -gt 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    systemctl stop nginx haproxy 2>/dev/null || true
  fi
  (cd "$ROOT" && cargo build --release --locked -q -p tlspeek-loadgen)
  if [ -z "$TLSPEEK" ]; then
    (cd "$ROOT" && cargo build --release --locked -q -p tlspeek)
    TLSPEEK="$BIN/tlspeek"
  fi
  W=$(mktemp -d /tmp/tlspeek-transparent.XXXXXX)
  trap 'rm -rf "$W"' EXIT
  chmod 755 "$W"
  # Copies `nobody` can run, in a directory it can read.
  cp "$BIN/tlspeek-loadgen" "$W/loadgen"
  cp "$TLSPEEK" "$W/tlspeek"
  chmod 755 "$W/loadgen" "$W/tlspeek"
  TRANSPARENT_INNER=1 W="$W" unshare -n bash "$0" --rounds "$ROUNDS" -n "$N" -c "$C"
  exit $?
fi

# ---- inside the namespace: only loopback, nothing leaves ----
ip link set lo up
NGINX_PORT=24200
HAP_PORT=24300
PROXY_PORT=24100
TP_PORT=24130
ADMIN_PORT=24101
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  [ -f "$W/hap.pid" ] && kill "$(cat "$W/hap.pid")" 2>/dev/null || true
  wait 2>/dev/null || true
}
trap cleanup EXIT INT TERM

nginx_upstream "$W" "$NGINX_PORT"
cat >"$W/haproxy.cfg" <<EOF
global
  maxconn 9000
defaults
  mode tcp
  timeout connect 5s
  timeout client 30s
  timeout server 30s
listen fwd
  bind 127.0.0.1:$HAP_PORT
  server n 127.0.0.1:$NGINX_PORT
EOF
tlspeek_config "$W" "$PROXY_PORT" "$ADMIN_PORT" "$NGINX_PORT" \
  $'max_connections = 20000\nmax_connections_per_source = 20000' \
  "$(printf '[transparent]\nlisten = "127.0.0.1:%s"' "$TP_PORT")"

iptables -t nat -A OUTPUT -p tcp -d 127.0.0.1 --dport "$NGINX_PORT" \
  -m owner --uid-owner 65534 -j REDIRECT --to-ports "$TP_PORT"
nginx -c "$W/nginx.conf" -e "$W/nginx-error.log" 2>>"$W/nginx-stderr.log" &
PIDS+=($!)
haproxy -D -f "$W/haproxy.cfg" -p "$W/hap.pid"
"$W/tlspeek" run --config "$W/tlspeek.toml" >"$W/tlspeek.log" 2>&1 &
TP=$!
PIDS+=($TP)
wait_port "$NGINX_PORT"
wait_port "$HAP_PORT"
wait_port "$PROXY_PORT"
wait_port "$TP_PORT"
HP=$(cat "$W/hap.pid")

L="$W/loadgen"
run() { # target: one JSON line
  case "$1" in
    direct) "$L" handshake -n "$N" -c "$C" --direct --target "127.0.0.1:$NGINX_PORT" ;;
    floor) "$L" handshake -n "$N" -c "$C" --direct --target "127.0.0.1:$HAP_PORT" --pid "$HP" ;;
    connect) "$L" handshake -n "$N" -c "$C" --proxy "127.0.0.1:$PROXY_PORT" \
      --target "127.0.0.1:$NGINX_PORT" --pid "$TP" ;;
    transparent) setpriv --reuid=65534 --regid=65534 --clear-groups \
      "$L" handshake -n "$N" -c "$C" --direct --target "127.0.0.1:$NGINX_PORT" --pid "$TP" ;;
  esac 2>/dev/null | tail -1
}
# Warm-up (tables, pools, the servers' caches): 200 handshakes each, not counted.
for t in direct floor connect transparent; do
  N=200 run "$t" >/dev/null || { echo "warm-up, $t: the load generator failed" >&2; exit 1; }
done
: >"$W/results.jsonl"
# wait_port's own probe of the transparent port was logged too: count from here.
sleep 0.5
before=$(grep -c '"mode":"transparent"' "$W/events.jsonl" 2>/dev/null || true)
for r in $(seq 1 "$ROUNDS"); do
  for t in direct floor connect transparent; do
    line=$(run "$t") || { echo "round $r, $t: the load generator failed" >&2; exit 1; }
    echo "{\"round\":$r,\"target\":\"$t\",\"result\":$line}" >>"$W/results.jsonl"
  done
done
# Every transparent connection must have gone through tlspeek's transparent listener.
want=$((ROUNDS * N))
sleep 0.5
got=$(( $(grep -c '"mode":"transparent"' "$W/events.jsonl" || true) - ${before:-0} ))
python3 - "$W/results.jsonl" "$want" "$got" "$N" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
want, got, n = int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
by = {}
failed = 0
for r in rows:
    res = r["result"]
    if res["errors"] or res["ok"] != n:
        failed += 1
        print(f"round {r['round']} {r['target']}: {res['ok']} ok, {res['errors']} errors", file=sys.stderr)
    by.setdefault(r["target"], []).append(res)
direct = {r["round"]: r["result"]["p50_us"] for r in rows if r["target"] == "direct"}
print("target       p50 (µs)      added p50 over direct, per round (µs)    CPU/conn (µs)")
for t in ["direct", "floor", "connect", "transparent"]:
    res = by[t]
    added = [r["result"]["p50_us"] - direct[r["round"]] for r in rows if r["target"] == t]
    cpu = [x["proxy_cpu_us_per_conn"] for x in res if x["proxy_cpu_us_per_conn"] is not None]
    print(f"{t:12} {statistics.median(x['p50_us'] for x in res):8.0f}      "
          f"median {statistics.median(added):+6.0f} ({', '.join(f'{a:+d}' for a in added)})"
          f"    {('median %.0f (%s)' % (statistics.median(cpu), ', '.join('%.0f' % c for c in cpu))) if cpu else '-'}")
print(f"transparent connections tlspeek logged as such: {got} of {want}")
sys.exit(0 if got == want and not failed else 1)
PY
