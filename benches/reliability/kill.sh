#!/bin/sh
# Long form of the reliability runs (RELIABILITY.md): `vmbackup backup`
# SIGKILLed at random moments (KILL_TRIALS, default 500), the randomized
# corruption test (CORRUPTION_TRIALS, default 300) and the fuzz smoke test
# with a longer budget (FUZZ_SMOKE_MS per target, default 20000).
# Run from the repository root; prints each run's figures.
set -eu
: "${KILL_TRIALS:=500}" "${CORRUPTION_TRIALS:=300}" "${FUZZ_SMOKE_MS:=20000}"
export KILL_TRIALS CORRUPTION_TRIALS FUZZ_SMOKE_MS
echo "commit $(git rev-parse --short HEAD), $(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores"
cargo test -p backup-cli --test kill -- --ignored --nocapture 2>&1 | grep -E '^kill:|test result'
cargo test -p backup-core --test corruption random -- --nocapture 2>&1 | grep -E '^corruption:|test result'
cargo test -p backup-core --test fuzz_smoke every_parser -- --nocapture 2>&1 | grep -E '^fuzz smoke|test result'
