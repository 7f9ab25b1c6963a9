"""`make demo`: the main job on the embedded data, end to end, offline, on a CPU.

1. build the sample corpus (real PubMed abstracts and code-system texts shipped in registry packages), train a
   BPE tokenizer, pack, and pretrain a small Clinical ModernBERT with the HF Trainer (`train/presets/demo.yaml`);
2. save the same architecture at random initialisation, the honest baseline for what pretraining bought;
3. fine-tune and score both on the default offline evaluation suite (`eval/`), side by side;
4. write the results into the model card (`model-index`), so `OUT/demo` is a Hub-ready model repository.

    python -m train.demo --out outputs [--max_steps 1000] [--full-eval]
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

logger = logging.getLogger(__name__)


def save_random_init_twin(model_dir: Path, out_dir: Path) -> Path:
    """The pretrained model's architecture and tokenizer with freshly initialised weights."""
    import torch
    from transformers import AutoConfig, AutoModelForMaskedLM, AutoTokenizer

    torch.manual_seed(0)
    config = AutoConfig.from_pretrained(model_dir, trust_remote_code=True)
    model = AutoModelForMaskedLM.from_config(config, trust_remote_code=True)
    model.save_pretrained(out_dir)
    AutoTokenizer.from_pretrained(model_dir).save_pretrained(out_dir)
    return out_dir


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("outputs"))
    parser.add_argument("--max_steps", type=int, help="pretraining steps (default: the demo preset's)")
    parser.add_argument("--full-eval", action="store_true", help="full evaluation sizes and 3 seeds (slow)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    from eval.__main__ import main as eval_main
    from train.config import load_config
    from train.run import run

    started = time.perf_counter()
    model_dir, random_dir, eval_dir = args.out / "demo", args.out / "demo-random-init", args.out / "eval"
    overrides = {"output_dir": str(model_dir)}
    if args.max_steps:
        overrides["max_steps"] = args.max_steps
    result = run(load_config("demo", overrides))
    pretrain_seconds = time.perf_counter() - started

    save_random_init_twin(model_dir, random_dir)
    eval_args = ["suite", "--model", str(model_dir), "--model", str(random_dir), "--out", str(eval_dir)]
    status = eval_main([*eval_args, *(["--full"] if args.full_eval else [])])
    if status:
        return status
    eval_main(["report", "--out", str(eval_dir), "--model-card", str(model_dir / "README.md"),
               "--model", model_dir.name])

    history = json.loads((model_dir / "training_summary.json").read_text()).get("eval_history", [])
    total = time.perf_counter() - started
    print("\n=== demo summary ===")
    print(f"pretraining: {result.global_step} steps in {pretrain_seconds / 60:.1f} min (corpus, tokenizer, packing "
          f"and training); eval loss {result.metrics.get('eval_loss', float('nan')):.3f}")
    if history:
        first, last = history[0], history[-1]
        print(f"eval MLM loss: step {first['step']} {first['eval_loss']:.3f} -> step {last['step']} "
              f"{last['eval_loss']:.3f} ({100 * (1 - last['eval_loss'] / first['eval_loss']):.0f}% lower)")
    if result.demo_check:
        check = result.demo_check
        print(f"fill-mask top-5 on held-out ICD-10-CM descriptions: model {check['model_raw_top5_accuracy']:.3f} "
              f"(word guesses {check['model_top5_accuracy']:.3f}) vs corpus unigram "
              f"{check['baseline_top5_accuracy']:.3f} (in-domain unigram {check['domain_baseline_top5_accuracy']:.3f})")
    print(f"Hub-ready folder: {model_dir}  (push: python -m publish push {model_dir} --repo-id ORG/NAME --dry-run)")
    print(f"evaluation: {eval_dir / 'comparison.md'}; whole demo {total / 60:.1f} min")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
