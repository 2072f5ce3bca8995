#!/bin/sh
# /init of the L3 guest: the Linux that viaduct boots inside the rig host.
#
# It reports what the guest sees on its console (ttyS0), one "GUEST-<NAME>=<value>" line per fact,
# then does what viaduct_action= on the kernel command line asks:
#   poweroff (default) -> poweroff -f
#   reboot             -> reboot -f
#   panic              -> sysrq crash; the kernel panics, pvpanic tells the VMM
#   hold               -> print GUEST-HOLDING=1 and wait until the VMM is stopped from outside
# viaduct_marker=<token> is echoed back as GUEST-MARKER=<token>, so a test knows the guest it
# booted is the one that answered.
#
# viaduct_action= may also be a comma-separated list of steps, run in order; the guest powers off
# after the last one unless that is reboot, panic or hold. The passthrough steps (see docs/rig.md):
#   nvme-io     read the marker in sector 0 of /dev/nvme0n1 (GUEST-NVME-MARKER=), write
#               viaduct_write=<token> to sector 1 and read it back (GUEST-NVME-WROTE=), read
#               viaduct_nvme_mib=<N> MiB with O_DIRECT if asked, report the nvme interrupts
#               (GUEST-NVME-IRQS=<sum>, GUEST-IRQ=<line>, GUEST-NVME-IRQ-MODE=msix|msi|intx)
#   bar-move    move the NVMe's BAR0 around from inside the guest (up 1 MiB, up 2 MiB, decode
#               off, back to the start, decode on) reading its version register at each place
#               (GUEST-BAR-VS-*=, see bar_move below), then remove + rescan it; run nvme-io
#               after it
#   ivshmem     write viaduct_pattern=<token> through /dev/mem into BAR2 of the ivshmem device
#               (1af4:1110), near its start and in its last page, and read it back
#               (GUEST-IVSHMEM-BAR2=<start>,<size>, GUEST-IVSHMEM-READBACK=<offset>:<token>);
#               viaduct_ivshmem_touch=<N> adds N reads spread over the BAR (GUEST-IVSHMEM-TOUCHED=)
#   p2p         QEMU's edu device DMAs from the ivshmem device's BAR2 into its buffer and back
#               to another offset of that BAR (device-to-device DMA; see p2p below)
#   hotplug     wait for an NVMe to be hot-added, run nvme-io on it, wait for it to be hot-removed
#   pci-report  nothing more than the PCI report every boot prints
#   rng         the guest's hardware RNG (GUEST-RNG-CURRENT=, GUEST-RNG-AVAILABLE=) and 256 bytes
#               read from /dev/hwrng (GUEST-HWRNG-HEX=)
#   hvc0-write  write GUEST-HVC0-MARKER=<viaduct_marker> to /dev/hvc0 (GUEST-HVC0-WRITTEN=1)
#   hvc0-read   read one line from /dev/hvc0 (GUEST-HVC0-INPUT=)
# viaduct_console=hvc0 moves the init's own input and output to /dev/hvc0 (the virtio console)
# once the modules are loaded, echo off, and prints GUEST-CONSOLE=hvc0 there first.
#   disk-io     virtio block devices (see docs/rig.md, "Disk tests"): writes viaduct_write=<token>
#               to the first and last sector of viaduct_disk_rw=<vdX> with O_DIRECT and reads it
#               back (GUEST-DISK-WROTE=<dev>,<token>, GUEST-DISK-WROTE-LAST=<dev>,<token>); tries
#               to write to viaduct_disk_ro=<vdX> (GUEST-DISK-RO-FLAG=<dev>,<0|1>,
#               GUEST-DISK-RO-MARKER=<dev>,<token before>, GUEST-DISK-RO-WRITE=<dev>,refused|accepted,
#               GUEST-DISK-RO-ERROR=<dev>,<dd's error>, GUEST-DISK-RO-AFTER=<dev>,<token after>);
#               reads viaduct_disk_mib=<N> MiB of viaduct_disk_read=<vdX> with O_DIRECT, bs=1M
#               (GUEST-DISK-READ-MIB=, GUEST-DISK-READ-SECONDS=, GUEST-DISK-READ-MBPS=)
#   disk-bench  runs /bin/disk-bench (added to the initramfs by resources/bench/disk-io.sh) on
#               viaduct_bench_disk=<vdX>: 4 KiB O_DIRECT sequential/random reads/writes over the
#               first viaduct_bench_mib=<N> MiB, viaduct_bench_seconds=<S> each
#               (GUEST-BENCH=<test>,<MB/s>,<IOPS>)
# Every boot prints GUEST-BLK=<name>,<512-byte sectors>,<ro 0|1>,<serial> per virtio disk.
#   net-io      virtio-net NICs (see docs/network.md, "Rig test"): viaduct_net=<mac>,<ip>/<len>,
#               <peer>[+<mac>,…] names each NIC by MAC, gives it the address, pings the peer
#               (GUEST-NET-PING=<mac>,<replies>), fetches http://<peer>:8080/host.txt
#               (GUEST-NET-FROM-HOST=<mac>,<body>), serves viaduct_net_token=<token> as
#               http://<ip>/guest.txt, and waits up to 120 s for http://<peer>:8080/done.txt
#               (GUEST-NET-HOST-DONE=<mac>,1|0). viaduct_net_send_mib=<N> then sends N MiB to
#               <peer>:5001 with nc and reports GUEST-NET-SEND-SECONDS= (the benchmark).
# Every boot prints GUEST-PCIDEV=<bdf>,<vendor>:<device>,<class> and GUEST-BAR=<bdf>,<index>,
# <start>,<end>,<flags> for each PCI device, and with viaduct_dump_config=<bdf|vendor:device>
# GUEST-CONFIG=<config space bytes 0x00-0xff, 512 hex digits>. A step that cannot be done prints
# GUEST-ERROR=<why> and the guest goes on (it never waits more than a minute for a device).
export PATH=/bin

mount -t devtmpfs devtmpfs /dev 2>/dev/null
# /dev/console cannot be opened when the console= device does not exist yet (console=hvc0:
# virtio_console is a module); a failed exec redirection would end init, so test it first.
if (: </dev/console) 2>/dev/null; then exec </dev/console >/dev/console 2>&1; fi
mount -t proc proc /proc
mount -t sysfs sysfs /sys

# The pvpanic modules (and anything else the build listed), dependencies first.
while read -r module; do
	[ -n "$module" ] || continue
	insmod "/lib/modules/$module" || echo "GUEST-WARNING=insmod ${module##*/} failed"
done </etc/guest-modules

# viaduct_console=hvc0: everything from here on goes to and comes from /dev/hvc0 (the VMM's
# virtio console), without echo, so that what the VMM types does not mix with the report.
console_dev=
for word in $(cat /proc/cmdline); do
	case $word in viaduct_console=*) console_dev=${word#*=} ;; esac
done
if [ -n "$console_dev" ]; then
	# Wait for the node without opening it: the last close of a tty drops the input that
	# reached it, which would lose what the VMM sent before the guest listened. insmod probed
	# the device already, so the node is usable once it exists.
	waited=0
	while [ ! -c "/dev/$console_dev" ] && [ "$waited" -lt 30 ]; do
		sleep 1
		waited=$((waited + 1))
	done
	if [ -c "/dev/$console_dev" ]; then
		exec <"/dev/$console_dev" >"/dev/$console_dev" 2>&1
		stty -echo
		echo "GUEST-CONSOLE=$console_dev"
	else
		echo "GUEST-ERROR=viaduct_console: no /dev/$console_dev after ${waited}s"
	fi
fi

cmdline_value() {
	# shellcheck disable=SC2013 # the command line is one line of words
	for word in $(cat /proc/cmdline); do
		case $word in "$1"=*) echo "${word#*=}" ;; esac
	done
}

count_online_cpus() {
	online=$(cat /sys/devices/system/cpu/online 2>/dev/null)
	if [ -z "$online" ]; then
		grep -c '^processor' /proc/cpuinfo
		return
	fi
	n=0
	for range in $(echo "$online" | tr ',' ' '); do
		case $range in
		*-*) n=$((n + ${range#*-} - ${range%-*} + 1)) ;;
		*) n=$((n + 1)) ;;
		esac
	done
	echo "$n"
}

pvpanic_devices() {
	found=
	for dev in /sys/bus/platform/drivers/pvpanic-mmio/*:*; do
		[ -e "$dev" ] && found="$found${found:+,}${dev##*/}"
	done
	echo "${found:-none}"
}

# PCI domains the guest enumerated, e.g. "0000,0001".
pci_domains() {
	for dev in /sys/bus/pci/devices/*; do
		[ -e "$dev" ] && echo "${dev##*/}" | cut -d: -f1
	done | sort -u | tr '\n' ',' | sed 's/,$//'
}

# The BDFs of the PCI devices matching "$1": a BDF (dddd:bb:dd.f) or vendor:device (hex, no 0x).
pci_find() {
	case $1 in
	*:*:*) [ -e "/sys/bus/pci/devices/$1" ] && echo "$1" ;;
	*:*)
		for dev in /sys/bus/pci/devices/*; do
			[ -e "$dev/vendor" ] || continue
			[ "$(cut -c3- "$dev/vendor"):$(cut -c3- "$dev/device")" = "$1" ] && echo "${dev##*/}"
		done
		;;
	esac
}

# GUEST-PCIDEV and GUEST-BAR lines for every PCI device (BARs 0-5 and the ROM, non-empty only).
pci_report() {
	for dev in /sys/bus/pci/devices/*; do
		[ -e "$dev/vendor" ] || continue
		bdf=${dev##*/}
		echo "GUEST-PCIDEV=$bdf,$(cut -c3- "$dev/vendor"):$(cut -c3- "$dev/device"),$(cat "$dev/class")"
		index=0
		while read -r start end flags; do
			[ "$index" -le 6 ] || break
			if [ "$((end))" -ne 0 ]; then echo "GUEST-BAR=$bdf,$index,$start,$end,$flags"; fi
			index=$((index + 1))
		done <"$dev/resource"
	done
}

# GUEST-CONFIG=<hex> of the first 256 bytes of config space of the device viaduct_dump_config names.
dump_config() {
	spec=$(cmdline_value viaduct_dump_config)
	[ -n "$spec" ] || return 0
	bdf=$(pci_find "$spec" | head -n1)
	if [ -z "$bdf" ]; then
		echo "GUEST-ERROR=viaduct_dump_config: no PCI device '$spec'"
		return 0
	fi
	echo "GUEST-CONFIG-BDF=$bdf"
	echo "GUEST-CONFIG=$(od -An -v -tx1 -N256 "/sys/bus/pci/devices/$bdf/config" | tr -d ' \n')"
}

# Prints the first run of printable token characters in file or device $1 ($2 = dd options).
read_token() {
	# shellcheck disable=SC2086 # $2 is a list of dd options
	dd if="$1" $2 2>/dev/null | tr '\000' '\n' | head -n1 | tr -cd 'A-Za-z0-9._=-' | head -c 128
}

# Writes the 32-bit value $2 little-endian as one aligned dword at byte offset $1 of config file $3.
config_write_dword() {
	bytes=""
	for shift in 0 8 16 24; do
		bytes="$bytes\\$(printf %o $((($2 >> shift) & 0xff)))"
	done
	# shellcheck disable=SC2059 # the format is the octal escapes built above
	printf "$bytes" | dd of="$3" bs=4 seek=$(($1 / 4)) count=1 conv=notrunc 2>/dev/null
}

# Writes the NVMe's 64-bit BAR0 of config file $2 as an OS reassigning resources does: low
# dword, then high dword.
bar0_write() {
	config_write_dword 16 $(($1 & 0xfffffff0)) "$2"
	config_write_dword 20 $(($1 >> 32)) "$2"
}

# The NVMe version register (VS, BAR offset 8) through /dev/mem, with BAR0 at $1.
nvme_vs() { devmem $(($1 + 8)) 32; }

# The bar-move step: the guest moves the NVMe's 64-bit BAR0 around the way an OS reassigning
# resources does (driver unbound, BAR rewritten low dword then high dword) and reads the
# controller's version register (VS) through /dev/mem at each place:
#   - decode on, up 1 MiB and up 2 MiB: VS answers at the new address, nothing at the old one
#     (GUEST-BAR-VS-OLD-BEFORE=, GUEST-BAR-VS-AT-<n>=, GUEST-BAR-VS-LEFT-<n>=);
#   - Memory Space cleared: the BAR reads all-ones where it is (GUEST-BAR-VS-DECODE-OFF=);
#   - moved back to its first address while decode is off: still all-ones there
#     (GUEST-BAR-VS-OFF-MOVED=); Memory Space set again: VS answers at the first address and
#     not at the last one (GUEST-BAR-VS-BACK=, GUEST-BAR-VS-LEFT-BACK=).
# Then the kernel rediscovers the device (remove + rescan; it assigns the BAR again), and the
# nvme-io step after this one must still work.
bar_move() {
	bdf=$(for dev in /sys/bus/pci/devices/*; do
		[ "$(cat "$dev/class" 2>/dev/null)" = 0x010802 ] && echo "${dev##*/}"
	done | head -n1)
	if [ -z "$bdf" ]; then
		echo "GUEST-ERROR=bar-move: no NVMe controller in the guest"
		return 1
	fi
	dev=/sys/bus/pci/devices/$bdf
	first=$(awk 'NR == 1 { print $1 }' "$dev/resource")
	[ -e "$dev/driver" ] && echo "$bdf" >"$dev/driver/unbind"
	config_write_dword 4 6 "$dev/config" # command: memory decode + bus master
	echo "GUEST-BAR-BEFORE=$first"
	echo "GUEST-BAR-VS-OLD-BEFORE=$(nvme_vs "$first")"
	prev=$first
	for n in 1 2; do
		to=$((first + n * 0x100000))
		bar0_write "$to" "$dev/config"
		printf 'GUEST-BAR-MOVED-TO-%s=0x%016x\n' "$n" "$to"
		echo "GUEST-BAR-VS-AT-$n=$(nvme_vs "$to")"
		echo "GUEST-BAR-VS-LEFT-$n=$(nvme_vs "$prev")"
		prev=$to
	done
	config_write_dword 4 4 "$dev/config" # command: bus master only, memory decode off
	echo "GUEST-BAR-VS-DECODE-OFF=$(nvme_vs "$prev")"
	bar0_write "$first" "$dev/config"
	echo "GUEST-BAR-VS-OFF-MOVED=$(nvme_vs "$first")"
	config_write_dword 4 6 "$dev/config"
	echo "GUEST-BAR-VS-BACK=$(nvme_vs "$first")"
	echo "GUEST-BAR-VS-LEFT-BACK=$(nvme_vs "$prev")"
	echo 1 >"$dev/remove"
	echo 1 >/sys/bus/pci/rescan
	waited=0
	while [ ! -e "/sys/bus/pci/devices/$bdf/resource" ] && [ "$waited" -lt 30 ]; do
		sleep 1
		waited=$((waited + 1))
	done
	echo "GUEST-BAR-AFTER-RESCAN=$(awk 'NR == 1 { print $1 }' "/sys/bus/pci/devices/$bdf/resource")"
}

# Waits up to 30 s until block device $1 can be opened and read. Its node appears before the
# kernel has finished adding the disk (a driver that probes asynchronously, such as nvme after a
# rescan, races with us here): opening it in between fails with ENXIO ("No such device or
# address"). Prints GUEST-BLK-OPEN-WAITED=<dev>,<seconds> when it had to wait.
wait_openable() {
	waited=0
	while ! dd if="$1" of=/dev/null bs=4096 count=1 iflag=direct 2>/tmp/open.err; do
		if [ "$waited" -ge 30 ]; then
			echo "GUEST-ERROR=cannot read $1 after ${waited}s: $(tr -s ' \n' '__' </tmp/open.err)"
			return 1
		fi
		sleep 1
		waited=$((waited + 1))
	done
	[ "$waited" -eq 0 ] || echo "GUEST-BLK-OPEN-WAITED=${1##*/},$waited"
}

# The nvme-io step: DMA reads and writes through the (passed-through) NVMe controller.
nvme_io() {
	nvme_bdf=$(for dev in /sys/bus/pci/devices/*; do
		[ "$(cat "$dev/class" 2>/dev/null)" = 0x010802 ] && echo "${dev##*/}"
	done | head -n1)
	if [ -z "$nvme_bdf" ]; then
		echo "GUEST-ERROR=nvme-io: no NVMe controller (PCI class 010802) in the guest"
		return 1
	fi
	echo "GUEST-NVME-BDF=$nvme_bdf"
	# The driver probes the controller asynchronously; under nested emulation that takes a while.
	waited=0
	while [ ! -b /dev/nvme0n1 ] && [ "$waited" -lt 60 ]; do
		sleep 1
		waited=$((waited + 1))
	done
	if [ ! -b /dev/nvme0n1 ]; then
		echo "GUEST-ERROR=nvme-io: no /dev/nvme0n1 after ${waited}s (driver: $(readlink "/sys/bus/pci/devices/$nvme_bdf/driver"))"
		return 1
	fi
	wait_openable /dev/nvme0n1 || return 1
	# O_DIRECT with a 4 KiB block: the data comes from the device by DMA, not from the page cache.
	echo "GUEST-NVME-MARKER=$(read_token /dev/nvme0n1 'bs=4096 count=1 iflag=direct')"
	write=$(cmdline_value viaduct_write)
	if [ -n "$write" ]; then
		printf '%s' "$write" | dd of=/dev/nvme0n1 bs=512 seek=1 count=1 conv=sync,fsync 2>/dev/null ||
			echo "GUEST-ERROR=nvme-io: writing sector 1 failed"
		sync
		dd if=/dev/nvme0n1 bs=4096 count=1 iflag=direct 2>/dev/null >/tmp/sector01
		echo "GUEST-NVME-WROTE=$(read_token /tmp/sector01 'bs=512 skip=1 count=1')"
	fi
	mib=$(cmdline_value viaduct_nvme_mib)
	if [ -n "$mib" ]; then
		disk_mib=$(($(cat /sys/block/nvme0n1/size) / 2048))
		left=$mib
		t0=$(cut -d' ' -f1 /proc/uptime)
		while [ "$left" -gt 0 ] && [ "$disk_mib" -gt 0 ]; do
			chunk=$((left < disk_mib ? left : disk_mib))
			dd if=/dev/nvme0n1 of=/dev/null bs=1M count="$chunk" iflag=direct 2>/dev/null || {
				echo "GUEST-ERROR=nvme-io: reading $chunk MiB failed"
				break
			}
			left=$((left - chunk))
		done
		echo "GUEST-NVME-READ-MIB=$((mib - left))"
		echo "GUEST-NVME-READ-SECONDS=$(awk -v a="$t0" -v b="$(cut -d' ' -f1 /proc/uptime)" 'BEGIN { print b - a }')"
	fi
	# Interrupts: per-CPU counts of every nvme line, and the mode (MSI-X vectors are listed in msi_irqs).
	awk 'NR == 1 { ncpu = NF } / nvme[0-9]/ { for (i = 2; i <= ncpu + 1; i++) sum += $i } END { print "GUEST-NVME-IRQS=" sum + 0 }' /proc/interrupts
	grep ' nvme[0-9]' /proc/interrupts | sed 's/^ *\([0-9]*\): */\1 /; s/  */,/g; s/^/GUEST-IRQ=/'
	mode=intx
	for f in "/sys/bus/pci/devices/$nvme_bdf"/msi_irqs/*; do
		[ -f "$f" ] && mode=$(cat "$f")
	done
	echo "GUEST-NVME-IRQ-MODE=$mode"
}

# The ivshmem step: CPU stores into the device's BAR2 (shared memory on the L1 host).
ivshmem() {
	bdf=$(pci_find 1af4:1110 | head -n1)
	if [ -z "$bdf" ]; then
		echo "GUEST-ERROR=ivshmem: no ivshmem device (1af4:1110) in the guest"
		return 1
	fi
	# shellcheck disable=SC2046 # three words: start end flags
	set -- $(sed -n 3p "/sys/bus/pci/devices/$bdf/resource")
	start=$(($1)) size=$(($2 - $1 + 1))
	if [ "$(($2))" -eq 0 ] || [ "$size" -lt 8192 ]; then
		echo "GUEST-ERROR=ivshmem: $bdf has no usable BAR2 ($*)"
		return 1
	fi
	echo "GUEST-IVSHMEM-BDF=$bdf"
	echo "GUEST-IVSHMEM-BAR2=$(printf '0x%x,0x%x' "$start" "$size")"
	pattern=$(cmdline_value viaduct_pattern)
	pattern=${pattern:-ivshmem-pattern}
	# The first page after the register-free start, and the last page: the whole BAR is mapped.
	for offset in 4096 $((size - 4096)); do
		addr=$((start + offset)) i=0
		for byte in $(printf '%s' "$pattern" | od -An -v -tx1); do
			devmem "$((addr + i))" 8 "0x$byte" >/dev/null || {
				echo "GUEST-ERROR=ivshmem: devmem write at $(printf 0x%x $((addr + i))) failed"
				return 1
			}
			i=$((i + 1))
		done
		back='' i=0
		while [ "$i" -lt "${#pattern}" ]; do
			# shellcheck disable=SC2059 # the format is an octal escape built on purpose
			back=$back$(printf "\\$(printf %o "$(devmem "$((addr + i))" 8)")")
			i=$((i + 1))
		done
		echo "GUEST-IVSHMEM-READBACK=$(printf 0x%x "$offset"):$back"
	done
	# viaduct_ivshmem_touch=N: N more 64-bit reads spread over the BAR, one page each. A VMM
	# that maps the BAR into the guest sees no exits from them; one that emulates it sees N.
	touch=$(cmdline_value viaduct_ivshmem_touch)
	if [ -n "$touch" ] && [ "$touch" -gt 0 ]; then
		step=$(((size / touch) & ~4095)) i=0
		[ "$step" -gt 0 ] || step=4096
		while [ "$i" -lt "$touch" ]; do
			devmem "$((start + (i * step) % size))" 64 >/dev/null || break
			i=$((i + 1))
		done
		echo "GUEST-IVSHMEM-TOUCHED=$i"
	fi
}

# Runs one DMA of QEMU's edu device with BAR0 at $1: $4 bytes from bus address $2 to bus address
# $3, command $5 (1: bus -> edu's buffer, 3: edu's buffer -> bus). Waits up to 10 s for the
# engine (it starts 100 ms after the command, on the device's clock); fails if it never ends.
edu_dma() {
	devmem $(($1 + 0x80)) 64 "$2"
	devmem $(($1 + 0x88)) 64 "$3"
	devmem $(($1 + 0x90)) 64 "$4"
	devmem $(($1 + 0x98)) 64 "$5"
	n=0
	while [ $(($(devmem $(($1 + 0x98)) 64) & 1)) -ne 0 ]; do
		[ "$n" -lt 100 ] || return 1
		sleep 0.1
		n=$((n + 1))
	done
}

# The p2p step: device-to-device DMA between two passed-through devices. QEMU's edu device
# (1234:11e8) copies viaduct_p2p_len=<N> bytes (default 32) from offset 0x2000 of the ivshmem
# device's BAR2 (1af4:1110) into its own buffer, then from the buffer to offset
# viaduct_p2p_dst=<offset> of the same BAR: both DMAs target the other device's BAR, which only
# works if the VMM DMA-mapped that BAR in the IOMMU at its guest address. With viaduct_p2p_move=1
# the guest first moves BAR2 up by its size (the VMM must move the mapping too). Prints
# GUEST-P2P-EDU-BAR0=, GUEST-P2P-SHM-BAR2=<start>,<size>, GUEST-P2P-SHM-MOVED-TO=,
# GUEST-P2P-DMA=done|timeout and GUEST-P2P-READBACK=<hex bytes at the destination, CPU view>.
p2p() {
	edu=$(pci_find 1234:11e8 | head -n1)
	shm=$(pci_find 1af4:1110 | head -n1)
	if [ -z "$edu" ] || [ -z "$shm" ]; then
		echo "GUEST-ERROR=p2p: needs an edu (1234:11e8) and an ivshmem (1af4:1110) device, found '$edu' '$shm'"
		return 1
	fi
	len=$(cmdline_value viaduct_p2p_len)
	len=${len:-32}
	dst_off=$(cmdline_value viaduct_p2p_dst)
	dst_off=${dst_off:-0x3000}
	edu_bar=$(($(awk 'NR == 1 { print $1 }' "/sys/bus/pci/devices/$edu/resource")))
	# shellcheck disable=SC2046 # three words: start end flags
	set -- $(sed -n 3p "/sys/bus/pci/devices/$shm/resource")
	shm_bar=$(($1)) shm_size=$(($2 - $1 + 1))
	printf 'GUEST-P2P-EDU-BAR0=0x%x\n' "$edu_bar"
	printf 'GUEST-P2P-SHM-BAR2=0x%x,0x%x\n' "$shm_bar" "$shm_size"
	# Memory decode for both, bus mastering for edu (the DMA engine).
	config_write_dword 4 6 "/sys/bus/pci/devices/$edu/config"
	config_write_dword 4 2 "/sys/bus/pci/devices/$shm/config"
	if [ "$(cmdline_value viaduct_p2p_move)" = 1 ]; then
		shm_bar=$((shm_bar + shm_size))
		config_write_dword 24 $((shm_bar & 0xfffffff0)) "/sys/bus/pci/devices/$shm/config"
		config_write_dword 28 $((shm_bar >> 32)) "/sys/bus/pci/devices/$shm/config"
		printf 'GUEST-P2P-SHM-MOVED-TO=0x%x\n' "$shm_bar"
	fi
	if edu_dma "$edu_bar" $((shm_bar + 0x2000)) 0x40000 "$len" 1 &&
		edu_dma "$edu_bar" 0x40000 $((shm_bar + dst_off)) "$len" 3; then
		echo "GUEST-P2P-DMA=done"
	else
		echo "GUEST-P2P-DMA=timeout"
	fi
	hex='' i=0
	while [ "$i" -lt "$len" ]; do
		hex=$hex$(printf '%02x' "$(devmem $((shm_bar + dst_off + i)) 8)")
		i=$((i + 1))
	done
	echo "GUEST-P2P-READBACK=$hex"
}

# The BDF of the first NVMe controller (class 010802), if there is one.
nvme_present() {
	for dev in /sys/bus/pci/devices/*; do
		[ "$(cat "$dev/class" 2>/dev/null)" = 0x010802 ] && echo "${dev##*/}" && return
	done
}

# The hotplug step: waits (up to 120 s) for an NVMe controller to appear without any rescan by
# hand (GUEST-HOTPLUG-APPEARED=<bdf>), runs nvme-io on it (GUEST-HOTPLUG-IO-DONE=1), then waits
# (up to 120 s) for it to go away again (GUEST-HOTPLUG-GONE=<bdf>, GUEST-HOTPLUG-LEFT=<devices>).
# With viaduct_hotplug_eject=self the guest ejects it itself through its slot's power file
# (GUEST-HOTPLUG-SELF-EJECT=<slot>) instead of waiting for the host to ask.
hotplug() {
	waited=0
	echo "GUEST-HOTPLUG-WAITING=1"
	while [ -z "$(nvme_present)" ] && [ "$waited" -lt 240 ]; do
		sleep 0.5
		waited=$((waited + 1))
	done
	bdf=$(nvme_present)
	if [ -z "$bdf" ]; then
		echo "GUEST-ERROR=hotplug: no NVMe controller appeared"
		return 1
	fi
	echo "GUEST-HOTPLUG-APPEARED=$bdf"
	nvme_io
	echo "GUEST-HOTPLUG-IO-DONE=1"
	if [ "$(cmdline_value viaduct_hotplug_eject)" = self ]; then
		# The guest ejects the slot itself, as an administrator would.
		slot_dir=
		for s in /sys/bus/pci/slots/*; do
			[ "$(cat "$s/address" 2>/dev/null)" = "${bdf%.*}" ] && slot_dir=$s
		done
		if [ -z "$slot_dir" ]; then
			echo "GUEST-ERROR=hotplug: no slot in /sys/bus/pci/slots for $bdf"
		else
			echo "GUEST-HOTPLUG-SELF-EJECT=${slot_dir##*/}"
			echo 0 >"$slot_dir/power"
		fi
	fi
	waited=0
	while [ -e "/sys/bus/pci/devices/$bdf" ] && [ "$waited" -lt 240 ]; do
		sleep 0.5
		waited=$((waited + 1))
	done
	if [ -e "/sys/bus/pci/devices/$bdf" ]; then
		echo "GUEST-ERROR=hotplug: $bdf did not go away"
		return 1
	fi
	echo "GUEST-HOTPLUG-GONE=$bdf"
	echo "GUEST-HOTPLUG-LEFT=$(ls /sys/bus/pci/devices | tr '\n' ',' | sed 's/,$//')"
}

# GUEST-BLK=<name>,<sectors>,<ro>,<serial> for each virtio block device.
blk_report() {
	for dev in /sys/block/vd*; do
		[ -e "$dev" ] || continue
		echo "GUEST-BLK=${dev##*/},$(cat "$dev/size"),$(cat "$dev/ro"),$(cat "$dev/serial" 2>/dev/null)"
	done
}

# Waits up to 30 s for block device /dev/$1; prints GUEST-ERROR and fails if it does not appear.
wait_blk() {
	waited=0
	while [ ! -b "/dev/$1" ] && [ "$waited" -lt 30 ]; do
		sleep 1
		waited=$((waited + 1))
	done
	[ -b "/dev/$1" ] && { wait_openable "/dev/$1"; return; }
	echo "GUEST-ERROR=disk-io: no /dev/$1 after ${waited}s (virtio disks: $(cd /sys/block && echo vd*))"
	return 1
}

# One line without spaces, for a KEY=value report.
one_word() { tr -s ' \n\t' '___' | sed 's/_*$//' | tr -cd 'A-Za-z0-9._:/=-' | head -c 160; }

# The net-io step: configure each NIC named by its MAC, then talk HTTP both ways with the peer.
# (busybox wget's own -T timeout crashes this static build: `timeout` bounds it instead.)
net_io() {
	token=$(cmdline_value viaduct_net_token)
	mkdir -p /tmp/www
	echo "guest-${token}" >/tmp/www/guest.txt
	httpd -p 80 -h /tmp/www || echo "GUEST-ERROR=net-io: httpd did not start"
	for spec in $(cmdline_value viaduct_net | tr '+' ' '); do
		mac=${spec%%,*}
		rest=${spec#*,}
		addr=${rest%%,*}
		peer=${rest#*,}
		dev=""
		waited=0
		while [ -z "$dev" ] && [ "$waited" -lt 30 ]; do
			for d in /sys/class/net/*; do
				[ "$(cat "$d/address" 2>/dev/null)" = "$mac" ] && dev=${d##*/}
			done
			[ -n "$dev" ] || { sleep 1; waited=$((waited + 1)); }
		done
		if [ -z "$dev" ]; then
			echo "GUEST-ERROR=net-io: no NIC with MAC $mac after ${waited}s ($(ls /sys/class/net | tr '\n' ' '))"
			continue
		fi
		queues=$(ls -d /sys/class/net/"$dev"/queues/rx-* 2>/dev/null | wc -l)
		driver=$(basename "$(readlink /sys/class/net/"$dev"/device/driver)" 2>/dev/null)
		echo "GUEST-NET-IF=$mac,$dev,$driver,rx_queues=$queues"
		ip link set "$dev" up
		ip addr add "$addr" dev "$dev"
		replies=$(ping -c 3 -W 5 "$peer" 2>/dev/null | sed -n 's/.* \([0-9]*\) packets received.*/\1/p')
		echo "GUEST-NET-PING=$mac,${replies:-0}"
		body=$(timeout 10 wget -q -O - "http://$peer:8080/host.txt" 2>/tmp/wget.err) ||
			echo "GUEST-ERROR=net-io: wget from $peer failed: $(one_word </tmp/wget.err)"
		echo "GUEST-NET-FROM-HOST=$mac,$(echo "$body" | one_word)"
	done
	for spec in $(cmdline_value viaduct_net | tr '+' ' '); do
		mac=${spec%%,*}
		peer=${spec##*,}
		finished=0
		waited=0
		while [ "$waited" -lt 120 ]; do
			timeout 5 wget -q -O /dev/null "http://$peer:8080/done.txt" 2>/dev/null && { finished=1; break; }
			sleep 1
			waited=$((waited + 1))
		done
		echo "GUEST-NET-HOST-DONE=$mac,$finished"
	done
	mib=$(cmdline_value viaduct_net_send_mib)
	if [ -n "$mib" ]; then
		peer=$(cmdline_value viaduct_net | tr '+' ' ' | cut -d' ' -f1)
		peer=${peer##*,}
		start=$(cut -d' ' -f1 /proc/uptime)
		dd if=/dev/zero bs=1M count="$mib" 2>/dev/null | nc "$peer" 5001 ||
			echo "GUEST-ERROR=net-io: nc to $peer:5001 failed"
		end=$(cut -d' ' -f1 /proc/uptime)
		echo "GUEST-NET-SEND-MIB=$mib"
		echo "GUEST-NET-SEND-SECONDS=$(echo "$start $end" | awk '{printf "%.2f", $2 - $1}')"
	fi
}

# The disk-io step: writes, a refused write, and timed reads on virtio block devices.
disk_io() {
	token=$(cmdline_value viaduct_write)
	token=${token:-disk-io-token}
	rw=$(cmdline_value viaduct_disk_rw)
	if [ -n "$rw" ] && wait_blk "$rw"; then
		sectors=$(cat "/sys/block/$rw/size")
		last=$((sectors - 1))
		for sector in 0 "$last"; do
			printf '%s' "$token" | dd of="/dev/$rw" bs=512 seek="$sector" count=1 conv=sync,fsync oflag=direct \
				2>/tmp/dd.err || echo "GUEST-ERROR=disk-io: writing sector $sector of $rw failed: $(one_word </tmp/dd.err)"
		done
		sync
		echo "GUEST-DISK-WROTE=$rw,$(read_token "/dev/$rw" 'bs=512 count=1 iflag=direct')"
		echo "GUEST-DISK-WROTE-LAST=$rw,$(read_token "/dev/$rw" "bs=512 skip=$last count=1 iflag=direct")"
	fi
	ro=$(cmdline_value viaduct_disk_ro)
	if [ -n "$ro" ] && wait_blk "$ro"; then
		echo "GUEST-DISK-RO-FLAG=$ro,$(cat "/sys/block/$ro/ro")"
		echo "GUEST-DISK-RO-MARKER=$ro,$(read_token "/dev/$ro" 'bs=512 count=1 iflag=direct')"
		if printf '%s' "$token" | dd of="/dev/$ro" bs=512 count=1 conv=sync,fsync oflag=direct 2>/tmp/dd.err; then
			echo "GUEST-DISK-RO-WRITE=$ro,accepted"
		else
			echo "GUEST-DISK-RO-WRITE=$ro,refused"
			echo "GUEST-DISK-RO-ERROR=$ro,$(one_word </tmp/dd.err)"
		fi
		echo "GUEST-DISK-RO-AFTER=$ro,$(read_token "/dev/$ro" 'bs=512 count=1 iflag=direct')"
	fi
	rd=$(cmdline_value viaduct_disk_read)
	mib=$(cmdline_value viaduct_disk_mib)
	if [ -n "$rd" ] && [ -n "$mib" ] && wait_blk "$rd"; then
		t0=$(cut -d' ' -f1 /proc/uptime)
		if dd if="/dev/$rd" of=/dev/null bs=1M count="$mib" iflag=direct 2>/tmp/dd.err; then
			t1=$(cut -d' ' -f1 /proc/uptime)
			echo "GUEST-DISK-READ-MIB=$mib"
			echo "GUEST-DISK-READ-SECONDS=$(awk -v a="$t0" -v b="$t1" 'BEGIN { print b - a }')"
			echo "GUEST-DISK-READ-MBPS=$(awk -v a="$t0" -v b="$t1" -v m="$mib" 'BEGIN { if (b > a) printf "%.1f", m * 1.048576 / (b - a); else print "inf" }')"
		else
			echo "GUEST-ERROR=disk-io: reading $mib MiB of $rd failed: $(one_word </tmp/dd.err)"
		fi
	fi
}

# The disk-bench step (see resources/bench/disk-io.sh).
disk_bench() {
	dev=$(cmdline_value viaduct_bench_disk)
	[ -x /bin/disk-bench ] || { echo "GUEST-ERROR=disk-bench: no /bin/disk-bench in the initramfs"; return; }
	[ -n "$dev" ] && wait_blk "$dev" || return
	/bin/disk-bench "/dev/$dev" "$(cmdline_value viaduct_bench_mib)" "$(cmdline_value viaduct_bench_seconds)"
}

# virtio-rng: which hardware RNG the kernel uses and 256 bytes from it, as hex
# (GUEST-RNG-CURRENT=, GUEST-RNG-AVAILABLE=, GUEST-HWRNG-HEX=).
rng() {
	hw=/sys/class/misc/hw_random
	waited=0
	while [ "$(cat "$hw/rng_current" 2>/dev/null)" != virtio_rng.0 ] && [ "$waited" -lt 10 ]; do
		sleep 1
		waited=$((waited + 1))
	done
	echo "GUEST-RNG-CURRENT=$(cat "$hw/rng_current" 2>/dev/null || echo none)"
	echo "GUEST-RNG-AVAILABLE=$(tr ' ' ',' <"$hw/rng_available" 2>/dev/null)"
	hex=$(timeout 30 head -c 256 /dev/hwrng 2>/dev/null | od -An -v -tx1 | tr -d ' \n')
	echo "GUEST-HWRNG-HEX=${hex:-none}"
}

# Waits up to 30 s for /dev/hvc0 (the virtio console).
wait_hvc0() {
	waited=0
	while [ ! -c /dev/hvc0 ] && [ "$waited" -lt 30 ]; do
		sleep 1
		waited=$((waited + 1))
	done
	[ -c /dev/hvc0 ] || { echo "GUEST-ERROR=no /dev/hvc0 after 30 s" && return 1; }
}

# hvc0-write: writes GUEST-HVC0-MARKER=<viaduct_marker> to /dev/hvc0 (the report stays where
# it is); hvc0-read: reads one line from /dev/hvc0 (GUEST-HVC0-INPUT=<its token characters>).
hvc0_write() {
	wait_hvc0 || return 0
	echo "GUEST-HVC0-MARKER=$(cmdline_value viaduct_marker)" >/dev/hvc0
	echo "GUEST-HVC0-WRITTEN=1"
}

hvc0_read() {
	wait_hvc0 || return 0
	# With viaduct_console=hvc0 stdin already is /dev/hvc0, held open since the input arrived.
	line=$(timeout 60 head -n1 </dev/hvc0 | tr -cd 'A-Za-z0-9._=-')
	echo "GUEST-HVC0-INPUT=${line:-none}"
}

action=$(cmdline_value viaduct_action)
action=${action:-poweroff}

echo "GUEST-KERNEL=$(uname -r)"
# Where this boot put the kernel (KASLR): rig-bounded names the RIPs of a hung or shut-down
# guest with it.
echo "GUEST-KTEXT=$(sed -n 's/^\([0-9a-f]*\) T _text$/\1/p' /proc/kallsyms)"
echo "GUEST-CPUS=$(count_online_cpus)"
echo "GUEST-CPUS-ONLINE=$(cat /sys/devices/system/cpu/online 2>/dev/null)"
echo "GUEST-MEMTOTAL-KB=$(sed -n 's/^MemTotal: *\([0-9]*\) kB/\1/p' /proc/meminfo)"
echo "GUEST-PVPANIC=$(pvpanic_devices)"
echo "GUEST-PCI-DOMAINS=$(pci_domains)"
echo "GUEST-PCI-DEVICES=$(ls /sys/bus/pci/devices 2>/dev/null | tr '\n' ',' | sed 's/,$//')"
# Root bridge windows from the guest's resource trees ("start-end : PCI Bus dddd:00"), printed
# as GUEST-PCI-MEM=dddd:start-end and GUEST-PCI-IO=dddd:start-end.
sed -n 's/^ *\([0-9a-f]*-[0-9a-f]*\) : PCI Bus \([0-9a-f]*\):.*/GUEST-PCI-MEM=\2:\1/p' /proc/iomem
sed -n 's/^ *\([0-9a-f]*-[0-9a-f]*\) : PCI Bus \([0-9a-f]*\):.*/GUEST-PCI-IO=\2:\1/p' /proc/ioports
echo "GUEST-UPTIME=$(cut -d' ' -f1 /proc/uptime)"
echo "GUEST-MARKER=$(cmdline_value viaduct_marker)"
echo "GUEST-ACTION=$action"

pci_report
dump_config
blk_report

final=poweroff
for step in $(echo "$action" | tr ',' ' '); do
	case $step in
	nvme-io) nvme_io ;;
	bar-move) bar_move ;;
	ivshmem) ivshmem ;;
	p2p) p2p ;;
	hotplug) hotplug ;;
	disk-io) disk_io ;;
	disk-bench) disk_bench ;;
	rng) rng ;;
	hvc0-write) hvc0_write ;;
	hvc0-read) hvc0_read ;;
	net-io) net_io ;;
	pci-report) ;;
	poweroff | reboot | panic | hold) final=$step ;;
	*) echo "GUEST-ERROR=unknown viaduct_action step '$step', powering off" ;;
	esac
done
echo "GUEST-DONE=$action"

# Userspace console output sits in the UART driver's buffer until transmitted; let it drain
# before the kernel stops (TCSADRAIN via stty, then a pause for good measure).
stty onlcr 2>/dev/null
sleep 1

case $final in
poweroff) poweroff -f ;;
reboot) reboot -f ;;
panic)
	echo 1 >/proc/sys/kernel/sysrq
	echo c >/proc/sysrq-trigger
	;;
hold)
	# Stay up until the VMM is stopped from outside (e.g. SIGTERM to viaduct).
	echo "GUEST-HOLDING=1"
	while :; do sleep 60; done
	;;
esac
# Not reached unless the action failed; returning from init would panic the guest.
echo "GUEST-ERROR=action '$final' did not stop the guest"
while :; do sleep 60; done
