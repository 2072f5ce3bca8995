#!/usr/bin/env bash
# virtio-blk benchmark, viaduct against QEMU (not a test): in ONE rig run, the busybox guest
# boots four times per round in the rig host (L2): under viaduct and under Debian's QEMU
# (-accel kvm -M q35, -device virtio-blk-pci), each once on a raw disk and once on a qcow2
# image of the same data (fully allocated: every cluster exists, so writes overwrite and both
# VMMs find the image alike). In each boot the guest's disk-bench step (/bin/disk-bench,
# resources/bench/disk-bench, built static and added to the guest's initramfs) runs 4 KiB
# O_DIRECT requests at queue depth 1 over the first --mib MiB: sequential read, sequential
# write, random read, random write, --seconds each. The script prints MB/s and IOPS per VMM,
# format and test, and the ratios viaduct/QEMU. Absolute numbers under nested emulation mean
# little; the ratios, measured in one run, do.
#
# Usage: resources/bench/disk-io.sh [--mib N] [--seconds S] [--rounds N] [--debug] [--qemu-only]
#   --mib N      MiB of each disk the tests use (default 64; the disks are 256 MiB)
#   --seconds S  seconds per test (default 5)
#   --rounds N   boot each VMM N times per format, alternating, keep each one's best (default 1)
#   --debug      benchmark the debug build of viaduct (default: release)
#   --qemu-only  QEMU alone (checks the rig and the guest's step without viaduct)
# L2 reads both disks once first, so the VMMs work from L2's page cache rather than through
# L1's emulated disks. Files and the serial log are kept in target/rig/bench-disk-io/.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR
source "$(dirname "${BASH_SOURCE[0]}")/../rig/lib.sh"

MIB=64 SECONDS_EACH=5 ROUNDS=1 PROFILE=release QEMU_ONLY=0 DISK_MIB=256
while [[ $# -gt 0 ]]; do
	case $1 in
	--mib) MIB=${2:?}; shift 2 ;;
	--seconds) SECONDS_EACH=${2:?}; shift 2 ;;
	--rounds) ROUNDS=${2:?}; shift 2 ;;
	--debug) PROFILE=debug; shift ;;
	--qemu-only) QEMU_ONLY=1; shift ;;
	-h | --help) sed -n '2,21p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
	*) rig_die "disk-io.sh: unknown argument '$1' (try --help)" ;;
	esac
done
for v in "$MIB" "$SECONDS_EACH" "$ROUNDS"; do
	[[ $v =~ ^[1-9][0-9]*$ ]] || rig_die "--mib, --seconds and --rounds want whole numbers"
done
((MIB <= DISK_MIB)) || rig_die "--mib is at most $DISK_MIB"

bash "$RIG_DIR/fetch.sh" >/dev/null # qemu-img (qemu-utils), cpio, gzip
QEMU_BIN=$(command -v qemu-system-x86_64) || rig_die "qemu-system-x86_64 not found (run resources/rig/fetch.sh)"
cd "$REPO_DIR"
if [[ $QEMU_ONLY == 0 ]]; then
	rig_log "building viaduct ($PROFILE)"
	if [[ $PROFILE == release ]]; then cargo build -q --release --bin viaduct; else cargo build -q --bin viaduct; fi
fi
VIADUCT=$REPO_DIR/target/$PROFILE/viaduct
[[ $QEMU_ONLY == 1 && ! -x $VIADUCT ]] && VIADUCT=/bin/true
rig_log "building disk-bench (static)"
RUSTFLAGS="-C target-feature=+crt-static" CARGO_TARGET_DIR=$REPO_DIR/target/disk-bench \
	cargo build -q --release --manifest-path resources/bench/disk-bench/Cargo.toml
BENCH_BIN=$REPO_DIR/target/disk-bench/release/disk-bench

OUT=$REPO_DIR/target/rig/bench-disk-io
rm -rf "$OUT"
mkdir -p "$OUT/cpio/bin"
# Real data, not a sparse file; the qcow2 image holds the same bytes, every cluster allocated.
head -c "$((DISK_MIB << 20))" /dev/urandom >"$OUT/data.raw"
qemu-img convert -O qcow2 "$OUT/data.raw" "$OUT/data.qcow2"
install -m 755 "$BENCH_BIN" "$OUT/cpio/bin/disk-bench"
(cd "$OUT/cpio" && find . | cpio -o -H newc --quiet | gzip -9) >"$OUT/bench.cpio.gz"

CMDLINE="console=ttyS0 quiet viaduct_action=disk-bench viaduct_bench_disk=vda viaduct_bench_mib=$MIB viaduct_bench_seconds=$SECONDS_EACH"
vmm_run() { # VMM FORMAT ROUND: scenario lines that boot the guest once
	local vmm=$1 fmt=$2 round=$3 dev
	[[ $fmt == raw ]] && dev=/dev/vda || dev=/dev/vdb
	echo "echo \"RIG-BENCH-VMM=$vmm-$fmt round=$round uptime=\$(cut -d' ' -f1 /proc/uptime)\""
	if [[ $vmm == viaduct ]]; then
		cat <<-EOF
			viaduct --kernel /guest/bzImage --initramfs /tmp/l3.cpio.gz \\
				--cmdline "$CMDLINE viaduct_marker=$vmm-$fmt-$round" --cpus boot=1 --memory size=512M \\
				--serial tty --console off --disk path=$dev,image_type=$fmt
			echo "VIADUCT-EXIT=\$? uptime=\$(cut -d' ' -f1 /proc/uptime)"
		EOF
	else
		cat <<-EOF
			qemu-system-x86_64 -accel kvm -M q35 -cpu host -m 512 -smp 1 -L /fw -display none -vga none \\
				-monitor none -serial stdio -no-reboot -nic none -kernel /guest/bzImage \\
				-initrd /tmp/l3.cpio.gz -append "$CMDLINE viaduct_marker=$vmm-$fmt-$round" \\
				-drive file=$dev,if=none,id=d0,format=$fmt -device virtio-blk-pci,drive=d0
			echo "QEMU-EXIT=\$? uptime=\$(cut -d' ' -f1 /proc/uptime)"
		EOF
	fi
}
{
	echo "cat /guest/initramfs.cpio.gz /guest/bench.cpio.gz >/tmp/l3.cpio.gz   # + /bin/disk-bench"
	for d in vda vdb; do
		echo "echo \"RIG-DISK=$d,\$(cat /sys/block/$d/size),\$(cat /sys/block/$d/serial)\""
		echo "dd if=/dev/$d of=/dev/null bs=1M 2>/dev/null   # into L2's page cache"
	done
	for round in $(seq "$ROUNDS"); do
		for fmt in raw qcow2; do
			[[ $QEMU_ONLY == 1 ]] || vmm_run viaduct "$fmt" "$round"
			vmm_run qemu "$fmt" "$round"
		done
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
	--scenario "$OUT/scenario.sh" --log "$OUT/serial.log" --timeout 1800 \
	--file "$OUT/bench.cpio.gz=/guest/bench.cpio.gz" \
	--file "$(firmware bios-256k.bin)" --file "$(firmware kvmvapic.bin)" \
	--file "$(firmware linuxboot_dma.bin)" -- \
	-drive "file=$OUT/data.raw,if=none,id=vd0,format=raw" \
	-device virtio-blk-pci,drive=vd0,serial=bench-raw,bus=pcie.0,addr=0x8 \
	-drive "file=$OUT/data.qcow2,if=none,id=vd1,format=raw" \
	-device virtio-blk-pci,drive=vd1,serial=bench-qcow2,bus=pcie.0,addr=0x9 >/dev/null
WALL=$((SECONDS - START))

# best VMM-FORMAT TEST: the best MB/s of that run's GUEST-BENCH=TEST,… lines (and its IOPS).
best() {
	tr -d '\r' <"$OUT/serial.log" | awk -v run="$1" -v test="$2" '
		/RIG-BENCH-VMM=/ { cur = $0; sub(/.*RIG-BENCH-VMM=/, "", cur); sub(/ .*/, "", cur) }
		/GUEST-BENCH=/ && cur == run { v = $0; sub(/.*GUEST-BENCH=/, "", v); sub(/[^A-Za-z0-9.,-].*/, "", v)
			split(v, f, ","); if (f[1] == test && f[2] + 0 > b) { b = f[2] + 0; iops = f[3] } }
		END { if (b > 0) printf "%.1f %s\n", b, iops }'
}
errors=$(tr -d '\r' <"$OUT/serial.log" | grep -aoE 'GUEST-ERROR=.*' || true)
echo "== virtio-blk, 4 KiB O_DIRECT, queue depth 1, ${MIB} MiB region, ${SECONDS_EACH} s per test, busybox guest, 1 vCPU; $ROUNDS round(s); rig run ${WALL}s =="
echo "qemu:    $("$QEMU_BIN" --version | head -n1)"
[[ $QEMU_ONLY == 1 ]] || echo "viaduct: $PROFILE build, $(git -C "$REPO_DIR" describe --always --dirty)"
printf '%-7s %-11s %16s %16s %8s\n' format test "viaduct MB/s" "qemu MB/s" ratio
failed=0
for fmt in raw qcow2; do
	for test in seq-read seq-write rand-read rand-write; do
		q=$(best "qemu-$fmt" "$test")
		v=""
		[[ $QEMU_ONLY == 1 ]] || v=$(best "viaduct-$fmt" "$test")
		[[ -n $q && ($QEMU_ONLY == 1 || -n $v) ]] || failed=1
		ratio=-
		if [[ -n $q && -n $v ]]; then
			ratio=$(awk -v a="${v%% *}" -v b="${q%% *}" 'BEGIN { printf "%.2f", a / b }')
		fi
		fmt_cell() { [[ -n $1 ]] && printf '%s (%s/s)' "${1%% *}" "${1##* }" || printf 'FAILED'; }
		printf '%-7s %-11s %16s %16s %8s\n' "$fmt" "$test" "$(fmt_cell "$v")" "$(fmt_cell "$q")" "$ratio"
	done
done
[[ -z $errors ]] || { echo "guest errors:"; echo "$errors"; }
echo "serial log: $OUT/serial.log"
[[ $failed == 0 && -z $errors ]]
