#!/usr/bin/env bash
# See viaduct boot a Linux guest: builds viaduct, starts the rig (QEMU -> rig host with nested
# KVM) and, inside it, runs viaduct on the busybox guest with its serial console on the terminal.
#
# Usage: resources/rig/demo.sh [--release] [--pvh] [--action poweroff|reboot|panic]
#   --release   build and run the release binary (default: debug, as the tests do)
#   --pvh       boot the ELF vmlinux by PVH instead of the bzImage
#   --action    what the guest does once it has reported (default: poweroff)
# The whole serial log is kept in target/rig/demo/serial.log.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

PROFILE=debug KERNEL=/guest/bzImage ACTION=poweroff
while [[ $# -gt 0 ]]; do
	case $1 in
	--release) PROFILE=release; shift ;;
	--pvh) KERNEL=/guest/vmlinux; shift ;;
	--action) ACTION=${2:?}; shift 2 ;;
	-h | --help) sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
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
cat >"$OUT/scenario.sh" <<EOF
echo "== viaduct boots $KERNEL with 2 vCPUs and 512 MiB; the guest console follows =="
viaduct -v --kernel $KERNEL --initramfs /guest/initramfs.cpio.gz \\
	--cmdline "console=ttyS0 viaduct_marker=$MARKER viaduct_action=$ACTION" \\
	--cpus boot=2 --memory size=512M --serial tty --console off
echo "VIADUCT-EXIT=\$?"
EOF

"$RIG_DIR/run.sh" --viaduct "$VIADUCT" --scenario "$OUT/scenario.sh" --log "$OUT/serial.log"

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
echo "serial log:         $OUT/serial.log"
if [[ $(value GUEST-MARKER) == "$MARKER" ]]; then
	echo "The guest booted under viaduct and answered."
else
	echo "The guest did not answer; see the log above." >&2
	exit 1
fi
