#!/usr/bin/env bash
# Runs every cargo-fuzz target for a bounded time (default 60 s each) and prints the
# executions per target. Seeds come from tests/fixtures/*.bin, tests/fixtures/pcap/,
# fuzz/seeds/ and the regression fixtures; a crash is copied into
# tests/fixtures/regressions/<target>/ (where `cargo test --test properties` replays it;
# `cargo test --test analyze` for the capture target) and the script exits non-zero.
#
#   scripts/fuzz.sh [SECONDS] [TARGET...]
#
# Needs cargo-fuzz (`cargo install cargo-fuzz`) and, on a stable toolchain, the nightly
# flags cargo-fuzz passes to rustc: RUSTC_BOOTSTRAP=1 unlocks them (set here).
set -euo pipefail

secs="${1:-60}"
shift || true
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root/fuzz"
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  targets=(client_hello server_hello connect_request config capture)
fi
export RUSTC_BOOTSTRAP=1
command -v cargo-fuzz >/dev/null || { echo "cargo-fuzz missing: cargo install cargo-fuzz" >&2; exit 2; }

seed() {
  local t="$1" dir="corpus/$1"
  mkdir -p "$dir"
  case "$t" in
    client_hello)
      for f in "$root"/tests/fixtures/*.bin; do
        case "$(basename "$f")" in server_*) ;; *) cp "$f" "$dir/" ;; esac
      done ;;
    server_hello) cp "$root"/tests/fixtures/server_*.bin "$dir/" ;;
    connect_request | config) cp "$root"/fuzz/seeds/"$t"/* "$dir/" ;;
    capture) cp "$root"/tests/fixtures/pcap/*.pcap* "$dir/" ;;
  esac
  if [ -d "$root/tests/fixtures/regressions/$t" ]; then
    find "$root/tests/fixtures/regressions/$t" -type f ! -name '*.md' -exec cp {} "$dir/" \;
  fi
}

echo "building fuzz targets (cargo fuzz build, RUSTC_BOOTSTRAP=1)..."
cargo fuzz build >build.log 2>&1 || { tail -30 build.log; exit 2; }

declare -A execs
status=0
for t in "${targets[@]}"; do
  seed "$t"
  log="fuzz-$t.log"
  echo "fuzzing $t for ${secs}s..."
  dict=()
  [ -f "dicts/$t.dict" ] && dict=("-dict=dicts/$t.dict")
  set +e
  cargo fuzz run "$t" "corpus/$t" -- -max_total_time="$secs" -max_len=16384 "${dict[@]}" \
    -print_final_stats=1 -timeout=10 -rss_limit_mb=2048 >"$log" 2>&1
  rc=$?
  set -e
  execs[$t]="$(grep -m1 'stat::number_of_executed_units' "$log" | awk '{print $2}')"
  if [ $rc -ne 0 ]; then
    status=1
    mkdir -p "$root/tests/fixtures/regressions/$t"
    for a in artifacts/"$t"/*; do
      [ -f "$a" ] && cp "$a" "$root/tests/fixtures/regressions/$t/" && echo "FINDING: $t -> tests/fixtures/regressions/$t/$(basename "$a")"
    done
    tail -40 "$log"
  fi
done

echo
printf '%-16s %14s %8s\n' target executions seconds
for t in "${targets[@]}"; do
  printf '%-16s %14s %8s\n' "$t" "${execs[$t]:-?}" "$secs"
done
if [ $status -ne 0 ]; then
  echo "fuzz: FINDINGS (see above); replay with: cargo test --test properties regressions"
else
  echo "fuzz: no finding"
fi
exit $status
