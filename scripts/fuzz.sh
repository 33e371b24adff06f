#!/usr/bin/env bash
# Fuzzing on the stable toolchain: runs every property-based fuzz target (proptest, see
# fuzz/mutate.rs) optimized, with many cases, round after round until SECONDS (default 60)
# have passed, then prints how many cases each target ran. Fails if any target fails.
#
#   scripts/fuzz.sh [SECONDS]
#
# Environment:
#   FUZZ_CASES    cases per property per round (PROPTEST_CASES), default 500
#   FUZZ_PROFILE  cargo profile, default quick-release (release without LTO: optimized, no
#                 debug assertions, so the 50 ms bound per call applies; builds much faster
#                 on 2 cores); FUZZ_PROFILE=release for the shipped profile
#   FUZZ_MAX_MS   bound on one parser call (default 50 ms optimized, 1 s in debug)
#   CARGO_TARGET_DIR as usual; logs go to $CARGO_TARGET_DIR/fuzz-logs (or target/fuzz-logs)
#
# A failing case is shrunk and its seed saved by proptest next to the target
# (`<crate>/tests/<target>.proptest-regressions`, or `<crate>/proptest-regressions/…` for
# targets inside `src/`); the seed is replayed first on every later run. Commit it with the
# fix. Plain `#[test]`s in the fuzz files are named `known_*` and skipped here.
set -euo pipefail

duration=${1:-60}
if ! [[ $duration =~ ^[0-9]+$ ]]; then
    echo "usage: $0 [SECONDS]" >&2
    exit 2
fi
cases=${FUZZ_CASES:-500}
profile=${FUZZ_PROFILE:-quick-release}

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
logs=${CARGO_TARGET_DIR:-$root/target}/fuzz-logs
mkdir -p "$logs"

# label | package | package dir | cargo target selection | test binary target name | filter
targets=(
    "socks5|mesh-dataplane|bins/dataplane|--test fuzz_socks5|fuzz_socks5|"
    "sniff|mesh-dataplane|bins/dataplane|--lib|mesh_dataplane|proxy::sniff::fuzz::"
    "hygiene|mesh-dataplane|bins/dataplane|--lib|mesh_dataplane|proxy::hygiene::fuzz::"
    "config-yaml|mesh-dataplane|bins/dataplane|--test fuzz_config|fuzz_config|"
    "xds-convert|mesh-dataplane|bins/dataplane|--test fuzz_xds|fuzz_xds|"
    "xds-decode|mesh-xds|mesh-xds|--test fuzz_decode|fuzz_decode|"
    "hbone-headers|mesh-hbone|mesh-hbone|--test fuzz_headers|fuzz_headers|"
    "path|mesh-authz|mesh-authz|--test fuzz_path|fuzz_path|"
    "jwt|mesh-authz|mesh-authz|--test fuzz_jwt|fuzz_jwt|"
)

# Build every test binary once and note its path.
declare -A exe
for pkg in mesh-dataplane mesh-xds mesh-hbone mesh-authz; do
    sel=()
    for t in "${targets[@]}"; do
        IFS='|' read -r _ p _ s _ _ <<<"$t"
        if [[ $p == "$pkg" && " ${sel[*]} " != *" $s "* ]]; then
            # shellcheck disable=SC2206 # "--test name" is two words on purpose
            sel+=($s)
        fi
    done
    echo "== building $pkg (${sel[*]}) with profile $profile"
    json="$logs/build-$pkg.json"
    cargo test --profile "$profile" -p "$pkg" "${sel[@]}" --no-run --message-format=json \
        >"$json"
    for t in "${targets[@]}"; do
        IFS='|' read -r label p _ _ name _ <<<"$t"
        [[ $p == "$pkg" ]] || continue
        path=$(grep '"reason":"compiler-artifact"' "$json" | grep "\"name\":\"$name\"" |
            grep '"test":true' | grep -o '"executable":"[^"]*"' | tail -n 1 | cut -d'"' -f4)
        if [[ -z $path ]]; then
            echo "no test binary for $label ($name)" >&2
            exit 1
        fi
        exe[$label]=$path
    done
done

declare -A props runs secs
for t in "${targets[@]}"; do
    IFS='|' read -r label _ dir _ _ filter <<<"$t"
    # shellcheck disable=SC2086 # an empty filter is no argument
    props[$label]=$(cd "$dir" && "${exe[$label]}" --list $filter --skip known_ |
        grep -c ': test$' || true)
    runs[$label]=0
    secs[$label]=0
done

echo "== fuzzing for ${duration}s, $cases cases per property per round"
start=$SECONDS
deadline=$((SECONDS + duration))
round=0
failed=()
while ((SECONDS < deadline)) && ((${#failed[@]} == 0)); do
    round=$((round + 1))
    for t in "${targets[@]}"; do
        ((SECONDS < deadline)) || break
        IFS='|' read -r label _ dir _ _ filter <<<"$t"
        log="$logs/$label.log"
        t0=$SECONDS
        # shellcheck disable=SC2086 # an empty filter is no argument
        if (cd "$dir" && PROPTEST_CASES=$cases "${exe[$label]}" $filter --skip known_) \
            >"$log" 2>&1; then
            runs[$label]=$((runs[$label] + 1))
            secs[$label]=$((secs[$label] + SECONDS - t0))
        else
            failed+=("$label")
            cp "$log" "$logs/$label.failed-round-$round.log"
            echo "!! $label FAILED in round $round (log: $logs/$label.failed-round-$round.log):"
            grep -E 'minimal failing input|Test failed|panicked at|^test .*FAILED' "$log" |
                head -n 20 || true
        fi
    done
done

echo
echo "== ${round} round(s) in $((SECONDS - start))s"
printf '%-14s %6s %6s %10s %6s\n' target props rounds cases secs
total=0
for t in "${targets[@]}"; do
    IFS='|' read -r label _ _ _ _ _ <<<"$t"
    n=$((props[$label] * runs[$label] * cases))
    total=$((total + n))
    printf '%-14s %6s %6s %10s %6s\n' "$label" "${props[$label]}" "${runs[$label]}" "$n" \
        "${secs[$label]}"
done
printf '%-14s %6s %6s %10s\n' total '' '' "$total"

if ((${#failed[@]} > 0)); then
    echo
    echo "FAILED: ${failed[*]}"
    echo "Persisted failure seeds (replayed first next time; commit them with the fix):"
    git status --porcelain --untracked-files=all -- '*proptest-regressions*' || true
    exit 1
fi
echo "all fuzz targets passed"
