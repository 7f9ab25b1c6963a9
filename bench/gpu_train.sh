#!/usr/bin/env bash
# The pretraining entry point on one GPU, base geometry, random init (Hub weights are out of reach here):
# 1,024 and 8,192 tokens, bf16, varlen attention, compiled blocks; prints real tokens/s and peak memory.
#   bash bench/gpu_train.sh CORPUS_DIR OUT_DIR [STEPS]
# CORPUS_DIR is a DatasetDict folder (train/validation, column `text`), e.g. from `python -m train.corpora build`.
set -euo pipefail
mkdir -p "$2"
corpus=$1; out=$2; steps=${3:-60}
common=(--corpus "$corpus" --init_from none --tokenizer none --train_tokenizer true --tokenizer_vocab_size 50368
        --max_steps "$steps" --warmup_steps 10 --eval_steps 100000 --save_steps 100000 --max_eval_samples 64
        --gradient_accumulation_steps 1 --dataloader_num_workers 4 --demo_check false --cache_dir "$out/cache")
python3 -m train --preset base "${common[@]}" --per_device_train_batch_size 32 --output_dir "$out/base-1024" \
    > "$out/train-1024.log" 2>&1 || { tail -30 "$out/train-1024.log"; exit 1; }
grep -E "^(steps|throughput|packing train|eval):" "$out/train-1024.log"
python3 -m train --preset base-8192 "${common[@]}" --per_device_train_batch_size 8 --output_dir "$out/base-8192" \
    > "$out/train-8192.log" 2>&1 || { tail -30 "$out/train-8192.log"; exit 1; }
grep -E "^(steps|throughput|packing train|eval):" "$out/train-8192.log"
