#!/usr/bin/env bash
# Installs cairn under a prefix: the binary, its man page and its shell
# completions (both generated from the CLI definition by the binary itself).
#
#   packaging/install.sh BINARY PREFIX        (make install PREFIX=/usr/local)
set -euo pipefail
if [ $# -ne 2 ]; then
	echo "usage: $0 BINARY PREFIX" >&2
	exit 2
fi
bin=$1 prefix=$2
install -D -m 0755 "$bin" "$prefix/bin/cairn"
install -d "$prefix/share/man/man1" "$prefix/share/bash-completion/completions" \
	"$prefix/share/zsh/vendor-completions" "$prefix/share/fish/vendor_completions.d"
pages=$(mktemp -d)
trap 'rm -rf "$pages"' EXIT
"$bin" man -o "$pages" >/dev/null
for page in "$pages"/*.1; do
	gzip -9n < "$page" > "$prefix/share/man/man1/$(basename "$page").gz"
done
"$bin" completions bash > "$prefix/share/bash-completion/completions/cairn"
"$bin" completions zsh > "$prefix/share/zsh/vendor-completions/_cairn"
"$bin" completions fish > "$prefix/share/fish/vendor_completions.d/cairn.fish"
echo "installed cairn in $prefix/bin (man page and bash, zsh, fish completions beside it)"
