#!/usr/bin/env bash
# One GPU vs two GPUs (DDP through torchrun) with the same entry point, base geometry at 1,024 tokens.
#   bash bench/gpu_ddp.sh CORPUS_DIR OUT_DIR [STEPS]
# Runs: 1 GPU x 32 bins; 2 GPUs x 16 bins (same global batch: compare the loss trajectories); 2 GPUs x 32 bins
# (same work per GPU: throughput scaling). Needs the tokenizer/packed cache of bench/gpu_train.sh in OUT_DIR/cache.
set -euo pipefail
corpus=$1; out=$2; steps=${3:-60}
mkdir -p "$out"
common=(--preset base --corpus "$corpus" --init_from none --tokenizer none --train_tokenizer true
        --tokenizer_vocab_size 50368 --max_steps "$steps" --warmup_steps 10 --eval_steps 100000 --save_steps 100000
        --max_eval_samples 64 --gradient_accumulation_steps 1 --dataloader_num_workers 4 --demo_check false
        --logging_steps 5 --cache_dir "$out/cache")
run() {  # name, GPUs, per-device batch
    local name=$1 gpus=$2 batch=$3
    if [ "$gpus" = 1 ]; then
        CUDA_VISIBLE_DEVICES=0 python3 -m train "${common[@]}" --per_device_train_batch_size "$batch" \
            --output_dir "$out/$name" > "$out/$name.log" 2>&1 || { tail -30 "$out/$name.log"; exit 1; }
    else
        torchrun --standalone --nproc_per_node "$gpus" -m train "${common[@]}" --per_device_train_batch_size "$batch" \
            --output_dir "$out/$name" > "$out/$name.log" 2>&1 || { tail -30 "$out/$name.log"; exit 1; }
    fi
    echo "== $name: $gpus GPU(s) x $batch bins of 1024"
    grep -E "^(throughput|eval):" "$out/$name.log"
    python3 - "$out/$name/training_summary.json" <<'PY'
import json, sys
history = json.load(open(sys.argv[1]))
print("tokens/s", round(history["tokens_per_second"] or 0), "peak GiB", round(history["peak_memory_gib"] or 0, 2))
print("loss by step", " ".join(f"{e['step']}:{e['loss']:.3f}" for e in history["train_loss_history"]))
PY
}
run ddp1x32 1 32
run ddp2x16 2 16
run ddp2x32 2 32
