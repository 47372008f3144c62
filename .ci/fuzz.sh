#!/bin/sh
# Fuzz targets of corecast (fuzz/, its own crate, not a workspace member):
#   handshake      corecast::ws::handshake::parse_upgrade
#   client_frames  corecast::ws::frame::decode_client_frame + ws::message::parse
#   push_body      corecast::http::body::parse_content
# Usage: .ci/fuzz.sh [seconds per target]   (default 60; 0 = replay the
# checked-in seed corpus only). Needs cargo-fuzz (cargo install cargo-fuzz);
# RUSTC_BOOTSTRAP=1 lets the stable toolchain take its -Z sanitizer flags.
# New inputs go to a scratch corpus, never into fuzz/corpus (the seeds).
set -eu
SECONDS_PER_TARGET="${1:-60}"
cd "$(dirname "$0")/../fuzz"
export RUSTC_BOOTSTRAP=1
cargo fuzz build -O
for target in handshake client_frames push_body; do
    if [ "$SECONDS_PER_TARGET" = 0 ]; then
        cargo fuzz run -O "$target" "corpus/$target" -- -runs=0
    else
        scratch="$(mktemp -d)"
        cargo fuzz run -O "$target" "$scratch" "corpus/$target" -- \
            -max_total_time="$SECONDS_PER_TARGET" -max_len=16384 -print_final_stats=1
        rm -rf "$scratch"
    fi
done
