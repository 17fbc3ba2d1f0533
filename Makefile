# cairn: make deps (root, once), make image, make test, make bench.
SHELL := /bin/bash
CARGO ?= cargo
OUT ?= out
RECIPE ?= recipes/field-ai.toml
CAIRN := target/release/cairn

# What building an image needs (`make image`, `cairn build`).
BUILD_PACKAGES := mmdebstrap squashfs-tools cryptsetup-bin xorriso mtools dosfstools \
	fdisk systemd-boot-efi signify-openbsd binutils kmod zstd e2fsprogs cpio tar \
	grub-pc-bin grub-efi-amd64-bin grub-efi-amd64-signed grub-common dpkg util-linux \
	sbsigntool faketime openssl shim-signed busybox-static qemu-utils curl \
	libseccomp-dev pkg-config age
# What the quick start's `cairn run` needs (`make image` ensures them too).
RUN_PACKAGES := qemu-system-x86 ovmf
# What the tests need on top: firmware, emulators, TPM, the validators' venv,
# bmaptool (`make bench` compares sparse flashing with it).
TEST_PACKAGES := nftables ovmf seabios python3-venv systemd-container efitools \
	swtpm swtpm-tools tpm2-tools bmap-tools
# qemu comes from bookworm-backports so qemu-system-x86 matches the
# backported qemu-utils these machines ship with; python3-virt-firmware
# (virt-fw-vars: a MOK in an OVMF variable store, for the shim boot test)
# is only there. Only the tests add backports: `make image` never does.
TEST_BACKPORTS := qemu-system-x86 qemu-utils python3-virt-firmware
APT_PACKAGES := $(BUILD_PACKAGES) $(TEST_PACKAGES)
# The crate's rust-version; Debian 12's rustc is 1.63, its rustc-web (from
# bookworm-security) is newer.
RUST_MIN := 1.75
PREFIX ?= /usr/local
DESTDIR ?=

.PHONY: all deps deps-build deps-run deps-test ensure-deps ensure-build-deps ensure-rust build image \
	test unit-test qemu-test lint bench clean doctor repro fuzz validators install deb print-build-packages go-test

all: build

define need_root
	@if [ "$$(id -u)" != 0 ]; then echo "make $@ installs Debian packages: run it as root (sudo make $@)"; exit 2; fi
endef

apt_update = apt-get update -o Acquire::Retries=3 || apt-get update -o Acquire::Retries=3
apt_install = DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends

deps: deps-build deps-test

deps-build:
	$(need_root)
	$(apt_update)
	$(apt_install) $(BUILD_PACKAGES)

deps-run:
	$(need_root)
	$(apt_update)
	$(apt_install) $(RUN_PACKAGES)

deps-test:
	$(need_root)
	echo 'deb http://deb.debian.org/debian bookworm-backports main' > /etc/apt/sources.list.d/cairn-backports.list
	$(apt_update)
	$(apt_install) $(TEST_PACKAGES)
	$(apt_install) -t bookworm-backports $(TEST_BACKPORTS)

# `make deps-X` when any of the named packages is missing, so that
# `make image` and `make test` are the whole quick start on a fresh Debian
# machine.
missing = $(shell for p in $(1); do dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q 'install ok installed' || echo $$p; done)

ensure-build-deps: ensure-rust
	@m="$(call missing,$(BUILD_PACKAGES))"; if [ -n "$$m" ]; then \
		echo "make: build packages missing: $$m; installing them (make deps-build)"; $(MAKE) deps-build; fi
	@m="$(call missing,$(RUN_PACKAGES))"; if [ -n "$$m" ]; then \
		echo "make: packages for cairn run missing: $$m; installing them (make deps-run)"; $(MAKE) deps-run; fi

ensure-deps: ensure-build-deps
	@m="$(call missing,$(TEST_PACKAGES) $(TEST_BACKPORTS))"; if [ -n "$$m" ]; then \
		echo "make: test packages missing: $$m; installing them (make deps-test)"; $(MAKE) deps-test; fi

# A cargo of at least RUST_MIN: Debian's rustc-web and cargo-web when
# there is none (as root), else the command to run.
ensure-rust:
	@v=$$($(CARGO) --version 2>/dev/null | cut -d' ' -f2); \
	if [ -n "$$v" ] && [ "$$(printf '%s\n%s\n' $(RUST_MIN) "$$v" | sort -V | head -1)" = $(RUST_MIN) ]; then exit 0; fi; \
	echo "make: cairn needs cargo >= $(RUST_MIN); found: $${v:-none}"; \
	if [ "$$(id -u)" != 0 ]; then \
		echo "run as root: apt-get install rustc-web cargo-web   (Debian 12's bookworm-security; or https://rustup.rs)"; exit 2; fi; \
	$(apt_update); $(apt_install) rustc-web cargo-web

build: ensure-rust
	$(CARGO) build --release --locked

# The binary, its man page and shell completions under DESTDIR/PREFIX.
install: build
	bash packaging/install.sh $(CAIRN) "$(DESTDIR)$(PREFIX)"

# A Debian package: target/deb/cairn_VERSION_amd64.deb (dpkg-deb). The
# field commands need only libc; the builder's tools are Recommends.
deb: build
	bash packaging/build-deb.sh $(CAIRN) target/deb

doctor: build
	$(CAIRN) doctor

# A development signing key, made on first use, so the default build is
# verifiable out of the box. Never use it for releases.
DEV_KEY ?= .cairn-dev/dev

# The default image: out/field-ai-VERSION/field-ai-VERSION.raw, signed.
image: ensure-build-deps build
	@if [ ! -f $(DEV_KEY).sec ]; then \
		mkdir -p $(dir $(DEV_KEY)) && $(CAIRN) keygen $(DEV_KEY) --no-passphrase && \
		echo "make image: created DEVELOPMENT signing key $(DEV_KEY).sec (unencrypted; local builds only, never releases)"; \
	fi
	$(CAIRN) build $(RECIPE) --root . -o $(OUT) --key $(DEV_KEY).sec
	@echo "verify with: $(CAIRN) verify $(OUT)/<name-version> --pubkey $(DEV_KEY).pub"

unit-test: ensure-deps go-test
	$(CARGO) test --locked --workspace --exclude qemu-tests

# Our Go packages in cluster/ (cmd/kube is upstream's commands wired
# together: vetting it would type-check all of Kubernetes; it is built and
# booted by the kubernetes boot test instead).
GO_OURS := ./internal/... ./cmd/cairn-pki ./cmd/pause ./cmd/cairn-kube-store
# Vetted too: our main around upstream's NetworkPolicy controller.
GO_VET := $(GO_OURS) ./cmd/kube-network-policies
go-test:
	cd cluster && GOFLAGS=-mod=readonly go test $(GO_OURS)

# Boot tests: build the test recipe once, boot it under QEMU (KVM if it
# works, else TCG) and judge from outside the guest.
qemu-test: ensure-deps
	$(CARGO) test --locked -p qemu-tests -- --test-threads=2 --nocapture

# The reviewers' validators (spdx-tools, check-jsonschema, cyclonedx-python-lib,
# pinned) in target/venv, from PyPI; never system-wide. The standard_tools
# test installs them itself too, so a plain `cargo test` runs them.
validators: ensure-deps
	bash qemu-tests/validators.sh

# The boot tests build the test image that the verify tests sign and
# tamper with, so they run first; then the unit tests must find it.
test: validators qemu-test
	CAIRN_REQUIRE_TEST_IMAGE=1 $(MAKE) unit-test

lint:
	python3 .ci/layers.py
	@bad=$$(gofmt -l cluster); if [ -n "$$bad" ]; then echo "gofmt: not formatted: $$bad"; exit 1; fi
	cd cluster && GOFLAGS=-mod=readonly go vet $(GO_VET)
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --locked --all-targets -- -D warnings

# The property tests (no input panics a parser: the recipe parser, the tar
# reader, the layer scan), run longer than in `make test`.
fuzz:
	CAIRN_FUZZ_CASES=$${CAIRN_FUZZ_CASES:-20000} $(CARGO) test --locked -p cairn --lib never_panic

# Two builds of the default recipe from its lock, compared byte for byte.
repro: build
	bash qemu-tests/repro.sh $(RECIPE)

bench: build
	bash qemu-tests/bench.sh

clean:
	rm -rf $(OUT) target/qemu-tests

# For packaging/build-deb.sh: the packages `cairn build` needs.
print-build-packages:
	@echo $(BUILD_PACKAGES)
