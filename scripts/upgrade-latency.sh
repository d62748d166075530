#!/usr/bin/env bash
# Measures the handshake time a client sees (curl's time_appconnect, medians of N runs):
# direct TLS 1.2, through tlspeek passed (TLS 1.2, observe) and through tlspeek upgraded
# (TLS 1.0 client, TLS 1.2-only server, leaf cache warm). 127.0.0.1 only.
# usage: scripts/upgrade-latency.sh [N] [path/to/tlspeek]
set -euo pipefail
N=${1:-100}
BIN=${2:-target/release/tlspeek}
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT
cd "$work"
host=login.microsoftonline.com
openssl req -x509 -newkey rsa:2048 -nodes -days 2 -keyout upca.key -out upca.crt -subj "/CN=Bench CA" \
  -addext basicConstraints=critical,CA:TRUE 2>/dev/null
openssl req -newkey rsa:2048 -nodes -keyout leaf.key -out leaf.csr -subj "/CN=$host" 2>/dev/null
printf "subjectAltName=DNS:%s\nextendedKeyUsage=serverAuth\n" $host > ext
openssl x509 -req -in leaf.csr -CA upca.crt -CAkey upca.key -CAcreateserial -out leaf.crt -days 2 -extfile ext 2>/dev/null
"$OLDPWD/$BIN" ca init --out ca >/dev/null
UP=24601 PROXY=24602 ADMIN=24603
openssl s_server -accept 127.0.0.1:$UP -cert leaf.crt -key leaf.key -www -quiet -min_protocol TLSv1.2 >/dev/null 2>&1 &
cat > cfg.toml <<CFG
[proxy]
listen = "127.0.0.1:$PROXY"
allowed_ports = [$UP]
deny_destinations = []
[admin]
listen = "127.0.0.1:$ADMIN"
[events]
path = "/dev/null"
[inventory]
path = ""
[upgrade]
ca_cert = "$work/ca/ca.crt"
ca_key = "$work/ca/ca.key"
upstream_extra_ca = "$work/upca.crt"
[[rules]]
destinations = ["$host"]
action = "upgrade"
CFG
"$OLDPWD/$BIN" run --config cfg.toml 2>/dev/null &
sleep 1
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
run() { # label, curl args...
  local label=$1; shift
  for i in $(seq "$N"); do
    curl -s -o /dev/null -w '%{time_appconnect} %{time_connect}\n' "$@" "https://$host/" || true
  done | awk '{printf "%.0f\n", ($1-$2)*1e6}' | median | sed "s/^/$label: median handshake µs (after TCP connect): /"
}
direct=(--connect-to $host:443:127.0.0.1:$UP --cacert upca.crt --tlsv1.2 --tls-max 1.2)
proxied=(-x http://127.0.0.1:$PROXY --connect-to $host:443:127.0.0.1:$UP)
curl -s -o /dev/null "${proxied[@]}" --cacert ca/ca.crt --tlsv1.0 --tls-max 1.0 --ciphers 'DEFAULT:@SECLEVEL=0' "https://$host/" # warm the leaf cache
run "direct   TLS1.2         " "${direct[@]}"
run "passed   TLS1.2         " "${proxied[@]}" --cacert upca.crt --tlsv1.2 --tls-max 1.2
run "upgraded TLS1.0->TLS1.2+" "${proxied[@]}" --cacert ca/ca.crt --tlsv1.0 --tls-max 1.0 --ciphers 'DEFAULT:@SECLEVEL=0'
