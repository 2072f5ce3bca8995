#!/usr/bin/env bash
# The cloud-image reference: boots the rig's Debian cloud image with Debian's QEMU as the VMM in
# the rig host (L2), instead of viaduct, with the same disks the tests give viaduct:
#   vda  the cloud image (L1: snapshot=on, so the cached image never changes)
#   vdb  the NoCloud seed (read-only)
#   vdc  a blank 16 MiB disk the guest writes its marker to
#   vdd  a 16 MiB disk with a marker, read-only for the guest (read-write in L2)
# and checks that cloud-init ran the user-data, systemd finished booting, the guest powered off,
# the blank disk's file holds the guest's write and the read-only one is unchanged. It tells a
# problem of the image or the rig from a problem of viaduct, and measures the boot.
#
# Usage: resources/cloud-image/reference.sh [--memory MIB] [--verbose]
#   --memory MIB  guest memory (default 1024)
#   --verbose     no "quiet" on the guest command line (the whole boot log)
# Files and the serial log are kept in target/rig/cloud-reference/.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR
source "$(dirname "${BASH_SOURCE[0]}")/../rig/lib.sh"
CLOUD_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

MEM=1024 QUIET=quiet
while [[ $# -gt 0 ]]; do
	case $1 in
	--memory) MEM=${2:?}; shift 2 ;;
	--verbose) QUIET=""; shift ;;
	-h | --help) sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
	*) rig_die "reference.sh: unknown argument '$1' (try --help)" ;;
	esac
done

QEMU_BIN=$(command -v qemu-system-x86_64) || rig_die "qemu-system-x86_64 not found (run resources/rig/fetch.sh)"
IMAGE=$("$CLOUD_DIR/build.sh")
OUT=$REPO_DIR/target/rig/cloud-reference
rm -rf "$OUT"
mkdir -p "$OUT"
MARKER=ref$RANDOM$RANDOM FILE_TOKEN=file$RANDOM$RANDOM RO_MARKER=ro$RANDOM$RANDOM
"$CLOUD_DIR/user-data.sh" --marker "$MARKER" --file "$FILE_TOKEN" --blank vdc --readonly vdd >"$OUT/user-data"
"$CLOUD_DIR/seed.sh" "$OUT/seed.img" "$OUT/user-data"
truncate -s 16M "$OUT/blank.img" "$OUT/ro.img"
printf '%s' "$RO_MARKER" | dd of="$OUT/ro.img" conv=notrunc status=none
RO_SUM=$(sha256sum <"$OUT/ro.img")

# QEMU goes into L2 in viaduct's place (run.sh copies it with its libraries as /usr/bin/viaduct);
# its firmware goes to /fw.
cat >"$OUT/scenario.sh" <<EOF
for d in vda vdb vdc vdd; do echo "RIG-DISK=\$d,\$(cat /sys/block/\$d/size),\$(cat /sys/block/\$d/ro),\$(cat /sys/block/\$d/serial)"; done
echo "RIG-VIADUCT-START uptime=\$(cut -d' ' -f1 /proc/uptime)"
viaduct -accel kvm -M q35 -cpu host -m $MEM -smp 1 -L /fw -display none -vga none -monitor none \\
	-serial stdio -no-reboot -nic none -kernel /guest/cloud/vmlinuz -initrd /guest/cloud/initrd.img \\
	-append "console=ttyS0 root=/dev/vda1 rw $QUIET" \\
	-drive file=/dev/vda,if=virtio,format=raw -drive file=/dev/vdb,if=virtio,format=raw,readonly=on \\
	-drive file=/dev/vdc,if=virtio,format=raw -drive file=/dev/vdd,if=virtio,format=raw,readonly=on
echo "VIADUCT-EXIT=\$? uptime=\$(cut -d' ' -f1 /proc/uptime)"
EOF

firmware() {
	local name=$1 dir
	for dir in /usr/share/qemu /usr/share/seabios; do
		[[ -f $dir/$name ]] && { printf '%s=/fw/%s\n' "$dir/$name" "$name"; return; }
	done
	rig_die "QEMU firmware $name not found"
}
disk() { # L1 QEMU arguments for L2's virtio disk number $1 (0 = vda) backed by $2, options $3
	printf -- '-drive\nfile=%s,if=none,id=vd%s,format=raw%s\n-device\nvirtio-blk-pci,drive=vd%s,serial=%s,bus=pcie.0,addr=%#x\n' \
		"$2" "$1" "$3" "$1" "$4" $((8 + $1))
}
mapfile -t DISKS < <(disk 0 "$IMAGE/disk.raw" ,snapshot=on cloud-root; disk 1 "$OUT/seed.img" ,readonly=on cloud-seed
	disk 2 "$OUT/blank.img" "" blank; disk 3 "$OUT/ro.img" "" ro)
START=$SECONDS
"$RIG_DIR/run.sh" --viaduct "$QEMU_BIN" --scenario "$OUT/scenario.sh" --log "$OUT/serial.log" \
	--file "$IMAGE/vmlinuz=/guest/cloud/vmlinuz" --file "$IMAGE/initrd.img=/guest/cloud/initrd.img" \
	--file "$(firmware bios-256k.bin)" --file "$(firmware kvmvapic.bin)" \
	--file "$(firmware linuxboot_dma.bin)" -- "${DISKS[@]}" >/dev/null
WALL=$((SECONDS - START))

value() {
	tr -d '\r' <"$OUT/serial.log" | grep -aoE "(^|[^A-Za-z0-9_-])$1=[^ ]*" | tail -n1 | cut -d= -f2-
}
uptime_of() { tr -d '\r' <"$OUT/serial.log" | grep -aoE "$1 uptime=[0-9.]+" | tail -n1 | sed 's/.*uptime=//'; }
FAILED=0
check() {
	local what=$1 got=$2 want=$3
	if [[ $got == "$want" ]]; then
		printf 'ok    %-30s %s\n' "$what" "$got"
	else
		printf 'FAIL  %-30s %s (expected %s)\n' "$what" "$got" "$want"
		FAILED=1
	fi
}
echo "== cloud image under QEMU in the rig host (log $OUT/serial.log) =="
check "cloud-init runcmd marker" "$(value GUEST-CLOUD-MARKER)" "$MARKER"
check "write_files file" "$(value GUEST-CLOUD-FILE)" "$FILE_TOKEN"
check "root filesystem" "$(value GUEST-ROOT)" /dev/vda1
check "systemd state" "$(value GUEST-SYSTEMD-STATE)" running
check "failed units" "$(value GUEST-SYSTEMD-FAILED)" ""
check "cloud-init status" "$(value GUEST-CLOUD-INIT-STATUS)" "done"
check "cloud-init errors" "$(value GUEST-CLOUD-ERRORS)" 0
check "blank disk: guest read back" "$(value GUEST-DISK-WROTE)" "vdc,$MARKER"
check "blank disk: file sector 0" "$(head -c 64 "$OUT/blank.img" | tr -cd 'A-Za-z0-9._-')" "$MARKER"
check "read-only disk: flag" "$(value GUEST-DISK-RO-FLAG)" vdd,1
check "read-only disk: write" "$(value GUEST-DISK-RO-WRITE)" vdd,refused
check "read-only disk: file unchanged" "$(sha256sum <"$OUT/ro.img")" "$RO_SUM"
check "powered off by cloud-init" "$(value GUEST-POWEROFF)" cloud-init
check "QEMU exit" "$(value VIADUCT-EXIT)" 0
START_UP=$(uptime_of RIG-VIADUCT-START) EXIT_UP=$(uptime_of VIADUCT-EXIT=[0-9]*)
echo "      guest uptime at report     $(value GUEST-UPTIME) s (guest clock)"
echo "      QEMU start to exit         $(awk -v a="$START_UP" -v b="$EXIT_UP" 'BEGIN { print b - a }') s (rig host clock)"
echo "      whole rig run              ${WALL} s wall"
exit "$FAILED"
