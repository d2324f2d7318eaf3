#!/usr/bin/env bash
# Scores both audio legs on every fixture clip with PESQ against the libsoxr-VHQ anchor.
#
#   scripts/audio-quality.sh [FIXTURES_DIR]
#
# FIXTURES_DIR defaults to ../shared/fixtures relative to the repo root (override with the
# argument or $FIXTURES). The scorer is ../shared/tools/audio-quality (override with
# $AUDIO_QUALITY). For each clip this runs the real streaming pipeline
# (examples/transcode.rs, 20 ms chunks), then the scorer, and prints both lines.
# Exits non-zero if any PESQ diff is below -0.05, any measured delay is above 2 ms, or any
# step fails.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
fixtures="${1:-${FIXTURES:-$root/../shared/fixtures}}"
scorer="${AUDIO_QUALITY:-$root/../shared/tools/audio-quality}"
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT

cd "$root"
cargo build --release --example transcode -q
bin="${CARGO_TARGET_DIR:-$root/target}/release/examples/transcode"

fail=0
n=0
check() { # $1 = scorer line; $2 = pipeline line
  local diff delay pdelay
  diff="$(sed -n 's/.*diff=\([-+0-9.]*\).*/\1/p' <<<"$1")"
  delay="$(sed -n 's/.*delay_ms=\([-0-9.]*\).*/\1/p' <<<"$1")"
  pdelay="$(sed -n 's/.*[^_]delay_ms=\([-0-9.]*\).*/\1/p' <<<" $2")"
  if [ -z "$diff" ] || [ -z "$delay" ] || [ -z "$pdelay" ]; then
    echo "  FAIL: could not parse"; fail=1; return
  fi
  if awk -v d="$diff" 'BEGIN { exit !(d < -0.05) }'; then echo "  FAIL: PESQ diff $diff < -0.05"; fail=1; fi
  if awk -v d="$delay" 'BEGIN { exit !(d > 2.0) }'; then echo "  FAIL: measured delay $delay ms > 2"; fail=1; fi
  if awk -v d="$pdelay" 'BEGIN { exit !(d > 2.0) }'; then echo "  FAIL: pipeline delay $pdelay ms > 2"; fail=1; fi
}

for src in "$fixtures"/caller_*.mulaw8k.wav; do
  [ -e "$src" ] || continue
  name="$(basename "$src" .mulaw8k.wav)"
  cap="$out/$name.up16k.wav"
  pipe="$("$bin" up "$src" "$cap")"
  score="$("$scorer" up "$src" "$cap" "$fixtures/$name.ref16k.wav")"
  printf '%-16s %s\n%-16s   %s\n' "$name" "$score" "" "$pipe"
  check "$score" "$pipe"; n=$((n + 1))
done
for src in "$fixtures"/model_*.pcm24k.wav; do
  [ -e "$src" ] || continue
  name="$(basename "$src" .pcm24k.wav)"
  cap="$out/$name.down8k.wav"
  pipe="$("$bin" down "$src" "$cap")"
  score="$("$scorer" down "$src" "$cap" "$fixtures/$name.ref8k.wav")"
  printf '%-16s %s\n%-16s   %s\n' "$name" "$score" "" "$pipe"
  check "$score" "$pipe"; n=$((n + 1))
done
if [ "$n" -eq 0 ]; then echo "no clips found in $fixtures"; exit 1; fi
if [ "$fail" -ne 0 ]; then echo "audio quality: FAIL"; exit 1; fi
echo "audio quality: OK ($n clips)"
