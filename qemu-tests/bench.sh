#!/usr/bin/env bash
# cairn benchmarks, run by `make bench` after `cargo build --release`.
#  (a) verify speed: `sha256sum` over a signed output folder's files vs
#      `cairn verify` on the same folder (each run twice, the second timed,
#      so both read from a warm page cache); prints both and the ratio.
#  (b) unless BENCH_BOOT=0: boot time by phase: the same folder's raw image
#      booted once under QEMU (TCG here), firmware -> initramfs -> root
#      verified -> systemd -> firewall -> images -> ready, from the host's
#      time of each console line and the guest's uptime on it, against the
#      image's own kernel with a busybox init under the same QEMU
#      (target/release/boot-phases, from qemu-tests/src/bin/boot-phases.rs).
#  (c) unless BENCH_BUILD=0: a cold build of recipes/field-ai.toml (no stage
#      cache) and a warm rebuild after a model-data change, with stage times;
#      each build's wall time against the sum of its tools' own times (the
#      `cairn: tool time:` line the build prints).
# Environment: OUT (default out), PUBKEY (default .cairn-dev/dev.pub),
# BENCH_CAIRN (default target/release/cairn),
# BENCH_DIR (a folder to use instead of the newest signed one under OUT),
# BENCH_BOOT=1, BENCH_BOOT_PHASES (default target/release/boot-phases),
# BENCH_BUILD=1, BENCH_RECIPE (default recipes/field-ai.toml).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

CAIRN=${BENCH_CAIRN:-target/release/cairn}
OUT=${OUT:-out}
PUBKEY=${PUBKEY:-.cairn-dev/dev.pub}
RECIPE=${BENCH_RECIPE:-recipes/field-ai.toml}

die() {
    echo "bench: $*" >&2
    exit 2
}

now() { date +%s.%N; }
# elapsed START END -> seconds with 3 decimals
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", b - a }'; }

[[ -x $CAIRN ]] || die "$CAIRN not found: run \`cargo build --release\` (or \`make bench\`, which does)"
command -v sha256sum >/dev/null || die "sha256sum not found (Debian package coreutils)"

# ---------------------------------------------------------------------------
# (a) verify speed
# ---------------------------------------------------------------------------

newest_signed() {
    local best="" sig
    shopt -s nullglob
    for sig in "$OUT"/*/SHA256.sig; do
        if [[ -z $best || $sig -nt $best ]]; then
            best=$sig
        fi
    done
    shopt -u nullglob
    [[ -n $best ]] && dirname "$best"
}

if [[ -n ${BENCH_DIR:-} ]]; then
    DIR=$BENCH_DIR
    [[ -f $DIR/SHA256.sig ]] || die "$DIR has no SHA256.sig: build it with --key"
else
    DIR=$(newest_signed) ||
        die "no signed output folder under $OUT/ (no $OUT/*/SHA256.sig): run \`make image\` first"
fi
[[ -f $PUBKEY ]] || die "public key $PUBKEY not found: \`make image\` creates .cairn-dev/dev.{pub,sec}; or set PUBKEY"

files=()
while IFS= read -r -d '' f; do
    files+=("$(basename "$f")")
done < <(find "$DIR" -maxdepth 1 -type f ! -name SHA256 ! -name SHA256.sig -print0 | sort -z)
[[ ${#files[@]} -gt 0 ]] || die "$DIR has no files to hash"
bytes=$(cd "$DIR" && stat -c %s -- "${files[@]}" | awk '{ s += $1 } END { print s + 0 }')

echo "bench: verify speed on $DIR (${#files[@]} files, $(awk -v b="$bytes" 'BEGIN { printf "%.1f MiB", b / 1048576 }'))"

time_sha256sum() {
    local t0 t1
    t0=$(now)
    (cd "$DIR" && sha256sum -- "${files[@]}" >/dev/null)
    t1=$(now)
    elapsed "$t0" "$t1"
}

time_verify() {
    local t0 t1 log rc=0
    log=$(mktemp)
    t0=$(now)
    "$CAIRN" verify "$DIR" --pubkey "$PUBKEY" >"$log" 2>&1 || rc=$?
    t1=$(now)
    if [[ $rc -ne 0 ]]; then
        echo "bench: \`$CAIRN verify $DIR --pubkey $PUBKEY\` failed (exit $rc):" >&2
        tail -n 20 "$log" >&2
        rm -f "$log"
        exit 1
    fi
    rm -f "$log"
    elapsed "$t0" "$t1"
}

# Run each twice; the first warms the page cache, the second is reported.
time_sha256sum >/dev/null
sha_s=$(time_sha256sum)
time_verify >/dev/null
verify_s=$(time_verify)

rate() { awk -v b="$bytes" -v s="$1" 'BEGIN { if (s > 0) printf "%.0f MiB/s", b / 1048576 / s; else print "n/a" }'; }
ratio=$(awk -v v="$verify_s" -v s="$sha_s" 'BEGIN { if (s > 0) printf "%.2f", v / s; else print "n/a" }')
printf '  %-34s %8ss  %s\n' "sha256sum (files in SHA256)" "$sha_s" "$(rate "$sha_s")"
printf '  %-34s %8ss  %s\n' "cairn verify (sig+digests+verity)" "$verify_s" "$(rate "$verify_s")"
echo "  ratio verify / sha256sum: ${ratio}x"

# ---------------------------------------------------------------------------
# (b) boot time by phase (one boot of the image, one of a bare kernel + init)
# ---------------------------------------------------------------------------

if [[ ${BENCH_BOOT:-1} == 1 ]]; then
    PHASES=${BENCH_BOOT_PHASES:-target/release/boot-phases}
    if [[ ! -x $PHASES ]]; then
        cargo build --release --locked -p qemu-tests --bin boot-phases >&2 ||
            die "cannot build $PHASES (cargo build --release -p qemu-tests --bin boot-phases)"
    fi
    shopt -s nullglob
    raws=("$DIR"/*.raw)
    shopt -u nullglob
    [[ ${#raws[@]} -eq 1 ]] || die "$DIR holds ${#raws[@]} raw images, expected one (build with --format raw)"
    mkdir -p target/bench-out
    "$PHASES" "${raws[0]}" --logs target/bench-out || {
        echo "bench: boot phases failed (serial logs in target/bench-out/)" >&2
        exit 1
    }
else
    echo "bench: BENCH_BOOT=0: boot phases skipped"
fi

# ---------------------------------------------------------------------------
# (c) stage times of a full build (opt-in: slow, needs root and the host tools)
# ---------------------------------------------------------------------------

build_once() { # label, recipe, extra env -> prints the stage times
    local label=$1 recipe=$2 log=target/bench-out/$1.log rc=0
    shift 2
    echo "bench: $label build of $recipe (log: $log)"
    env "$@" "$CAIRN" build "$recipe" --root . -o target/bench-out --format raw >"$log" 2>&1 || rc=$?
    if [[ $rc -ne 0 ]]; then
        echo "bench: $label build failed (exit $rc); last lines of $log:" >&2
        tail -n 20 "$log" >&2
        exit 1
    fi
    sed -n '/stage times/,/cairn: built/p' "$log"
    # The runner's per-tool totals (tools running at once each count in
    # full): wall below the sum is time won by running stages concurrently.
    local tools
    tools=$(sed -n 's/^cairn: tool time: .*; total \([0-9.]*\)s; wall \([0-9.]*\)s$/\1 \2/p' "$log")
    if [[ -n $tools ]]; then
        awk -v l="$label" '{ printf "bench: %s wall %.1fs against its tools'"'"' own times %.1fs: %.2fx\n", l, $2, $1, ($1 > 0 ? $2 / $1 : 0) }' <<<"$tools"
    fi
}

if [[ ${BENCH_BUILD:-1} == 1 ]]; then
    [[ -f $RECIPE ]] || die "recipe $RECIPE not found"
    mkdir -p target/bench-out
    # Cold: no stage cache, every mmdebstrap runs.
    build_once cold "$RECIPE" CAIRN_NO_STAGE_CACHE=1
    build_once warm-seed "$RECIPE" >/dev/null
    # Warm: only the model data changed (a copy of the recipe with new data
    # and its new pin): the base tree and the image come from the stage cache.
    tmp=recipes/.bench-model-change
    rm -rf "$tmp" && mkdir -p "$tmp"
    cp -r recipes/field-ai "$tmp/field-ai"
    printf '\n' >> "$tmp/field-ai/model/iris-tree.json"
    newpin=$("$CAIRN" digest "$tmp/field-ai/model")
    sed -e "s|\.\./overlays|../../overlays|" \
        -e "s|^sha256 = \"[0-9a-f]*\"|sha256 = \"$newpin\"|" "$RECIPE" > "$tmp/field-ai.toml"
    build_once warm-model-change "$tmp/field-ai.toml"
    # Warm: only an overlay file changed.
    rm -rf "$tmp" && mkdir -p "$tmp/overlay"
    cp -r overlays/field-ai/. "$tmp/overlay/"
    echo "bench $(date +%s)" >> "$tmp/overlay/etc/motd"
    sed -e "s|\.\./overlays/field-ai|overlay|" -e "s|\"field-ai/|\"../field-ai/|g" \
        -e "s|^path = \"field-ai/model\"|path = \"../field-ai/model\"|" "$RECIPE" > "$tmp/field-ai.toml"
    build_once warm-overlay-change "$tmp/field-ai.toml"
    rm -rf "$tmp"
    echo "bench: compare the cold and warm totals above (\"cairn: built ... in Ns\")"
else
    echo "bench: BENCH_BUILD=0: build timings skipped"
fi
