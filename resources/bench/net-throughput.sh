#!/usr/bin/env bash
# virtio-net throughput benchmark, viaduct against QEMU (not a test): in ONE rig run, the busybox
# guest boots in the rig host (L2) under viaduct (--net tap=btap0) and under Debian's QEMU
# (-accel kvm -M q35, -netdev tap,ifname=btap0,vhost=off -device virtio-net-pci), both on the
# same persistent tap made beforehand with tunctl (169.254.30.1/16 on the rig host side), and
# sends N MiB to the rig host:
#   guest: dd if=/dev/zero bs=1M count=N | nc 169.254.30.1 5001
#   rig host: nc -l -p 5001 >/dev/null (its stdin held open: at EOF busybox nc stops reading)
# (the guest's net-io step with viaduct_net_send_mib=N, timed on the guest's clock). The script
# prints each VMM's MiB/s and the ratio viaduct/QEMU. Absolute numbers under nested emulation
# mean little; the ratio, measured in one run, does.
#
# Usage: resources/bench/net-throughput.sh [--mib N] [--rounds N] [--release] [--qemu-only]
#   --mib N      MiB each guest sends (default 64)
#   --rounds N   boot each VMM N times, alternating, and keep each one's best (default 1)
#   --release    benchmark the release build of viaduct (default: debug, as the tests use)
#   --qemu-only  QEMU alone (checks the rig and the guest's step without viaduct)
# QEMU's virtio-net runs in its own process (vhost=off): vhost-net would move QEMU's data path
# into the rig host's kernel, which viaduct does not do. Files and the serial log are kept in
# target/rig/bench-net-throughput/.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR
source "$(dirname "${BASH_SOURCE[0]}")/../rig/lib.sh"

MIB=64 ROUNDS=1 PROFILE=debug QEMU_ONLY=0
while [[ $# -gt 0 ]]; do
	case $1 in
	--mib) MIB=${2:?}; shift 2 ;;
	--rounds) ROUNDS=${2:?}; shift 2 ;;
	--release) PROFILE=release; shift ;;
	--qemu-only) QEMU_ONLY=1; shift ;;
	-h | --help) sed -n '2,21p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
	*) rig_die "net-throughput.sh: unknown argument '$1' (try --help)" ;;
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
BUILT=$(git -C "$REPO_DIR" describe --always --dirty)
[[ $QEMU_ONLY == 1 && ! -x $VIADUCT ]] && VIADUCT=/bin/true

OUT=$REPO_DIR/target/rig/bench-net-throughput
rm -rf "$OUT"
mkdir -p "$OUT"

MAC=52:54:00:1e:00:02
CMDLINE="console=ttyS0 quiet viaduct_action=net-io viaduct_net=$MAC,169.254.30.2/16,169.254.30.1 \
viaduct_net_token=bench viaduct_net_send_mib=$MIB"
{
	cat <<-'EOF'
		tunctl -t btap0 >/dev/null || echo "RIG-NOTE: tunctl failed"
		ip addr add 169.254.30.1/16 dev btap0
		ip link set btap0 up
		mkdir -p /tmp/hostwww && echo host >/tmp/hostwww/host.txt && echo done >/tmp/hostwww/done.txt
		httpd -p 8080 -h /tmp/hostwww
	EOF
	for round in $(seq "$ROUNDS"); do
		if [[ $QEMU_ONLY == 0 ]]; then
			cat <<-EOF
				(sleep 600 | nc -l -p 5001 >/dev/null) &
				echo "RIG-BENCH-VMM=viaduct round=$round uptime=\$(cut -d' ' -f1 /proc/uptime)"
				viaduct --kernel /guest/bzImage --initramfs /guest/initramfs.cpio.gz \\
					--cmdline "$CMDLINE viaduct_marker=viaduct-$round" --cpus boot=1 --memory size=512M \\
					--serial tty --console off --net tap=btap0,mac=$MAC
				echo "VIADUCT-EXIT=\$? uptime=\$(cut -d' ' -f1 /proc/uptime)"
			EOF
		fi
		cat <<-EOF
			(sleep 600 | nc -l -p 5001 >/dev/null) &
			echo "RIG-BENCH-VMM=qemu round=$round uptime=\$(cut -d' ' -f1 /proc/uptime)"
			qemu-system-x86_64 -accel kvm -M q35 -cpu host -m 512 -smp 1 -L /fw -display none -vga none \\
				-monitor none -serial stdio -no-reboot -kernel /guest/bzImage \\
				-initrd /guest/initramfs.cpio.gz -append "$CMDLINE viaduct_marker=qemu-$round" \\
				-netdev tap,id=n0,ifname=btap0,script=no,downscript=no,vhost=off \\
				-device virtio-net-pci,netdev=n0,mac=$MAC,romfile=
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
	--file "$(firmware linuxboot_dma.bin)" >/dev/null
WALL=$((SECONDS - START))

# The best MiB/s of each VMM: MIB over the GUEST-NET-SEND-SECONDS lines after its RIG-BENCH-VMM.
best() {
	tr -d '\r' <"$OUT/serial.log" | awk -v vmm="$1" -v mib="$MIB" '
		/RIG-BENCH-VMM=/ { cur = $0; sub(/.*RIG-BENCH-VMM=/, "", cur); sub(/ .*/, "", cur) }
		/GUEST-NET-SEND-SECONDS=/ && cur == vmm { v = $0; sub(/.*GUEST-NET-SEND-SECONDS=/, "", v); sub(/[^0-9.].*/, "", v)
			if (v + 0 > 0 && mib / v > b) b = mib / v }
		END { if (b > 0) printf "%.3f\n", b }'
}
errors=$(tr -d '\r' <"$OUT/serial.log" | grep -aoE 'GUEST-ERROR=.*' || true)
QEMU_MIBS=$(best qemu)
echo "== virtio-net guest -> rig host, $MIB MiB over TCP (busybox nc), 1 vCPU; $ROUNDS round(s); rig run ${WALL}s =="
echo "qemu:    ${QEMU_MIBS:-FAILED} MiB/s   ($("$QEMU_BIN" --version | head -n1), vhost=off)"
if [[ $QEMU_ONLY == 0 ]]; then
	VIADUCT_MIBS=$(best viaduct)
	echo "viaduct: ${VIADUCT_MIBS:-FAILED} MiB/s   ($PROFILE build, $BUILT)"
	if [[ -n $QEMU_MIBS && -n $VIADUCT_MIBS ]]; then
		echo "ratio viaduct/qemu: $(awk -v a="$VIADUCT_MIBS" -v b="$QEMU_MIBS" 'BEGIN { printf "%.2f", a / b }')"
	fi
fi
[[ -z $errors ]] || { echo "guest errors:"; echo "$errors"; }
echo "serial log: $OUT/serial.log"
[[ -n $QEMU_MIBS && ($QEMU_ONLY == 1 || -n ${VIADUCT_MIBS:-}) && -z $errors ]]
