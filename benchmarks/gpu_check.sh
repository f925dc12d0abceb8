#!/usr/bin/env bash
# The CUDA paths no CPU test reaches, in one command for a session with a GPU; writes a markdown report.
#
#     bash benchmarks/gpu_check.sh [REPORT.md]      (default: gpu_check_report.md; about 8 minutes on one GPU)
#
# Checks, each recorded PASS / FAIL with its figures, the next running even when one fails:
#   fp16 and bf16 training through main.py (the real engine), a CPU checkpoint resumed into an fp16 run,
#   torchrun with NCCL on every visible GPU (when there are two or more), --compile training and a compiled
#   --eval against the eager one, the peak memory of Swin-T steps with and without --use-checkpoint, host
#   synchronisations of the training step between logging steps (torch's sync debug mode), and
#   benchmarks/bench_swin.py beside timm and torchvision at batch 64 and 256.
set -u
cd "$(dirname "$0")/.."
REPORT=${1:-gpu_check_report.md}
PYTHON=${PYTHON:-python}
WORK=$(mktemp -d)
TINY=(--cfg tests/configs/tiny.yaml --opts DATA.DATASET digits DATA.BATCH_SIZE 64 TRAIN.EPOCHS 2 PRINT_FREQ 5)
FAILED=0

record() {  # record NAME STATUS DETAILS
    printf '| %s | %s | %s |\n' "$1" "$2" "$3" >> "$REPORT"
    [ "$2" = PASS ] || FAILED=$((FAILED + 1))
}

run_check() {  # run_check NAME LOGFILE COMMAND...: PASS on exit 0, with the log's last figures line
    local name=$1 log=$2
    shift 2
    if "$@" > "$log" 2>&1; then
        record "$name" PASS "$(grep -E 'training took|eval on|throughput:|top-1' "$log" | tail -1 | cut -c1-160)"
    else
        record "$name" FAIL "exit $?: $(grep -E '^error:|Error' "$log" | tail -1 | cut -c1-160)"
    fi
}

GPUS=$($PYTHON -c "import torch; print(torch.cuda.device_count())")
{
    echo "# GPU check, $(date -u +%Y-%m-%d\ %H:%M) UTC"
    echo
    echo "$($PYTHON -c "import torch; print(f'torch {torch.__version__}, {torch.cuda.get_device_name(0)}, {torch.cuda.device_count()} GPU(s)')" 2>&1)"
    echo
    echo "| check | result | figures |"
    echo "| --- | --- | --- |"
} > "$REPORT"
if [ "$GPUS" -lt 1 ]; then
    record "a CUDA device" FAIL "none visible"
    exit 1
fi

run_check "fp16 training (GradScaler, fused AdamW)" "$WORK/fp16.log" \
    $PYTHON main.py --output "$WORK/fp16" --amp-dtype fp16 "${TINY[@]}"
run_check "bf16 training" "$WORK/bf16.log" $PYTHON main.py --output "$WORK/bf16" --amp-dtype bf16 "${TINY[@]}"
run_check "fp32 training (--disable_amp, TF32 off)" "$WORK/fp32.log" \
    $PYTHON main.py --output "$WORK/fp32" --disable_amp "${TINY[@]}"

# A checkpoint written on the CPU continues as an fp16 CUDA run.
if $PYTHON main.py --output "$WORK/cpu" --device cpu "${TINY[@]}" TRAIN.EPOCHS 1 > "$WORK/cpu.log" 2>&1; then
    CKPT=$(ls "$WORK"/cpu/*/*/ckpt_epoch_0.pth)
    run_check "CPU checkpoint resumed in fp16 on CUDA" "$WORK/resume.log" \
        $PYTHON main.py --output "$WORK/resumed" --resume "$CKPT" --amp-dtype fp16 "${TINY[@]}"
else
    record "CPU checkpoint resumed in fp16 on CUDA" FAIL "the CPU run failed: $(tail -1 "$WORK/cpu.log")"
fi

if [ "$GPUS" -ge 2 ]; then
    run_check "torchrun, NCCL, $GPUS GPUs" "$WORK/ddp.log" \
        $PYTHON -m torch.distributed.run --standalone --nproc_per_node "$GPUS" main.py --output "$WORK/ddp" "${TINY[@]}"
else
    record "torchrun with NCCL" PASS "skipped: one GPU visible"
fi

run_check "--compile training" "$WORK/compile.log" $PYTHON main.py --output "$WORK/compiled" --compile "${TINY[@]}"
CKPT=$(ls "$WORK"/fp16/*/*/ckpt_epoch_1.pth 2>/dev/null | head -1)
if [ -n "$CKPT" ]; then
    $PYTHON main.py --output "$WORK/eager_eval" --eval --resume "$CKPT" "${TINY[@]}" TEST.COMPILE off \
        > "$WORK/eager_eval.log" 2>&1
    $PYTHON main.py --output "$WORK/compiled_eval" --eval --resume "$CKPT" "${TINY[@]}" > "$WORK/compiled_eval.log" 2>&1
    EAGER=$(grep -o 'eval on .*' "$WORK/eager_eval.log" | tail -1)
    COMPILED=$(grep -o 'eval on .*' "$WORK/compiled_eval.log" | tail -1)
    TIME=$(grep -o 'compiled the model for inference in [0-9.]*s' "$WORK/compiled_eval.log")
    if [ -n "$EAGER" ] && [ "$EAGER" = "$COMPILED" ] && [ -n "$TIME" ]; then
        record "--eval compiled by default on CUDA = eager" PASS "$TIME; $COMPILED"
    else
        record "--eval compiled by default on CUDA = eager" FAIL "eager: $EAGER / compiled: $COMPILED / $TIME"
    fi
fi

# Peak memory of Swin-T training steps at batch 64, with and without gradient checkpointing.
for flag in "" "--use-checkpoint"; do
    $PYTHON main.py --cfg configs/swin_tiny.yaml --output "$WORK/mem$flag" $flag --opts DATA.DATASET fake \
        DATA.BATCH_SIZE 64 TRAIN.EPOCHS 1 TRAIN.WARMUP_EPOCHS 0 PRINT_FREQ 5 > "$WORK/mem$flag.log" 2>&1
    MEM=$(grep -o 'mem [0-9]*MB' "$WORK/mem$flag.log" | tail -1)
    if [ -n "$MEM" ]; then record "Swin-T batch 64 ${flag:-without checkpointing}" PASS "$MEM"; else
        record "Swin-T batch 64 ${flag:-without checkpointing}" FAIL "$(tail -1 "$WORK/mem$flag.log")"; fi
done

# Host synchronisations between logging steps (fused AdamW, bf16 autocast), counted by torch's sync debug mode.
$PYTHON - > "$WORK/sync.log" 2>&1 <<'EOF'
import logging, warnings
import torch
from timm.scheduler import StepLRScheduler
import engine
from runtime import Runtime

rt = Runtime(torch.device("cuda"), amp_dtype=torch.bfloat16)
model = torch.nn.Sequential(torch.nn.Linear(64, 256), torch.nn.GELU(), torch.nn.Linear(256, 10)).cuda()
optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=True)
ctx = engine.TrainContext(model=model, criterion=torch.nn.CrossEntropyLoss(), optimizer=optimizer,
                          scheduler=StepLRScheduler(optimizer, decay_t=100, t_in_epochs=False),
                          scaler=torch.amp.GradScaler("cuda", enabled=False), rt=rt, logger=logging.getLogger("x"),
                          clip_grad=5.0, print_freq=1000)
data = [(torch.randn(32, 64).pin_memory(), torch.randint(0, 10, (32,)).pin_memory()) for _ in range(50)]
engine.train_one_epoch(ctx, data[:2], epoch=0)  # warm-up
torch.cuda.set_sync_debug_mode("warn")
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    engine.train_one_epoch(ctx, data, epoch=1)
torch.cuda.set_sync_debug_mode(0)
syncs = [w for w in caught if "synchroniz" in str(w.message)]
print(f"{len(syncs)} synchronising calls over 50 steps with 2 logging steps and the end")
for w in syncs[:5]:
    print(f"  {w.filename}:{w.lineno} {str(w.message)[:100]}")
EOF
SYNC=$(head -1 "$WORK/sync.log")
case "$SYNC" in
    [0-3]" synchronising"*) record "host syncs of the training step" PASS "$SYNC" ;;
    *) record "host syncs of the training step" FAIL "$SYNC $(sed -n 2,3p "$WORK/sync.log" | tr '\n' ' ')" ;;
esac

for batch in 64 256; do
    if $PYTHON benchmarks/bench_swin.py --device cuda --rounds 5 --iterations 10 --batch "$batch" \
        --modes infer_fp32,infer_bf16,throughput,train_fp32 > "$WORK/bench$batch.log" 2>&1; then
        record "bench_swin, inference batch $batch" PASS "see below"
    else
        record "bench_swin, inference batch $batch" FAIL "$(tail -1 "$WORK/bench$batch.log")"
    fi
    { echo; echo "### bench_swin.py --device cuda --batch $batch"; echo; echo '```'; cat "$WORK/bench$batch.log"
      echo '```'; } >> "$REPORT.tables"
done
[ -f "$REPORT.tables" ] && cat "$REPORT.tables" >> "$REPORT" && rm "$REPORT.tables"
echo >> "$REPORT"
echo "$FAILED check(s) failed; logs in $WORK" >> "$REPORT"
cat "$REPORT"
exit $((FAILED > 0))
