#!/usr/bin/env bash
# The passthrough reference: runs the guest's passthrough steps (nvme-io, ivshmem, pci-report)
# with Debian's QEMU as the VMM in the rig host instead of viaduct, through vfio-pci, then
# checks on this machine that the guest's writes reached the NVMe disk image and the ivshmem
# memory file. It tells a problem of the rig from a problem of viaduct.
#
# Usage: resources/rig/vfio-reference.sh [--ivshmem-gib N]   (default 4)
# Files and the serial log are kept in target/rig/vfio-reference/.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

GIB=4
while [[ $# -gt 0 ]]; do
	case $1 in
	--ivshmem-gib) GIB=${2:?}; shift 2 ;;
	-h | --help) sed -n '2,8p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
	*) rig_die "vfio-reference.sh: unknown argument '$1' (try --help)" ;;
	esac
done
[[ $GIB =~ ^[1-9][0-9]*$ ]] || rig_die "--ivshmem-gib wants a whole number of GiB"

QEMU_BIN=$(command -v qemu-system-x86_64) || rig_die "qemu-system-x86_64 not found (run fetch.sh)"
OUT=$REPO_DIR/target/rig/vfio-reference
rm -rf "$OUT"
mkdir -p "$OUT"
MARKER=ref$RANDOM$RANDOM WRITE=wrote$RANDOM$RANDOM PATTERN=pat$RANDOM$RANDOM
SIZE=$((GIB << 30))
truncate -s 64M "$OUT/nva.img"
printf '%s' "$MARKER" | dd of="$OUT/nva.img" conv=notrunc status=none
truncate -s "$SIZE" "$OUT/shm.mem"

# QEMU goes into L2 in viaduct's place (run.sh copies it with its libraries as /usr/bin/viaduct);
# its firmware goes to /fw.
cat >"$OUT/scenario.sh" <<EOF
rig-vfio-bind 0000:00:10.0 0000:00:12.0 || exit 1
echo "RIG-VIADUCT-START uptime=\$(cut -d' ' -f1 /proc/uptime)"
viaduct -accel kvm -M q35 -cpu host -m 512 -smp 1 -L /fw -display none -vga none -monitor none \\
	-serial stdio -no-reboot -nic none -kernel /guest/bzImage -initrd /guest/initramfs.cpio.gz \\
	-append "console=ttyS0 quiet viaduct_marker=$MARKER viaduct_action=nvme-io,ivshmem,pci-report viaduct_write=$WRITE viaduct_nvme_mib=64 viaduct_pattern=$PATTERN viaduct_dump_config=1b36:0010" \\
	-device vfio-pci,host=0000:00:10.0 -device vfio-pci,host=0000:00:12.0
echo "VIADUCT-EXIT=\$? uptime=\$(cut -d' ' -f1 /proc/uptime)"
EOF

firmware() {
	local name=$1 dir
	for dir in /usr/share/qemu /usr/share/seabios; do
		[[ -f $dir/$name ]] && { printf '%s=/fw/%s\n' "$dir/$name" "$name"; return; }
	done
	rig_die "QEMU firmware $name not found"
}
"$RIG_DIR/run.sh" --viaduct "$QEMU_BIN" --scenario "$OUT/scenario.sh" --log "$OUT/serial.log" \
	--file "$(firmware bios-256k.bin)" --file "$(firmware kvmvapic.bin)" \
	--file "$(firmware linuxboot_dma.bin)" -- \
	-drive "file=$OUT/nva.img,if=none,id=nva,format=raw" -device nvme,drive=nva,serial=nva,addr=0x10 \
	-object "memory-backend-file,id=shm,mem-path=$OUT/shm.mem,size=$SIZE,share=on" \
	-device ivshmem-plain,memdev=shm,addr=0x12 >/dev/null

value() {
	tr -d '\r' <"$OUT/serial.log" | grep -aoE "(^|[^A-Za-z0-9_-])$1=[^ ]*" | tail -n1 | cut -d= -f2-
}
token_at() { dd if="$1" bs=1 skip="$2" count=64 status=none | tr '\000' '\n' | head -n1; }
FAILED=0
check() {
	local what=$1 got=$2 want=$3
	if [[ $got == "$want" ]]; then
		printf 'ok    %-28s %s\n' "$what" "$got"
	else
		printf 'FAIL  %-28s %s (expected %s)\n' "$what" "$got" "$want"
		FAILED=1
	fi
}
echo "== passthrough reference (QEMU as the L2 VMM), log $OUT/serial.log =="
check "QEMU exit" "$(value VIADUCT-EXIT)" 0
check "guest read the marker" "$(value GUEST-NVME-MARKER)" "$MARKER"
check "guest read back its write" "$(value GUEST-NVME-WROTE)" "$WRITE"
check "image sector 1" "$(token_at "$OUT/nva.img" 512)" "$WRITE"
check "nvme interrupt mode" "$(value GUEST-NVME-IRQ-MODE)" msix
echo "      nvme interrupts           $(value GUEST-NVME-IRQS)"
check "ivshmem BAR2 size" "$(value GUEST-IVSHMEM-BAR2 | cut -d, -f2)" "$(printf '0x%x' "$SIZE")"
check "memory file at 0x1000" "$(token_at "$OUT/shm.mem" 4096)" "$PATTERN"
check "memory file in last page" "$(token_at "$OUT/shm.mem" $((SIZE - 4096)))" "$PATTERN"
exit "$FAILED"
