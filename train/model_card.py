"""The README.md model card of a trained model folder: Hub YAML metadata, training details, data, curves.

The card is generated from facts of the run only (config, Trainer state, reports); nothing in it is typed by hand,
so it cannot drift from what was trained.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

TAGS = ["modernbert", "clinical", "biomedical", "fill-mask"]


@dataclass
class ModelCardInfo:
    """Everything the card reports. ``config`` is a ``train.config.TrainConfig``."""

    config: Any
    metrics: dict[str, float] = field(default_factory=dict)
    global_step: int = 0
    tokens_seen: int = 0
    hardware: str = ""
    train_seconds: float = 0.0
    corpus_report: Any = None  # train.corpora.report.CorpusReport
    pack_reports: dict[str, Any] = field(default_factory=dict)  # split -> train.packing.PackReport
    loss_curve: str | None = None  # file name inside the model folder
    base_model: str | None = None
    sources: list[str] = field(default_factory=list)  # corpus source names, for the `datasets` metadata
    optimizer: str = ""  # the resolved transformers optim name
    demo_check: dict[str, Any] | None = None


def _is_hub_id(value: str | None) -> bool:
    """``owner/name`` and not an existing local path: only Hub ids belong in ``base_model`` metadata."""
    return bool(value) and value.count("/") == 1 and not Path(value).exists() and not value.startswith((".", "/"))


def card_metadata(info: ModelCardInfo) -> dict[str, Any]:
    """The YAML front matter the Hub reads."""
    metadata: dict[str, Any] = {}
    if _is_hub_id(info.base_model):
        metadata["base_model"] = info.base_model
    sources = sorted(info.corpus_report.sources) if info.corpus_report is not None else sorted(info.sources)
    metadata.update({
        "datasets": sources,
        "license": "apache-2.0",
        "language": ["en"],
        "library_name": "transformers",
        "pipeline_tag": "fill-mask",
        "tags": list(TAGS),
    })
    return metadata


def _fmt(value: float) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def render_model_card(info: ModelCardInfo, repo_id: str = "<your-org>/clinical-modernbert") -> str:
    """The full README.md text."""
    cfg = info.config
    lines = ["---", yaml.safe_dump(card_metadata(info), sort_keys=False).strip(), "---", ""]
    lines += [
        f"# Clinical ModernBERT ({cfg.preset})",
        "",
        ("A long-context biomedical and clinical encoder with the ModernBERT architecture (alternating local/global "
        "attention, RoPE, unpadded packed sequences, up to 8,192 tokens), pre-trained with masked language "
        "modelling."),
        "",
    ]
    if cfg.description:
        lines += [f"Preset: {cfg.description}", ""]
    lines += [
        "## Usage",
        "",
        "```python",
        "from transformers import AutoModelForMaskedLM, AutoTokenizer, pipeline",
        "",
        f'tokenizer = AutoTokenizer.from_pretrained("{repo_id}", trust_remote_code=True)',
        f'model = AutoModelForMaskedLM.from_pretrained("{repo_id}", trust_remote_code=True)',
        f'fill = pipeline("fill-mask", model="{repo_id}", trust_remote_code=True)',
        'fill("Type 2 diabetes mellitus without [MASK]")',
        "```",
        "",
        ("On a GPU in bf16/fp16 the model runs unpadded varlen FlashAttention with no extra package (torch >= 2.10). "
         "On Hopper and Blackwell GPUs, `pip install flash-attn-4` (nothing to compile) switches it to "
         "FlashAttention-4 (`config.varlen_kernel`), and training with `cuda_graphs=True` then runs the layers' "
         "GEMMs on its `quack-kernels`, with GeGLU, the residuals and RoPE fused into them (`config.linear_kernel`)."),
        "",
        "## Training details",
        "",
        "| | |",
        "|---|---|",
        f"| Preset | `{cfg.preset}` |",
        f"| Initialised from | {info.base_model or 'random initialisation'} |",
        f"| Optimizer steps | {info.global_step:,} |",
        f"| Tokens seen | ~{info.tokens_seen:,} |",
        f"| Sequence length (packed bins) | {cfg.max_seq_len:,} |",
        (f"| Packed sequences per step | {cfg.per_device_train_batch_size} x {cfg.gradient_accumulation_steps} "
        "(accumulation) per device |"),
        (f"| Learning rate | {cfg.learning_rate:g}, {cfg.lr_scheduler_type} (warmup {cfg.warmup_steps} steps, "
        f"decay {cfg.decay_ratio:.0%} of steps) |"),
        (f"| Optimizer | {info.optimizer or cfg.optim}, betas ({cfg.adam_beta1}, {cfg.adam_beta2}), "
         f"weight decay {cfg.weight_decay:g} |"),
        (f"| Masking | {cfg.mlm_probability_start:.0%} -> {cfg.mlm_probability_end:.0%} ({cfg.mlm_schedule}), "
        f"80/10/10 mask/random/keep; evaluation at {cfg.eval_mlm_probability:.0%} |"),
        f"| Hardware | {info.hardware} |",
        f"| Training time | {info.train_seconds / 60:.1f} min |",
        "",
    ]
    if info.metrics:
        lines += ["## Evaluation (held-out split, masked tokens)", "", "| Metric | Value |", "|---|---:|"]
        for name in ("eval_loss", "eval_perplexity", "eval_accuracy", "eval_masked_tokens"):
            if name in info.metrics:
                lines.append(f"| {name.removeprefix('eval_').replace('_', ' ')} | {_fmt(info.metrics[name])} |")
        lines.append("")
    if info.demo_check:
        check = info.demo_check
        lines += [
            "## Fill-mask check",
            "",
            (f"On {check['n_examples']} held-out ICD-10-CM descriptions with one word masked, the correct word is "
             f"among the model's 5 best word predictions for **{check['model_top5_accuracy']:.1%}** of them "
             f"(plain top-5, punctuation included: {check['model_raw_top5_accuracy']:.1%}), against "
             f"{check['baseline_top5_accuracy']:.1%} for a unigram baseline that always guesses the 5 most "
             f"frequent training words ({', '.join(check['baseline_words'])}), and "
             f"{check.get('domain_baseline_top5_accuracy', 0.0):.1%} for the stronger in-domain unigram "
             f"({', '.join(check.get('domain_baseline_words', []))})."),
            "",
        ]
    lines += ["## Training data", ""]
    if info.corpus_report is not None:
        lines += [info.corpus_report.to_markdown().rstrip(), ""]
    if info.pack_reports:
        lines += [
            ("Documents are tokenized without truncation (long ones split into chunks) and packed into bins of "
            f"{cfg.max_seq_len} tokens by best-fit decreasing; attention never crosses documents."),
            "",
            "| Split | Documents | Chunks | Tokens | Bins | Fill rate |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        for name, report in info.pack_reports.items():
            lines.append(f"| {name} | {report.documents_kept:,} | {report.chunks:,} | {report.tokens:,} | "
                         f"{report.bins:,} | {report.fill_rate:.2%} |")
        lines.append("")
    if info.loss_curve:
        lines += ["## Training curves", "", f"![MLM loss]({info.loss_curve})", ""]
    lines += [
        "## Limitations",
        "",
        ("A research artefact: not validated for clinical decision making. Biomedical text carries the biases of "
        "its sources; clinical notes, when used, are de-identified but may still contain rare identifying details."),
        "",
    ]
    return "\n".join(lines)


def write_model_card(out_dir: str | Path, info: ModelCardInfo) -> Path:
    """Write ``README.md`` into the model folder and return its path."""
    path = Path(out_dir) / "README.md"
    path.write_text(render_model_card(info), encoding="utf-8")
    return path
