#!/bin/sh
# /init of the rig host (L2): the Linux that QEMU (TCG, -cpu max) runs and in which viaduct runs.
#
# Mounts the usual filesystems, loads KVM (kvm-amd, nested) and VFIO, then runs the caller's
# scenario (/rig/scenario.sh) with its output on the console, prints RIG-SCENARIO-EXIT=<status>
# and powers off. Lines the rig itself prints start with "RIG-"; a line starting with
# "RIG-ERROR:" means the rig, not the scenario, failed.
export PATH=/usr/bin:/bin
export HOME=/root

mount -t devtmpfs devtmpfs /dev 2>/dev/null
exec </dev/console >/dev/console 2>&1
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mkdir -p /dev/pts /dev/shm
mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /dev/shm
mount -t tmpfs tmpfs /run

uptime_s() { cut -d' ' -f1 /proc/uptime; }

rig_fail() {
	echo "RIG-ERROR: $*"
	echo "RIG-FAILED uptime=$(uptime_s)"
	poweroff -f
	sleep 60
}

echo "RIG-L2-INIT uptime=$(uptime_s) kernel=$(uname -r) cpus=$(grep -c '^processor' /proc/cpuinfo)"

if ! grep -qw svm /proc/cpuinfo; then
	rig_fail "the rig host's CPU has no SVM; L1 QEMU must run with -cpu max (or another CPU model with svm)"
fi

# Modules: /etc/rig/modules.required must load (KVM); modules.optional may fail (VFIO).
while read -r module; do
	[ -n "$module" ] || continue
	case ${module##*/} in
	kvm-amd.ko) insmod "/lib/modules/$module" nested=1 ;;
	*) insmod "/lib/modules/$module" ;;
	esac || rig_fail "insmod ${module##*/} failed (see the kernel messages above)"
done </etc/rig/modules.required
while read -r module; do
	[ -n "$module" ] || continue
	insmod "/lib/modules/$module" 2>/dev/null || echo "RIG-NOTE: optional module ${module##*/} not loaded"
done </etc/rig/modules.optional

[ -c /dev/kvm ] || rig_fail "/dev/kvm is missing in the rig host after loading kvm-amd"
nested=$(cat /sys/module/kvm_amd/parameters/nested 2>/dev/null)
case $nested in
1 | Y) ;;
*) rig_fail "kvm_amd nested is '$nested', expected 1" ;;
esac

echo "RIG-KVM=ok nested=$nested"
# A guest's triple fault reaches the VMM as KVM_EXIT_SHUTDOWN after KVM has reset the vCPU
# (SVM), so the registers a VMM logs then are the reset ones. KVM's kvm_exit trace event has
# the RIP the guest shut down at: it is on from here (before any VM, so switching it on
# patches no text beside a running one) with a filter that keeps only that exit (SVM's exit
# code 0x7f), and rig-bounded prints what it kept when its command fails, or widens the filter
# to a hung VMM's threads for one second (bounded.sh).
trace=/sys/kernel/tracing
mount -t tracefs tracefs "$trace" 2>/dev/null
if [ -w "$trace/events/kvm/kvm_exit/filter" ]; then
	echo 256 >"$trace/buffer_size_kb"
	echo 'exit_reason == 127' >"$trace/events/kvm/kvm_exit/filter" &&
		echo 1 >"$trace/events/kvm/kvm_exit/enable" ||
		echo "RIG-NOTE: KVM's kvm_exit trace event could not be switched on"
fi
# One idle VM for the whole run, so that the scenario's VMs start and exit without the kernel
# patching its text live (kvm-keeper.c says why that matters under emulation).
keeper=$(rig-kvm-keeper 2>&1) ||
	rig_fail "rig-kvm-keeper did not start: ${keeper:-no output} (resources/rig/kvm-keeper.c)"
echo "$keeper"
# Every kernel message, unthrottled: a seccomp record (`--seccomp log`) must not be dropped.
echo 0 >/proc/sys/kernel/printk_ratelimit
echo "RIG-SCENARIO-START uptime=$(uptime_s)"
cd /root || rig_fail "no /root"
sh /rig/scenario.sh
status=$?
# System calls a seccomp filter in log mode let through (audit type 1326), for the record.
dmesg | grep 'type=1326' | sed 's/^/RIG-SECCOMP-LOGGED| /'
echo "RIG-SCENARIO-EXIT=$status uptime=$(uptime_s)"
poweroff -f
sleep 60
