#!/bin/sh
# rig-vfio-bind: hands PCI devices of the rig host (L2) to vfio-pci, for passthrough tests.
# Installed in L2 as /usr/bin/rig-vfio-bind; runs under busybox sh.
#
# Usage: rig-vfio-bind [--host] DEVICE...
#        rig-vfio-bind --list
#   DEVICE   a BDF (0000:00:10.0, or 00:10.0 for domain 0) or vendor:device in hex (1b36:0010,
#            every matching device)
#   --host   leave the devices that follow on their host driver (only report them)
#   --list   report every PCI device with its IOMMU group and driver
#
# For each device it prints
#   RIG-VFIO-DEVICE=<bdf> id=<vendor:device> group=<n> driver=<driver or none>
# and, once per group it touched,
#   RIG-VFIO-GROUP=<n> members=<bdf>:<driver>,<bdf>:<driver>,...
# Binding is driver_override=vfio-pci, unbind from the current driver, bind to vfio-pci. When a
# device cannot be bound, or /dev/vfio/<group> does not appear, it prints "RIG-ERROR: ..." (which
# fails the rig run) and exits 1.
export PATH=/usr/bin:/bin

# On stderr, so that it reaches the console from inside $(...) too; callers check the status.
fail() {
	echo "RIG-ERROR: rig-vfio-bind: $*" >&2
	exit 1
}

# The BDFs that "$1" names.
resolve() {
	case $1 in
	*:*:*.*) bdf=$1 ;;
	*:*.*) bdf=0000:$1 ;;
	*:*)
		found=
		for dev in /sys/bus/pci/devices/*; do
			[ "$(cut -c3- "$dev/vendor"):$(cut -c3- "$dev/device")" = "$1" ] || continue
			echo "${dev##*/}"
			found=1
		done
		[ -n "$found" ] || fail "no PCI device with vendor:device $1"
		return
		;;
	*) fail "'$1' is neither a BDF nor vendor:device" ;;
	esac
	[ -e "/sys/bus/pci/devices/$bdf" ] || fail "no PCI device $bdf"
	echo "$bdf"
}

driver_of() {
	if [ -e "/sys/bus/pci/devices/$1/driver" ]; then
		basename "$(readlink "/sys/bus/pci/devices/$1/driver")"
	else
		echo none
	fi
}

group_of() {
	[ -e "/sys/bus/pci/devices/$1/iommu_group" ] ||
		fail "$1 has no IOMMU group (is the IOMMU on? L2 needs intel_iommu=on and L1 an intel-iommu device)"
	basename "$(readlink "/sys/bus/pci/devices/$1/iommu_group")"
}

id_of() {
	echo "$(cut -c3- "/sys/bus/pci/devices/$1/vendor"):$(cut -c3- "/sys/bus/pci/devices/$1/device")"
}

report_device() {
	group=$(group_of "$1") || exit 1
	echo "RIG-VFIO-DEVICE=$1 id=$(id_of "$1") group=$group driver=$(driver_of "$1")"
}

report_group() {
	members=
	for dev in "/sys/kernel/iommu_groups/$1/devices"/*; do
		bdf=${dev##*/}
		members="$members${members:+,}$bdf:$(driver_of "$bdf")"
	done
	echo "RIG-VFIO-GROUP=$1 members=$members"
}

bind_vfio() {
	bdf=$1 dev=/sys/bus/pci/devices/$1
	[ -d /sys/bus/pci/drivers/vfio-pci ] || fail "vfio-pci is not loaded (see RIG-NOTE lines)"
	[ "$(driver_of "$bdf")" = vfio-pci ] && return 0
	echo vfio-pci >"$dev/driver_override" || fail "cannot set driver_override of $bdf"
	if [ -e "$dev/driver" ]; then
		echo "$bdf" >"$dev/driver/unbind" || fail "cannot unbind $bdf from $(driver_of "$bdf")"
	fi
	echo "$bdf" >/sys/bus/pci/drivers/vfio-pci/bind 2>/dev/null || true
	[ "$(driver_of "$bdf")" = vfio-pci ] || fail "$bdf did not bind to vfio-pci (driver: $(driver_of "$bdf"))"
	group=$(group_of "$bdf") || exit 1
	waited=0
	while [ ! -c "/dev/vfio/$group" ] && [ "$waited" -lt 50 ]; do
		sleep 0.1
		waited=$((waited + 1))
	done
	[ -c "/dev/vfio/$group" ] || fail "$bdf is bound to vfio-pci but /dev/vfio/$group did not appear"
}

if [ "$1" = --list ]; then
	for dev in /sys/bus/pci/devices/*; do
		bdf=${dev##*/}
		group=none
		[ -e "$dev/iommu_group" ] && group=$(basename "$(readlink "$dev/iommu_group")")
		echo "RIG-PCI=$bdf id=$(id_of "$bdf") class=$(cat "$dev/class") group=$group driver=$(driver_of "$bdf")"
	done
	exit 0
fi
[ $# -gt 0 ] || fail "usage: rig-vfio-bind [--host] DEVICE... | --list"

host=0 groups=
for arg in "$@"; do
	if [ "$arg" = --host ]; then
		host=1
		continue
	fi
	bdfs=$(resolve "$arg") || exit 1
	for bdf in $bdfs; do
		[ "$host" = 1 ] || bind_vfio "$bdf"
		report_device "$bdf"
		group=$(group_of "$bdf") || exit 1
		case " $groups " in *" $group "*) ;; *) groups="$groups $group" ;; esac
	done
done
for group in $groups; do
	report_group "$group"
done
