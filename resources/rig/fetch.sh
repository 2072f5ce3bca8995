#!/usr/bin/env bash
# Makes sure the rig's tools are installed and the Debian cloud kernel is in the cache:
# the bzImage, the PVH ELF vmlinux extracted from it, and its modules tree.
#
# Usage: resources/rig/fetch.sh [--refresh]
#   --refresh  resolve linux-image-cloud-amd64 again and fetch a newer kernel if there is one.
# Environment: VIADUCT_RIG_CACHE (default ${XDG_CACHE_HOME:-$HOME/.cache}/viaduct-rig).
#
# With a warm cache this does no network work. Safe to run concurrently (flock).
set -euo pipefail
# shellcheck source-path=SCRIPTDIR
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

REFRESH=0
for arg in "$@"; do
	case $arg in
	--refresh) REFRESH=1 ;;
	-h | --help)
		sed -n '2,10p' "$0"
		exit 0
		;;
	*) rig_die "fetch.sh: unknown argument '$arg'" ;;
	esac
done

APT_UPDATED=0
apt_update_once() {
	if [[ $APT_UPDATED == 0 ]]; then
		rig_log "apt-get update"
		DEBIAN_FRONTEND=noninteractive apt-get update -qq || rig_die "apt-get update failed"
		APT_UPDATED=1
	fi
}

ensure_tools() {
	local pkgs=(qemu-system-x86 busybox-static cpio lz4 gzip coreutils util-linux qemu-utils gcc libc6-dev)
	local missing=() pkg
	for pkg in "${pkgs[@]}"; do
		[[ $(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null) == "install ok installed" ]] ||
			missing+=("$pkg")
	done
	[[ ${#missing[@]} -eq 0 ]] && return 0
	[[ $(id -u) -eq 0 ]] || rig_die "missing packages (${missing[*]}) and not root to install them"
	rig_log "installing: ${missing[*]}"
	if ! DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null 2>&1; then
		apt_update_once
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" ||
			rig_die "apt-get install ${missing[*]} failed"
	fi
}

# Prints the versioned package that linux-image-cloud-amd64 depends on.
resolve_kernel_package() {
	local pkg
	pkg=$(apt-cache depends linux-image-cloud-amd64 2>/dev/null |
		awk '$1 == "Depends:" && $2 ~ /^linux-image-[0-9].*-cloud-amd64$/ { print $2; exit }')
	if [[ -z $pkg ]]; then
		apt_update_once
		pkg=$(apt-cache depends linux-image-cloud-amd64 2>/dev/null |
			awk '$1 == "Depends:" && $2 ~ /^linux-image-[0-9].*-cloud-amd64$/ { print $2; exit }')
	fi
	[[ -n $pkg ]] || rig_die "cannot resolve linux-image-cloud-amd64 to a versioned kernel package"
	printf '%s\n' "$pkg"
}

# Extracts the ELF vmlinux (which carries the PVH note) from a bzImage: the compressed payload
# sits at payload_offset (setup header 0x248) past the setup sectors, payload_length (0x24c) long.
extract_vmlinux() {
	local bz=$1 out=$2 setup_sects start off len magic
	setup_sects=$(rig_read_le "$bz" $((0x1f1)) 1)
	[[ $setup_sects -eq 0 ]] && setup_sects=4
	start=$(((setup_sects + 1) * 512))
	off=$(rig_read_le "$bz" $((0x248)) 4)
	len=$(rig_read_le "$bz" $((0x24c)) 4)
	magic=$(od -An -tx1 -j $((start + off)) -N4 "$bz" | tr -d ' ')
	# 02214c18 is the LZ4 legacy frame that the kernel's build uses.
	[[ $magic == 02214c18 ]] || rig_die "bzImage payload is not LZ4 (magic $magic); cannot extract vmlinux"
	tail -c +$((start + off + 1)) "$bz" | head -c "$len" | lz4 -d -c 2>/dev/null >"$out.tmp" || true
	[[ $(od -An -tx1 -N4 "$out.tmp" | tr -d ' ') == 7f454c46 ]] ||
		rig_die "extracted payload of $bz is not an ELF file"
	mv "$out.tmp" "$out"
}

fetch_kernel() {
	if [[ -f $KERNEL_DIR/READY && $REFRESH == 0 ]]; then
		return 0
	fi
	local pkg version deb work
	pkg=$(resolve_kernel_package)
	version=${pkg#linux-image-}
	if [[ -f $KERNEL_DIR/READY && $(cat "$KERNEL_DIR/VERSION") == "$version" ]]; then
		return 0
	fi
	rig_log "fetching $pkg"
	work=$RIG_CACHE/kernel.tmp
	rm -rf "$work"
	mkdir -p "$work"
	(cd "$work" && apt-get download -qq "$pkg" 2>&1 | grep -v 'unsandboxed' >&2) || true
	deb=$(find "$work" -maxdepth 1 -name "linux-image-*.deb" | head -n1)
	[[ -n $deb ]] || rig_die "apt-get download $pkg produced no .deb (network? apt sources?)"
	dpkg -x "$deb" "$work/pkg"
	rm -f "$deb"
	[[ -f $work/pkg/boot/vmlinuz-$version ]] || rig_die "$pkg has no boot/vmlinuz-$version"
	[[ -d $work/pkg/lib/modules/$version ]] || rig_die "$pkg has no lib/modules/$version"
	cp "$work/pkg/boot/vmlinuz-$version" "$work/bzImage"
	extract_vmlinux "$work/bzImage" "$work/vmlinux"
	ln -s "pkg/lib/modules/$version" "$work/modules"
	# The package leaves modules.dep to its postinst; busybox's depmod writes it.
	[[ -f $work/modules/modules.dep ]] || /bin/busybox depmod -b "$work/pkg" "$version"
	printf '%s\n' "$version" >"$work/VERSION"
	check_pvpanic "$work" "$version" >"$work/pvpanic.txt"
	touch "$work/READY"
	rm -rf "$KERNEL_DIR"
	mv "$work" "$KERNEL_DIR"
}

# Prints CONFIG_PVPANIC and CONFIG_PVPANIC_MMIO as set in the package's config (y, m or n).
check_pvpanic() {
	local dir=$1 version=$2 config sym val
	config=$dir/pkg/boot/config-$version
	[[ -f $config ]] || rig_die "no boot/config-$version in the kernel package"
	for sym in CONFIG_PVPANIC CONFIG_PVPANIC_MMIO; do
		val=$(sed -n "s/^$sym=//p" "$config")
		printf '%s=%s\n' "$sym" "${val:-n}"
	done
}

ensure_tools
rig_with_lock fetch_kernel
rig_log "kernel $(cat "$KERNEL_DIR/VERSION") in $KERNEL_DIR ($(tr '\n' ' ' <"$KERNEL_DIR/pvpanic.txt"))"
