#!/usr/bin/env bash
# make repro: builds a recipe twice from its lock, in two different folders,
# at least a minute apart, with a different TMPDIR and host name, and
# compares every output byte for byte (digests side by side); then twice
# more with the stage cache on, which must give the same bytes (the second
# takes its base and apps images from the cache). REPRO_CACHED=0 leaves those out.
#   qemu-tests/repro.sh [RECIPE]     (default recipes/field-ai.toml)
set -euo pipefail
cd "$(dirname "$0")/.."
recipe=${1:-recipes/field-ai.toml}
cairn=${CAIRN:-target/release/cairn}
gap=${REPRO_GAP:-61}
[ -x "$cairn" ] || { echo "repro: $cairn missing; run cargo build --release" >&2; exit 2; }
lock="${recipe%.toml}.lock"
if [ ! -f "$lock" ]; then
  echo "repro: no $lock yet; making it (cairn lock)"
  "$cairn" lock "$recipe" --root .
fi
work=$(mktemp -d /tmp/cairn-repro.XXXXXX)
trap 'rm -rf "$work"' EXIT
# Neither build may reuse the other's work: the stage cache is off, so every
# stage (base, images, volumes) runs twice.
export CAIRN_NO_STAGE_CACHE=1
# Both builds are signed with one throwaway key, so SHA256 and the
# (deterministic, ed25519) SHA256.sig are compared too.
"$cairn" keygen "$work/key" --no-passphrase >/dev/null
build() { # $1: label, $2: host name
  mkdir -p "$work/$1/tmp" "$work/$1/out"
  # A private UTS namespace gives the build its own host name.
  TMPDIR="$work/$1/tmp" unshare --uts sh -c "hostname $2 && exec \"\$@\"" sh \
    "$cairn" build "$recipe" --root . -o "$work/$1/out" --key "$work/key.sec" >"$work/$1/build.log" 2>&1 \
    || { echo "repro: build $1 failed:"; tail -20 "$work/$1/build.log"; exit 1; }
  # runtime = "kubernetes": whether the cluster stage compiled (and then
  # matched the stored build of its key byte for byte) or was reused.
  grep -h "cluster binaries" "$work/$1/build.log" | sed "s/^ */repro: build $1: /" || true
}
echo "repro: build A ($(date -u +%T))"; build a repro-host-a
echo "repro: waiting ${gap}s so clocks differ"; sleep "$gap"
echo "repro: build B ($(date -u +%T))"; build b other-host-b
da=$(ls -d "$work"/a/out/*/); db=$(ls -d "$work"/b/out/*/)
status=0
printf '%-36s %-16s %-16s %s\n' file "A sha256" "B sha256" verdict
for f in $(ls "$da"); do
  a=$(sha256sum "$da/$f" | cut -c1-16); b=$(sha256sum "$db/$f" 2>/dev/null | cut -c1-16 || echo missing)
  v=identical; [ "$a" = "$b" ] || { v=DIFFERENT; status=1; }
  printf '%-36s %-16s %-16s %s\n' "$f" "$a" "$b" "$v"
done
[ $status = 0 ] && echo "repro: bit-identical" || echo "repro: outputs differ"
[ $status = 0 ] || exit $status
# Then with the stage cache on, twice (unless REPRO_CACHED=0): the first
# build stores its stages (or takes what an earlier one stored), the
# second takes its base and apps images from the cache; both must equal
# build A.
if [ "${REPRO_CACHED:-1}" = 1 ]; then
  unset CAIRN_NO_STAGE_CACHE
  echo "repro: build C with the stage cache on ($(date -u +%T))"; build c repro-host-c
  echo "repro: build D with the stage cache on, after C ($(date -u +%T))"; build d repro-host-d
  for v in base apps; do
    grep -q "unchanged, reusing the cached $v image" "$work/d/build.log" \
      || { echo "repro: build D did not take its $v image from the stage cache:"; grep -n "tree digest" "$work/d/build.log"; exit 1; }
  done
  for x in c d; do
    dx=$(ls -d "$work"/$x/out/*/)
    for f in $(ls "$da"); do
      cmp -s "$da/$f" "$dx/$f" || { echo "repro: $f of build $x (stage cache on) differs from build A's"; status=1; }
    done
  done
  [ $status = 0 ] && echo "repro: with the stage cache on (a stored and a cached root), bit-identical to A" \
    || echo "repro: outputs differ with the stage cache on"
fi
exit $status
