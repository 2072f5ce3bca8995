#!/bin/sh
# /init of the L3 guest: the Linux that viaduct boots inside the rig host.
#
# It reports what the guest sees on its console (ttyS0), one "GUEST-<NAME>=<value>" line per fact,
# then does what viaduct_action= on the kernel command line asks:
#   poweroff (default) -> poweroff -f
#   reboot             -> reboot -f
#   panic              -> sysrq crash; the kernel panics, pvpanic tells the VMM
# viaduct_marker=<token> is echoed back as GUEST-MARKER=<token>, so a test knows the guest it
# booted is the one that answered.
export PATH=/bin

mount -t devtmpfs devtmpfs /dev 2>/dev/null
exec </dev/console >/dev/console 2>&1
mount -t proc proc /proc
mount -t sysfs sysfs /sys

# The pvpanic modules (and anything else the build listed), dependencies first.
while read -r module; do
	[ -n "$module" ] || continue
	insmod "/lib/modules/$module" || echo "GUEST-WARNING=insmod ${module##*/} failed"
done </etc/guest-modules

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

action=$(cmdline_value viaduct_action)
action=${action:-poweroff}

echo "GUEST-KERNEL=$(uname -r)"
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

# Userspace console output sits in the UART driver's buffer until transmitted; let it drain
# before the kernel stops (TCSADRAIN via stty, then a pause for good measure).
stty onlcr 2>/dev/null
sleep 1

case $action in
poweroff) poweroff -f ;;
reboot) reboot -f ;;
panic)
	echo 1 >/proc/sys/kernel/sysrq
	echo c >/proc/sysrq-trigger
	;;
*)
	echo "GUEST-ERROR=unknown viaduct_action '$action', powering off"
	poweroff -f
	;;
esac
# Not reached unless the action failed; returning from init would panic the guest.
echo "GUEST-ERROR=action '$action' did not stop the guest"
while :; do sleep 60; done
