#!/usr/bin/env bash
# `tlspeek analyze` against tshark on the same capture: file rate (GB/s of file, one core),
# peak RSS, and whether both found the same hellos with the same fields.
#
# Usage: benches/analyze.sh [--mb N] [--runs N] [--keep DIR] [--help]
#
# Builds tlspeek and tlspeek-loadgen (release), writes a synthetic capture of about N MB
# (`tlspeek-loadgen pcap`: mostly bulk data, 4 connections per MB, Ethernet with and
# without VLAN tags, IPv4 and IPv6, hellos from tests/fixtures), reads it once to warm the
# page cache, then alternates `tlspeek analyze` and
# `tshark -r FILE -Y 'tls.handshake.type == 1' -T fields ...` for the runs, and prints the
# medians and their ratio. Installs tshark and GNU time with apt when missing. Reads and
# writes files only; no network.
set -euo pipefail

usage() {
  sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'
  cat <<'EOF'

Options:
  --mb N      size of the synthetic capture in MB (default 1000)
  --runs N    runs of each tool, alternating; medians are reported (default 3)
  --keep DIR  write the capture and the outputs there and keep them (default: a temporary
              directory, removed at the end)
  --help      this text
Environment: CARGO_TARGET_DIR (where cargo builds; default ./target).
EOF
}

MB=1000
RUNS=3
KEEP=""
while [ $# -gt 0 ]; do
  case "$1" in
    --mb) MB="$2"; shift 2 ;;
    --runs) RUNS="$2"; shift 2 ;;
    --keep) KEEP="$2"; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "unknown option: $1 (see --help)" >&2; exit 2 ;;
  esac
done

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
BIN="${CARGO_TARGET_DIR:-$ROOT/target}/release"

need=()
command -v tshark >/dev/null || need+=(tshark)
[ -x /usr/bin/time ] || need+=(time)
if [ ${#need[@]} -gt 0 ]; then
  echo "installing ${need[*]} (apt)" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq && apt-get install -y -qq "${need[@]}" >/dev/null
fi

if [ -n "$KEEP" ]; then
  DIR="$KEEP"
  mkdir -p "$DIR"
else
  DIR="$(mktemp -d)"
  trap 'rm -rf "$DIR"' EXIT
fi

(cd "$ROOT" && cargo build --release --locked -q -p tlspeek -p tlspeek-loadgen)
PCAP="$DIR/bench.pcap"
"$BIN/tlspeek-loadgen" pcap --out "$PCAP" --mb "$MB" --fixtures "$ROOT/tests/fixtures" >"$DIR/made.json"
cat "$PCAP" >/dev/null
SIZE=$(stat -c %s "$PCAP")

# One run of a command: wall seconds and peak RSS (KiB) appended to FILE.
timed() {
  local out="$1"; shift
  /usr/bin/time -o "$DIR/time.txt" -f '%e %M' "$@"
  cat "$DIR/time.txt" >>"$out"
}

: >"$DIR/tlspeek.times"
: >"$DIR/tshark.times"
for run in $(seq 1 "$RUNS"); do
  timed "$DIR/tlspeek.times" "$BIN/tlspeek" analyze --quiet --all --format json \
    --events "$DIR/events.jsonl" "$PCAP" >"$DIR/report.json"
  timed "$DIR/tshark.times" tshark -r "$PCAP" -Y 'tls.handshake.type == 1' -T fields \
    -E occurrence=f -e ip.src -e ipv6.src -e tcp.srcport \
    -e tls.handshake.extensions_server_name -e tls.handshake.version -e tls.handshake.ja3 \
    >"$DIR/tshark.tsv" 2>"$DIR/tshark.err"
  echo "run $run/$RUNS: tlspeek $(tail -1 "$DIR/tlspeek.times") tshark $(tail -1 "$DIR/tshark.times") (s, KiB)" >&2
done

python3 - "$SIZE" "$DIR" "$(tshark --version 2>/dev/null | head -1)" <<'EOF'
import json, statistics, sys
size, d, tshark_version = int(sys.argv[1]), sys.argv[2], sys.argv[3]

def times(name):
    rows = [l.split() for l in open(f"{d}/{name}.times") if l.strip()]
    return statistics.median(float(r[0]) for r in rows), max(int(r[1]) for r in rows)

names = {"0x0300": "SSL3.0", "0x0301": "TLS1.0", "0x0302": "TLS1.1",
         "0x0303": "TLS1.2", "0x0304": "TLS1.3"}
ours = set()
for line in open(f"{d}/events.jsonl"):
    e = json.loads(line)
    if e["kind"] in ("tls", "sslv2"):
        ours.add((e["source_ip"], e["source_port"], e["sni"] or "",
                  e["client_version"], e["ja3_hash"] or ""))
theirs = set()
for line in open(f"{d}/tshark.tsv"):
    f = line.rstrip("\n").split("\t")
    src = f[0] or f[1]
    theirs.add((src, int(f[2]), f[3], names.get(f[4], f[4]), f[5]))

(t_ours, rss_ours), (t_theirs, rss_theirs) = times("tlspeek"), times("tshark")
gb = size / 1e9
print(f"capture: {size / 1e6:.0f} MB, {json.load(open(f'{d}/made.json'))['packets']} packets")
print(f"{'tool':<10} {'median s':>9} {'GB/s':>7} {'peak RSS MiB':>13} {'hellos':>7}")
print(f"{'tlspeek':<10} {t_ours:>9.2f} {gb / t_ours:>7.2f} {rss_ours / 1024:>13.1f} {len(ours):>7}")
print(f"{'tshark':<10} {t_theirs:>9.2f} {gb / t_theirs:>7.2f} {rss_theirs / 1024:>13.1f} {len(theirs):>7}")
print(f"tlspeek is {t_theirs / t_ours:.1f}x faster than {tshark_version}")
same = ours == theirs
print("hello fields (source, port, SNI, version, JA3):", "identical" if same else "DIFFERENT")
if not same:
    for x in sorted(ours - theirs)[:5]:
        print("  only tlspeek:", x)
    for x in sorted(theirs - ours)[:5]:
        print("  only tshark: ", x)
    sys.exit(1)
EOF
