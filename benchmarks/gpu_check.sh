#!/usr/bin/env bash
# The CUDA paths no CPU test reaches, for a machine with a GPU; writes a markdown report as it goes.
#
#     bash benchmarks/gpu_check.sh [--report PATH.md] [PART...]      (no PART: all of them, in this order)
#
# Parts (each step under `timeout`; a part's timeouts add up to 300 s or less; times are estimates for one H100,
# not yet measured):
#   amp           fp16, bf16 and fp32 training of the tiny Swin through main.py: the log names the precision on
#                 cuda, the train loss is finite and falls over 3 epochs, fp16's checkpoint holds a loss scale,
#                 fp32 runs without TF32                                                          ~1.5 min (max 270 s)
#   resume        a checkpoint written by a CPU run, resumed with --amp-dtype fp16 on CUDA: starts at epoch 1,
#                 fp16, loss finite and falling, a loss scale in its last checkpoint             ~0.7 min (max 150 s)
#   ddp           torchrun --nproc_per_node 2 over NCCL (NCCL_DEBUG=VERSION shows it); SKIPPED with one GPU,
#                 where main.py makes no process group                                     ~0.7 min (max 150 s)
#   compile       --compile training: dynamo and inductor compile the forward and backward graphs (fresh
#                 inductor cache), loss finite and falling                                     ~1.5 min (max 200 s)
#   compile_eval  --eval compiled by default on CUDA agrees with TEST.COMPILE off              ~1.5 min (max 270 s)
#   memory        Swin-T at batch 64: peak training memory with --use-checkpoint below without ~1.2 min (max 280 s)
#   sync          host synchronisations of engine.train_one_epoch (torch's sync debug mode)     ~0.3 min (max 100 s)
#   bench64       benchmarks/bench_swin.py --batch 64 beside timm and torchvision (3 rounds)   ~2 min (max 280 s)
#   bench256      the same at --batch 256                                                      ~2.5 min (max 280 s)
# All of it: about 10-11 minutes. Under a 600 s limit per command, run it in four commands, e.g.
#     bash benchmarks/gpu_check.sh amp resume ddp
#     bash benchmarks/gpu_check.sh compile compile_eval sync
#     bash benchmarks/gpu_check.sh memory bench64
#     bash benchmarks/gpu_check.sh bench256
# (compile_eval evaluates the compile or amp part's checkpoint from the same command, else trains one first).
#
# Each step ends PASS, FAILED (with why) or SKIPPED (with why: no CUDA device, one GPU for NCCL, the budget); its
# line is printed and appended to the report when it ends. Exit status 1 when a step FAILED, 0 otherwise (skips
# alone exit 0), 2 on a wrong argument.
# Report: $OUT/gpu_check.md when $OUT is set, else --report PATH (or a PATH ending in .md), else
# output/gpu_check/gpu_check.md; a new section is appended at each invocation. Logs: gpu_check_logs/ beside it.
# Environment: PYTHON (default .venv/bin/python when present, else python3); GPU_CHECK_BUDGET=SECONDS skips the
# steps that could not end within that many seconds of the start; GPU_CHECK_FAIL=ID[,ID] replaces those steps'
# commands by `false` (to see a failure end to end); GPU_CHECK_ON_CPU=1 runs the amp part on the CPU instead of
# skipping it (a dry run of its commands and checks: fp16 must FAIL there, a CPU runs it in fp32);
# GPU_CHECK_WORK=DIR keeps the runs' outputs there (default: a temporary folder, removed at the end).
set -u -o pipefail
cd "$(dirname "$0")/.." || exit 2
GC=benchmarks/gpu_check
# shellcheck source=benchmarks/gpu_check/lib.sh
source "$GC/lib.sh"
# shellcheck source=benchmarks/gpu_check/parts.sh
source "$GC/parts.sh"

ALL_PARTS=(amp resume ddp compile compile_eval memory sync bench64 bench256)
usage() {
    sed -n '2,/^set -u/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'
}

GIVEN_REPORT=""
PARTS=()
while [ $# -gt 0 ]; do
    case $1 in
        -h|--help) usage; exit 0 ;;
        --report) [ $# -ge 2 ] || { echo "--report needs a path" >&2; exit 2; }; GIVEN_REPORT=$2; shift ;;
        --report=*) GIVEN_REPORT=${1#--report=} ;;
        *.md) GIVEN_REPORT=$1 ;;
        *)
            if [[ " ${ALL_PARTS[*]} " == *" $1 "* ]]; then
                PARTS+=("$1")
            else
                echo "unknown part '$1'; the parts are: ${ALL_PARTS[*]}" >&2
                exit 2
            fi ;;
    esac
    shift
done
[ ${#PARTS[@]} -gt 0 ] || PARTS=("${ALL_PARTS[@]}")

if [ -n "${OUT:-}" ]; then
    REPORT=$OUT/gpu_check.md
    [ -z "$GIVEN_REPORT" ] || echo "note: \$OUT is set, so the report goes to $REPORT, not $GIVEN_REPORT"
else
    REPORT=${GIVEN_REPORT:-output/gpu_check/gpu_check.md}
fi
mkdir -p "$(dirname "$REPORT")" || exit 2
LOGS=$(cd "$(dirname "$REPORT")" && pwd)/gpu_check_logs
mkdir -p "$LOGS" || exit 2
if [ -n "${GPU_CHECK_WORK:-}" ]; then
    WORK=$GPU_CHECK_WORK
    mkdir -p "$WORK" || exit 2
else
    WORK=$(mktemp -d -t gpu_check.XXXXXX) || exit 2
    trap 'rm -rf "$WORK"' EXIT
fi
if [ -n "${PYTHON:-}" ]; then
    PY=$PYTHON
elif [ -x .venv/bin/python ]; then
    PY=.venv/bin/python
else
    PY=python3
fi
BUDGET=${GPU_CHECK_BUDGET:-0}
STARTED=$SECONDS

# What this machine has: the CUDA device count decides what runs.
ENV_LINE=$("$PY" -c "
import torch
n = torch.cuda.device_count() if torch.cuda.is_available() else 0
names = ', '.join(torch.cuda.get_device_name(i) for i in range(n)) or 'no CUDA device'
print(n)
print(f'torch {torch.__version__} (CUDA {torch.version.cuda}), {n} CUDA device(s): {names}')
" 2>&1)
PROBE_RC=$?
if [ "$PROBE_RC" -eq 0 ]; then
    GPUS=$(printf '%s\n' "$ENV_LINE" | head -1)
    ENV_LINE=$(printf '%s\n' "$ENV_LINE" | tail -1)
    NO_CUDA="no CUDA device visible (torch.cuda.is_available() is False)"
else
    GPUS=0
    ENV_LINE="$PY could not import torch: $(printf '%s\n' "$ENV_LINE" | tail -1)"
    NO_CUDA="torch did not import"
fi
COMMIT=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
git diff --quiet HEAD -- . 2>/dev/null || COMMIT="$COMMIT with uncommitted changes"

[ -s "$REPORT" ] || printf '# GPU check (benchmarks/gpu_check.sh)\n' > "$REPORT"
{
    printf '\n## %s UTC: %s\n\n' "$(date -u '+%Y-%m-%d %H:%M')" "${PARTS[*]}"
    printf -- '- %s\n- %s, commit %s\n- logs: %s\n' "$ENV_LINE" "$(hostname)" "$COMMIT" "$LOGS"
} >> "$REPORT"
echo "GPU check: ${PARTS[*]}; $ENV_LINE"
echo "report: $REPORT (written as each step ends); logs: $LOGS"
if [ "$PROBE_RC" -ne 0 ]; then
    part_header environment "python and torch"
    STEP_ID=environment STEP_NAME="$PY imports torch" STEP_T0=$SECONDS
    record FAILED "$ENV_LINE"
fi

for part in "${PARTS[@]}"; do
    "part_$part"
done

SUMMARY="$N_PASS passed, $N_FAILED failed${FAILED_IDS:+ (${FAILED_IDS# })}, $N_SKIPPED skipped${SKIPPED_IDS:+ \
(${SKIPPED_IDS# })} in $((SECONDS - STARTED))s"
printf '\n**%s**\n' "$SUMMARY" >> "$REPORT"
echo "== $SUMMARY"
echo "report: $REPORT"
[ "$N_FAILED" -eq 0 ]
