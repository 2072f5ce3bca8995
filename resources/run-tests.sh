#!/usr/bin/env bash
# The one test command for viaduct, locally and in CI: bash resources/run-tests.sh
#
# On a fresh Debian 12 machine (as root) it installs what the rig needs, fetches the guest
# kernel (resources/rig/fetch.sh) and builds the rig's images and the Debian cloud image
# (resources/cloud-image/build.sh, about two minutes the first time; all cached under
# ${XDG_CACHE_HOME:-$HOME/.cache}/viaduct-rig), then runs, in order:
#   cargo fmt --all -- --check      (and the fuzz crate, tests/fuzz)
#   cargo clippy --workspace --all-targets -- -D warnings
#   the fuzz targets (tests/fuzz): built on the stable toolchain, linted (no fuzzing: that is
#                                   bash resources/fuzz.sh, see docs/fuzzing.md)
#   cargo test --workspace          (unit tests, CLI tests and the nested-rig tests)
# Every step runs even when an earlier one fails; the exit status is non-zero if any failed.
# The rig tests need no /dev/kvm on this machine: they run under QEMU's emulation (docs/rig.md).
set -uo pipefail
REPO_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO_DIR" || exit 1

FAILED=()
step() {
	local name=$1 start status
	shift
	echo "=== $name: $*"
	start=$SECONDS
	"$@"
	status=$?
	if [[ $status -eq 0 ]]; then
		echo "=== $name: ok ($((SECONDS - start))s)"
	else
		echo "=== $name: FAILED with status $status ($((SECONDS - start))s)"
		FAILED+=("$name")
	fi
	return "$status"
}

# The machine: Linux on x86-64, root (the rig installs Debian packages and binds devices),
# Debian's apt for those packages, and a Rust no older than the workspace's rust-version.
ensure_machine() {
	[[ $(uname -s) == Linux && $(uname -m) == x86_64 ]] || {
		echo "viaduct's tests need Linux on x86-64, not $(uname -s) on $(uname -m)" >&2
		return 1
	}
	[[ $(id -u) -eq 0 ]] || {
		echo "run the tests as root: the rig installs Debian packages and binds PCI devices (sudo bash resources/run-tests.sh)" >&2
		return 1
	}
	command -v apt-get >/dev/null || {
		echo "apt-get not found: the rig takes QEMU, the guest kernel and busybox from Debian 12's packages; run on Debian 12" >&2
		return 1
	}
}

ensure_rust() {
	command -v cargo >/dev/null || {
		echo "cargo not found: install Rust (https://rustup.rs) and run this again" >&2
		return 1
	}
	local need have
	need=$(sed -n 's/^rust-version = "\(.*\)"/\1/p' Cargo.toml | head -n1)
	have=$(rustc --version | awk '{print $2}')
	if [[ -n $need && $(printf '%s\n%s\n' "$need" "$have" | sort -V | head -n1) != "$need" ]]; then
		echo "Rust $have is older than the $need viaduct needs: rustup update (or rustup toolchain install $need)" >&2
		return 1
	fi
	if command -v rustup >/dev/null; then
		cargo fmt --version >/dev/null 2>&1 || rustup component add rustfmt || return 1
		cargo clippy --version >/dev/null 2>&1 || rustup component add clippy || return 1
	fi
}

# The fuzz targets (tests/fuzz, their own cargo workspace) must keep building so they cannot rot.
# A plain cargo build on stable links them against libFuzzer (libfuzzer-sys compiles it with the
# C++ compiler) without the coverage instrumentation only `cargo +nightly fuzz` adds; clippy then
# lints the targets, and the fuzzing-only hooks of the crates they drive (feature `fuzzing`).
FUZZ_MANIFEST=tests/fuzz/Cargo.toml
fuzz_targets() {
	if ! command -v c++ >/dev/null; then
		echo "no C++ compiler (libFuzzer is C++): installing g++ from Debian's packages"
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq g++ >/dev/null 2>&1 || {
			DEBIAN_FRONTEND=noninteractive apt-get update -qq &&
				DEBIAN_FRONTEND=noninteractive apt-get install -y -qq g++
		} || {
			echo "cannot install g++, which the fuzz targets need: apt-get install g++" >&2
			return 1
		}
	fi
	cargo build --manifest-path "$FUZZ_MANIFEST" --bins &&
		cargo clippy --manifest-path "$FUZZ_MANIFEST" --all-targets -- -D warnings &&
		cargo clippy -p devices -p vfio-dev --features devices/fuzzing,vfio-dev/fuzzing -- -D warnings
}

fmt_check() {
	cargo fmt --all -- --check && cargo fmt --manifest-path "$FUZZ_MANIFEST" -- --check
}

# Without the toolchain or the rig nothing below can mean anything: stop there.
step "machine" ensure_machine || exit 1
step "rust toolchain" ensure_rust || exit 1
step "rig setup" bash resources/rig/fetch.sh || exit 1
step "rig images" bash resources/rig/build.sh || exit 1
step "cloud image" bash resources/cloud-image/build.sh || exit 1

step "fmt" fmt_check
step "clippy" cargo clippy --workspace --all-targets -- -D warnings
step "fuzz targets" fuzz_targets
step "test" cargo test --workspace

if [[ ${#FAILED[@]} -gt 0 ]]; then
	echo "=== FAILED: ${FAILED[*]}"
	exit 1
fi
echo "=== all passed"
