#!/usr/bin/env bash
# Start-time benchmark with a passed-through device, viaduct against QEMU (and optionally
# cloud-hypervisor), not a test: in ONE rig run, the busybox guest (the PVH vmlinux, 1 vCPU)
# boots and powers off at once under each VMM, for each guest size, with the rig's NVMe passed
# through and without it, with anonymous and with hugepage-backed RAM. Per run it records, on the
# rig host's clock, exec -> the guest's init (its first GUEST- line) and exec -> the VMM's exit,
# then prints the table and the ratios:
#   - exec->exit with the device, viaduct / QEMU and viaduct / cloud-hypervisor;
#   - passthrough start cost (exec->init with the device minus without), viaduct / QEMU.
# Absolute numbers under nested emulation mean little; ratios measured in one run do.
#
# Usage: resources/bench/memory-start.sh [--sizes "512M 2G 4G"] [--rounds N] [--release]
#                                         [--ch PATH] [--prefault] [--rig-mem SIZE] [--rig-cpus N]
#                                         [--ram "anon huge"] [--table-from LOG]
#   --sizes "..."  guest sizes (default "512M 2G")
#   --ram "..."    backings: anon (private anonymous) and/or huge (hugetlbfs); default both
#   --rounds N     runs of each configuration, keeping the best (default 1); with more than
#                  one, the ratios of the medians too
#   --release      the release build of viaduct (default: debug, as the tests use)
#   --ch PATH      also run this cloud-hypervisor binary (built by you; see docs/memory.md)
#   --prefault     add viaduct with prefault=on and with prefault=off (the default row leaves
#                  it unsaid: viaduct then prefaults large private RAM before the DMA map)
#   --rig-mem SIZE the rig host's memory (default: twice the largest guest + 2 GiB: the
#                  hugepage pool and an anonymous guest side by side)
#   --rig-cpus N   the rig host's CPUs (default 2: viaduct's prefault threads; the guest and
#                  QEMU's guest have 1 vCPU either way)
#   --table-from LOG  no rig run: print the table of an earlier run's serial log (one that
#                  failed part-way, say), with the same --sizes, --ram, --ch and --prefault
#   --no-scrub     do not run rig-scrub before each timed run. By default it writes to the
#                  guest's size + 256 MiB of fresh memory (and, with huge runs, to the free
#                  hugepages), outside the timed span, so that no VMM inherits pages on which
#                  the previous guest left code translated by the emulator (slow to write;
#                  resources/rig/scrub.c)
# If the rig run fails part-way (docs/rig.md: a rig host that stalls), the table still shows
# what was measured, "-" for the rest, and the script exits non-zero.
# The emulated VT-d gets 48 address bits (cloud-hypervisor does not start with a device at the
# default 39). Files and the serial log are kept in target/rig/bench-memory-start/.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR
source "$(dirname "${BASH_SOURCE[0]}")/../rig/lib.sh"

SIZES="512M 2G" ROUNDS=1 PROFILE=debug CH="" PREFAULT=0 RIG_MEM="" RIG_CPUS=2 RAMS="anon huge" FROM="" SCRUB=1
while [[ $# -gt 0 ]]; do
	case $1 in
	--sizes) SIZES=${2:?}; shift 2 ;;
	--rounds) ROUNDS=${2:?}; shift 2 ;;
	--release) PROFILE=release; shift ;;
	--ch) CH=${2:?}; shift 2 ;;
	--prefault) PREFAULT=1; shift ;;
	--rig-mem) RIG_MEM=${2:?}; shift 2 ;;
	--rig-cpus) RIG_CPUS=${2:?}; shift 2 ;;
	--ram) RAMS=${2:?}; shift 2 ;;
	--table-from) FROM=${2:?}; shift 2 ;;
	--no-scrub) SCRUB=0; shift ;;
	-h | --help) sed -n '2,37p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
	*) rig_die "memory-start.sh: unknown argument '$1' (try --help)" ;;
	esac
done
[[ $ROUNDS =~ ^[1-9][0-9]*$ ]] || rig_die "--rounds wants a whole number"
[[ $RIG_CPUS =~ ^[1-9][0-9]*$ ]] || rig_die "--rig-cpus wants a whole number"
for mem in $RAMS; do [[ $mem == anon || $mem == huge ]] || rig_die "--ram takes anon and huge, not '$mem'"; done
[[ -z $FROM || -f $FROM ]] || rig_die "--table-from $FROM: no such file"
[[ -z $CH || -x $CH ]] || rig_die "--ch $CH is not an executable"
mib() { # 512M / 2G -> MiB
	case $1 in
	*G) echo $((${1%G} * 1024)) ;;
	*M) echo "${1%M}" ;;
	*) rig_die "sizes are written like 512M or 2G, not '$1'" ;;
	esac
}
MAX=0
for s in $SIZES; do [[ $(mib "$s") -gt $MAX ]] && MAX=$(mib "$s"); done
RIG_MEM=${RIG_MEM:-$((2 * MAX + 2048))M}

QEMU_BIN=$(command -v qemu-system-x86_64) || rig_die "qemu-system-x86_64 not found (run resources/rig/fetch.sh)"
cd "$REPO_DIR"
OUT=$REPO_DIR/target/rig/bench-memory-start
SERIAL=${FROM:-$OUT/serial.log}
RIG_OK=1 WALL="-"
if [[ -z $FROM ]]; then
	rig_log "building viaduct ($PROFILE)"
	if [[ $PROFILE == release ]]; then cargo build -q --release --bin viaduct; else cargo build -q --bin viaduct; fi
	VIADUCT=$REPO_DIR/target/$PROFILE/viaduct

	rm -rf "$OUT"
	mkdir -p "$OUT"
	truncate -s 64M "$OUT/nvme.img"
	BDF=0000:00:10.0
	DEV=/sys/bus/pci/devices/$BDF/
	CMDLINE="console=ttyS0 quiet viaduct_action=poweroff"

	# One timed run: label, then the command. Prints RIG-BENCH-{START,INIT,END} with uptimes.
	# shellcheck disable=SC2016 # expanded in the rig host
	{
		cat <<-'EOF'
			timed() {
				label=$1; shift
				if [ -n "$SCRUB_MIB" ]; then
					huge=0
					[ -z "$SCRUB_HUGE" ] || huge=$(awk '/^HugePages_Free/ { f = $2 } /^Hugepagesize/ { s = $2 } END { print f * s / 1024 }' /proc/meminfo)
					if scrubbed=$(rig-scrub "$SCRUB_MIB" "$huge"); then
						echo "BENCH-SCRUB| $label: ${scrubbed#RIG-SCRUB=}"
					else
						echo "BENCH-LOG| $label: error: $scrubbed"
					fi
				fi
				echo "RIG-BENCH-START=$label uptime=$(cut -d' ' -f1 /proc/uptime)"
				timeout -s KILL 300 "$@" 2>&1 | while IFS= read -r line; do
					case $line in
					*GUEST-KERNEL=*) echo "RIG-BENCH-INIT=$label uptime=$(cut -d' ' -f1 /proc/uptime)" ;;
					*"DMA-mapped"*"GiB of guest RAM in"*|*prefaulted*|*"devices attached"*|*"entering the kernel"*|*"from the top down"*|*"from the bottom up"*|*"waiting for the DMA map"*)
						echo "BENCH-DETAIL| $label: ${line#*INFO  }" ;;
					*rror*) echo "BENCH-LOG| $label: $line" ;;
					esac
				done
				echo "RIG-BENCH-END=$label uptime=$(cut -d' ' -f1 /proc/uptime)"
			}
		EOF
		echo "rig-vfio-bind $BDF || exit 1"
		[[ $SCRUB == 0 || " $RAMS " != *" huge "* ]] || echo "SCRUB_HUGE=1"
		echo "echo $(((MAX + 64) / 2)) > /proc/sys/vm/nr_hugepages"
		echo "mkdir -p /dev/hugepages && mount -t hugetlbfs none /dev/hugepages"
		echo 'echo "RIG-HUGEPAGES=$(awk '"'"'/^HugePages_Total/ { print $2 }'"'"' /proc/meminfo)"'
		for round in $(seq "$ROUNDS"); do
			for size in $SIZES; do
				m=$(mib "$size")
				# rig-scrub (resources/rig/scrub.c) takes the pages the last VMM freed first.
				[[ $SCRUB == 0 ]] || echo "SCRUB_MIB=$((m + 256))"
				G="--kernel /guest/vmlinux --initramfs /guest/initramfs.cpio.gz --cmdline \"$CMDLINE\" --cpus boot=1 --serial tty --console off"
				Q="$QEMU_BIN -accel kvm -M q35 -cpu host -smp 1 -L /fw -display none -vga none -monitor none -serial stdio -no-reboot -nic none -kernel /guest/vmlinux -initrd /guest/initramfs.cpio.gz -append \"$CMDLINE\""
				for mem in $RAMS; do
					vm="size=$size" qm="-m $m"
					if [[ $mem == huge ]]; then
						vm="size=$size,hugepages=on"
						qm="-m $m -object memory-backend-file,id=ram,size=${m}M,mem-path=/dev/hugepages,share=on,prealloc=off -machine memory-backend=ram"
					fi
					runs=("timed viaduct-$mem-$size-dev viaduct -v $G --memory $vm --device path=$DEV"
						"timed viaduct-$mem-$size-nodev viaduct -v $G --memory $vm")
					if [[ $PREFAULT == 1 ]]; then
						runs+=("timed viaduct-prefault-$mem-$size-dev viaduct -v $G --memory $vm,prefault=on --device path=$DEV"
							"timed viaduct-noprefault-$mem-$size-dev viaduct -v $G --memory $vm,prefault=off --device path=$DEV")
					fi
					runs+=("timed qemu-$mem-$size-dev $Q $qm -device vfio-pci,host=$BDF"
						"timed qemu-$mem-$size-nodev $Q $qm")
					if [[ -n $CH ]]; then
						runs+=("timed ch-$mem-$size-dev cloud-hypervisor $G --memory $vm --device path=$DEV"
							"timed ch-$mem-$size-nodev cloud-hypervisor $G --memory $vm")
					fi
					# Each round starts with another VMM: the first run after a change of size pays
					# for memory the rig host has not used yet, and no VMM should always be the one.
					n=${#runs[@]}
					for i in $(seq 0 $((n - 1))); do
						echo "${runs[$(((i + 2 * (round - 1)) % n))]}"
					done
				done
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
	extra=()
	[[ -z $CH ]] || extra=(--binary "$CH=/usr/bin/cloud-hypervisor")
	START=$SECONDS
	VIADUCT_RIG_SMP=$RIG_CPUS VIADUCT_RIG_MEM=$RIG_MEM VIADUCT_RIG_IOMMU=aw-bits=48 "$RIG_DIR/run.sh" --viaduct "$VIADUCT" \
		--binary "$QEMU_BIN=/usr/bin/qemu-system-x86_64" "${extra[@]}" \
		--scenario "$OUT/scenario.sh" --log "$OUT/serial.log" --timeout 5400 --stall 300 \
		--file "$(firmware bios-256k.bin)" --file "$(firmware kvmvapic.bin)" \
		--file "$(firmware linuxboot_dma.bin)" --file "$(firmware pvh.bin)" -- \
		-drive "file=$OUT/nvme.img,if=none,id=nva,format=raw" \
		-device nvme,drive=nva,serial=nva,bus=pcie.0,addr=0x10 >/dev/null || RIG_OK=0
	WALL=$((SECONDS - START))
fi

# times LABEL WHAT PICK: of LABEL's exec->WHAT (INIT or END) times in seconds, the best
# (smallest) with PICK=best, the median (the mean of the middle two for an even count) with
# PICK=median. Under emulation one lucky round can decide "best"; the median cannot.
times() {
	tr -d '\r' <"$SERIAL" | awk -v label="$1" -v what="$2" -v pick="$3" '
		function up(line) { sub(/.*uptime=/, "", line); return line + 0 }
		index($0, "RIG-BENCH-START=" label " ") { s = up($0) }
		index($0, "RIG-BENCH-" what "=" label " ") { v[n++] = up($0) - s }
		END {
			if (n == 0) exit
			for (i = 1; i < n; i++)
				for (j = i; j > 0 && v[j - 1] > v[j]; j--) { t = v[j]; v[j] = v[j - 1]; v[j - 1] = t }
			if (pick == "best") printf "%.2f", v[0]
			else printf "%.2f", n % 2 ? v[int(n / 2)] : (v[n / 2 - 1] + v[n / 2]) / 2
		}'
}
best() { times "$1" "$2" best; }
median() { times "$1" "$2" median; }
# a / b; "-" when either was not measured. A start cost can come out at or below zero in the
# noise: "none" when a is (no cost measured), "n/a" when b is (nothing to divide by).
ratio() { [[ -n $1 && -n $2 ]] && awk -v a="$1" -v b="$2" 'BEGIN { if (b <= 0) printf "n/a"; else if (a <= 0) printf "none"; else printf "%.2f", a / b }' || echo "-"; }
minus() { [[ -n $1 && -n $2 ]] && awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a - b }' || echo ""; }

vmms="viaduct qemu"
[[ $PREFAULT == 1 ]] && vmms="viaduct viaduct-prefault viaduct-noprefault qemu"
[[ -n $CH ]] && vmms="$vmms ch"
echo "== exec -> guest init -> exit (s), PVH vmlinux, busybox guest, 1 vCPU, NVMe passed through; $ROUNDS round(s), best; rig host $RIG_CPUS CPU(s), $RIG_MEM, 48-bit VT-d; rig run ${WALL}s =="
scrubs=$(grep -ac 'BENCH-SCRUB|' "$SERIAL" || true)
echo "pages scrubbed (rig-scrub) before $scrubs of $(grep -ac 'RIG-BENCH-START=' "$SERIAL" || true) timed runs"
printf '%-9s %-5s %-17s %8s %8s %8s %8s %10s\n' size ram vmm init exit "init*" "exit*" "pt-cost"
printf '%-9s %-5s %-17s %8s %8s %8s %8s %10s\n' "" "" "" "(dev)" "(dev)" "(nodev)" "(nodev)" "(init)"
for size in $SIZES; do
	for mem in $RAMS; do
		for vmm in $vmms; do
			label=$vmm-$mem-$size
			nodev=$label-nodev
			[[ $vmm == viaduct-*prefault ]] && nodev=viaduct-$mem-$size-nodev
			di=$(best "$label-dev" INIT) de=$(best "$label-dev" END)
			ni=$(best "$nodev" INIT) ne=$(best "$nodev" END)
			printf '%-9s %-5s %-17s %8s %8s %8s %8s %10s\n' "$size" "$mem" "$vmm" "${di:--}" "${de:--}" \
				"${ni:--}" "${ne:--}" "$(minus "$di" "$ni")"
		done
	done
done
echo
echo "ratios (exec->exit with the device; passthrough start cost = init with - init without):"
for size in $SIZES; do
	for mem in $RAMS; do
		v=$(best "viaduct-$mem-$size-dev" END) q=$(best "qemu-$mem-$size-dev" END)
		vc=$(minus "$(best "viaduct-$mem-$size-dev" INIT)" "$(best "viaduct-$mem-$size-nodev" INIT)")
		qc=$(minus "$(best "qemu-$mem-$size-dev" INIT)" "$(best "qemu-$mem-$size-nodev" INIT)")
		line="$size $mem: viaduct/qemu exit $(ratio "$v" "$q"), start cost $(ratio "$vc" "$qc")"
		if [[ -n $CH ]]; then
			c=$(best "ch-$mem-$size-dev" END)
			cc=$(minus "$(best "ch-$mem-$size-dev" INIT)" "$(best "ch-$mem-$size-nodev" INIT)")
			line="$line; viaduct/ch exit $(ratio "$v" "$c"), start cost $(ratio "$vc" "$cc")"
		fi
		echo "$line"
		if ((ROUNDS > 1)); then
			v=$(median "viaduct-$mem-$size-dev" END) q=$(median "qemu-$mem-$size-dev" END)
			vc=$(minus "$(median "viaduct-$mem-$size-dev" INIT)" "$(median "viaduct-$mem-$size-nodev" INIT)")
			qc=$(minus "$(median "qemu-$mem-$size-dev" INIT)" "$(median "qemu-$mem-$size-nodev" INIT)")
			line="$size $mem, median of the rounds: viaduct/qemu exit $(ratio "$v" "$q"), start cost $(ratio "$vc" "$qc")"
			[[ -z $CH ]] || c=$(median "ch-$mem-$size-dev" END)
			[[ -z $CH ]] || line="$line; viaduct/ch exit $(ratio "$v" "$c")"
			echo "$line (viaduct $v s, qemu $q s${CH:+, ch $c s})"
		fi
	done
done
echo "($PROFILE build, $(git -C "$REPO_DIR" describe --always --dirty); $("$QEMU_BIN" --version | head -n1))"
echo
echo "viaduct's own timings (-v), per run:"
grep -a 'BENCH-DETAIL|' "$SERIAL" | tr -d '\r' | sed 's/^.*BENCH-DETAIL| /  /' || true
errors=$(grep -a 'BENCH-LOG|' "$SERIAL" | tr -d '\r' || true)
[[ -z $errors ]] || { echo "errors:"; echo "$errors"; }
echo "serial log: $SERIAL"
if [[ $RIG_OK == 0 ]]; then
	echo "the rig run failed part-way (see above and the log's RIG-STALL lines): \"-\" was not measured" >&2
	exit 1
fi
