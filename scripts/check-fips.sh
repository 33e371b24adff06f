#!/usr/bin/env bash
# Builds the proxies with aws-lc's FIPS 140-3 validated module (`--features fips`) and checks
# that every mesh TLS configuration is FIPS-approved. Not part of `scripts/test`: the FIPS module
# (aws-lc-fips-sys) builds from source with CMake and Go and takes several minutes.
#
#   scripts/check-fips.sh            # test + release binaries in ../target-fips
set -euo pipefail
cd "$(dirname "$0")/.."
export DEBIAN_FRONTEND=noninteractive
need=()
command -v cmake >/dev/null || need+=(cmake)
command -v go >/dev/null || need+=(golang-go)
command -v clang >/dev/null || need+=(clang)
if [ ${#need[@]} -gt 0 ]; then
    SUDO=""
    if [ "$(id -u)" != 0 ]; then SUDO=sudo; fi
    $SUDO apt-get update
    $SUDO apt-get install -y --no-install-recommends "${need[@]}"
fi
# A target directory of its own: the FIPS build must not mix with the default one.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$(cd .. && pwd)/target-fips}"
echo "== mesh TLS configurations are FIPS-approved"
cargo test --locked -p mesh-identity --features fips --test fips
echo "== release proxies with the FIPS module"
cargo build --locked --release --features fips -p ztunnel -p waypoint -p sidecar -p meshctl
echo "FIPS build OK: binaries in $CARGO_TARGET_DIR/release"
