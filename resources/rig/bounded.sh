#!/bin/sh
# rig-bounded SECS COMMAND [ARGS...]: runs COMMAND in the rig host (L2) for at most SECS seconds,
# like `timeout -s KILL SECS`, and exits with its status (137 when it had to be killed). Before
# the kill it prints, for each thread of COMMAND, what the thread was doing: its state, the
# kernel function it waits in, its kernel stack and how much CPU it used in the last second. A
# hung guest then says which: vCPU threads in kvm_vcpu_halt/kvm_vcpu_block with no CPU used (the
# guest is idle, waiting for an interrupt), in futex_wait (the VMM waits for itself), or running;
# and, from KVM's kvm_exit trace event over that second, which exits the vCPUs took at which
# guest RIP. Each of those lines starts with "RIG-HANG| " so tests can tell it from the guest's
# output. When COMMAND fails, the guest RIPs at which a vCPU of its shut down (a triple fault)
# follow on "RIG-SHUTDOWN| " lines. host-init.sh switches kvm_exit on, filtered to shutdowns.
secs=${1:?rig-bounded: SECS COMMAND...}
shift
trace=/sys/kernel/tracing
exit_event=$trace/events/kvm/kvm_exit
# COMMAND's output is ours; when it is a file, the guest's GUEST-KTEXT= line is in it.
out=$(readlink /proc/$$/fd/1 2>/dev/null)

# The guest RIPs ("count rip" lines on stdin) under the heading $2, each on a line starting with
# $1, with the function at the same offset from _text in the rig host's kernel, which the guest
# runs too; the guest's _text is its GUEST-KTEXT= line. Kernel text lies in one 1 GiB window,
# so the low 32 bits of each address (awk's numbers are doubles) place it.
name_rips() {
	gtext=""
	[ -f "$out" ] && gtext=$(sed -n 's/.*GUEST-KTEXT=\([0-9a-f]*\).*/\1/p' "$out" | tail -n 1)
	echo "$1 $2 (count, RIP, function; the guest's _text: ${gtext:-unknown}):"
	cat >/tmp/rig-bounded-rips.$$
	[ -s /tmp/rig-bounded-rips.$$ ] || return 0
	awk -v gtext="${gtext:-0}" -v prefix="$1" '
		function low(s,  i, v) { v = 0; s = tolower(substr(s, length(s) - 7))
			for (i = 1; i <= length(s); i++) v = v * 16 + index("0123456789abcdef", substr(s, i, 1)) - 1
			return v }
		FNR == NR { count[NR] = $1; rip[NR] = $2; rips = NR; next }
		$2 ~ /^[tT]$/ { a[++n] = low($1); name[n] = $3; if ($3 == "_text") htext = low($1) }
		END { for (r = 1; r <= rips; r++) {
				label = ""
				if (gtext != "0" && htext != "") {
					want = low(rip[r]) - low(gtext) + htext; best = -1
					for (i = 1; i <= n; i++) if (a[i] <= want && a[i] > best) { best = a[i]; bn = name[i] }
					if (best >= 0) label = sprintf("%s+0x%x", bn, want - best)
				}
				printf "%s     %s 0x%s %s\n", prefix, count[r], rip[r], label } }' \
		/tmp/rig-bounded-rips.$$ /proc/kallsyms 2>/dev/null
	rm -f /tmp/rig-bounded-rips.$$
}

# "count rip" of the kvm_exit lines on stdin, most frequent first.
exit_rips() {
	sed -n 's/.* kvm_exit: .* rip 0x\([0-9a-f]*\).*/\1/p' | sort | uniq -c | sort -rn | head -n 8
}

shutdowns() { grep ' kvm_exit: .* reason shutdown ' "$trace/trace" 2>/dev/null; }
shutdowns_before=$(shutdowns | wc -l)

# A background job reads /dev/null unless told otherwise: hand it our stdin through fd 4.
exec 4<&0
"$@" 0<&4 4<&- &
pid=$!
(
	waited=0
	while [ "$waited" -lt "$secs" ]; do
		sleep 1
		kill -0 "$pid" 2>/dev/null || exit 0
		waited=$((waited + 1))
	done
	say() { echo "RIG-HANG| $*"; }
	cpu() { cut -d' ' -f14,15 "/proc/$pid/task/$1/stat" 2>/dev/null | awk '{print $1 + $2}'; }
	say "$1 still running after ${secs}s; its threads, then SIGKILL:"
	before=""
	for task in /proc/"$pid"/task/*; do before="$before ${task##*/}:$(cpu "${task##*/}")"; done
	# For that second, every kvm_exit of COMMAND's threads: which exits a spinning vCPU takes
	# and at which guest RIP, whether it faults on the same page again and again (npf, with
	# the guest-physical address in info2), or takes no exit at all. Only the filter changes:
	# switching an event on or off would patch the kernel's text beside the running VM.
	traced=""
	if [ -w "$exit_event/filter" ]; then
		# host-init.sh's filter (shutdowns only), put back afterwards.
		kept=$(cat "$exit_event/filter")
		: >"$trace/trace"
		(cd /proc/"$pid"/task && echo *) >"$trace/set_event_pid" &&
			echo 0 >"$exit_event/filter" && traced=1
	fi
	sleep 1
	if [ -n "$traced" ]; then
		[ "$kept" = none ] && kept=0
		echo "$kept" >"$exit_event/filter"
		: >"$trace/set_event_pid"
		grep -v '^#' "$trace/trace" >/tmp/rig-bounded-trace.$$
		say "KVM exits of its threads in that second, by reason:"
		sed -n 's/.* kvm_exit: vcpu [0-9]* reason \([a-z_0-9]*\) .*/\1/p' /tmp/rig-bounded-trace.$$ |
			sort | uniq -c | sed 's/^/RIG-HANG|     /'
		say "the last 24 of them:"
		tail -n 24 /tmp/rig-bounded-trace.$$ | sed 's/^/RIG-HANG|     /'
		exit_rips </tmp/rig-bounded-trace.$$ | name_rips "RIG-HANG|" "guest RIPs at those exits"
		rm -f /tmp/rig-bounded-trace.$$
	fi
	for task in /proc/"$pid"/task/*; do
		tid=${task##*/}
		was=$(echo "$before" | tr ' ' '\n' | sed -n "s/^$tid://p")
		now=$(cpu "$tid")
		say "thread $tid $(cat "$task/comm" 2>/dev/null) state $(cut -d' ' -f3 "$task/stat" 2>/dev/null)" \
			"wchan $(cat "$task/wchan" 2>/dev/null) cpu-ticks-last-second $((${now:-0} - ${was:-0}))"
		sed 's/^/RIG-HANG|     /' "$task/stack" 2>/dev/null
	done
	kill -KILL "$pid" 2>/dev/null
) 2>/dev/null 4<&- &
watchdog=$!
wait "$pid"
status=$?
kill "$watchdog" 2>/dev/null
if [ "$status" -ne 0 ]; then
	shutdowns | tail -n +$((shutdowns_before + 1)) >/tmp/rig-bounded-shutdowns.$$
	if [ -s /tmp/rig-bounded-shutdowns.$$ ]; then
		sed 's/^ */RIG-SHUTDOWN| /' /tmp/rig-bounded-shutdowns.$$
		exit_rips </tmp/rig-bounded-shutdowns.$$ | name_rips "RIG-SHUTDOWN|" "guest RIPs of those shutdowns"
	fi
	rm -f /tmp/rig-bounded-shutdowns.$$
fi
exit "$status"
