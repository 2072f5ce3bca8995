#!/bin/sh
# rig-bounded SECS COMMAND [ARGS...]: runs COMMAND in the rig host (L2) for at most SECS seconds,
# like `timeout -s KILL SECS`, and exits with its status (137 when it had to be killed). Before
# the kill it prints, for each thread of COMMAND, what the thread was doing: its state, the
# kernel function it waits in, its kernel stack and how much CPU it used in the last second. A
# hung guest then says which: vCPU threads in kvm_vcpu_halt/kvm_vcpu_block with no CPU used (the
# guest is idle, waiting for an interrupt), in futex_wait (the VMM waits for itself), or running.
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
	cpu() { cut -d' ' -f14,15 "/proc/$pid/task/$1/stat" 2>/dev/null | awk '{print $1 + $2}'; }
	say "$1 still running after ${secs}s; its threads, then SIGKILL:"
	before=""
	for task in /proc/"$pid"/task/*; do before="$before ${task##*/}:$(cpu "${task##*/}")"; done
	sleep 1
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
