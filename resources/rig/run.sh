#!/usr/bin/env bash
# Runs one scenario in the rig: QEMU (TCG, -cpu max) boots the rig host (L2) with KVM nested;
# L2 runs the scenario script, in which viaduct boots its own guest (L3).
#
# Usage: resources/rig/run.sh --viaduct PATH --scenario FILE [--timeout SECS] [--log FILE]
#                             [--file SRC=DEST]... [--binary SRC=DEST]... [-- EXTRA QEMU ARGS...]
#   --viaduct PATH    the viaduct binary; lands in L2 as /usr/bin/viaduct (with its libraries)
#   --scenario FILE   a shell script run by L2's busybox sh as /rig/scenario.sh
#   --timeout SECS    kill QEMU after this long (default 600)
#   --stall SECS      end the run when the serial log has not grown for this long (default:
#                     never; the rig host kernel's own lines do not count), first writing
#                     where the rig host's CPUs are (RIG-STALL lines)
#   --log FILE        also write the serial log there (default: a file in a temporary directory,
#                     kept when the run fails)
#   --file SRC=DEST   put file SRC into L2 at path DEST (repeatable)
#   --binary SRC=DEST put ELF binary SRC into L2 at DEST with the shared libraries it needs
#                     (repeatable; e.g. a second VMM to compare with)
#   -- ARGS           appended to the QEMU command line (devices, disks, ...)
# In L2: /guest/bzImage, /guest/vmlinux (PVH ELF), /guest/initramfs.cpio.gz (the busybox guest).
#
# Exit status: 0 when L2 ran the scenario to its end (it printed RIG-SCENARIO-EXIT=); the
# scenario's own result is in the log for the caller to judge. Non-zero, with the reason on
# stderr, when the rig could not do that.
#
# Environment: VIADUCT_RIG_CACHE (cache dir), VIADUCT_RIG_SMP (L2 CPUs, default 1),
# VIADUCT_RIG_MEM (L2 memory, default 2048M), VIADUCT_RIG_CMDLINE (extra L2 kernel arguments),
# VIADUCT_RIG_IOMMU (extra intel-iommu properties, e.g. aw-bits=48; the default is 39 bits).
set -euo pipefail
# shellcheck source-path=SCRIPTDIR
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

usage() {
	sed -n '2,27p' "$0" | sed 's/^# \{0,1\}//' >&2
	exit 2
}

VIADUCT="" SCENARIO="" TIMEOUT=600 LOG="" STALL=0
FILES=()
BINARIES=()
QEMU_EXTRA=()
while [[ $# -gt 0 ]]; do
	case $1 in
	--viaduct) VIADUCT=${2:?}; shift 2 ;;
	--scenario) SCENARIO=${2:?}; shift 2 ;;
	--timeout) TIMEOUT=${2:?}; shift 2 ;;
	--stall) STALL=${2:?}; shift 2 ;;
	--log) LOG=${2:?}; shift 2 ;;
	--file) FILES+=("${2:?}"); shift 2 ;;
	--binary) BINARIES+=("${2:?}"); shift 2 ;;
	--) shift; QEMU_EXTRA=("$@"); break ;;
	-h | --help) usage ;;
	*) echo "run.sh: unknown argument '$1'" >&2; usage ;;
	esac
done
[[ -n $VIADUCT && -n $SCENARIO ]] || usage
[[ -x $VIADUCT ]] || rig_die "viaduct binary '$VIADUCT' does not exist or is not executable"
[[ -f $SCENARIO ]] || rig_die "scenario '$SCENARIO' does not exist"
[[ $TIMEOUT =~ ^[0-9]+$ ]] || rig_die "--timeout wants seconds, got '$TIMEOUT'"
[[ $STALL =~ ^[0-9]+$ ]] || rig_die "--stall wants seconds, got '$STALL'"

START=$(date +%s.%N)
WORK=$(mktemp -d "${TMPDIR:-/tmp}/viaduct-rig.XXXXXX")
KEEP_WORK=0
cleanup() { [[ $KEEP_WORK == 1 ]] || rm -rf "$WORK"; }
trap cleanup EXIT
[[ -n $LOG ]] || { LOG=$WORK/serial.log; KEEP_WORK=1; }
mkdir -p "$(dirname "$LOG")"
: >"$LOG"

prepare() {
	"$RIG_DIR/fetch.sh"
	"$RIG_DIR/build.sh"
	# Copy the cached base while holding the lock, so that a concurrent rebuild cannot race us.
	cp "$RIG_CACHE/l2-base.cpio" "$WORK/initrd"
}
rig_with_lock prepare

# Copies ELF binary $1 to $ROOT$2 with the shared libraries it needs, at their own paths.
add_binary() {
	local src=$1 dest=$2 lib
	mkdir -p "$ROOT$(dirname "$dest")"
	cp "$src" "$ROOT$dest"
	# Debug info only slows the copy into L2; symbols stay for backtraces.
	if command -v strip >/dev/null; then strip --strip-debug "$ROOT$dest" 2>/dev/null || true; fi
	if ldd "$src" >/dev/null 2>&1; then
		for lib in $(ldd "$src" | grep -oE '/[^ ]+' | sort -u) /lib64/ld-linux-x86-64.so.2; do
			[[ -e $ROOT$lib ]] && continue
			mkdir -p "$ROOT$(dirname "$lib")"
			cp -L "$lib" "$ROOT$lib"
		done
	fi
}

# The per-run part of L2's initramfs, appended to the cached base (the kernel unpacks
# concatenated cpio archives in order).
ROOT=$WORK/root
mkdir -p "$ROOT/rig"
add_binary "$VIADUCT" /usr/bin/viaduct
install -m 755 "$SCENARIO" "$ROOT/rig/scenario.sh"
for spec in "${FILES[@]}"; do
	src=${spec%%=*} dest=${spec#*=}
	[[ -f $src && $dest == /* ]] || rig_die "--file wants SRC=/ABSOLUTE/DEST with SRC a file, got '$spec'"
	mkdir -p "$ROOT$(dirname "$dest")"
	cp "$src" "$ROOT$dest"
done
for spec in "${BINARIES[@]}"; do
	src=${spec%%=*} dest=${spec#*=}
	[[ -f $src && -x $src && $dest == /* ]] ||
		rig_die "--binary wants SRC=/ABSOLUTE/DEST with SRC an executable, got '$spec'"
	add_binary "$src" "$dest"
done
(cd "$ROOT" && find . -mindepth 1 | LC_ALL=C sort | cpio --quiet -o -H newc -R 0:0) >>"$WORK/initrd"

# shellcheck disable=SC2054 # the commas belong to QEMU options
QEMU=(
	qemu-system-x86_64
	-M q35,kernel-irqchip=split -accel tcg -cpu max
	-smp "${VIADUCT_RIG_SMP:-1}" -m "${VIADUCT_RIG_MEM:-2048M}"
	# The serial port on stdio and no -nographic: SeaBIOS then stays off the serial port, which
	# keeps its terminal-reset sequences out of the log and off the user's terminal.
	-display none -vga none -monitor none -serial stdio -no-reboot -nic none
	# A QMP socket, for looking into a run that hangs (resources/rig/monitor.py; docs/rig.md).
	-qmp "unix:$WORK/qmp.sock,server=on,wait=off"
	-device "intel-iommu,intremap=on,caching-mode=on${VIADUCT_RIG_IOMMU:+,$VIADUCT_RIG_IOMMU}"
	-kernel "$KERNEL_DIR/bzImage" -initrd "$WORK/initrd"
	# no_timer_check: under software emulation on a loaded machine the kernel's IO-APIC timer
	# check can miss its ticks, and with interrupt remapping that is a panic ("timer doesn't
	# work through Interrupt-remapped IO-APIC") before the rig host has booted.
	-append "console=ttyS0 panic=-1 intel_iommu=on iommu=pt no_timer_check quiet ${VIADUCT_RIG_CMDLINE:-}"
	"${QEMU_EXTRA[@]}"
)
# --stall: a rig host that prints nothing for STALL seconds is stuck (a scenario's own bounds
# print long before that), e.g. a CPU looping in its kernel, where no timeout inside it can
# act. Its CPUs' registers go into the log, then QEMU is told to quit. The rig host kernel's
# own lines ("[  12.3] ...": soft-lockup and RCU-stall reports repeat while it is stuck) are
# not progress.
watch_stall() {
	local last=-1 size still=0
	while sleep 5; do
		size=$(grep -cvE '^\[ *[0-9]+\.[0-9]+\]' "$LOG" 2>/dev/null || true)
		if [[ $size != "$last" ]]; then
			last=$size still=0
			continue
		fi
		still=$((still + 5))
		[[ $still -ge $STALL ]] || continue
		touch "$WORK/stalled"
		{
			echo "RIG-STALL: no output for ${STALL}s; where the rig host's CPUs are:"
			python3 "$RIG_DIR/monitor.py" "$WORK/qmp.sock" "info registers -a" |
				grep -E '^(CPU|RIP)' | sed 's/^/RIG-STALL: /'
		} >>"$LOG" 2>&1
		python3 "$RIG_DIR/monitor.py" "$WORK/qmp.sock" quit >/dev/null 2>&1
		return
	done
}
rig_log "booting the rig host: timeout ${TIMEOUT}s, log $LOG, monitor $WORK/qmp.sock"
WATCH=""
if [[ $STALL -gt 0 ]]; then
	watch_stall &
	WATCH=$!
fi
set +e
# stdin is /dev/null: QEMU's serial then neither grabs the terminal nor waits for input.
timeout --kill-after=10 "$TIMEOUT" "${QEMU[@]}" </dev/null 2>&1 | tee -a "$LOG"
QEMU_STATUS=${PIPESTATUS[0]}
[[ -z $WATCH ]] || kill "$WATCH" 2>/dev/null
set -e
ELAPSED=$(awk -v s="$START" -v e="$(date +%s.%N)" 'BEGIN { printf "%.1f", e - s }')

fail() {
	KEEP_WORK=1
	rig_log "rig FAILED after ${ELAPSED}s: $*"
	rig_log "serial log: $LOG"
	exit 1
}
if grep -aq 'RIG-ERROR:' "$LOG"; then
	fail "$(grep -ao 'RIG-ERROR:.*' "$LOG" | head -n1 | tr -d '\r')"
fi
if ! grep -aq 'RIG-SCENARIO-EXIT=' "$LOG"; then
	[[ ! -e $WORK/stalled ]] ||
		fail "the rig host printed nothing for ${STALL}s and was stopped (its CPUs: RIG-STALL lines)"
	case $QEMU_STATUS in
	124 | 137) fail "timed out after ${TIMEOUT}s before the scenario finished" ;;
	0) fail "QEMU exited before the scenario finished (L2 kernel panic or poweroff?)" ;;
	*) fail "QEMU exited with status $QEMU_STATUS before the scenario finished" ;;
	esac
fi
rig_log "rig done in ${ELAPSED}s: $(grep -ao 'RIG-SCENARIO-EXIT=[0-9]*' "$LOG" | tail -n1)"
