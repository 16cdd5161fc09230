#!/usr/bin/env bash
# Builds target/pgo/release/sluice with profile-guided optimisation: an instrumented build runs
# the bench's own workloads (every `bench cost` scenario closed-loop and at 1,000/s, gRPC
# unary, TCP bulk, and 1,000 services of configuration), and the counts it writes steer the
# final build's inlining and code layout. See docs/bench/profile.md, round 12, for what it
# gives. Run from anywhere; needs `rustup component add llvm-tools` (an llvm-profdata of
# rustc's own LLVM version). About 18 minutes on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
work=$root/target/pgo-data
host=$(rustc -vV | sed -n 's/^host: //p')
profdata=$(rustc --print sysroot)/lib/rustlib/$host/bin/llvm-profdata
if [ ! -x "$profdata" ]; then
  echo "pgo.sh: no $profdata; run: rustup component add llvm-tools" >&2
  exit 1
fi
jobs=${CARGO_BUILD_JOBS:-2}

rm -rf "$work" && mkdir -p "$work/raw" "$work/out"
echo "== 1/4 instrumented build (target/pgo-gen)"
RUSTFLAGS="-Cprofile-generate=$work/raw" \
  cargo build --release -j"$jobs" -p proxy --target-dir target/pgo-gen
cargo build --release -j"$jobs" -p bench
bench=$root/target/release/bench
gen=$root/target/pgo-gen/release/sluice

echo "== 2/4 training runs"
# Every run stops Sluice with SIGTERM (`sys::stop`), so the counts are written at exit.
"$bench" cost --sluice "$gen" --targets sluice --duration 3 --out "$work/out"
"$bench" cost --sluice "$gen" --targets sluice --duration 2 --rate 1000 --inflight 16 \
  --out "$work/out"
"$bench" run --sluice "$gen" --targets sluice --scenarios grpc-unary-max,tcp-bulk \
  --reps 1 --duration 1 --scale 0 --no-crosscheck --out "$work/out"
"$bench" config-scale --sluice "$gen" --services 1000 --out "$work/out"
ls "$work"/raw/*.profraw >/dev/null

echo "== 3/4 merge"
"$profdata" merge -o "$work/sluice.profdata" "$work"/raw/*.profraw

echo "== 4/4 optimised build (target/pgo)"
RUSTFLAGS="-Cprofile-use=$work/sluice.profdata" \
  cargo build --release -j"$jobs" -p proxy --target-dir target/pgo
echo "built $root/target/pgo/release/sluice"
echo "compare: $bench cost --sluice target/pgo/release/sluice --baseline target/release/sluice --targets sluice --reps 5"
