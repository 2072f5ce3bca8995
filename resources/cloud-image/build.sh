#!/usr/bin/env bash
# Builds the rig's Debian 12 cloud image from Debian's packages, into the rig cache:
#   $RIG_CACHE/cloud-image/disk.raw     raw disk, GPT with one ext4 root partition
#                                       (/dev/vda1, filesystem label viaduct-root,
#                                       PARTUUID 5649ad0c-7269-6700-0000-000000000001), sparse
#   $RIG_CACHE/cloud-image/vmlinuz      the image's kernel (/boot/vmlinuz-*), for direct boot
#   $RIG_CACHE/cloud-image/initrd.img   the image's initrd (initramfs-tools, with virtio_pci and
#                                       virtio_blk), for direct boot
#   $RIG_CACHE/cloud-image/VERSION      the kernel version; BUILD: packages and sizes
# Boot it with: --kernel vmlinuz --initramfs initrd.img --cmdline "console=ttyS0 root=/dev/vda1 rw"
# and a NoCloud seed disk (resources/cloud-image/seed.sh) as the second disk.
#
# How: debootstrap --variant=minbase with systemd, udev, cloud-init and linux-image-cloud-amd64
# into a directory; cloud-init set up for NoCloud only (cloud.cfg), systemd-networkd for a
# seed's network-config; then
# mkfs.ext4 -d fills a partition-sized file from that directory, sfdisk writes the partition
# table of the disk, and dd puts the filesystem at the partition's offset. No loop devices, no
# mounts. Needs root (debootstrap, chroot) and Debian's package mirror.
#
# Usage: resources/cloud-image/build.sh [--force]
#   --force  rebuild even when the cached image is up to date
# Prints the image's directory on stdout, everything else on stderr.
# The image is rebuilt only when this script, cloud.cfg or the package list changes. Safe to run
# concurrently (flock on $RIG_CACHE/cloud-image.lock; the rig's own lock is not held, so other
# rig runs go on while the image builds).
# Environment: VIADUCT_RIG_CACHE (the rig cache), VIADUCT_DEBIAN_MIRROR (default: the first
# Debian mirror in this machine's apt sources; the image's own apt sources name the same one).
set -euo pipefail
# shellcheck source-path=SCRIPTDIR
source "$(dirname "${BASH_SOURCE[0]}")/../rig/lib.sh"
CLOUD_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

FORCE=0
for arg in "$@"; do
	case $arg in
	--force) FORCE=1 ;;
	-h | --help) sed -n '2,27p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
	*) rig_die "cloud-image/build.sh: unknown argument '$arg' (try --help)" ;;
	esac
done

SUITE=bookworm
# python3-cffi-backend: debootstrap does not resolve virtual packages, and python3-cryptography
# (cloud-init -> python3-oauthlib) depends on the virtual python3-cffi-backend-api-*.
PACKAGES=(systemd-sysv udev cloud-init linux-image-cloud-amd64 initramfs-tools e2fsprogs
	python3-cffi-backend)
# Modules the initrd must carry to find the root disk (and virtio_console, so that a
# console=hvc0 guest has its console from the start); ext4 is built into the cloud kernel.
INITRD_MODULES=(virtio_pci virtio_blk virtio_scsi sd_mod virtio_console)
# Units that would only cost boot time in a short-lived guest without network or VGA.
MASKED_UNITS=(systemd-firstboot.service apt-daily.timer apt-daily-upgrade.timer dpkg-db-backup.timer
	e2scrub_all.timer e2scrub_reap.service fstrim.timer getty@tty1.service
	systemd-networkd-wait-online.service cloud-init-hotplugd.socket)
FS_LABEL=viaduct-root
DISK_GUID=5649ad0c-7269-6700-0000-000000000000
PART_UUID=5649ad0c-7269-6700-0000-000000000001
FS_UUID=5649ad0c-7269-6700-0000-0000000000e4
# Free space left in the root filesystem for the guest (cloud-init state, logs, the user's files).
FREE_MIB=256

OUT=$RIG_CACHE/cloud-image
LOCK=$RIG_CACHE/cloud-image.lock

mirror() {
	if [[ -n ${VIADUCT_DEBIAN_MIRROR:-} ]]; then
		printf '%s\n' "$VIADUCT_DEBIAN_MIRROR"
		return
	fi
	local uri
	uri=$(apt_uri '/debian/?')
	[[ -n $uri ]] || rig_die "no Debian mirror in this machine's apt sources (/etc/apt/sources.list*); \
set VIADUCT_DEBIAN_MIRROR=http://<your mirror>/debian"
	printf '%s\n' "$uri"
}

# The first URI in this machine's apt sources whose path ends in $1 (a regular expression).
apt_uri() {
	grep -hsoE "(URIs:|^deb) +https?://[^ ]+$1( |\$)" /etc/apt/sources.list.d/*.sources \
		/etc/apt/sources.list.d/*.list /etc/apt/sources.list | grep -oE 'https?://[^ ]+' | head -n1 || true
}

ensure_tools() {
	local need=(debootstrap:debootstrap sfdisk:fdisk mkfs.ext4:e2fsprogs mkfs.vfat:dosfstools
		mcopy:mtools)
	local missing=() item
	for item in "${need[@]}"; do
		command -v "${item%%:*}" >/dev/null || missing+=("${item#*:}")
	done
	[[ ${#missing[@]} -eq 0 ]] && return 0
	[[ $(id -u) -eq 0 ]] || rig_die "missing packages (${missing[*]}) and not root to install them"
	rig_log "installing: ${missing[*]}"
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null 2>&1 || {
		DEBIAN_FRONTEND=noninteractive apt-get update -qq &&
			DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
	} || rig_die "apt-get install ${missing[*]} failed"
}

image_key() {
	rig_key "$CLOUD_DIR/build.sh" "$CLOUD_DIR/cloud.cfg" "$SUITE" "${PACKAGES[*]}" \
		"${INITRD_MODULES[*]}" "${MASKED_UNITS[*]}"
}

# Configures the unpacked system in $1 for the rig: fstab, hostname, cloud-init, initrd, units.
configure_root() {
	local root=$1 unit
	cat >"$root/etc/fstab" <<-EOF
		# <file system>      <mount point> <type> <options>                <dump> <pass>
		LABEL=$FS_LABEL      /             ext4   rw,errors=remount-ro     0      1
	EOF
	echo viaduct-cloud >"$root/etc/hostname"
	# The mirror the image was built from, and this machine's security mirror if it has one.
	local mirror security
	mirror=$(mirror)
	security=$(apt_uri '/debian-security/?')
	{
		echo "deb $mirror $SUITE main"
		echo "deb $mirror $SUITE-updates main"
		[[ -z $security ]] || echo "deb $security $SUITE-security main"
	} >"$root/etc/apt/sources.list"
	install -m 644 "$CLOUD_DIR/cloud.cfg" "$root/etc/cloud/cloud.cfg.d/90-viaduct-rig.cfg"
	# Every boot of an image is a first boot for systemd: an empty machine-id is generated then.
	: >"$root/etc/machine-id"
	rm -f "$root/var/lib/dbus/machine-id"
	for unit in "${MASKED_UNITS[@]}"; do
		ln -sf /dev/null "$root/etc/systemd/system/$unit"
	done
	# systemd-networkd applies the network-config a seed may carry (cloud-init writes it as
	# .network files before networkd starts); with no NIC or no config it does nothing.
	chroot "$root" systemctl enable systemd-networkd.service >/dev/null 2>&1 ||
		rig_die "cannot enable systemd-networkd in the image"
	# The initrd: only the listed modules (and what they need), which keeps it small.
	printf '%s\n' "${INITRD_MODULES[@]}" >>"$root/etc/initramfs-tools/modules"
	sed -i 's/^MODULES=.*/MODULES=list/' "$root/etc/initramfs-tools/initramfs.conf"
	chroot "$root" update-initramfs -u -k all >/dev/null 2>&1 ||
		rig_die "update-initramfs failed in the image"
	# Docs, man pages, translations and apt's downloads are of no use in the rig.
	mkdir -p "$root/etc/dpkg/dpkg.cfg.d"
	cat >"$root/etc/dpkg/dpkg.cfg.d/01-viaduct-nodoc" <<-EOF
		path-exclude=/usr/share/doc/*
		path-include=/usr/share/doc/*/copyright
		path-exclude=/usr/share/man/*
		path-exclude=/usr/share/locale/*
	EOF
	find "$root/usr/share/doc" -mindepth 1 ! -name copyright ! -type d -delete
	rm -rf "$root/usr/share/man"/* "$root/usr/share/locale"/* "$root/var/cache/apt"/*.bin \
		"$root/var/cache/apt/archives"/*.deb "$root/var/lib/apt/lists"/* "$root/debootstrap"
	find "$root/var/log" -type f -delete
}

# Checks that the initrd /boot/$2 of the image in $1 has the virtio block modules.
check_initrd() {
	local root=$1 initrd=$2 listing mod
	listing=$(chroot "$root" lsinitramfs "/boot/$initrd" 2>/dev/null) || rig_die "lsinitramfs $initrd failed"
	for mod in virtio_pci virtio_blk; do
		grep -qE "/$mod\.ko" <<<"$listing" || rig_die "the initrd has no $mod module"
	done
}

build() {
	local key start work root version mirror part_mib used_kib part disk
	key=$(image_key)
	if [[ $FORCE == 0 ]] && rig_fresh "$OUT/disk.raw" "$key" && [[ -f $OUT/READY ]]; then
		rig_log "cloud image up to date: $OUT ($(cat "$OUT/VERSION"))"
		return 0
	fi
	start=$SECONDS
	ensure_tools
	[[ $(id -u) -eq 0 ]] || rig_die "building the cloud image needs root (debootstrap, chroot)"
	work=$OUT.tmp
	rm -rf "$work"
	mkdir -p "$work" "$RIG_CACHE/debs"
	root=$work/root
	mirror=$(mirror)
	local include
	include=$(IFS=,; printf '%s' "${PACKAGES[*]}")
	rig_log "debootstrap $SUITE from $mirror with $include"
	if ! debootstrap --variant=minbase --include="$include" --cache-dir="$RIG_CACHE/debs" \
		"$SUITE" "$root" "$mirror" >"$work/debootstrap.out" 2>&1; then
		tail -n 20 "$work/debootstrap.out" >&2
		rig_die "debootstrap failed (log: $work/debootstrap.out, $root/debootstrap/debootstrap.log)"
	fi
	# debootstrap only warns when a package fails to configure.
	if [[ -n $(chroot "$root" dpkg --audit) ]]; then
		chroot "$root" dpkg --audit >&2
		rig_die "packages left unconfigured in the image (see $root/debootstrap/debootstrap.log)"
	fi
	rig_log "debootstrap done after $((SECONDS - start))s"
	configure_root "$root"
	version=$(find "$root/boot" -name 'vmlinuz-*' -printf '%f\n' | sed 's/^vmlinuz-//' | sort -V | tail -n1)
	[[ -n $version && -f $root/boot/initrd.img-$version ]] || rig_die "no kernel and initrd in the image's /boot"
	cp "$root/boot/vmlinuz-$version" "$work/vmlinuz"
	cp "$root/boot/initrd.img-$version" "$work/initrd.img"
	check_initrd "$root" "initrd.img-$version"

	# The root filesystem: what the tree needs, plus room for the guest, in whole MiB.
	used_kib=$(du -sk --apparent-size "$root" | cut -f1)
	part_mib=$(((used_kib * 12 / 10 / 1024) + FREE_MIB))
	part=$work/root.ext4
	truncate -s "${part_mib}M" "$part"
	mkfs.ext4 -q -F -L "$FS_LABEL" -U "$FS_UUID" -d "$root" -E root_owner=0:0 "$part" ||
		rig_die "mkfs.ext4 -d failed"
	e2fsck -fn "$part" >/dev/null 2>&1 || rig_die "e2fsck found errors in the new root filesystem"

	# The disk: 1 MiB for the GPT and alignment, the partition, 1 MiB for the backup GPT.
	disk=$work/disk.raw
	truncate -s "$((part_mib + 2))M" "$disk"
	sfdisk -q "$disk" <<-EOF || rig_die "sfdisk failed"
		label: gpt
		label-id: $DISK_GUID
		start=1MiB, size=${part_mib}MiB, type=linux, uuid=$PART_UUID, name=$FS_LABEL
	EOF
	dd if="$part" of="$disk" bs=1M seek=1 conv=notrunc,sparse status=none
	rm -f "$part"

	printf '%s\n' "$version" >"$work/VERSION"
	{
		echo "built: $(date -u +%Y-%m-%dT%H:%M:%SZ) in $((SECONDS - start))s"
		echo "suite: $SUITE from $mirror"
		echo "packages: ${PACKAGES[*]}"
		echo "kernel: $version"
		echo "root filesystem: ${part_mib} MiB, $((used_kib / 1024)) MiB of files"
		echo "packages installed: $(chroot "$root" dpkg-query -W | wc -l)"
	} >"$work/BUILD"
	rm -rf "$root"
	touch "$work/READY"
	rm -rf "$OUT"
	mv "$work" "$OUT"
	printf '%s\n' "$key" >"$OUT/disk.raw.key"
	rig_log "cloud image built in $((SECONDS - start))s"
}

report() {
	local f
	for f in disk.raw vmlinuz initrd.img; do
		rig_log "$(printf '%-10s %6s apparent, %6s on disk' "$f" \
			"$(du -h --apparent-size "$OUT/$f" | cut -f1)" "$(du -h "$OUT/$f" | cut -f1)")"
	done
	rig_log "kernel $(cat "$OUT/VERSION"); partitions: $(sfdisk -d "$OUT/disk.raw" 2>/dev/null | grep -E '^/' | tr -s ' ')"
}

mkdir -p "$RIG_CACHE"
(
	exec 9>"$LOCK"
	flock 9
	build
)
report
# The one line on stdout: where the image is (tests/common/mod.rs reads it).
printf '%s\n' "$OUT"
