# shellcheck shell=bash
# The parts of benchmarks/gpu_check.sh (sourced by it), each a function part_NAME; the timeouts of a part's steps
# add up to 300 s or less. Uses PY, GC (this folder), WORK (run outputs), LOGS and lib.sh's step machinery.

# The tiny Swin of the tests on the built-in digits: 3 epochs without warm-up (configuration/checks.py: warm-up shorter
# than the run), long enough for the train loss to fall.
TINY=(--cfg tests/configs/tiny.yaml --opts DATA.DATASET digits DATA.BATCH_SIZE 64 TRAIN.EPOCHS 3
      TRAIN.WARMUP_EPOCHS 0 PRINT_FREQ 5)
# Swin-T at 224 on synthetic images: one epoch of 20 steps at batch 64.
SWIN_T=(--cfg configs/swin_tiny.yaml --opts DATA.DATASET fake DATA.BATCH_SIZE 64 TRAIN.EPOCHS 1
        TRAIN.WARMUP_EPOCHS 0 PRINT_FREQ 5)
BENCH_MODES=infer_fp32,infer_bf16,throughput,train_fp32

cuda_missing() {  # the reason a CUDA step cannot run here, or nothing
    [ "$GPUS" -ge 1 ] || printf '%s' "$NO_CUDA"
}

part_amp() {
    part_header amp "fp16 / bf16 / fp32 training of the tiny Swin through main.py"
    local device=cuda skip
    skip=$(cuda_missing)
    if [ "${GPU_CHECK_ON_CPU:-0}" = 1 ]; then  # a dry run of the commands and checks on a CPU
        device=cpu skip=""
    fi
    local dtype log flags scaler
    for dtype in fp16 bf16 fp32; do
        case $dtype in
            fp32) flags=(--disable_amp) scaler=--report-scaler ;;
            fp16) flags=(--amp-dtype fp16) scaler=--scaler ;;
            *) flags=(--amp-dtype "$dtype") scaler=--report-scaler ;;
        esac
        step_start "amp.$dtype" "$dtype training: log says $dtype on $device, train loss finite and falling over 3 epochs$(
            [ "$dtype" = fp16 ] && echo ', last checkpoint holds a loss scale')$(
            [ "$dtype" = fp32 ] && echo ', TF32 off')" 90 "$skip" || continue
        log=$LOGS/amp_$dtype.log
        if run_timed 90 "$log" "$PY" main.py --output "$WORK/amp_$dtype" --device "$device" "${flags[@]}" \
            "${TINY[@]}"; then
            step_check "$PY" "$GC/check_run.py" train --log "$log" --root "$WORK/amp_$dtype" --device "$device" \
                --precision "$dtype" --loss-falls "$scaler"
        else
            step_failed_run "$log"
        fi
    done
}

part_resume() {
    part_header resume "a checkpoint written on the CPU, resumed in fp16 on CUDA"
    step_start resume.fp16 "CPU run's ckpt_epoch_0 resumed with --amp-dtype fp16: starts at epoch 1, fp16 on cuda, \
loss finite and falling, last checkpoint holds a loss scale" 150 "$(cuda_missing)" || return 0
    local cpu_log=$LOGS/resume_cpu.log log=$LOGS/resume_fp16.log checkpoint
    if ! run_timed 60 "$cpu_log" "$PY" main.py --output "$WORK/resume_cpu" --device cpu "${TINY[@]}"; then
        step_failed_run "$cpu_log" "the CPU run"
        return 0
    fi
    checkpoint=$(find "$WORK/resume_cpu" -name ckpt_epoch_0.pth | head -1)
    if [ -z "$checkpoint" ]; then
        record FAILED "the CPU run wrote no ckpt_epoch_0.pth (log: $cpu_log)"
        return 0
    fi
    if run_timed 90 "$log" "$PY" main.py --output "$WORK/resume_fp16" --device cuda --resume "$checkpoint" \
        --amp-dtype fp16 "${TINY[@]}"; then
        step_check "$PY" "$GC/check_run.py" train --log "$log" --root "$WORK/resume_fp16" --device cuda \
            --precision fp16 --resumed-epoch 1 --loss-falls --scaler
    else
        step_failed_run "$log"
    fi
}

part_ddp() {
    part_header ddp "torchrun with 2 processes over NCCL"
    local reason=""
    if [ "$GPUS" -lt 1 ]; then
        reason=$NO_CUDA
    elif [ "$GPUS" -lt 2 ]; then
        reason="one CUDA device visible: main.py makes no process group for a world of one, so NCCL needs 2 GPUs"
    fi
    step_start ddp.nccl "torchrun --nproc_per_node 2: world of 2 on cuda, NCCL in use (NCCL_DEBUG=VERSION), fp16, \
loss finite and falling" 150 "$reason" || return 0
    local log=$LOGS/ddp.log
    if run_timed 150 "$log" env NCCL_DEBUG=VERSION "$PY" -m torch.distributed.run --standalone --nproc_per_node 2 \
        main.py --output "$WORK/ddp" --device cuda "${TINY[@]}"; then
        step_check "$PY" "$GC/check_run.py" train --log "$log" --root "$WORK/ddp" --device cuda --world-size 2 \
            --precision fp16 --loss-falls --nccl
    else
        step_failed_run "$log"
    fi
}

part_compile() {
    part_header compile "--compile training"
    step_start compile.train "--compile: the log shows dynamo tracing and inductor compiling forward and backward \
graphs (fresh inductor cache), fp16, loss finite and falling" 200 "$(cuda_missing)" || return 0
    local log=$LOGS/compile_train.log
    if run_timed 200 "$log" env TORCH_LOGS=dynamo,inductor TORCHINDUCTOR_CACHE_DIR="$WORK/inductor_cache" \
        "$PY" main.py --output "$WORK/compiled" --device cuda --compile "${TINY[@]}"; then
        step_check "$PY" "$GC/check_run.py" train --log "$log" --root "$WORK/compiled" --device cuda \
            --precision fp16 --loss-falls --compiled
    else
        step_failed_run "$log"
    fi
}

part_compile_eval() {
    part_header compile_eval "--eval compiled by default on CUDA against eager"
    step_start compile.eval "--eval (TEST.COMPILE auto) compiles and agrees with TEST.COMPILE off: top-1 within \
one image (or 0.5%), loss within 0.005" 270 "$(cuda_missing)" || return 0
    local checkpoint eager=$LOGS/eval_eager.log compiled=$LOGS/eval_compiled.log
    # The compile or amp part's last checkpoint when they ran in this invocation, else a 1-epoch fp16 run's.
    checkpoint=$(find "$WORK/compiled" "$WORK/amp_fp16" -name ckpt_epoch_2.pth 2>/dev/null | head -1)
    if [ -z "$checkpoint" ]; then
        if ! run_timed 80 "$LOGS/eval_source.log" "$PY" main.py --output "$WORK/eval_source" --device cuda \
            "${TINY[@]}" TRAIN.EPOCHS 1; then
            step_failed_run "$LOGS/eval_source.log" "the run that makes a checkpoint to evaluate"
            return 0
        fi
        checkpoint=$(find "$WORK/eval_source" -name ckpt_epoch_0.pth | head -1)
    fi
    if ! run_timed 60 "$eager" "$PY" main.py --output "$WORK/eval_eager" --device cuda --eval \
        --resume "$checkpoint" "${TINY[@]}" TEST.COMPILE off; then
        step_failed_run "$eager" "eager --eval"
        return 0
    fi
    if run_timed 130 "$compiled" env TORCHINDUCTOR_CACHE_DIR="$WORK/inductor_cache" "$PY" main.py \
        --output "$WORK/eval_compiled" --device cuda --eval --resume "$checkpoint" "${TINY[@]}"; then
        step_check "$PY" "$GC/check_run.py" eval --eager "$eager" --compiled "$compiled"
    else
        step_failed_run "$compiled" "compiled --eval"
    fi
}

part_memory() {
    part_header memory "peak memory of Swin-T training at batch 64, without and with --use-checkpoint"
    local plain=$LOGS/memory_plain.log checkpointed=$LOGS/memory_checkpointed.log
    if step_start memory.plain "Swin-T training, batch 64, fp16: finishes, loss finite (peak memory)" 140 \
        "$(cuda_missing)"; then
        if run_timed 140 "$plain" "$PY" main.py --output "$WORK/memory_plain" --device cuda "${SWIN_T[@]}"; then
            step_check "$PY" "$GC/check_run.py" train --log "$plain" --root "$WORK/memory_plain" --device cuda \
                --precision fp16
        else
            step_failed_run "$plain"
        fi
    fi
    step_start memory.checkpointing "the same with --use-checkpoint: finishes, lower peak memory than without" 140 \
        "$(cuda_missing)" || return 0
    if ! run_timed 140 "$checkpointed" "$PY" main.py --output "$WORK/memory_checkpointed" --device cuda \
        --use-checkpoint "${SWIN_T[@]}"; then
        step_failed_run "$checkpointed"
        return 0
    fi
    local out
    if ! out=$(timeout 60 "$PY" "$GC/check_run.py" train --log "$checkpointed" \
        --root "$WORK/memory_checkpointed" --device cuda --precision fp16 2>&1); then
        record FAILED "$(printf '%s\n' "$out" | tail -1)"
        return 0
    fi
    step_check "$PY" "$GC/check_run.py" memory --plain "$plain" --checkpointed "$checkpointed"
}

part_sync() {
    part_header sync "host synchronisations of the training step"
    step_start sync.train_step "engine.train_one_epoch, 50 steps (fused AdamW, bf16): torch's sync debug mode \
counts 1 to 3 synchronising calls (2 logging steps and the end)" 100 "$(cuda_missing)" || return 0
    local log=$LOGS/host_syncs.log
    if run_timed 100 "$log" "$PY" "$GC/host_syncs.py"; then
        step_check "$PY" "$GC/check_run.py" syncs --log "$log"
    else
        step_failed_run "$log"
    fi
}

_bench() {  # _bench BATCH
    local batch=$1 log=$LOGS/bench_$1.log
    part_header "bench$batch" "benchmarks/bench_swin.py --batch $batch beside timm and torchvision"
    step_start "bench.b$batch" "bench_swin.py --device cuda --batch $batch --rounds 3 --iterations 10: every \
figure of $BENCH_MODES present and finite" 280 "$(cuda_missing)" || return 0
    if run_timed 280 "$log" "$PY" benchmarks/bench_swin.py --device cuda --rounds 3 --iterations 10 \
        --batch "$batch" --modes "$BENCH_MODES"; then
        step_check "$PY" "$GC/check_run.py" bench --log "$log" --modes "$BENCH_MODES"
    else
        step_failed_run "$log"
    fi
    if grep -qv '^\$ ' "$log"; then  # its table under the part's, in the report
        { printf '\n```\n'; grep -v '^\$ ' "$log"; printf '```\n'; } >> "$REPORT"
    fi
}

part_bench64() {
    _bench 64
}

part_bench256() {
    _bench 256
}
