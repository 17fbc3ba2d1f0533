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
#      cache), a warm rebuild after a model-data change and one after an
#      overlay change, with stage times; each build's wall time against the
#      sum of its tools' own times (the `cairn: tool time:` line the build
#      prints); then the build time a model of BENCH_MODEL_MIB (1024) random
#      bytes takes over one of 1 MiB (raw, ISO and qcow2 written) against a
#      plain `cp` of it (the first of three, and their median), in
#      BENCH_MODEL_ROUNDS (3) paired rounds (a small build, then a big one,
#      each from the same cache) whose median difference is the model's
#      cost; a summary prints the rebuilds as a share of the cold build and
#      the model's cost per GiB, each beside its target.
#  (d) sizes, from the same folder's manifest.json: the root (the base and
#      apps volumes) against mkosi's root for the same content (101.4 MiB,
#      measured when issue 16 was filed: mkosi 24.3, same suite and
#      packages, squashfs zstd-15 with verity), and the ISO and qcow2
#      against the sizes the default image had then (211 and 158 MiB).
#  (e) unless BENCH_FLASH=0: the raw flashed to a loop device, full vs
#      sparse vs `bmaptool copy`, median of three (qemu-tests/bench-flash.sh).
#  (f) if BENCH_KUBE=1: the kubernetes recipe's cold build (with and
#      without a warm Go cache), rebuild, boot to node Ready and workloads
#      Available, and the state used at ready.
# Environment: OUT (default out), PUBKEY (default .cairn-dev/dev.pub),
# BENCH_CAIRN (default target/release/cairn),
# BENCH_DIR (a folder to use instead of the newest signed one under OUT),
# BENCH_VERIFY=1, BENCH_BOOT=1, BENCH_BOOT_PHASES (default target/release/boot-phases),
# BENCH_BUILD=1, BENCH_RECIPE (default recipes/field-ai.toml), BENCH_MODEL_MIB=1024,
# BENCH_MODEL_ROUNDS=3, BENCH_KUBE=0, BENCH_KUBE_RECIPE (default recipes/field-ai-kube.toml),
# BENCH_KUBE_BUILDS=1 (0: (f) boots the stage-cached image only).
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

# BENCH_VERIFY=0 leaves out (a) and (d); with BENCH_BOOT=0 and BENCH_FLASH=0
# too, no signed folder is needed (e.g. only (f): BENCH_BUILD=0 BENCH_KUBE=1).
if [[ ${BENCH_VERIFY:-1} == 0 && ${BENCH_BOOT:-1} == 0 && ${BENCH_FLASH:-1} == 0 ]]; then
    DIR=""
elif [[ -n ${BENCH_DIR:-} ]]; then
    DIR=$BENCH_DIR
    [[ -f $DIR/SHA256.sig ]] || die "$DIR has no SHA256.sig: build it with --key"
else
    DIR=$(newest_signed) ||
        die "no signed output folder under $OUT/ (no $OUT/*/SHA256.sig): run \`make image\` first"
fi
if [[ ${BENCH_VERIFY:-1} == 1 ]]; then
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
# (d) sizes of the same folder (printed here: they need no build)
# ---------------------------------------------------------------------------

command -v python3 >/dev/null || die "python3 not found (Debian package python3)"
echo "bench: sizes of $DIR (manifest.json)"
python3 - "$DIR/manifest.json" <<'PY' || die "cannot read the sizes from $DIR/manifest.json"
import json, sys
m = json.load(open(sys.argv[1]))
mib = lambda b: b / 1048576
base = m["verity"]["data_size"]
apps = sum(v["data_size"] for v in m.get("volumes", []) if v["kind"] == "apps")
root = base + apps
def line(what, have, peer, peer_what):
    verdict = "within" if mib(have) <= peer else "OVER"
    print(f"  {what:<44} {mib(have):8.1f} MiB  against {peer_what} {peer:.1f} MiB: {verdict}")
print(f"  {'base volume':<44} {mib(base):8.1f} MiB")
print(f"  {'apps volume':<44} {apps / 1024:8.1f} KiB")
line("root (base + apps)", root, 101.4, "mkosi's root")
for o in m["outputs"]:
    for ext, cap in (("iso", 211.0), ("qcow2", 158.0)):
        if o["file"].endswith("." + ext):
            line(o["file"], o["size"], cap, "the size at issue 16")
PY
else
    echo "bench: BENCH_VERIFY=0: verify speed and sizes skipped"
fi

# ---------------------------------------------------------------------------
# (e) flashing: full vs sparse vs bmaptool to a loop device (qemu-tests/bench-flash.sh)
# ---------------------------------------------------------------------------

if [[ ${BENCH_FLASH:-1} == 1 ]]; then
    bash qemu-tests/bench-flash.sh "$CAIRN" "$DIR" "$PUBKEY"
else
    echo "bench: BENCH_FLASH=0: flashing skipped"
fi

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

# Wall seconds of each build_once, by label.
declare -A WALL=()

build_once() { # label, recipe, extra env -> prints the stage times
    local label=$1 recipe=$2 log=target/bench-out/$1.log rc=0
    shift 2
    echo "bench: $label build of $recipe (log: $log)"
    env "$@" "$CAIRN" build "$recipe" --root . -o target/bench-out --format "${BENCH_FORMATS:-raw}" >"$log" 2>&1 || rc=$?
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
        WALL[$label]=$(awk '{ print $2 }' <<<"$tools")
    fi
}

# with_lock COPY.toml: the recipe's lock beside a copy of it (the lock is
# checked against the packages and images only), so the copy is dated and
# resolved as the recipe is and its base and apps come from the same cache.
with_lock() {
    local lock=${RECIPE%.toml}.lock
    if [[ -f $lock ]]; then cp "$lock" "${1%.toml}.lock"; fi
}

# pct PART WHOLE -> "12.3 %"
pct() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.1f %%", 100 * a / b; else print "n/a" }'; }

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
    with_lock "$tmp/field-ai.toml"
    build_once warm-model-change "$tmp/field-ai.toml"
    # Warm: only an overlay file changed.
    rm -rf "$tmp" && mkdir -p "$tmp/overlay"
    cp -r overlays/field-ai/. "$tmp/overlay/"
    echo "bench $(date +%s)" >> "$tmp/overlay/etc/motd"
    sed -e "s|\.\./overlays/field-ai|overlay|" -e "s|\"field-ai/|\"../field-ai/|g" \
        -e "s|^path = \"field-ai/model\"|path = \"../field-ai/model\"|" "$RECIPE" > "$tmp/field-ai.toml"
    with_lock "$tmp/field-ai.toml"
    build_once warm-overlay-change "$tmp/field-ai.toml"
    rm -rf "$tmp"

    # The added build time per GiB of model, all three media written:
    # the default recipe with one more model, of 1 MiB and then of
    # BENCH_MODEL_MIB (default 1024) random bytes under the same name (so
    # the root, which holds only its mount point, is the same and comes
    # from the stage cache both times), against a plain `cp` of the big
    # file on the same disk. The builds run on a hard-linked copy of the
    # cache (no space, no download), removed after, so the big model's
    # volume never lands in the real stage cache.
    mib=${BENCH_MODEL_MIB:-1024}
    bcache=target/bench-cache
    src_cache=${CAIRN_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/cairn}
    rm -rf "$bcache" "$tmp" && mkdir -p "$tmp"
    if [[ -d $src_cache ]]; then
        cp -al "$src_cache" "$bcache"
    else
        mkdir -p "$bcache"
    fi
    head -c "$((mib << 20))" /dev/urandom > "$tmp/big.bin"
    head -c "$((1 << 20))" /dev/urandom > "$tmp/small.bin"
    sync
    # The copy three times (each to disk, removed after). On a VM whose
    # free memory goes back to its host, a copy's time swings with how much
    # of its page cache must come back first (0.8 to 14 s per GiB seen on
    # one machine): the first copy finds memory as a build does; the next
    # reuse the pages the one before freed. Both ratios are printed: against
    # the first copy and against the median of three.
    cps=()
    for _ in 1 2 3; do
        t0=$(now); cp "$tmp/big.bin" "$tmp/big.copy"; sync; t1=$(now)
        cps+=("$(elapsed "$t0" "$t1")")
        rm -f "$tmp/big.copy"
    done
    cp_s=$(printf '%s\n' "${cps[@]}" | sort -n | sed -n 2p)
    cp_first=${cps[0]}
    echo "bench: plain cp of the ${mib} MiB model (+ sync): ${cps[*]} s; median ${cp_s} s"
    sed -e "s|\.\./overlays|../../overlays|" -e "s|\"field-ai/|\"../field-ai/|g" \
        -e "s|^path = \"field-ai/model\"|path = \"../field-ai/model\"|" \
        -e "s|^size = \"[0-9]*[MG]\"|size = \"$(((mib >> 10) + 3))G\"|" "$RECIPE" > "$tmp/base.toml"
    for size in small big; do
        cp "$tmp/base.toml" "$tmp/$size.toml"
        with_lock "$tmp/$size.toml"
        printf '\n[[models]]\nname = "bench-blob"\npath = "%s.bin"\nsha256 = "%s"\n' \
            "$size" "$("$CAIRN" digest "$tmp/$size.bin")" >> "$tmp/$size.toml"
    done
    # The first build warms the cache for the root with the blob's mount
    # point; each round then builds the small and the big model from a
    # hard-linked copy of that cache (so the big model's volume is made
    # every time), and the model's cost is the median of the rounds'
    # differences: one pair of builds swings by a second or more here.
    BENCH_FORMATS=raw,iso,qcow2 build_once model-small "$tmp/small.toml" CAIRN_CACHE="$bcache" >/dev/null
    rounds=${BENCH_MODEL_ROUNDS:-3}
    diffs=()
    for r in $(seq "$rounds"); do
        for size in small big; do
            rm -rf "$bcache.round" && cp -al "$bcache" "$bcache.round"
            # Stage times of the first round only (build_once sets WALL,
            # so it runs in this shell, not in a pipe).
            BENCH_FORMATS=raw,iso,qcow2 build_once "model-$size" "$tmp/$size.toml" CAIRN_CACHE="$bcache.round" >"$tmp/round.out"
            if [[ $r == 1 ]]; then cat "$tmp/round.out"; else grep '^bench:' "$tmp/round.out"; fi
        done
        diffs+=("$(awk -v a="${WALL[model-big]:-0}" -v b="${WALL[model-small]:-0}" 'BEGIN { printf "%.1f", a - b }')")
        echo "bench: model round $r: big ${WALL[model-big]:-0}s, small ${WALL[model-small]:-0}s, difference ${diffs[-1]}s"
    done
    rm -rf "$tmp" "$bcache" "$bcache.round" target/bench-out/*-0.1.0

    echo "bench: summary"
    cold=${WALL[cold]:-0}
    printf '  %-44s %8ss\n' "cold build (no stage cache)" "$cold"
    printf '  %-44s %8ss  %s of cold (target <= 10 %%)\n' "rebuild after a model-data change" \
        "${WALL[warm-model-change]:-0}" "$(pct "${WALL[warm-model-change]:-0}" "$cold")"
    printf '  %-44s %8ss  %s of cold (target <= 10 %%)\n' "rebuild after an overlay change" \
        "${WALL[warm-overlay-change]:-0}" "$(pct "${WALL[warm-overlay-change]:-0}" "$cold")"
    added=$(printf '%s\n' "${diffs[@]}" | sort -n | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }')
    awk -v add="$added" -v cp="$cp_s" -v first="$cp_first" -v mib="$mib" 'BEGIN {
        g = (mib - 1) / 1024
        printf "  %-44s %8.1fs  per GiB %.1fs\n", "a " mib " MiB model against a 1 MiB one (median)", add, add / g
        printf "  %-44s %8.1fs  per GiB %.1fs\n", "plain cp of it (+ sync), the first of 3", first, first / (mib / 1024)
        printf "  %-44s %8.1fs  per GiB %.1fs\n", "plain cp of it (+ sync), median of 3", cp, cp / (mib / 1024)
        if (first > 0) printf "  model cost against the first cp, per GiB: %.1fx (target <= 4x)\n", (add / g) / (first / (mib / 1024))
        if (cp > 0) printf "  model cost against the median cp, per GiB: %.1fx (target <= 4x)\n", (add / g) / (cp / (mib / 1024))
    }'
    echo "bench: the cold build's wall against its tools' own times is on the \"bench: cold wall\" line above (target <= 0.8x)"
else
    echo "bench: BENCH_BUILD=0: build timings skipped"
fi

# ---------------------------------------------------------------------------
# (f) opt-in (BENCH_KUBE=1): the runtime = "kubernetes" recipe
#     (BENCH_KUBE_RECIPE, default recipes/field-ai-kube.toml): a cold build
#     with an empty Go build cache (the module cache and the input blobs
#     shared, so nothing is downloaded), a cold build with a warm Go cache,
#     a rebuild after an overlay change (the log must show the cluster
#     stage cached: no Go compiler run), then one boot to node Ready, to
#     workloads Available and ready, and the state used at ready.
# ---------------------------------------------------------------------------

if [[ ${BENCH_KUBE:-0} == 1 ]]; then
    KRECIPE=${BENCH_KUBE_RECIPE:-recipes/field-ai-kube.toml}
    [[ -f $KRECIPE ]] || die "recipe $KRECIPE not found"
    mkdir -p target/bench-out
    src_cache=${CAIRN_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/cairn}
    kcache=target/bench-kube-cache
    rm -rf "$kcache" && mkdir -p "$kcache/go" "$src_cache/sha256" "$src_cache/go/mod"
    ln -s "$(readlink -f "$src_cache/sha256")" "$kcache/sha256"
    ln -s "$(readlink -f "$src_cache/go/mod")" "$kcache/go/mod"
    # BENCH_KUBE_BUILDS=0: only the boot (the image from the stage cache);
    # the cold builds take about 40 minutes on two cores.
    kbuilds=${BENCH_KUBE_BUILDS:-1}
    if [[ $kbuilds == 1 ]]; then
        build_once kube-cold-go "$KRECIPE" CAIRN_NO_STAGE_CACHE=1 CAIRN_CACHE="$kcache"
        grep -E '^(cairn: )?cluster' "target/bench-out/kube-cold-go.log" | tail -n 3 || true
        rm -rf "$kcache"
        build_once kube-warm-go "$KRECIPE" CAIRN_NO_STAGE_CACHE=1
    else
        rm -rf "$kcache"
        echo "bench: BENCH_KUBE_BUILDS=0: kube cold builds skipped"
    fi
    build_once kube-seed "$KRECIPE" >/dev/null
    tmp=recipes/.bench-kube-overlay
    rm -rf "$tmp" && mkdir -p "$tmp/overlay"
    cp -r overlays/field-ai/. "$tmp/overlay/"
    echo "bench $(date +%s)" >> "$tmp/overlay/etc/motd"
    sed -e "s|\.\./overlays/field-ai|overlay|" -e "s|\"field-ai/|\"../field-ai/|g" \
        -e "s|^path = \"field-ai/model\"|path = \"../field-ai/model\"|" "$KRECIPE" > "$tmp/kube.toml"
    lock=${KRECIPE%.toml}.lock
    if [[ -f $lock ]]; then cp "$lock" "$tmp/kube.lock"; fi
    build_once kube-overlay-change "$tmp/kube.toml"
    if grep -q "cluster binaries unchanged: reusing the cached ones" target/bench-out/kube-overlay-change.log; then
        echo "bench: kube rebuild after an overlay change: cluster stage cached (no Go compiler run)"
    else
        echo "bench: kube rebuild after an overlay change did NOT reuse the cluster stage" >&2
        exit 1
    fi
    rm -rf "$tmp"
    PHASES=${BENCH_BOOT_PHASES:-target/release/boot-phases}
    [[ -x $PHASES ]] || cargo build --release --locked -p qemu-tests --bin boot-phases >&2
    kraw=$(ls -d target/bench-out/field-ai-kube-*/ | head -n 1)
    kraw=$(ls "$kraw"*.raw | head -n 1)
    "$PHASES" "$kraw" --logs target/bench-out --memory 3072 --cpus 2 --timeout "${BENCH_KUBE_BOOT_TIMEOUT:-2400}" ||
        die "kube boot phases failed (serial log in target/bench-out/boot-phases.serial.log)"
    state=$(grep -o 'cairn: state: [0-9]* MiB used at ready' target/bench-out/boot-phases.serial.log | tail -n 1)
    echo "bench: summary (kubernetes)"
    printf '  %-44s %8s\n' "cold build, empty Go build cache" "${WALL[kube-cold-go]:+${WALL[kube-cold-go]}s}${WALL[kube-cold-go]:-skipped}"
    printf '  %-44s %8s\n' "cold build, warm Go build cache" "${WALL[kube-warm-go]:+${WALL[kube-warm-go]}s}${WALL[kube-warm-go]:-skipped}"
    printf '  %-44s %8ss  %s of cold\n' "rebuild after an overlay change" \
        "${WALL[kube-overlay-change]:-0}" "$(pct "${WALL[kube-overlay-change]:-0}" "${WALL[kube-warm-go]:-0}")"
    echo "  boot: node Ready / workloads / ready: the phases table above; ${state#cairn: }"
fi
