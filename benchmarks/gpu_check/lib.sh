# shellcheck shell=bash
# Step machinery of benchmarks/gpu_check.sh (sourced by it): each step starts, runs its commands under `timeout`,
# is checked, and ends as one line PASS / FAILED / SKIPPED, appended to the report and printed as it ends.
#
# Uses, set by the driver: REPORT, LOGS, GPUS, NO_CUDA, STARTED (driver's $SECONDS at its start), BUDGET (seconds,
# 0 for none), GPU_CHECK_FAIL (step ids whose commands are replaced by `false`, to see a failure end to end).

N_PASS=0
N_FAILED=0
N_SKIPPED=0
FAILED_IDS=""
SKIPPED_IDS=""
STEP_ID=""
STEP_NAME=""
STEP_T0=0
RUN_RC=0
RUN_TIMEOUT=0

_cell() {  # a table cell: one line, pipes escaped, at most 400 characters
    local text=${1//$'\n'/ }
    text=${text//|/\\|}
    printf '%s' "${text:0:400}"
}

part_header() {  # part_header NAME DESCRIPTION: the part's heading and table header in the report
    printf '\n### %s: %s\n\n| step | check | result | s | figures |\n| --- | --- | --- | --- | --- |\n' \
        "$1" "$2" >> "$REPORT"
    printf '== part %s: %s\n' "$1" "$2"
}

record() {  # record STATUS FIGURES: ends the current step
    local status=$1 figures=$2 seconds=$((SECONDS - STEP_T0))
    printf '| %s | %s | %s | %s | %s |\n' "$STEP_ID" "$(_cell "$STEP_NAME")" "**$status**" "$seconds" \
        "$(_cell "$figures")" >> "$REPORT"
    printf '[%s] %s (%ss): %s\n' "$status" "$STEP_ID" "$seconds" "$figures"
    case $status in
        PASS) N_PASS=$((N_PASS + 1)) ;;
        FAILED) N_FAILED=$((N_FAILED + 1)); FAILED_IDS+=" $STEP_ID" ;;
        SKIPPED) N_SKIPPED=$((N_SKIPPED + 1)); SKIPPED_IDS+=" $STEP_ID" ;;
    esac
}

injected() {  # whether GPU_CHECK_FAIL names the current step
    [[ ",${GPU_CHECK_FAIL:-}," == *",$STEP_ID,"* ]]
}

# step_start ID NAME TIMEOUT [SKIP_REASON]: begins a step whose commands take at most TIMEOUT seconds in all.
# Returns 1, the step recorded SKIPPED, when SKIP_REASON is given (it cannot run here) or the budget is too short.
step_start() {
    STEP_ID=$1 STEP_NAME=$2 STEP_T0=$SECONDS
    local timeout=$3 reason=${4:-}
    if injected; then
        printf -- '-- %s: %s (GPU_CHECK_FAIL: its commands are replaced by false)\n' "$STEP_ID" "$STEP_NAME"
        return 0
    fi
    if [ -n "$reason" ]; then
        record SKIPPED "$reason"
        return 1
    fi
    local left=$((BUDGET - (SECONDS - STARTED)))
    if [ "$BUDGET" -gt 0 ] && [ "$left" -lt "$timeout" ]; then
        record SKIPPED "not started: ${left}s of GPU_CHECK_BUDGET=${BUDGET}s left and its timeout is ${timeout}s"
        return 1
    fi
    printf -- '-- %s: %s (timeout %ss) ...\n' "$STEP_ID" "$STEP_NAME" "$timeout"
}

# run_timed TIMEOUT LOG COMMAND...: COMMAND under `timeout`, stdout and stderr to LOG; RUN_RC its exit status
# (124: timed out). Under GPU_CHECK_FAIL naming this step the command is `false`.
run_timed() {
    RUN_TIMEOUT=$1
    local log=$2
    shift 2
    if injected; then
        set -- false
    fi
    printf '$ %s\n' "$*" > "$log"
    timeout --kill-after=15 "$RUN_TIMEOUT" "$@" >> "$log" 2>&1 < /dev/null
    RUN_RC=$?
    return "$RUN_RC"
}

# step_failed_run LOG [WHAT]: ends the step FAILED after a command that did not succeed, with why.
step_failed_run() {
    local log=$1 what=${2:-}
    [ -n "$what" ] && what="$what: "
    if [ "$RUN_RC" -eq 124 ] || [ "$RUN_RC" -eq 137 ]; then
        record FAILED "${what}timed out after ${RUN_TIMEOUT}s (log: $log)"
        return
    fi
    local line
    line=$(grep -E 'Error|error:|ERROR|Traceback|refus|[Ff]ailed' "$log" | grep -v '^\$ ' | tail -1)
    [ -n "$line" ] || line=$(grep -v '^\$ ' "$log" | tail -1)
    [ -n "$line" ] || line="(no output)"
    if injected; then
        line="$line (GPU_CHECK_FAIL replaced the command by false)"
    fi
    record FAILED "${what}exit $RUN_RC: $line (log: $log)"
}

# step_check COMMAND...: ends the step PASS when the checker COMMAND (check_run.py) exits 0, else FAILED; the
# checker's last line is the figures.
step_check() {
    local out rc
    out=$(timeout --kill-after=5 60 "$@" 2>&1 < /dev/null)
    rc=$?
    out=$(printf '%s\n' "$out" | tail -1)
    if [ "$rc" -eq 0 ]; then
        record PASS "$out"
    elif [ "$rc" -eq 124 ]; then
        record FAILED "the check itself timed out after 60s"
    else
        record FAILED "$out"
    fi
}
