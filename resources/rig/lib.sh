# shellcheck shell=bash
# Shared helpers for the rig scripts. Sourced, never executed.
#
# Layout of the cache ($RIG_CACHE: $VIADUCT_RIG_CACHE, default ${XDG_CACHE_HOME:-$HOME/.cache}/viaduct-rig,
# outside the repository so that every clone on a machine, CI's fresh ones included, shares it):
#   kernel/            the Debian cloud kernel package, unpacked
#     VERSION          e.g. 6.1.0-56-cloud-amd64
#     pkg/             dpkg -x of linux-image-<VERSION>
#     bzImage          the kernel as shipped (boots L2, and L3 by bzImage)
#     vmlinux          the ELF with the PVH note, extracted from bzImage (L3 by PVH)
#     modules/         -> pkg/lib/modules/<VERSION>
#     pvpanic.txt      CONFIG_PVPANIC / CONFIG_PVPANIC_MMIO as found in the config
#   l3-initramfs.cpio.gz   the guest's busybox initramfs
#   l2-base.cpio       the static part of the rig host's initramfs
#   *.key              what each built file was built from (rebuilt when it changes)
#   .lock              flock(1) lock serialising fetch and build
#   cloud-image/       the Debian cloud image (resources/cloud-image/build.sh), its own lock

RIG_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck disable=SC2034 # used by the scripts that source this file
REPO_DIR=$(cd "$RIG_DIR/../.." && pwd)
RIG_CACHE=${VIADUCT_RIG_CACHE:-${XDG_CACHE_HOME:-${HOME:-/root}/.cache}/viaduct-rig}
# shellcheck disable=SC2034 # used by the scripts that source this file
KERNEL_DIR=$RIG_CACHE/kernel

rig_log() { printf 'rig: %s\n' "$*" >&2; }
rig_die() {
	printf 'rig: ERROR: %s\n' "$*" >&2
	exit 1
}

# Runs "$@" holding the cache lock, so that concurrent runs (two cargo tests at once)
# build the shared cache exactly once. Nested calls do not lock again.
rig_with_lock() {
	if [[ ${VIADUCT_RIG_LOCK_HELD:-} == 1 ]]; then
		"$@"
		return
	fi
	mkdir -p "$RIG_CACHE"
	(
		exec 9>"$RIG_CACHE/.lock"
		flock 9
		export VIADUCT_RIG_LOCK_HELD=1
		"$@"
	)
}

# Prints a short digest of the given files and strings: the key a cached file was built from.
rig_key() {
	local item
	for item in "$@"; do
		if [[ -f $item ]]; then
			printf '%s\n' "${item##*/}"
			cat "$item"
		else
			printf '%s\n' "$item"
		fi
	done | sha256sum | cut -c1-16
}

# True when "$1" exists and "$1.key" holds the key "$2".
rig_fresh() {
	[[ -e $1 && -f $1.key && $(cat "$1.key") == "$2" ]]
}

# Reads a little-endian unsigned integer of $3 bytes at offset $2 of file $1.
rig_read_le() {
	od -An -t "u$3" -j "$2" -N "$3" --endian=little "$1" | tr -d ' '
}

# Prints the module files (relative to the modules tree $1) needed to load the modules
# named by the remaining arguments, each after everything it depends on, each once.
# Uses modules.dep. A module that is built in or absent prints nothing.
rig_module_closure() {
	local tree=$1
	shift
	local -A seen=()
	_rig_closure_visit() {
		local line path dep
		line=$(grep -E "^([^:]*/)?${1//[-_]/[-_]}\.ko(\.[a-z]+)?:" "$tree/modules.dep" | head -n1 || true)
		[[ -n $line ]] || return 0
		path=${line%%:*}
		[[ -z ${seen[$path]:-} ]] || return 0
		seen[$path]=1
		for dep in ${line#*:}; do
			dep=${dep##*/}
			_rig_closure_visit "${dep%%.ko*}"
		done
		printf '%s\n' "$path"
	}
	local name
	for name in "$@"; do
		_rig_closure_visit "$name"
	done
}
