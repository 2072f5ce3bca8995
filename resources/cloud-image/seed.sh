#!/usr/bin/env bash
# Makes a NoCloud seed disk: a vfat filesystem labelled "cidata" over the whole disk (no
# partition table, as cloud-localds makes it) holding user-data, meta-data and, if given,
# network-config. Made with mkfs.vfat and mcopy: no loop devices, no mounts, no root needed.
#
# Usage: resources/cloud-image/seed.sh OUT.img USER-DATA [META-DATA [NETWORK-CONFIG]]
#   USER-DATA   a #cloud-config file (or any user-data cloud-init accepts)
#   META-DATA   default: "instance-id: iid-<random>" and "local-hostname: viaduct-cloud"
# cloud-init runs the user-data once per instance-id: give every boot that must run it a new one.
set -euo pipefail

[[ $# -ge 2 && $# -le 4 ]] || {
	sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//' >&2
	exit 2
}
OUT=$1 USER_DATA=$2 META_DATA=${3:-} NETWORK_CONFIG=${4:-}
[[ -f $USER_DATA ]] || { echo "seed.sh: no user-data file '$USER_DATA'" >&2; exit 1; }
for tool in mkfs.vfat:dosfstools mcopy:mtools; do
	command -v "${tool%%:*}" >/dev/null && continue
	[[ $(id -u) -eq 0 ]] || { echo "seed.sh: ${tool%%:*} missing (apt-get install ${tool#*:})" >&2; exit 1; }
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${tool#*:}" >/dev/null 2>&1 ||
		{ echo "seed.sh: apt-get install ${tool#*:} failed" >&2; exit 1; }
done

WORK=$(mktemp -d "${TMPDIR:-/tmp}/viaduct-seed.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
cp "$USER_DATA" "$WORK/user-data"
if [[ -n $META_DATA ]]; then
	cp "$META_DATA" "$WORK/meta-data"
else
	printf 'instance-id: iid-%s%s\nlocal-hostname: viaduct-cloud\n' "$RANDOM" "$RANDOM" >"$WORK/meta-data"
fi
FILES=("$WORK/user-data" "$WORK/meta-data")
if [[ -n $NETWORK_CONFIG ]]; then
	cp "$NETWORK_CONFIG" "$WORK/network-config"
	FILES+=("$WORK/network-config")
fi

rm -f "$OUT"
# 2 MiB: room for the files; -C creates the image file (its size in KiB).
# (mkfs.vfat warns that a lowercase label "might not work on some systems": cloud-init wants it.)
mkfs.vfat -n cidata -C "$OUT" 2048 >"$WORK/mkfs.out" 2>&1 || { cat "$WORK/mkfs.out" >&2; exit 1; }
mcopy -o -i "$OUT" "${FILES[@]}" ::
