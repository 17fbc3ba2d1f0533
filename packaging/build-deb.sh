#!/usr/bin/env bash
# Builds the Debian package of cairn with dpkg-deb, reproducibly (file
# times from SOURCE_DATE_EPOCH or the last commit, root-owned, no build
# path inside).
#
#   packaging/build-deb.sh BINARY OUT_DIR     (make deb)
#
# Depends: what the binary links (libc, libgcc) and mtools (verify reads
# the UKI from the ESP with mcopy): the field commands (verify, flash,
# site, inspect) need nothing else. Recommends: the tools
# `cairn build` runs (what `make deps-build` installs); Suggests: what
# verifying a qcow2, `cairn run` and the Secure Boot and TPM checks use.
set -euo pipefail
if [ $# -ne 2 ]; then
	echo "usage: $0 BINARY OUT_DIR" >&2
	exit 2
fi
bin=$1
here=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "$2"
out=$(cd "$2" && pwd)
version=$(sed -n 's/^version = "\(.*\)"/\1/p' "$here/builder/Cargo.toml" | head -1)
: "${SOURCE_DATE_EPOCH:=$(git -C "$here" log -1 --format=%ct 2>/dev/null || echo 0)}"
export SOURCE_DATE_EPOCH

recommends=$(make -s -C "$here" --no-print-directory print-build-packages | tr ' ' '\n' | grep . | sort -u | paste -sd, | sed 's/,/, /g')

stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
root=$stage/root
bash "$here/packaging/install.sh" "$bin" "$root/usr" >/dev/null
install -D -m 0644 "$here/README.md" "$root/usr/share/doc/cairn/README.md"
install -D -m 0644 "$here/packaging/copyright" "$root/usr/share/doc/cairn/copyright"
mkdir -p "$root/DEBIAN"
size=$(du -sk --apparent-size "$root/usr" | cut -f1)
cat > "$root/DEBIAN/control" <<CONTROL
Package: cairn
Version: $version
Architecture: amd64
Maintainer: cairn developers <cairn@invalid>
Installed-Size: $size
Depends: libc6 (>= 2.34), libgcc-s1, mtools
Recommends: $recommends
Suggests: qemu-utils, qemu-system-x86, ovmf, swtpm, swtpm-tools, bmap-tools
Section: admin
Priority: optional
Homepage: https://cairn.invalid
Description: immutable, signed, bootable appliance images from TOML recipes
 cairn builds read-only container appliances (kernel, cluster runtime,
 pinned OCI images, policy) as signed raw disks, hybrid ISOs and qcow2
 files, and verifies, flashes and configures them in the field.
 .
 verify (of a raw or ISO), flash, site and inspect need only this
 package; verifying a qcow2 needs qemu-utils; build needs the recommended
 tools.
CONTROL
# One time and one owner for every file: the same inputs give the same .deb.
find "$root" -exec touch -h -d "@$SOURCE_DATE_EPOCH" {} +
deb="$out/cairn_${version}_amd64.deb"
dpkg-deb --root-owner-group -Zxz --build "$root" "$deb" >/dev/null
echo "$deb"
