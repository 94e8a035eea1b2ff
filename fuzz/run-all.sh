#!/bin/bash
# Run every fuzz target under fuzz/ for SECONDS each (default 60), one after the other, and
# print a table: target, seconds, inputs executed, crashes, corpus size.
#
#   fuzz/run-all.sh [SECONDS-PER-TARGET] [TARGET...]
#
# Not part of CI. Needs atheris (`pip install atheris==3.0.0`, the `fuzz` extra of
# pyproject.toml) in the Python that runs it: $PYTHON, else /opt/sifbox/venv/bin/python,
# else python3. $FUZZ_ARGS adds libFuzzer options (e.g. FUZZ_ARGS=-jobs=2).
#
# Each target runs with -rss_limit_mb=2048 -timeout=10 (a small hostile input that takes
# seconds or gigabytes is a bug too). A crash stops libFuzzer, so the target is started again
# for the time that is left: `crashes` counts the inputs saved under fuzz/artifacts/TARGET/
# (crash-*, timeout-*, oom-*, slow-unit-*) during this run; replay one with
# `python fuzz/fuzz_TARGET.py fuzz/artifacts/TARGET/crash-...`. New corpus inputs go to
# fuzz/work/TARGET/ (ignored by git); seeds stay in fuzz/corpus/TARGET/. The table is also
# written to fuzz/work/results.tsv; each target's log to fuzz/work/TARGET.log.
set -u
cd "$(dirname "$0")/.."
SECONDS_PER_TARGET=${1:-60}
shift $(( $# > 0 ? 1 : 0 ))
case $SECONDS_PER_TARGET in
    '' | *[!0-9]*) echo "usage: fuzz/run-all.sh [SECONDS-PER-TARGET] [TARGET...]" >&2; exit 2 ;;
esac
if [ -z "${PYTHON:-}" ]; then
    PYTHON=/opt/sifbox/venv/bin/python
    [ -x "$PYTHON" ] || PYTHON=python3
fi
if ! "$PYTHON" -c 'import atheris' 2>/dev/null; then
    echo "fuzz/run-all.sh: atheris is not installed for $PYTHON (pip install atheris==3.0.0)" >&2
    exit 2
fi
if [ $# -gt 0 ]; then
    targets=("$@")
else
    targets=()
    for f in fuzz/fuzz_*.py; do
        t=${f#fuzz/fuzz_}
        targets+=("${t%.py}")
    done
fi

mkdir -p fuzz/work
results=fuzz/work/results.tsv
printf 'target\tseconds\tinputs\tcrashes\tcorpus\n' > "$results"
total_inputs=0
total_crashes=0
for t in "${targets[@]}"; do
    script=fuzz/fuzz_$t.py
    if [ ! -f "$script" ]; then
        echo "fuzz/run-all.sh: no target $script" >&2
        exit 2
    fi
    work=fuzz/work/$t
    artifacts=fuzz/artifacts/$t
    log=fuzz/work/$t.log
    mkdir -p "$work" "$artifacts"
    before=$(find "$artifacts" -type f | wc -l)
    : > "$log"
    inputs=0
    start=$(date +%s)
    left=$SECONDS_PER_TARGET
    while [ "$left" -gt 0 ]; do
        # shellcheck disable=SC2086 # FUZZ_ARGS is a list of options
        "$PYTHON" "$script" -max_total_time="$left" -print_final_stats=1 ${FUZZ_ARGS:-} \
            -artifact_prefix="$artifacts/" "$work" "fuzz/corpus/$t" >> "$log" 2>&1
        runs=$(grep -a '^stat::number_of_executed_units:' "$log" | tail -1 | awk '{print $2}')
        if [ -z "$runs" ]; then
            echo "fuzz/run-all.sh: $t did not run, see $log" >&2
            break
        fi
        inputs=$(( inputs + runs ))
        # Count each run once: mark its stats as read.
        sed -i 's/^stat::number_of_executed_units:/stat::counted_units:/' "$log"
        left=$(( SECONDS_PER_TARGET - ($(date +%s) - start) ))
    done
    crashes=$(( $(find "$artifacts" -type f | wc -l) - before ))
    corpus=$(find "$work" "fuzz/corpus/$t" -type f | wc -l)
    printf '%s\t%s\t%s\t%s\t%s\n' "$t" "$(( $(date +%s) - start ))" "$inputs" "$crashes" "$corpus" >> "$results"
    total_inputs=$(( total_inputs + inputs ))
    total_crashes=$(( total_crashes + crashes ))
done
printf 'total\t-\t%s\t%s\t-\n' "$total_inputs" "$total_crashes" >> "$results"
column -t -s $'\t' "$results"
[ "$total_crashes" -eq 0 ]
