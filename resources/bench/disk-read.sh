#!/usr/bin/env bash
# Disk read benchmark, viaduct against QEMU (not a test): in ONE rig run, the busybox guest boots
# twice in the rig host (L2) on the same host block device, once under viaduct (--disk) and once
# under Debian's QEMU (-accel kvm -M q35, -device virtio-blk-pci), and reads it with
#   dd if=/dev/vda of=/dev/null bs=1M count=<MiB> iflag=direct
# (the guest's disk-io step). The script prints each VMM's MB/s and the ratio viaduct/QEMU.
# Absolute numbers under nested emulation mean little; the ratio, measured in one run, does.
#
# Usage: resources/bench/disk-read.sh [--mib N] [--rounds N] [--release] [--qemu-only]
#   --mib N      MiB each guest reads (default 256; the disk is that large)
#   --rounds N   boot each VMM N times, alternating, and keep each one's best (default 1)
#   --release    benchmark the release build of viaduct (default: debug, as the tests use)
#   --qemu-only  QEMU alone (checks the rig and the guest's step without viaduct)
# The disk is read-only for both VMMs. L2 reads the whole disk once first, so both VMMs read
# from L2's page cache rather than through L1's emulated disk. Files and the serial log are kept
# in target/rig/bench-disk-read/.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR
source "$(dirname "${BASH_SOURCE[0]}")/../rig/lib.sh"

MIB=256 ROUNDS=1 PROFILE=debug QEMU_ONLY=0
while [[ $# -gt 0 ]]; do
	case $1 in
	--mib) MIB=${2:?}; shift 2 ;;
	--rounds) ROUNDS=${2:?}; shift 2 ;;
	--release) PROFILE=release; shift ;;
	--qemu-only) QEMU_ONLY=1; shift ;;
	-h | --help) sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
	*) rig_die "disk-read.sh: unknown argument '$1' (try --help)" ;;
	esac
done
[[ $MIB =~ ^[1-9][0-9]*$ && $ROUNDS =~ ^[1-9][0-9]*$ ]] || rig_die "--mib and --rounds want whole numbers"

QEMU_BIN=$(command -v qemu-system-x86_64) || rig_die "qemu-system-x86_64 not found (run resources/rig/fetch.sh)"
cd "$REPO_DIR"
if [[ $QEMU_ONLY == 0 ]]; then
	rig_log "building viaduct ($PROFILE)"
	if [[ $PROFILE == release ]]; then cargo build -q --release --bin viaduct; else cargo build -q --bin viaduct; fi
fi
VIADUCT=$REPO_DIR/target/$PROFILE/viaduct
[[ $QEMU_ONLY == 1 && ! -x $VIADUCT ]] && VIADUCT=/bin/true

OUT=$REPO_DIR/target/rig/bench-disk-read
rm -rf "$OUT"
mkdir -p "$OUT"
# Real data, not a sparse file: L1 then reads the same bytes for both (once, for L2's cache).
head -c "$((MIB << 20))" /dev/urandom >"$OUT/data.img"

CMDLINE="console=ttyS0 quiet viaduct_action=disk-io viaduct_disk_read=vda viaduct_disk_mib=$MIB"
{
	echo "echo \"RIG-DISK=vda,\$(cat /sys/block/vda/size),\$(cat /sys/block/vda/serial)\""
	echo "dd if=/dev/vda of=/dev/null bs=1M 2>/dev/null   # into L2's page cache"
	for round in $(seq "$ROUNDS"); do
		if [[ $QEMU_ONLY == 0 ]]; then
			cat <<-EOF
				echo "RIG-BENCH-VMM=viaduct round=$round uptime=\$(cut -d' ' -f1 /proc/uptime)"
				viaduct --kernel /guest/bzImage --initramfs /guest/initramfs.cpio.gz \\
					--cmdline "$CMDLINE viaduct_marker=viaduct-$round" --cpus boot=1 --memory size=512M \\
					--serial tty --console off --disk path=/dev/vda,readonly=on
				echo "VIADUCT-EXIT=\$? uptime=\$(cut -d' ' -f1 /proc/uptime)"
			EOF
		fi
		cat <<-EOF
			echo "RIG-BENCH-VMM=qemu round=$round uptime=\$(cut -d' ' -f1 /proc/uptime)"
			qemu-system-x86_64 -accel kvm -M q35 -cpu host -m 512 -smp 1 -L /fw -display none -vga none \\
				-monitor none -serial stdio -no-reboot -nic none -kernel /guest/bzImage \\
				-initrd /guest/initramfs.cpio.gz -append "$CMDLINE viaduct_marker=qemu-$round" \\
				-drive file=/dev/vda,if=none,id=d0,format=raw,readonly=on -device virtio-blk-pci,drive=d0
			echo "QEMU-EXIT=\$? uptime=\$(cut -d' ' -f1 /proc/uptime)"
		EOF
	done
} >"$OUT/scenario.sh"

firmware() {
	local name=$1 dir
	for dir in /usr/share/qemu /usr/share/seabios; do
		[[ -f $dir/$name ]] && { printf '%s=/fw/%s\n' "$dir/$name" "$name"; return; }
	done
	rig_die "QEMU firmware $name not found"
}
START=$SECONDS
"$RIG_DIR/run.sh" --viaduct "$VIADUCT" --binary "$QEMU_BIN=/usr/bin/qemu-system-x86_64" \
	--scenario "$OUT/scenario.sh" --log "$OUT/serial.log" --timeout 1200 \
	--file "$(firmware bios-256k.bin)" --file "$(firmware kvmvapic.bin)" \
	--file "$(firmware linuxboot_dma.bin)" -- \
	-drive "file=$OUT/data.img,if=none,id=vd0,format=raw,readonly=on" \
	-device virtio-blk-pci,drive=vd0,serial=bench,bus=pcie.0,addr=0x8 >/dev/null
WALL=$((SECONDS - START))

# The best MB/s of each VMM: the GUEST-DISK-READ-MBPS lines after its RIG-BENCH-VMM lines.
best() {
	tr -d '\r' <"$OUT/serial.log" | awk -v vmm="$1" '
		/RIG-BENCH-VMM=/ { cur = $0; sub(/.*RIG-BENCH-VMM=/, "", cur); sub(/ .*/, "", cur) }
		/GUEST-DISK-READ-MBPS=/ && cur == vmm { v = $0; sub(/.*GUEST-DISK-READ-MBPS=/, "", v); sub(/[^0-9.].*/, "", v)
			if (v + 0 > b) b = v + 0 }
		END { if (b > 0) print b }'
}
errors=$(tr -d '\r' <"$OUT/serial.log" | grep -aoE 'GUEST-ERROR=.*' || true)
QEMU_MBPS=$(best qemu)
echo "== disk read, $MIB MiB, O_DIRECT, bs=1M, busybox guest, 1 vCPU; $ROUNDS round(s); rig run ${WALL}s =="
echo "qemu:    ${QEMU_MBPS:-FAILED} MB/s   ($("$QEMU_BIN" --version | head -n1))"
if [[ $QEMU_ONLY == 0 ]]; then
	VIADUCT_MBPS=$(best viaduct)
	echo "viaduct: ${VIADUCT_MBPS:-FAILED} MB/s   ($PROFILE build, $(git -C "$REPO_DIR" describe --always --dirty))"
	if [[ -n $QEMU_MBPS && -n $VIADUCT_MBPS ]]; then
		echo "ratio viaduct/qemu: $(awk -v a="$VIADUCT_MBPS" -v b="$QEMU_MBPS" 'BEGIN { printf "%.2f", a / b }')"
	fi
fi
[[ -z $errors ]] || { echo "guest errors:"; echo "$errors"; }
echo "serial log: $OUT/serial.log"
[[ -n $QEMU_MBPS && ($QEMU_ONLY == 1 || -n ${VIADUCT_MBPS:-}) && -z $errors ]]
