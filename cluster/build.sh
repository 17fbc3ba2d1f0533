#!/bin/sh
# Builds everything a single Kubernetes node of a runtime = "kubernetes" image
# runs into OUT_DIR, from the modules pinned in go.sum only. The same go.sum,
# Go toolchain, C toolchain (runc) and flags give the same bytes, in any
# directory and with any GOCACHE.
#
#   cluster/build.sh OUT_DIR
#
# OUT_DIR receives (cluster/README.md says what each is):
#   kube                      multi-call binary; these are symlinks to it:
#   kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy
#   kubectl etcd containerd coredns cairn-cluster-ready
#   containerd-shim-runc-v2   kube-network-policies   cairn-pki   pause
#   runc                      (cgo, seccomp, static-pie)
#   host/cairn-kube-store     run on the build host only (not in the image)
#   cni/bridge cni/host-local cni/loopback cni/portmap
#   VERSIONS                  each component's module and version
#
# Environment (all optional): GOCACHE, GOMODCACHE (the caller's caches);
# GOPROXY=off for an offline build (the module cache must hold every module:
# `go mod download` with a proxy fills it). GOFLAGS is set to -mod=readonly
# here: a build never edits go.mod or go.sum.
set -eu

if [ $# -ne 1 ]; then
	echo "usage: $0 OUT_DIR" >&2
	exit 2
fi
out=$(mkdir -p "$1" && cd "$1" && pwd)
cd "$(dirname "$0")"

export GOFLAGS=-mod=readonly
export GOTOOLCHAIN=local
export CGO_ENABLED=0
export GOOS=linux GOARCH=amd64
# A fixed locale and time zone for the C toolchain that links runc.
export LC_ALL=C TZ=UTC SOURCE_DATE_EPOCH=0

version() { go list -m -f '{{.Version}}' "$1"; }

# No symbol table, no DWARF, no build id, no VCS stamp, no source paths.
common_ldflags="-s -w -buildid="
build() { # OUT PACKAGE [go build flags...]
	target=$1 package=$2
	shift 2
	go build -trimpath -buildvcs=false "$@" -o "$out/$target" "$package"
}

# The version the components report (kubectl version, node status): what
# upstream's hack/lib/version.sh stamps, without a commit or a build date.
k8s_version=$(version k8s.io/kubernetes)
k8s_minor=$(echo "$k8s_version" | cut -d. -f2)
containerd_version=$(version github.com/containerd/containerd/v2)
version_flags=""
for pkg in k8s.io/client-go/pkg/version k8s.io/component-base/version; do
	version_flags="$version_flags -X $pkg.gitVersion=$k8s_version -X $pkg.gitMajor=1 -X $pkg.gitMinor=$k8s_minor -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
done
containerd_flags="-X github.com/containerd/containerd/v2/version.Version=$containerd_version"

# containerd's snapshotters other than overlayfs and native are left out:
# btrfs needs cgo, zfs and devmapper need host tools the image does not have.
build kube ./cmd/kube -tags no_btrfs,no_zfs,no_devmapper \
	-ldflags="$common_ldflags $version_flags $containerd_flags"
for name in kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy \
	kubectl etcd containerd coredns cairn-cluster-ready cairn-join; do
	ln -sfn kube "$out/$name"
done

build containerd-shim-runc-v2 github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2 \
	-ldflags="$common_ldflags $containerd_flags"
build kube-network-policies ./cmd/kube-network-policies -ldflags="$common_ldflags"
build cairn-pki ./cmd/cairn-pki -ldflags="$common_ldflags"
build pause ./cmd/pause -ldflags="$common_ldflags"
# Run by the builder on the build host, never put in the image: the
# containerd root with the pinned images (cluster/internal/kubestore).
build host/cairn-kube-store ./cmd/cairn-kube-store -ldflags="$common_ldflags"

cni_version=$(version github.com/containernetworking/plugins)
mkdir -p "$out/cni"
for plugin in main/bridge ipam/host-local main/loopback meta/portmap; do
	build "cni/$(basename $plugin)" "github.com/containernetworking/plugins/plugins/$plugin" \
		-ldflags="$common_ldflags -X github.com/containernetworking/plugins/pkg/utils/buildversion.BuildVersion=$cni_version"
done

# runc needs cgo (libcontainer/nsenter) and links libseccomp (Debian's
# libseccomp-dev); static-pie as upstream's `make static`, so the guest needs
# no libseccomp2. Tags as upstream's Makefile, without libpathrs (a Rust
# library that is not packaged here).
CGO_ENABLED=1 build runc github.com/opencontainers/runc -buildmode=pie \
	-tags "seccomp urfave_cli_no_docs netgo osusergo" \
	-ldflags="$common_ldflags -linkmode external -extldflags '-static-pie -Wl,--build-id=none'"

{
	echo "# Components in this directory and the Go modules they are built from (cluster/go.mod)."
	echo "go $(go env GOVERSION)"
	for module in k8s.io/kubernetes k8s.io/kubectl go.etcd.io/etcd/server/v3 \
		github.com/containerd/containerd/v2 github.com/opencontainers/runc \
		github.com/containernetworking/plugins sigs.k8s.io/kube-network-policies \
		github.com/coredns/coredns google.golang.org/grpc; do
		echo "$module $(version "$module")"
	done
	echo "libseccomp (runc, static) $(dpkg-query -W -f='${Version}' libseccomp-dev 2>/dev/null || echo unknown)"
} >"$out/VERSIONS"
