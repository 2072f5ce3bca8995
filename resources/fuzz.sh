#!/usr/bin/env bash
# Builds viaduct's fuzz targets (tests/fuzz, cargo-fuzz + libFuzzer) and runs each for a while,
# then prints executions, coverage and corpus size per target.
#
#   bash resources/fuzz.sh [-t SECONDS] [-n RUNS] [-s SANITIZER] [TARGET...]
#
#   -t SECONDS    how long each target runs at most (default 60)
#   -n RUNS       stop a target earlier, after RUNS executions (the long runs in docs/fuzzing.md:
#                 -t 1800 -n 10000000)
#   -s SANITIZER  none (default), address, leak, memory or thread. The targets drive safe Rust,
#                 whose bugs are panics (overflow checks and debug assertions are on) that
#                 libFuzzer catches by itself; AddressSanitizer halves the speed and matters
#                 for unsafe code: use -s address after changing some.
#   TARGET...     which targets (default: all of them, one after another)
#
# Needs the nightly toolchain and cargo-fuzz (rustup toolchain install nightly;
# cargo install cargo-fuzz). The corpus of each target grows in tests/fuzz/corpus/TARGET (not
# committed); tests/fuzz/seeds/TARGET, when present, seeds it. A crash stops that target, leaves
# the input in tests/fuzz/artifacts/TARGET and makes the script exit 1 after the others ran.
# Fuzzers run at the lowest CPU priority (nice 19) so they can share a machine.
# docs/fuzzing.md says what each target covers and records the long runs.
set -uo pipefail
REPO_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO_DIR" || exit 1
FUZZ_DIR=tests/fuzz

SECONDS_EACH=60
SANITIZER=none
RUNS=
while getopts "t:n:s:h" opt; do
	case $opt in
	t) SECONDS_EACH=$OPTARG ;;
	n) RUNS=$OPTARG ;;
	s) SANITIZER=$OPTARG ;;
	h)
		sed -n '2,21p' "$0" | sed 's/^# \{0,1\}//'
		exit 0
		;;
	*)
		echo "usage: bash resources/fuzz.sh [-t SECONDS] [-n RUNS] [-s SANITIZER] [TARGET...] (-h for help)" >&2
		exit 2
		;;
	esac
done
shift $((OPTIND - 1))
[[ $SECONDS_EACH =~ ^[1-9][0-9]*$ ]] || {
	echo "fuzz.sh: -t wants a whole number of seconds, not '$SECONDS_EACH'" >&2
	exit 2
}
[[ -z $RUNS || $RUNS =~ ^[1-9][0-9]*$ ]] || {
	echo "fuzz.sh: -n wants a whole number of executions, not '$RUNS'" >&2
	exit 2
}

command -v cargo-fuzz >/dev/null || {
	echo "fuzz.sh: cargo-fuzz not found: cargo install cargo-fuzz" >&2
	exit 1
}
cargo +nightly --version >/dev/null 2>&1 || {
	echo "fuzz.sh: no nightly toolchain (libFuzzer's instrumentation needs it): rustup toolchain install nightly" >&2
	exit 1
}

ALL=$(cargo +nightly fuzz list --fuzz-dir "$FUZZ_DIR") || exit 1
TARGETS=("$@")
[[ ${#TARGETS[@]} -gt 0 ]] || mapfile -t TARGETS <<<"$ALL"
for t in "${TARGETS[@]}"; do
	grep -qx "$t" <<<"$ALL" || {
		echo "fuzz.sh: no target '$t'; there are: $(echo $ALL)" >&2
		exit 2
	}
done

echo "=== building the fuzz targets"
nice -n 19 cargo +nightly fuzz build --fuzz-dir "$FUZZ_DIR" -s "$SANITIZER" -a 2>&1 | tail -n 3
[[ ${PIPESTATUS[0]} -eq 0 ]] || {
	echo "fuzz.sh: the build failed" >&2
	exit 1
}

LOG_DIR=$FUZZ_DIR/logs
mkdir -p "$LOG_DIR"
RESULTS=()
FAILED=()
for t in "${TARGETS[@]}"; do
	corpus=$FUZZ_DIR/corpus/$t
	mkdir -p "$corpus" "$FUZZ_DIR/artifacts/$t"
	dirs=("$corpus")
	[[ -d $FUZZ_DIR/seeds/$t ]] && dirs+=("$FUZZ_DIR/seeds/$t")
	extra=()
	[[ -f $FUZZ_DIR/dict/$t.dict ]] && extra+=("-dict=$FUZZ_DIR/dict/$t.dict")
	[[ -n $RUNS ]] && extra+=("-runs=$RUNS")
	log=$LOG_DIR/$t.log
	echo "=== $t: ${SECONDS_EACH}s (log: $log)"
	start=$SECONDS
	nice -n 19 cargo +nightly fuzz run --fuzz-dir "$FUZZ_DIR" -s "$SANITIZER" -a "$t" "${dirs[@]}" -- \
		-max_total_time="$SECONDS_EACH" -print_final_stats=1 "${extra[@]}" >"$log" 2>&1
	status=$?
	took=$((SECONDS - start))
	# libFuzzer's last status line: "#RUNS DONE cov: EDGES ft: FEATURES corp: N/SIZE ...".
	line=$(grep -E '^#[0-9]+' "$log" | tail -n 1)
	runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
	cov=$(grep -oE 'cov: [0-9]+' <<<"$line" | awk '{print $2}')
	ft=$(grep -oE 'ft: [0-9]+' <<<"$line" | awk '{print $2}')
	corp=$(grep -oE 'corp: [0-9]+/[0-9A-Za-z]+' <<<"$line" | awk '{print $2}')
	verdict=ok
	if [[ $status -ne 0 ]]; then
		verdict="CRASH (status $status, see $log and $FUZZ_DIR/artifacts/$t)"
		FAILED+=("$t")
	fi
	RESULTS+=("$(printf '%-20s %12s %7s %7s %12s %6ss  %s' "$t" "${runs:-?}" "${cov:-?}" "${ft:-?}" "${corp:-?}" "$took" "$verdict")")
done

echo
printf '%-20s %12s %7s %7s %12s %7s  %s\n' target executions cov ft corpus time result
printf '%s\n' "${RESULTS[@]}"
if [[ ${#FAILED[@]} -gt 0 ]]; then
	echo "=== crashed: ${FAILED[*]}"
	exit 1
fi
