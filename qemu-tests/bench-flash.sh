#!/usr/bin/env bash
# (e) flashing, run by qemu-tests/bench.sh (or alone): a signed release's
# .raw written to a loop device this script attaches (and detaches), as
#   cairn flash --full   (verify, every byte written, every byte read back)
#   cairn flash          (verify, the data map's ranges written and read
#                         back, the gaps zeroed by BLKZEROOUT)
#   bmaptool copy        (the mapped blocks written, their checksums read
#                         from the image; no signature, no read-back)
# each BENCH_FLASH_ROUNDS (3) times, the page cache dropped before each;
# then the same three to a new file on the filesystem of the release
# (cairn flash --to-file: full, sparse = the map's ranges into a truncated
# file; bmaptool copy to a file). Prints the median of each and
# sparse / bmaptool for both targets, and the load average.
# Usage: bench-flash.sh CAIRN DIR PUBKEY. Needs root, losetup, bmaptool
# (Debian package bmap-tools: make deps).
set -euo pipefail

CAIRN=$1
DIR=$2
PUBKEY=$3
ROUNDS=${BENCH_FLASH_ROUNDS:-3}

die() {
    echo "bench: flash: $*" >&2
    exit 2
}
now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", b - a }'; }
median() { printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }

[[ $(id -u) == 0 ]] || die "needs root (loop devices, dropping the page cache)"
command -v losetup >/dev/null || die "losetup not found (Debian package util-linux)"
command -v bmaptool >/dev/null || die "bmaptool not found (Debian package bmap-tools: make deps)"
shopt -s nullglob
raws=("$DIR"/*.raw)
shopt -u nullglob
[[ ${#raws[@]} -eq 1 ]] || die "$DIR holds no single .raw"
RAW=${raws[0]}
[[ -f $RAW.map ]] || die "$RAW has no data map ($RAW.map): rebuild it with this cairn"
size=$(stat -c %s "$RAW")

work=$(mktemp -d)
dev=""
cleanup() {
    if [[ -n $dev ]]; then losetup -d "$dev" || echo "bench: flash: losetup -d $dev failed" >&2; fi
    rm -rf "$work"
}
trap cleanup EXIT
# The stick: the image's size and 64 MiB more, full of old data (not
# zeros: a write that skipped the gaps would be cheaper than it should).
truncate -s $((size + (64 << 20))) "$work/stick"
dd if=/dev/urandom of="$work/stick" bs=4M count=$(((size >> 22) + 16)) conv=notrunc status=none
dev=$(losetup --find --show "$work/stick")
# The bmap beside a copy, not in the signed folder (it would be unlisted).
bmaptool -q create -o "$work/image.bmap" "$RAW"

drop_caches() {
    sync
    echo 3 >/proc/sys/vm/drop_caches
}

run() {
    local t0 t1 rc=0 log="$work/log"
    drop_caches
    t0=$(now)
    "$@" >"$log" 2>&1 || rc=$?
    t1=$(now)
    if [[ $rc -ne 0 ]]; then
        echo "bench: flash: \`$*\` failed (exit $rc):" >&2
        tail -n 20 "$log" >&2
        exit 1
    fi
    elapsed "$t0" "$t1"
}

echo "bench: flashing $(basename "$RAW") ($(awk -v b="$size" 'BEGIN { printf "%.0f MiB", b / 1048576 }'), $(python3 -c 'import json,sys; m=json.load(open(sys.argv[1])); print("%.1f MiB mapped" % (sum(e-s for s,e in m["ranges"])/1048576))' "$RAW.map")) to $dev, median of $ROUNDS, page cache dropped before each"
declare -A med
# $1: the target kind (device, file); the rows of that target.
bench() {
    local kind=$1 what t times target
    for what in full sparse bmaptool; do
        times=()
        for _ in $(seq "$ROUNDS"); do
            if [[ $kind == device ]]; then
                target=$dev
                case $what in
                full) t=$(run "$CAIRN" flash "$RAW" "$dev" --pubkey "$PUBKEY" --yes --allow-fixed --full) ;;
                sparse) t=$(run "$CAIRN" flash "$RAW" "$dev" --pubkey "$PUBKEY" --yes --allow-fixed) ;;
                bmaptool) t=$(run bmaptool -q copy --bmap "$work/image.bmap" "$RAW" "$dev") ;;
                esac
            else
                # A new file each time, beside the release (same filesystem).
                target=$files/copy.img
                rm -f "$target"
                case $what in
                full) t=$(run "$CAIRN" flash "$RAW" "$target" --pubkey "$PUBKEY" --yes --to-file --full) ;;
                sparse) t=$(run "$CAIRN" flash "$RAW" "$target" --pubkey "$PUBKEY" --yes --to-file) ;;
                bmaptool) t=$(run bmaptool -q copy --bmap "$work/image.bmap" "$RAW" "$target") ;;
                esac
            fi
            times+=("$t")
        done
        med[$kind.$what]=$(median "${times[@]}")
        printf '  %-8s %-35s %8ss  (runs: %s)\n' "$kind" "$what" "${med[$kind.$what]}" "${times[*]}"
    done
    ratio=$(awk -v a="${med[$kind.sparse]}" -v b="${med[$kind.bmaptool]}" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "n/a" }')
    echo "  $kind: sparse / bmaptool: ${ratio}x (target: at most 2x, with verification first and read-back)"
}
bench device
# The file target: a folder beside the release folder (not in it: cairn
# refuses a target inside the signed folder), removed on exit.
files=$(mktemp -d "$(dirname "$DIR")/bench-flash.XXXXXX")
trap 'cleanup; rm -rf "$files"' EXIT
bench file
echo "  load average: $(cut -d' ' -f1-3 /proc/loadavg) on $(nproc) CPU(s)"
