"""Fine-tuning experiments for docs/pretraining_vs_random_init.md: one grid of (model variant x run config x task).

Model variants are folders derived from a model folder, so the ordinary runner loads them unchanged:

- `pool=cls` / `pool=mean`: the same weights with `classifier_pooling` set;
- `layers=K`: only the first K encoder layers (the rest of the checkpoint is ignored; `final_norm` is kept);
- `head=random`: the pretrained encoder with the prediction head (dense + LayerNorm between pooling and the
  classifier) taken from a random-init model, i.e. the MLM head is not reused;
- `emb=rescale`: the token embeddings scaled to the random-init twin's standard deviation (a LayerNorm follows
  them, so the encoder's outputs stay the same up to that norm's eps (cosine 0.9997 on the demo model); what
  changes is how far one Adam step moves them relative to their size);
- `head=none`: the prediction head replaced by the identity (pooled encoder output -> linear classifier; the
  runner's loader is wrapped for this one).

Run-config overrides are eval.runner.RunConfig fields (`learning_rate`, `num_train_epochs`, `seeds`, ...). Each grid
cell records the dev score of the selected checkpoint (early stopping/best model use dev) and the test score, so a
choice can be made on dev and reported on test.

    python -m eval.analysis.variants --model outputs/demo --model outputs/demo-random-init \
        --tasks icd10cm_chapter,icd10cm_ccsr --grid learning_rate=1e-4,3e-4,1e-3 --seeds 0,1,2 \
        --out outputs/analysis/lr.json
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import shutil
import statistics
import time
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from eval import runner

logger = logging.getLogger(__name__)


def make_variant(model_dir: str | Path, variant: str, root: Path, random_dir: str | Path | None = None) -> Path:
    """A model folder for `variant` ("pool=cls", "layers=2", "head=random", "head=none"; "" = the model itself)."""
    model_dir = Path(model_dir)
    if not variant:
        return model_dir
    key, _, value = variant.partition("=")
    out = root / f"{model_dir.name}__{key}-{value}"
    if out.exists():
        shutil.rmtree(out)
    shutil.copytree(model_dir, out, ignore=shutil.ignore_patterns("*.png", "README.md", "training_summary.json"))
    config = json.loads((out / "config.json").read_text())
    if key == "pool":
        config["classifier_pooling"] = value
    elif key == "layers":
        layers = int(value)
        config["num_hidden_layers"] = layers
        if "layer_types" in config:
            config["layer_types"] = config["layer_types"][:layers]
    elif key == "head":
        state = load_file(str(out / "model.safetensors"))
        if value == "random":
            if random_dir is None:
                raise ValueError("head=random needs --random-twin")
            twin = load_file(str(Path(random_dir) / "model.safetensors"))
            for name in [k for k in state if k.startswith("head.")]:
                state[name] = twin[name].clone()
        elif value == "none":
            config["analysis_head"] = "none"  # read by _load_task_model below
        else:
            raise ValueError(f"unknown head variant {value!r}")
        save_file({k: v.contiguous() for k, v in state.items()}, str(out / "model.safetensors"),
                  metadata={"format": "pt"})
    elif key == "emb" and value == "rescale":
        # LayerNorm follows the token embeddings, so scaling them changes no output of the encoder; it changes only
        # how far one Adam step moves them relative to their size (the random-init twin's are ~6x smaller).
        state = load_file(str(out / "model.safetensors"))
        name = "model.embeddings.tok_embeddings.weight"
        target = (load_file(str(Path(random_dir) / "model.safetensors"))[name].std() if random_dir
                  else torch.tensor(config["initializer_range"]))
        state[name] = state[name] * (target / state[name].std())
        if "decoder.weight" in state:
            state["decoder.weight"] = state[name]
        save_file({k: v.contiguous() for k, v in state.items()}, str(out / "model.safetensors"),
                  metadata={"format": "pt"})
    else:
        raise ValueError(f"unknown variant {variant!r}")
    (out / "config.json").write_text(json.dumps(config, indent=2))
    return out


_runner_load_task_model = runner.load_task_model


def _load_task_model(model_source, spec, label_list):
    """The runner's loader, plus `head=none`: the prediction head becomes the identity."""
    model = _runner_load_task_model(model_source, spec, label_list)
    if getattr(model.config, "analysis_head", None) == "none":
        model.head = torch.nn.Identity()
    return model


runner.load_task_model = _load_task_model


def _value(text: str):
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", action="append", required=True)
    parser.add_argument("--variant", action="append", default=[],
                        help="model variant(s) applied to every --model ('' = unchanged); repeatable")
    parser.add_argument("--random-twin", help="random-init folder whose prediction head head=random borrows")
    parser.add_argument("--tasks", required=True)
    parser.add_argument("--config", help="base run config YAML (default eval/configs/demo.yaml)")
    parser.add_argument("--grid", action="append", default=[], help="FIELD=v1,v2,... (RunConfig field); repeatable")
    parser.add_argument("--set", action="append", default=[], help="FIELD=value fixed override; repeatable")
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    import datasets
    import transformers

    datasets.disable_progress_bars()
    transformers.logging.set_verbosity_error()

    fixed = {k: _value(v) for k, _, v in (item.partition("=") for item in args.set)}
    grid_fields = [item.partition("=") for item in args.grid]
    grid = [dict(zip([f for f, _, _ in grid_fields], combo))
            for combo in itertools.product(*[[_value(v) for v in values.split(",")] for _, _, values in grid_fields])]
    seeds = [int(s) for s in args.seeds.split(",")]
    variant_root = args.out.parent / "variants"
    variant_root.mkdir(parents=True, exist_ok=True)
    previous = json.loads(args.out.read_text()) if args.out.is_file() else []
    rows = list(previous)
    done = {(r["model"], r["variant"], json.dumps(r["overrides"], sort_keys=True), r["task"]) for r in previous}
    work = args.out.parent / "_work"
    for model_dir, variant in itertools.product(args.model, args.variant or [""]):
        source = make_variant(model_dir, variant, variant_root, args.random_twin)
        for overrides, task in itertools.product(grid or [{}], args.tasks.split(",")):
            key = (Path(model_dir).name, variant, json.dumps(overrides, sort_keys=True), task)
            if key in done:
                continue
            config = runner.load_run_config(args.config, **{**fixed, **overrides}, seeds=seeds, disable_tqdm=True)
            started = time.perf_counter()
            result = runner.run_task(str(source), task, config, out_dir=None)
            main_metric = result["main_metric"]
            if result["task_type"] == "retrieval":
                dev, test = [], [result["mean"][main_metric]]
                steps = []
            else:
                dev = [d["dev_metrics"].get(main_metric) for d in result["seed_details"].values()]
                test = [m[main_metric] for m in result["per_seed"].values()]
                steps = [d["train_steps"] for d in result["seed_details"].values()]
            row = {"model": Path(model_dir).name, "variant": variant, "overrides": overrides, "task": task,
                   "metric": main_metric, "dev": dev, "test": test, "dev_mean": _mean(dev), "test_mean": _mean(test),
                   "test_sd": statistics.stdev(test) if len(test) > 1 else 0.0, "train_steps": steps,
                   "seconds": round(time.perf_counter() - started, 1)}
            rows.append(row)
            print(f"{row['model']:18s} {variant or '-':12s} {json.dumps(overrides):34s} {task:20s} "
                  f"dev {row['dev_mean']:.3f} test {row['test_mean']:.3f} ± {row['test_sd']:.3f} "
                  f"({row['seconds']:.0f} s)", flush=True)
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(rows, indent=1))
    shutil.rmtree(work, ignore_errors=True)
    return 0


def _mean(values):
    values = [v for v in values if v is not None]
    return float(statistics.fmean(values)) if values else float("nan")


if __name__ == "__main__":
    raise SystemExit(main())
