#!/usr/bin/env bash
# Peer-to-peer mapping benchmark, viaduct against QEMU (not a test): in ONE rig run, the busybox
# guest boots in the rig host (L2) with the same passed-through ivshmem device, whose BAR2 is a
# large 64-bit BAR (4 GiB by default), under:
#   viaduct, --platform vfio_p2p_dma=on   (BAR2 DMA-mapped into the VFIO container)
#   viaduct, --platform vfio_p2p_dma=off  (not mapped: the difference is the mapping's cost)
#   QEMU,    -device vfio-pci             (QEMU always DMA-maps mmapped BARs, as ram_device)
# and powers off at once. It prints, per VMM, the time from exec to exit on the rig host's clock,
# viaduct's own timing of the BAR's VFIO_IOMMU_MAP_DMA, and the ratios. Absolute numbers under
# nested emulation mean little; ratios measured in one run do.
#
# Usage: resources/bench/p2p-map.sh [--bar-gib N] [--rounds N] [--release]
#   --bar-gib N  size of the ivshmem BAR in GiB, a power of two (default 4)
#   --rounds N   boot each configuration N times, alternating, and keep each one's best
#                (default 1)
#   --release    benchmark the release build of viaduct (default: debug, as the tests use)
# Files and the serial log are kept in target/rig/bench-p2p-map/.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR
source "$(dirname "${BASH_SOURCE[0]}")/../rig/lib.sh"

BAR_GIB=4 ROUNDS=1 PROFILE=debug
while [[ $# -gt 0 ]]; do
	case $1 in
	--bar-gib) BAR_GIB=${2:?}; shift 2 ;;
	--rounds) ROUNDS=${2:?}; shift 2 ;;
	--release) PROFILE=release; shift ;;
	-h | --help) sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
	*) rig_die "p2p-map.sh: unknown argument '$1' (try --help)" ;;
	esac
done
[[ $BAR_GIB =~ ^[1-9][0-9]*$ && $((BAR_GIB & (BAR_GIB - 1))) -eq 0 ]] ||
	rig_die "--bar-gib wants a power of two"
[[ $ROUNDS =~ ^[1-9][0-9]*$ ]] || rig_die "--rounds wants a whole number"

QEMU_BIN=$(command -v qemu-system-x86_64) || rig_die "qemu-system-x86_64 not found (run resources/rig/fetch.sh)"
cd "$REPO_DIR"
rig_log "building viaduct ($PROFILE)"
if [[ $PROFILE == release ]]; then cargo build -q --release --bin viaduct; else cargo build -q --bin viaduct; fi
VIADUCT=$REPO_DIR/target/$PROFILE/viaduct

OUT=$REPO_DIR/target/rig/bench-p2p-map
rm -rf "$OUT"
mkdir -p "$OUT"
: >"$OUT/shm.mem"
truncate -s "${BAR_GIB}G" "$OUT/shm.mem"
BDF=0000:00:12.0
GUEST="--kernel /guest/bzImage --initramfs /guest/initramfs.cpio.gz --cpus boot=1 --memory size=512M --serial tty --console off"
CMDLINE="console=ttyS0 quiet viaduct_action=poweroff"
{
	echo "rig-vfio-bind $BDF || exit 1"
	for round in $(seq "$ROUNDS"); do
		for p2p in on off; do
			cat <<-EOF
				echo "RIG-BENCH-START=viaduct-p2p-$p2p round=$round uptime=\$(cut -d' ' -f1 /proc/uptime)"
				viaduct -v $GUEST --cmdline "$CMDLINE viaduct_marker=viaduct-$p2p-$round" \\
					--platform vfio_p2p_dma=$p2p --device path=/sys/bus/pci/devices/$BDF/ >/tmp/run.log 2>&1
				echo "RIG-BENCH-END=viaduct-p2p-$p2p round=$round uptime=\$(cut -d' ' -f1 /proc/uptime)"
				grep -E 'DMA-mapped|GUEST-MARKER|error' /tmp/run.log | sed 's/^/BENCH-LOG| /'
			EOF
		done
		cat <<-EOF
			echo "RIG-BENCH-START=qemu round=$round uptime=\$(cut -d' ' -f1 /proc/uptime)"
			qemu-system-x86_64 -accel kvm -M q35 -cpu host -m 512 -smp 1 -L /fw -display none -vga none \\
				-monitor none -serial stdio -no-reboot -nic none -kernel /guest/bzImage \\
				-initrd /guest/initramfs.cpio.gz -append "$CMDLINE viaduct_marker=qemu-$round" \\
				-device vfio-pci,host=$BDF >/tmp/run.log 2>&1
			echo "RIG-BENCH-END=qemu round=$round uptime=\$(cut -d' ' -f1 /proc/uptime)"
			grep -E 'GUEST-MARKER|error' /tmp/run.log | sed 's/^/BENCH-LOG| /'
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
	--scenario "$OUT/scenario.sh" --log "$OUT/serial.log" --timeout 1800 \
	--file "$(firmware bios-256k.bin)" --file "$(firmware kvmvapic.bin)" \
	--file "$(firmware linuxboot_dma.bin)" -- \
	-object "memory-backend-file,id=shm,mem-path=$OUT/shm.mem,size=${BAR_GIB}G,share=on" \
	-device "ivshmem-plain,memdev=shm,bus=pcie.0,addr=0x12" >/dev/null
WALL=$((SECONDS - START))

# The best exec -> exit time of configuration $1, from its START/END uptimes.
best() {
	tr -d '\r' <"$OUT/serial.log" | awk -v what="$1" '
		function up(line) { sub(/.*uptime=/, "", line); return line + 0 }
		index($0, "RIG-BENCH-START=" what " ") { s = up($0) }
		index($0, "RIG-BENCH-END=" what " ") { t = up($0) - s; if (b == "" || t < b) b = t }
		END { if (b != "") printf "%.2f", b }'
}
ran() { grep -aq "BENCH-LOG| .*GUEST-MARKER=$1" "$OUT/serial.log"; }
map_time=$(tr -d '\r' <"$OUT/serial.log" | grep -aoE 'BAR2 area at [^ ]+ \([^)]*\) DMA-mapped for peer-to-peer in [^ ]+' | head -n1 || true)
ON=$(best viaduct-p2p-on) OFF=$(best viaduct-p2p-off) QEMU=$(best qemu)
ok=1
for m in viaduct-on-1 viaduct-off-1 qemu-1; do ran "$m" || { echo "the $m guest did not run"; ok=0; }; done
echo "== passthrough of a ${BAR_GIB} GiB BAR (ivshmem), exec -> guest poweroff -> exit, busybox guest, 512 MiB; $ROUNDS round(s); rig run ${WALL}s =="
printf '%-30s %8s s\n' "viaduct, vfio_p2p_dma=on" "${ON:-FAILED}" "viaduct, vfio_p2p_dma=off" "${OFF:-FAILED}" \
	"qemu -device vfio-pci" "${QEMU:-FAILED}"
echo "viaduct's own timing: ${map_time:-none logged}"
echo "($PROFILE build, $(git -C "$REPO_DIR" describe --always --dirty); $("$QEMU_BIN" --version | head -n1))"
if [[ -n $ON && -n $OFF && -n $QEMU ]]; then
	awk -v on="$ON" -v off="$OFF" -v q="$QEMU" 'BEGIN {
		printf "cost of the P2P mapping in viaduct (on - off): %.2f s\n", on - off
		printf "ratio viaduct(on)/qemu: %.2f\n", on / q }'
fi
echo "serial log: $OUT/serial.log"
[[ $ok == 1 && -n $ON && -n $OFF && -n $QEMU ]]
