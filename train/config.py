"""Training settings: one flat, typed :class:`TrainConfig`, filled from a YAML preset and CLI overrides.

Presets are data: ``train/presets/<name>.yaml`` (a preset may ``inherit: <other preset>`` and change a few keys).
The CLI only overrides keys, it never defines new ones::

    python -m train --preset demo --max_steps 100 --learning_rate 3e-4 --model_overrides.num_hidden_layers 2

Every key, in a YAML file or on the command line, must be a field of :class:`TrainConfig`; an unknown one is an
error that lists the close matches, so a typo never silently falls back to a default. Values are converted to the
field's type (``"3e-4"`` -> 0.0003, ``"true"`` -> True, ``"none"`` -> None) with an error naming key and value.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from pathlib import Path
from typing import Any

import yaml

PRESETS_DIR = Path(__file__).parent / "presets"
DDP_COMM_HOOKS = ("none", "bf16", "fp16")


class ConfigError(ValueError):
    """An unknown key, a value of the wrong type, or a missing/cyclic preset."""


@dataclasses.dataclass
class TrainConfig:
    """Everything one pre-training run needs. Defaults suit the ``base`` preset; presets set the rest."""

    # --- identity
    preset: str = ""
    description: str = ""
    # --- data
    corpus: str = "sample"  # a name in train.run.CORPORA, or a folder saved with DatasetDict.save_to_disk
    corpus_options: dict = dataclasses.field(default_factory=dict)  # keyword arguments of the corpus builder
    cache_dir: str = "cache"  # corpus builds and packed datasets
    num_proc: int | None = None  # tokenizer processes; None: automatic (1 for small corpora)
    max_seq_len: int = 1024  # bin size of packing = tokens per packed example
    # --- tokenizer
    tokenizer: str | None = None  # Hub id or local folder; None: the init_from checkpoint's, else ModernBERT's
    train_tokenizer: bool = False  # train a byte-level BPE on the corpus instead (offline demo)
    tokenizer_vocab_size: int = 8192
    # --- model
    init_from: str | None = None  # Hub id or local folder (ours or transformers-native ModernBERT)
    model_preset: str = "base"  # ClinicalModernBertConfig.from_preset name, when not init_from
    model_overrides: dict = dataclasses.field(default_factory=dict)  # config fields (e.g. global_rope_theta)
    attention_backend: str = "auto"
    # --- masking
    mlm_probability_start: float = 0.30
    mlm_probability_end: float = 0.15
    mlm_schedule: str = "cosine"  # a key of train.masking.SCHEDULES
    mlm_schedule_steps: int | None = None  # None: max_steps
    eval_mlm_probability: float = 0.15  # fixed, so eval losses are comparable across a run
    mask_replace_prob: float = 0.8
    random_replace_prob: float = 0.1
    # --- optimisation
    optim: str = "auto"  # "auto": adamw_torch_fused on CUDA, adamw_torch on CPU; or any transformers optim name
    learning_rate: float = 8e-4
    weight_decay: float = 1e-5
    adam_beta1: float = 0.9
    adam_beta2: float = 0.98
    adam_epsilon: float = 1e-6
    max_grad_norm: float = 1.0
    lr_scheduler_type: str = "warmup_stable_decay"
    warmup_steps: int = 0
    decay_ratio: float = 0.1  # warmup_stable_decay: share of max_steps spent decaying
    min_lr_ratio: float = 0.0
    max_steps: int = 1000
    per_device_train_batch_size: int = 8  # packed examples (bins of max_seq_len tokens) per device and micro-step
    per_device_eval_batch_size: int = 8
    eval_on_start: bool = True  # evaluate at step 0 too, so the loss curve shows where training started
    max_eval_samples: int | None = None  # evaluate on this many packed validation examples (a seeded sample)
    gradient_accumulation_steps: int = 1
    seed: int = 42
    # --- hardware
    bf16: str = "auto"  # "auto": on when CUDA supports bf16; "true" / "false" to force
    dataloader_num_workers: int = 0
    torch_compile: bool = False
    # DDP gradient all-reduce: "none" (fp32, exact) or "bf16"/"fp16" (torch's compression hooks: half the traffic)
    ddp_comm_hook: str = "none"
    # Python garbage collection while training (long-lived objects are frozen either way): 0 leaves it automatic;
    # N > 0 turns it off and collects every N steps, on every process at once (one DDP process's pause stalls all).
    gc_interval: int = 0
    # --- outputs, evaluation, checkpoints
    output_dir: str = "outputs/base"  # the final Hub-ready model folder (no checkpoints inside)
    checkpoint_dir: str | None = None  # None: "<output_dir>-checkpoints"
    logging_steps: int = 10
    eval_steps: int = 200
    save_steps: int = 200
    save_total_limit: int = 2
    resume_from_checkpoint: str | None = "auto"  # "auto": the last checkpoint in checkpoint_dir if any; None: fresh
    report_to: str = "none"
    demo_check: bool = False  # fill-mask check on held-out ICD-10-CM descriptions after training
    demo_check_examples: int = 300
    training_args: dict = dataclasses.field(default_factory=dict)  # extra transformers.TrainingArguments fields
    profile_steps: str | None = None  # "START-END": torch.profiler over these steps -> <checkpoint_dir>/profile

    def __post_init__(self) -> None:
        if self.max_seq_len < 8:
            raise ConfigError(f"max_seq_len={self.max_seq_len} is too small (>= 8)")
        if self.max_steps <= 0:
            raise ConfigError(f"max_steps={self.max_steps} must be > 0 (the schedules are defined over max_steps)")
        if not 0.0 <= self.decay_ratio <= 1.0:
            raise ConfigError(f"decay_ratio={self.decay_ratio} must be in [0, 1]")
        if self.bf16 not in ("auto", "true", "false"):
            raise ConfigError(f"bf16={self.bf16!r} must be 'auto', 'true' or 'false'")
        if self.ddp_comm_hook not in DDP_COMM_HOOKS:
            raise ConfigError(f"ddp_comm_hook={self.ddp_comm_hook!r} must be one of {', '.join(DDP_COMM_HOOKS)}")
        if self.gc_interval < 0:
            raise ConfigError(f"gc_interval={self.gc_interval} must be >= 0 (0: automatic garbage collection)")
        if self.profile_steps is not None:
            self.profile_range  # noqa: B018 - validates the "START-END" string now, not after the corpus is built
        if isinstance(self.resume_from_checkpoint, str) and self.resume_from_checkpoint.lower() in ("false", "no"):
            self.resume_from_checkpoint = None

    @property
    def profile_range(self) -> tuple[int, int] | None:
        """`profile_steps` as (first step, last step), both inclusive; None when profiling is off."""
        if self.profile_steps is None:
            return None
        parts = str(self.profile_steps).split("-")
        first, last = (int(p) if p.strip().isdigit() else -1 for p in parts) if len(parts) == 2 else (-1, -1)
        if not 1 <= first <= last:
            raise ConfigError(f"profile_steps={self.profile_steps!r} must be 'START-END' with 1 <= START <= END, "
                              "e.g. '10-14'")
        return first, last

    @property
    def resolved_checkpoint_dir(self) -> str:
        return self.checkpoint_dir or f"{self.output_dir.rstrip('/')}-checkpoints"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


FIELDS: dict[str, dataclasses.Field] = {f.name: f for f in dataclasses.fields(TrainConfig)}
_TYPES = typing.get_type_hints(TrainConfig)
_NONE_STRINGS = {"none", "null", "~", ""}


def _unknown_key_error(key: str, where: str) -> ConfigError:
    root = key.split(".")[0]
    close = difflib.get_close_matches(root, FIELDS, n=3, cutoff=0.6)
    hint = f"; did you mean {', '.join(close)}?" if close else f"; known keys: {', '.join(sorted(FIELDS))}"
    return ConfigError(f"unknown config key {key!r} in {where}{hint}")


def _coerce(key: str, value: Any, annotation: Any) -> Any:
    """Convert ``value`` (from YAML or a CLI string) to ``annotation``; raise ConfigError naming key and value."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(annotation)
        is_none = value is None or (isinstance(value, str) and value.strip().lower() in _NONE_STRINGS)
        if is_none and type(None) in options:
            return None
        for option in options:
            if option is type(None):
                continue
            try:
                return _coerce(key, value, option)
            except ConfigError:
                continue
        raise ConfigError(f"{key}={value!r} is not a valid {annotation}")
    try:
        if annotation is bool:
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.strip().lower() in ("true", "yes", "1", "on"):
                return True
            if isinstance(value, str) and value.strip().lower() in ("false", "no", "0", "off"):
                return False
            raise ValueError
        if annotation is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            return int(float(value)) if isinstance(value, str) and "e" in value.lower() else int(value)
        if annotation is float:
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        if annotation is str:
            if isinstance(value, bool):  # YAML reads `bf16: true` as a bool; keep the spelling
                return "true" if value else "false"
            if isinstance(value, (str, int, float)):
                return str(value)
            raise ValueError
        if annotation is dict or origin is dict:
            if isinstance(value, str):
                value = yaml.safe_load(value)
            if not isinstance(value, dict):
                raise ValueError
            return dict(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{key}={value!r} is not a valid {getattr(annotation, '__name__', annotation)}") from None
    raise ConfigError(f"{key}: unsupported type {annotation}")  # pragma: no cover - a TrainConfig bug


def apply_overrides(values: dict[str, Any], overrides: dict[str, Any], where: str) -> dict[str, Any]:
    """Return ``values`` updated with ``overrides``; ``a.b`` keys set one entry of the dict field ``a``."""
    result = {key: (dict(value) if isinstance(value, dict) else value) for key, value in values.items()}
    for key, value in overrides.items():
        root, _, sub = key.partition(".")
        if root not in FIELDS:
            raise _unknown_key_error(key, where)
        if sub:
            if _TYPES[root] is not dict:
                raise ConfigError(f"{key!r} in {where}: {root} is not a dict, it has no sub-key {sub!r}")
            entry = result.setdefault(root, {})
            entry[sub] = yaml.safe_load(value) if isinstance(value, str) else value
        elif _TYPES[root] is dict and isinstance(result.get(root), dict) and isinstance(value, dict):
            result[root] = {**result[root], **value}  # presets refine dicts of the preset they inherit
        else:
            result[root] = value
    return result


def preset_path(name_or_path: str) -> Path:
    """``demo`` -> ``train/presets/demo.yaml``; an existing ``.yaml`` path is used as is."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") and path.is_file():
        return path
    candidate = PRESETS_DIR / f"{name_or_path}.yaml"
    if not candidate.is_file():
        known = available_presets()
        close = difflib.get_close_matches(name_or_path, known, n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise ConfigError(f"unknown preset {name_or_path!r}; available: {', '.join(known)}{hint}")
    return candidate


def available_presets() -> list[str]:
    return sorted(path.stem for path in PRESETS_DIR.glob("*.yaml"))


def _preset_values(name_or_path: str, seen: tuple[str, ...] = ()) -> dict[str, Any]:
    path = preset_path(name_or_path)
    if str(path) in seen:
        raise ConfigError(f"preset inheritance cycle: {' -> '.join([*seen, str(path)])}")
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a preset must be a YAML mapping of keys to values")
    parent = data.pop("inherit", None)
    values = _preset_values(str(parent), (*seen, str(path))) if parent else {}
    return apply_overrides(values, data, where=str(path))


def load_config(preset: str, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """Build the :class:`TrainConfig` of ``preset`` (a name or a YAML path) with ``overrides`` applied on top."""
    values = _preset_values(preset)
    values = apply_overrides(values, overrides or {}, where="the command line")
    values["preset"] = Path(preset).stem
    coerced = {key: _coerce(key, value, _TYPES[key]) for key, value in values.items()}
    return TrainConfig(**coerced)


def parse_cli(argv: list[str]) -> tuple[str, dict[str, str]]:
    """``--preset demo --max_steps 5 --flag`` -> ``("demo", {"max_steps": "5", "flag": "true"})``.

    Accepts ``--key value`` and ``--key=value``; dashes in keys become underscores (``--train-tokenizer``);
    a key followed by another ``--key`` (or nothing) means ``true``.
    """
    preset = None
    overrides: dict[str, str] = {}
    index = 0
    while index < len(argv):
        arg = argv[index]
        if not arg.startswith("--") or arg == "--":
            raise ConfigError(f"unexpected argument {arg!r}: arguments are --key value pairs")
        key, has_value, value = arg[2:].partition("=")
        key = key.replace("-", "_")
        if not has_value:
            if index + 1 < len(argv) and not argv[index + 1].startswith("--"):
                value = argv[index + 1]
                index += 1
            else:
                value = "true"
        if key == "preset":
            preset = value
        else:
            overrides[key] = value
        index += 1
    if preset is None:
        raise ConfigError(f"--preset is required; available presets: {', '.join(available_presets())}")
    return preset, overrides
