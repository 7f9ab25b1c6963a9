#!/usr/bin/env bash
# One GPU vs two GPUs with the same entry point, base geometry at 1,024 tokens, random init.
#   bash bench/gpu_ddp.sh CORPUS_DIR OUT_DIR [STEPS] [RUNS]     RUNS: a subset, e.g. "ddp1x32 ddp2x32" (default: all)
# Runs (torchrun, DDP): 1 GPU x 32 bins (on card 0, and as ddp1x32_gpu1 on card 1); 2 GPUs x 32 bins (same work
# per GPU: throughput scaling); 2 GPUs x 16 bins (same global batch as 1 x 32: compare the loss trajectories). Then `accelerate launch` (DDP) and FSDP full
# sharding through `--training_args`, to show that both launchers and both engines run the same entry point.
# CORPUS_DIR is a DatasetDict folder (train/validation, column `text`), e.g. from `python -m train.corpora build`.
set -euo pipefail
corpus=$1; out=$2; steps=${3:-100}; runs=${4:-"ddp1x32 ddp1x32_gpu1 ddp2x32 ddp2x16 accelerate2x32 fsdp2x32"}
mkdir -p "$out"
common=(--preset base --corpus "$corpus" --init_from none --tokenizer none --train_tokenizer true
        --tokenizer_vocab_size 50368 --max_steps "$steps" --warmup_steps 10 --eval_steps 100000 --save_steps 100000
        --max_eval_samples 64 --gradient_accumulation_steps ${GA:-1} --dataloader_num_workers 4 --demo_check false
        --logging_steps 5 --cache_dir "$out/cache" ${EXTRA:-})  # EXTRA: more entry-point arguments for every run
run() {  # name, launcher, per-device batch, extra arguments...
    local name=$1 launcher=$2 batch=$3; shift 3
    [[ " $runs " == *" $name "* ]] || return 0
    # The entry point resumes from a checkpoint in its output folder: a reused folder would time nothing.
    [[ ! -e "$out/$name" ]] || { echo "$out/$name exists: give a new OUT_DIR" >&2; return 1; }
    case $launcher in
        one|one1) CUDA_VISIBLE_DEVICES=$([[ $launcher == one1 ]] && echo 1 || echo 0) python3 -m train "${common[@]}" \
                 --per_device_train_batch_size "$batch" --output_dir "$out/$name" "$@" > "$out/$name.log" 2>&1 ;;
        torchrun) torchrun --standalone --nproc_per_node 2 -m train "${common[@]}" \
                 --per_device_train_batch_size "$batch" --output_dir "$out/$name" "$@" > "$out/$name.log" 2>&1 ;;
        accelerate) accelerate launch --multi_gpu --num_processes 2 -m train "${common[@]}" \
                 --per_device_train_batch_size "$batch" --output_dir "$out/$name" "$@" > "$out/$name.log" 2>&1 ;;
    esac || { tail -40 "$out/$name.log"; return 1; }
    echo "== $name: $launcher x $batch bins of 1024 per GPU $*"
    grep -E "^(throughput|eval):" "$out/$name.log"
    python3 - "$out/$name/training_summary.json" <<'PY'
import json, sys
history = json.load(open(sys.argv[1]))
print("tokens/s", round(history["tokens_per_second"] or 0), "peak GiB", round(history["peak_memory_gib"] or 0, 2))
print("loss by step", " ".join(f"{e['step']}:{e['loss']:.3f}" for e in history["train_loss_history"]
                                if e["step"] in (1, 10, 20, 30, 40, 50, 60, 80, 100)))
PY
}
run ddp1x32 one 32
run ddp1x32_gpu1 one1 32  # the same on the second card: cards of one host differ by a few percent
run ddp2x32 torchrun 32
run ddp2x16 torchrun 16
run accelerate2x32 accelerate 32 --max_steps 40 || true
run fsdp2x32 torchrun 32 --max_steps 40 \
    --training_args '{fsdp: full_shard auto_wrap, fsdp_config: {transformer_layer_cls_to_wrap: [ClinicalModernBertEncoderLayer], use_orig_params: true}}' || true
