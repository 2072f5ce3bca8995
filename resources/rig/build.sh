#!/usr/bin/env bash
# Builds the cached, static parts of the rig (after fetch.sh):
#   $RIG_CACHE/l3-initramfs.cpio.gz  the guest's initramfs (busybox, guest-init.sh, pvpanic and
#                                    virtio block, console and rng modules)
#   $RIG_CACHE/l2-base.cpio          the rig host's initramfs without viaduct and the scenario:
#                                    busybox, host-init.sh, rig-vfio-bind (vfio-bind.sh),
#                                    rig-kvm-keeper (kvm-keeper.c) and rig-scrub (scrub.c),
#                                    both built with cc -static,
#                                    KVM/VFIO/virtio-blk modules, and /guest/{bzImage,
#                                    vmlinux,initramfs.cpio.gz} for viaduct to boot
# Each is rebuilt only when what it is built from changes (scripts, kernel, busybox).
#
# Usage: resources/rig/build.sh    Environment: VIADUCT_RIG_CACHE.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

BUSYBOX=/bin/busybox
L3_INITRAMFS=$RIG_CACHE/l3-initramfs.cpio.gz
L2_BASE=$RIG_CACHE/l2-base.cpio

# Modules the rig host loads: KVM must load, VFIO is for the passthrough tests and may fail.
L2_REQUIRED_MODULES=(irqbypass kvm kvm-amd)
# virtio_pci/virtio_blk are for the disk tests: L1 QEMU's virtio disks become L2's /dev/vdX.
L2_OPTIONAL_MODULES=(vfio vfio_iommu_type1 vfio_virqfd vfio-pci-core vfio-pci virtio_pci virtio_blk)
# Modules the guest loads when they are not built in: pvpanic, to report a panic to the VMM;
# virtio_pci and virtio_blk, for the VMM's virtio disks (/dev/vdX; modules in the cloud kernel);
# virtio_console (hvc0) and virtio-rng, for the VMM's console and entropy devices.
L3_MODULES=(pvpanic pvpanic-mmio virtio_pci virtio_blk virtio_console virtio-rng)
# virtio_net (with failover, net_failover) for the VMM's NICs; tun in L2 for their taps.
L3_MODULES+=(virtio_net)
L2_OPTIONAL_MODULES+=(tun)

# Fills directory $1 with busybox, its applet links and the usual mount points.
make_busybox_root() {
	local root=$1 applet
	mkdir -p "$root"/{bin,dev,proc,sys,tmp,run,root,etc,lib/modules}
	cp "$BUSYBOX" "$root/bin/busybox"
	for applet in $("$BUSYBOX" --list); do
		[[ $applet == busybox ]] || ln -sf busybox "$root/bin/$applet"
	done
	# The kernel opens /dev/console for init before anything is mounted.
	mknod -m 600 "$root/dev/console" c 5 1 2>/dev/null || true
	mknod -m 666 "$root/dev/null" c 1 3 2>/dev/null || true
}

# Copies the modules named in the remaining arguments (with their dependencies) from the
# kernel's tree into root $1 and writes their load order, one path per line, to file $2.
add_modules() {
	local root=$1 list=$2 path
	shift 2
	: >"$list"
	for path in $(rig_module_closure "$KERNEL_DIR/modules" "$@"); do
		mkdir -p "$root/lib/modules/$(dirname "$path")"
		cp "$KERNEL_DIR/modules/$path" "$root/lib/modules/$path"
		grep -qxF "$path" "$list" || printf '%s\n' "$path" >>"$list"
	done
}

# Writes a newc cpio of directory $1 to stdout.
pack_cpio() {
	(cd "$1" && find . -mindepth 1 | LC_ALL=C sort | cpio --quiet -o -H newc -R 0:0)
}

build_l3_initramfs() {
	local key work
	key=$(rig_key "$RIG_DIR/guest-init.sh" "$RIG_DIR/build.sh" "$RIG_DIR/lib.sh" \
		"$KERNEL_DIR/VERSION" "$(sha256sum <"$BUSYBOX")")
	rig_fresh "$L3_INITRAMFS" "$key" && return 0
	rig_log "building the L3 guest initramfs"
	work=$(mktemp -d "$RIG_CACHE/l3.XXXXXX")
	make_busybox_root "$work/root"
	install -m 755 "$RIG_DIR/guest-init.sh" "$work/root/init"
	add_modules "$work/root" "$work/root/etc/guest-modules" "${L3_MODULES[@]}"
	pack_cpio "$work/root" | gzip -9 >"$work/out.cpio.gz"
	mv "$work/out.cpio.gz" "$L3_INITRAMFS"
	printf '%s\n' "$key" >"$L3_INITRAMFS.key"
	rm -rf "$work"
}

build_l2_base() {
	local key work root
	key=$(rig_key "$RIG_DIR/host-init.sh" "$RIG_DIR/vfio-bind.sh" "$RIG_DIR/bounded.sh" "$RIG_DIR/kvm-keeper.c" \
		"$RIG_DIR/scrub.c" "$RIG_DIR/build.sh" "$RIG_DIR/lib.sh" \
		"$KERNEL_DIR/VERSION" "$(sha256sum <"$BUSYBOX")" "$(cat "$L3_INITRAMFS.key")")
	rig_fresh "$L2_BASE" "$key" && return 0
	rig_log "building the L2 rig-host initramfs (static part)"
	work=$(mktemp -d "$RIG_CACHE/l2.XXXXXX")
	root=$work/root
	make_busybox_root "$root"
	mkdir -p "$root"/{etc/rig,guest,rig,usr/bin,dev/pts,dev/shm}
	install -m 755 "$RIG_DIR/host-init.sh" "$root/init"
	install -m 755 "$RIG_DIR/vfio-bind.sh" "$root/usr/bin/rig-vfio-bind"
	install -m 755 "$RIG_DIR/bounded.sh" "$root/usr/bin/rig-bounded"
	# Static: the rig host's root has no C library of its own. Why each exists: its own comment
	# (host-init.sh starts the keeper; the benchmarks scrub between timed runs).
	local tool
	for tool in kvm-keeper scrub; do
		cc -O2 -static -o "$root/usr/bin/rig-$tool" "$RIG_DIR/$tool.c" ||
			rig_die "cannot build resources/rig/$tool.c statically: install Debian's gcc and libc6-dev (apt-get install gcc libc6-dev)"
	done
	add_modules "$root" "$root/etc/rig/modules.required" "${L2_REQUIRED_MODULES[@]}"
	add_modules "$root" "$root/etc/rig/modules.optional" "${L2_OPTIONAL_MODULES[@]}"
	# Optional modules that the required ones already pulled in need not load twice.
	grep -vxF -f "$root/etc/rig/modules.required" "$root/etc/rig/modules.optional" \
		>"$work/optional" || true
	mv "$work/optional" "$root/etc/rig/modules.optional"
	[[ -s $root/etc/rig/modules.required ]] ||
		rig_die "kvm-amd not found in the kernel's modules.dep; cannot build the rig host"
	cp "$KERNEL_DIR/bzImage" "$root/guest/bzImage"
	cp "$KERNEL_DIR/vmlinux" "$root/guest/vmlinux"
	cp "$L3_INITRAMFS" "$root/guest/initramfs.cpio.gz"
	# Left uncompressed: QEMU loads it quickly and the emulated kernel need not inflate it.
	pack_cpio "$root" >"$work/out.cpio"
	mv "$work/out.cpio" "$L2_BASE"
	printf '%s\n' "$key" >"$L2_BASE.key"
	rm -rf "$work"
}

build_all() {
	[[ -f $KERNEL_DIR/READY ]] || rig_die "no kernel in $KERNEL_DIR; run resources/rig/fetch.sh first"
	build_l3_initramfs
	build_l2_base
}

rig_with_lock build_all
