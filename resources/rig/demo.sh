#!/usr/bin/env bash
# See viaduct do its job: builds viaduct, starts the rig (QEMU -> rig host with nested KVM, an
# emulated VT-d and an emulated NVMe drive) and, inside it, binds the NVMe to vfio-pci and runs
# viaduct on the busybox guest with the NVMe passed through and the serial console on the
# terminal. The guest's own nvme driver reads a marker from the drive and writes to it; the
# summary shows what the guest saw: the device's BDF, the marker, its MSI-X interrupt counts.
#
# Usage: resources/rig/demo.sh [--release] [--pvh] [--action poweroff|reboot|panic] [--no-device]
#   --release    build and run the release binary (default: debug, as the tests do)
#   --pvh        boot the ELF vmlinux by PVH instead of the bzImage
#   --action     what the guest does once it has reported (default: poweroff)
#   --no-device  a plain boot, no device passed through
# The whole serial log is kept in target/rig/demo/serial.log.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

PROFILE=debug KERNEL=/guest/bzImage ACTION=poweroff DEVICE=1
while [[ $# -gt 0 ]]; do
	case $1 in
	--release) PROFILE=release; shift ;;
	--pvh) KERNEL=/guest/vmlinux; shift ;;
	--action) ACTION=${2:?}; shift 2 ;;
	--no-device) DEVICE=0; shift ;;
	-h | --help) sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
	*) rig_die "demo.sh: unknown argument '$1' (try --help)" ;;
	esac
done
case $ACTION in poweroff | reboot | panic) ;; *) rig_die "--action wants poweroff, reboot or panic" ;; esac

cd "$REPO_DIR"
rig_log "building viaduct ($PROFILE)"
if [[ $PROFILE == release ]]; then cargo build --release --bin viaduct; else cargo build --bin viaduct; fi
VIADUCT=$REPO_DIR/target/$PROFILE/viaduct

OUT=$REPO_DIR/target/rig/demo
mkdir -p "$OUT"
MARKER=demo-$RANDOM$RANDOM
BDF=0000:00:10.0
QEMU_ARGS=()
STEPS=$ACTION DEVICE_ARGS="" PREP="" WHAT="with no device"
if [[ $DEVICE == 1 ]]; then
	# The drive: its marker in sector 0, the rest sparse.
	NVME_MARKER=nvme-$RANDOM$RANDOM
	rm -f "$OUT/nvme.img"
	truncate -s 64M "$OUT/nvme.img"
	printf '%s\n' "$NVME_MARKER" | dd of="$OUT/nvme.img" conv=notrunc status=none
	QEMU_ARGS=(-- -drive "file=$OUT/nvme.img,if=none,id=nva,format=raw"
		-device "nvme,drive=nva,serial=nva,bus=pcie.0,addr=0x10")
	STEPS=nvme-io,$ACTION
	DEVICE_ARGS="--device path=/sys/bus/pci/devices/$BDF/"
	PREP="rig-vfio-bind $BDF || exit 1"
	WHAT="with the rig's NVMe ($BDF) passed through"
fi
cat >"$OUT/scenario.sh" <<EOF
$PREP
echo "== viaduct boots $KERNEL with 2 vCPUs and 512 MiB $WHAT; the guest console follows =="
viaduct -v --kernel $KERNEL --initramfs /guest/initramfs.cpio.gz \\
	--cmdline "console=ttyS0 viaduct_marker=$MARKER viaduct_action=$STEPS viaduct_write=$MARKER" \\
	--cpus boot=2 --memory size=512M --serial tty --console off $DEVICE_ARGS
echo "VIADUCT-EXIT=\$?"
EOF

"$RIG_DIR/run.sh" --viaduct "$VIADUCT" --scenario "$OUT/scenario.sh" --log "$OUT/serial.log" \
	"${QEMU_ARGS[@]}"

# The last KEY=value in the log, KEY not glued to a longer name.
value() {
	tr -d '\r' <"$OUT/serial.log" | grep -aoE "(^|[^A-Za-z0-9_-])$1=[^ ]*" | tail -n1 | cut -d= -f2-
}
echo
echo "== result =="
echo "guest CPUs online:  $(value GUEST-CPUS)"
echo "guest MemTotal:     $(value GUEST-MEMTOTAL-KB) KiB"
echo "guest marker:       $(value GUEST-MARKER) (expected $MARKER)"
echo "guest pvpanic:      $(value GUEST-PVPANIC)"
echo "viaduct exit:       $(value VIADUCT-EXIT)"
ok=1
[[ $(value GUEST-MARKER) == "$MARKER" ]] || ok=0
if [[ $DEVICE == 1 ]]; then
	echo "NVMe in the guest:  $(value GUEST-NVME-BDF) (host $BDF)"
	echo "NVMe marker read:   $(value GUEST-NVME-MARKER) (expected $NVME_MARKER)"
	echo "NVMe write read:    $(value GUEST-NVME-WROTE) (expected $MARKER)"
	echo "NVMe interrupts:    $(value GUEST-NVME-IRQ-MODE), $(value GUEST-NVME-IRQS) in all:"
	# GUEST-IRQ=<irq>,<count on CPU0>,<count on CPU1>,...,<chip>,<hwirq>,<name>
	tr -d '\r' <"$OUT/serial.log" | grep -ao 'GUEST-IRQ=.*' | sed 's/^GUEST-IRQ=//' |
		awk -F, '{ per = ""; for (i = 2; i <= NF - 3; i++) per = per (i > 2 ? " + " : "") $i;
			printf "  IRQ %s %s: %s (per CPU)\n", $1, $NF, per }'
	on_disk=$(dd if="$OUT/nvme.img" bs=512 skip=1 count=1 status=none | tr -d '\000' | head -n1)
	echo "on the drive image: $on_disk (sector 1, read on this machine)"
	[[ $(value GUEST-NVME-MARKER) == "$NVME_MARKER" && $on_disk == "$MARKER" ]] || ok=0
fi
echo "serial log:         $OUT/serial.log"
if [[ $ok == 1 ]]; then
	if [[ $DEVICE == 1 ]]; then
		echo "The guest booted under viaduct and drove the passed-through NVMe with its own driver."
	else
		echo "The guest booted under viaduct and answered."
	fi
else
	echo "The guest did not answer; see the log above." >&2
	exit 1
fi
