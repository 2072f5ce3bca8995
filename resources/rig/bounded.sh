#!/bin/sh
# rig-bounded SECS COMMAND [ARGS...]: runs COMMAND in the rig host (L2) for at most SECS seconds,
# like `timeout -s KILL SECS`, and exits with its status (137 when it had to be killed). Before
# the kill it prints, for each thread of COMMAND, what the thread was doing: its state, the
# kernel function it waits in, its kernel stack and how much CPU it used in the last second. A
# hung guest then says which: vCPU threads in kvm_vcpu_halt/kvm_vcpu_block with no CPU used (the
# guest is idle, waiting for an interrupt), in futex_wait (the VMM waits for itself), or running;
# and, from KVM's trace events over that second, which exits the vCPUs took at which guest RIP.
# Each line starts with "RIG-HANG| " so tests can tell it from the guest's output.
secs=${1:?rig-bounded: SECS COMMAND...}
shift
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
	# The guest RIPs of kvm_exit events, most frequent first, each named by the function at the
	# same offset from _text in the rig host's kernel (the guest runs the same kernel): the
	# guest's _text is its GUEST-KTEXT= line, found when COMMAND's output is a file. Kernel
	# text lies in one 1 GiB window, so the low 32 bits of each address (awk's numbers are
	# doubles) place it.
	guest_rips() {
		out=$(readlink "/proc/$pid/fd/1" 2>/dev/null)
		gtext=""
		[ -f "$out" ] && gtext=$(sed -n 's/.*GUEST-KTEXT=\([0-9a-f]*\).*/\1/p' "$out" | tail -n 1)
		say "guest RIPs at kvm_exit (count, RIP, function in the same kernel by GUEST-KTEXT=${gtext:-unknown}):"
		sed -n 's/.* kvm_exit: .* rip 0x\([0-9a-f]*\).*/\1/p' "$1" | sort | uniq -c | sort -rn | head -n 8 >/tmp/rig-hang-rips
		[ -s /tmp/rig-hang-rips ] || return 0
		awk -v gtext="${gtext:-0}" '
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
					printf "RIG-HANG|     %s 0x%s %s\n", count[r], rip[r], label } }' \
			/tmp/rig-hang-rips /proc/kallsyms 2>/dev/null
	}
	cpu() { cut -d' ' -f14,15 "/proc/$pid/task/$1/stat" 2>/dev/null | awk '{print $1 + $2}'; }
	say "$1 still running after ${secs}s; its threads, then SIGKILL:"
	before=""
	for task in /proc/"$pid"/task/*; do before="$before ${task##*/}:$(cpu "${task##*/}")"; done
	# For that second, KVM's own trace events of COMMAND's threads: which exits a spinning vCPU
	# takes and at which guest RIP (kvm_exit), or whether it faults on the same page again and
	# again (kvm_page_fault), or takes no exit at all. The keeper's VM never runs, so every
	# event is the VMM's.
	trace=/sys/kernel/tracing
	[ -d "$trace/events" ] || mount -t tracefs tracefs "$trace" 2>/dev/null
	traced=""
	if [ -w "$trace/events/kvm/enable" ]; then
		echo 1024 >"$trace/buffer_size_kb"
		: >"$trace/trace"
		(cd /proc/"$pid"/task && echo *) >"$trace/set_event_pid" && traced=1
		[ -n "$traced" ] && echo 1 >"$trace/events/kvm/enable"
	fi
	sleep 1
	if [ -n "$traced" ]; then
		echo 0 >"$trace/events/kvm/enable"
		say "KVM trace events of its threads in that second, by kind:"
		sed -n 's/.* \(kvm_[a-z_0-9]*\): .*/\1/p' "$trace/trace" | sort | uniq -c | sed 's/^/RIG-HANG|     /'
		say "the last 24 of them:"
		grep -v '^#' "$trace/trace" | tail -n 24 | sed 's/^/RIG-HANG|     /'
		guest_rips "$trace/trace"
		: >"$trace/set_event_pid"
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
exit "$status"
