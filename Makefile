# cairn: make deps (root, once), make image, make test, make bench.
SHELL := /bin/bash
CARGO ?= cargo
OUT ?= out
RECIPE ?= recipes/field-ai.toml
CAIRN := target/release/cairn

APT_PACKAGES := mmdebstrap squashfs-tools cryptsetup-bin xorriso mtools dosfstools \
	fdisk ovmf seabios systemd-boot-efi signify-openbsd binutils kmod zstd \
	e2fsprogs nftables cpio tar grub-pc-bin grub-efi-amd64-bin curl dpkg util-linux grub-common \
	python3-venv systemd-container \
	sbsigntool efitools faketime openssl swtpm swtpm-tools tpm2-tools shim-signed \
	busybox-static grub-efi-amd64-signed
# bmaptool: `make bench` compares sparse flashing with it.
APT_PACKAGES += bmap-tools
# qemu comes from bookworm-backports so qemu-system-x86 matches the
# backported qemu-utils these machines ship with; python3-virt-firmware
# (virt-fw-vars: a MOK in an OVMF variable store, for the shim boot test)
# is only there.
QEMU_PACKAGES := qemu-system-x86 qemu-utils python3-virt-firmware

.PHONY: all deps ensure-deps build image test unit-test qemu-test lint bench clean doctor repro fuzz validators

all: build

deps:
	@if [ "$$(id -u)" != 0 ]; then echo "make deps installs Debian packages: run it as root"; exit 2; fi
	echo 'deb http://deb.debian.org/debian bookworm-backports main' > /etc/apt/sources.list.d/cairn-backports.list
	apt-get update -o Acquire::Retries=3 || apt-get update -o Acquire::Retries=3
	DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $(APT_PACKAGES)
	DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends -t bookworm-backports $(QEMU_PACKAGES)

# Installs the host tools when any package is missing, so that `make image`
# and `make test` are the whole quick start on a fresh Debian machine.
ensure-deps:
	@missing=""; for p in $(APT_PACKAGES) $(QEMU_PACKAGES); do \
		dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q 'install ok installed' || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
		echo "make: host packages missing:$$missing; installing them (make deps)"; \
		$(MAKE) deps; \
	fi

build:
	$(CARGO) build --release --locked

doctor: build
	$(CAIRN) doctor

# A development signing key, made on first use, so the default build is
# verifiable out of the box. Never use it for releases.
DEV_KEY ?= .cairn-dev/dev

# The default image: out/field-ai-VERSION/field-ai-VERSION.raw, signed.
image: ensure-deps build
	@if [ ! -f $(DEV_KEY).sec ]; then \
		mkdir -p $(dir $(DEV_KEY)) && $(CAIRN) keygen $(DEV_KEY) --no-passphrase && \
		echo "make image: created DEVELOPMENT signing key $(DEV_KEY).sec (unencrypted; local builds only, never releases)"; \
	fi
	$(CAIRN) build $(RECIPE) --root . -o $(OUT) --key $(DEV_KEY).sec
	@echo "verify with: $(CAIRN) verify $(OUT)/<name-version> --pubkey $(DEV_KEY).pub"

unit-test: ensure-deps
	$(CARGO) test --locked --workspace --exclude qemu-tests

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
