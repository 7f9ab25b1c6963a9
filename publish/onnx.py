"""ONNX export of Clinical ModernBERT with an onnxruntime parity check.

Why a wrapper: the PyTorch model unpads its input once (``nonzero`` + a Python-int ``max_seqlen``), which a
tracer bakes in as constants, so a traced graph would only work for the example's shapes. ONNX wants the
padded formulation instead: :class:`PaddedEncoder` runs the same modules (embeddings, layers, norms, heads)
on ``(batch, seq)`` tensors with one boolean attention mask per layer type (real keys, plus the local window
on sliding-attention layers), exactly what the model's ``sdpa`` backend computes per document. It holds no
weights of its own, and :func:`export_onnx` always checks it against the model's own forward in PyTorch
(``torch_parity``) and the exported graph against PyTorch in onnxruntime (``max_abs_diff``).

Rows are single documents (no packing with ``position_ids``/``cu_seqlens``); padding may be on either side.
Outputs are zero at padding, as in the PyTorch model.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from modeling_clinical_modernbert import apply_rotary

logger = logging.getLogger(__name__)

DEFAULT_OPSET = 18
ONNX_FILE = "model.onnx"
PARITY_FILE = "parity.json"
INPUT_NAMES = ("input_ids", "attention_mask")
HEADS: dict[str, str] = {
    # --head value -> what the exported graph returns
    "base": "last_hidden_state (batch, seq, hidden)",
    "masked-lm": "last_hidden_state (batch, seq, hidden) and logits (batch, seq, vocab)",
}
PARITY_TEXTS = (
    "patient presents with chest pain",
    "no fever",
    "history of hypertension and type two diabetes treated with aspirin and metoprolol for several years now",
)
"""Mixed lengths, so the parity batch has padding and (with a small local window) sliding-window masking."""


class PaddedEncoder(nn.Module):
    """The padded (sdpa) formulation of a Clinical ModernBERT encoder, for export; shares the model's modules.

    ``model`` is a ``ClinicalModernBertModel`` or a model with one at ``.model`` (e.g. ``ForMaskedLM``). With
    ``with_logits`` (MaskedLM only) it also returns the MLM logits.
    """

    def __init__(self, model: nn.Module, with_logits: bool = False) -> None:
        super().__init__()
        self.encoder = getattr(model, "model", model)
        for attribute in ("embeddings", "layers", "final_norm", "rotary_emb"):
            if not hasattr(self.encoder, attribute):
                raise TypeError(f"{type(model).__name__} is not a Clinical ModernBERT model (no .{attribute})")
        self.with_logits = with_logits
        if with_logits:
            if not (hasattr(model, "head") and hasattr(model, "decoder")):
                raise TypeError(f"{type(model).__name__} has no MLM head; export with head='base'")
            self.head, self.decoder = model.head, model.decoder

    def _rope(self, positions: torch.Tensor, layer_type: str) -> tuple[torch.Tensor, torch.Tensor]:
        inv_freq = self.encoder.rotary_emb[layer_type].inv_freq.float()
        freqs = positions[..., None].float() * inv_freq  # (batch, seq, head_dim / 2)
        emb = torch.cat((freqs, freqs), dim=-1)[:, None]  # (batch, 1, seq, head_dim)
        return emb.cos(), emb.sin()

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, ...]:
        real = attention_mask.bool()  # (batch, seq)
        positions = (attention_mask.long().cumsum(1) - 1).clamp(min=0)  # counts real tokens: left padding works
        batch, seq = input_ids.shape
        hidden = self.encoder.embeddings(input_ids=input_ids)  # (batch, seq, hidden)
        key_mask = real[:, None, None, :]  # (batch, 1, 1, seq)
        distance = (positions[:, :, None] - positions[:, None, :]).abs()[:, None]  # (batch, 1, seq, seq)
        masks: dict[int | None, torch.Tensor] = {}
        ropes: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        for layer in self.encoder.layers:
            attn = layer.attn
            if attn.local_window not in masks:
                masks[attn.local_window] = key_mask if attn.local_window is None else key_mask & (
                    distance <= attn.local_window)
            if attn.layer_type not in ropes:
                ropes[attn.layer_type] = self._rope(positions, attn.layer_type)
            cos, sin = ropes[attn.layer_type]
            qkv = attn.Wqkv(layer.attn_norm(hidden)).view(batch, seq, 3, attn.num_heads, attn.head_dim)
            q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (batch, heads, seq, head_dim)
            q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=masks[attn.local_window], scale=attn.scale)
            hidden = hidden + attn.out_drop(attn.Wo(out.transpose(1, 2).reshape(batch, seq, -1)))
            hidden = hidden + layer.mlp(layer.mlp_norm(hidden))
        hidden = self.encoder.final_norm(hidden)
        zero = torch.zeros((), dtype=hidden.dtype)
        last_hidden_state = torch.where(real[..., None], hidden, zero)  # zeros at padding, NaN-free
        if not self.with_logits:
            return (last_hidden_state,)
        logits = self.decoder(self.head(hidden))
        return last_hidden_state, torch.where(real[..., None], logits, zero)


@dataclass
class OnnxExportReport:
    """What :func:`export_onnx` wrote and how closely onnxruntime matches PyTorch."""

    onnx_path: str
    head: str
    opset: int
    exporter: str
    output_names: list[str]
    batch_shape: list[int]
    max_abs_diff: dict[str, float]  # onnxruntime vs the PyTorch model, per output
    torch_parity: dict[str, float]  # PaddedEncoder vs the model's own forward, per output
    tolerance: float
    export_seconds: float

    @property
    def passed(self) -> bool:
        worst = max([*self.max_abs_diff.values(), *self.torch_parity.values()])
        return bool(np.isfinite(worst)) and worst <= self.tolerance

    def describe(self) -> str:
        """Human-readable summary printed by the CLI."""
        diffs = ", ".join(f"{name} {value:.2e}" for name, value in self.max_abs_diff.items())
        status = "PASS" if self.passed else "FAIL"
        return (
            f"wrote {self.onnx_path} (opset {self.opset}, {self.exporter} exporter, outputs {self.output_names})\n"
            f"parity onnxruntime vs torch on a padded batch {self.batch_shape}: max |diff| {diffs} "
            f"(tolerance {self.tolerance:.0e}): {status}"
        )


def _export_torchscript(wrapper: nn.Module, example: tuple[torch.Tensor, torch.Tensor], path: Path,
                        output_names: list[str], opset: int) -> None:
    dynamic_axes = {name: {0: "batch", 1: "sequence"} for name in [*INPUT_NAMES, *output_names]}
    with warnings.catch_warnings():  # its deprecation notice is expected; the dynamo exporter is the fallback
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(wrapper, example, str(path), input_names=list(INPUT_NAMES), output_names=output_names,
                          opset_version=opset, dynamic_axes=dynamic_axes, dynamo=False, external_data=False)


def _export_dynamo(wrapper: nn.Module, example: tuple[torch.Tensor, torch.Tensor], path: Path,
                   output_names: list[str], opset: int) -> None:
    if importlib.util.find_spec("onnxscript") is None:
        raise ImportError("the dynamo ONNX exporter needs onnxscript: pip install onnxscript")
    batch, sequence = torch.export.Dim("batch"), torch.export.Dim("sequence")
    dynamic_shapes = {"input_ids": {0: batch, 1: sequence}, "attention_mask": {0: batch, 1: sequence}}
    program = torch.onnx.export(wrapper, example, input_names=list(INPUT_NAMES), output_names=output_names,
                                opset_version=opset, dynamic_shapes=dynamic_shapes, dynamo=True, verbose=False)
    program.save(str(path))


EXPORTERS = {
    # name -> export function; "auto" tries them in this order. TorchScript: about 1 s for the tiny model and no
    # extra dependency, but deprecated since torch 2.9. Dynamo: the future default, about 20x slower, needs onnxscript.
    "torchscript": _export_torchscript,
    "dynamo": _export_dynamo,
}


def _export(wrapper: nn.Module, example: tuple[torch.Tensor, torch.Tensor], path: Path, output_names: list[str],
            opset: int, exporter: str) -> str:
    """Export with dynamic batch/sequence axes using ``exporter`` (or each in turn for "auto"); returns its name."""
    names = list(EXPORTERS) if exporter == "auto" else [exporter]
    for name in names:
        try:
            EXPORTERS[name](wrapper, example, path, output_names, opset)
            return name
        except Exception as err:
            if name == names[-1]:
                raise
            logger.warning("%s ONNX exporter failed (%s: %s); trying the next one", name, type(err).__name__, err)
    raise AssertionError("unreachable")


def _reference_outputs(model: nn.Module, head: str, input_ids: torch.Tensor,
                       attention_mask: torch.Tensor) -> list[np.ndarray]:
    """The PyTorch model's own outputs (its unpadded path) in the order of the exported outputs."""
    with torch.no_grad():
        if head == "masked-lm":  # MaskedLM returns logits only; its encoder gives the hidden states
            hidden = model.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
            logits = model(input_ids=input_ids, attention_mask=attention_mask).logits
            return [hidden.numpy(), logits.numpy()]
        return [model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state.numpy()]


def parity_batch(tokenizer, texts: tuple[str, ...] = PARITY_TEXTS) -> tuple[torch.Tensor, torch.Tensor]:
    """A right-padded batch of mixed lengths, as (input_ids, attention_mask) int64 tensors."""
    batch = tokenizer(list(texts), padding=True, return_tensors="pt")
    return batch["input_ids"].long(), batch["attention_mask"].long()


def export_onnx(
    model_dir: str | Path,
    out_dir: str | Path,
    *,
    opset: int = DEFAULT_OPSET,
    head: str = "base",
    tolerance: float = 1e-4,
    exporter: str = "auto",
) -> OnnxExportReport:
    """Export ``model_dir`` to ``out_dir/model.onnx`` and check parity with onnxruntime in fp32.

    ``head``: a key of :data:`HEADS`; ``exporter``: a key of :data:`EXPORTERS` or ``"auto"`` (each in turn).
    The parity batch (mixed lengths, right padding) is tokenized with the folder's tokenizer; the report
    (also written to ``out_dir/parity.json``) holds the max absolute
    differences. Raises ``ValueError`` for an unknown head or exporter, or an opset below 17.
    """
    from transformers import AutoModel, AutoModelForMaskedLM, AutoTokenizer

    if head not in HEADS:
        raise ValueError(f"head={head!r}: expected one of {sorted(HEADS)}")
    if exporter != "auto" and exporter not in EXPORTERS:
        raise ValueError(f"exporter={exporter!r}: expected 'auto' or one of {sorted(EXPORTERS)}")
    if opset < 17:
        raise ValueError(f"opset={opset}: need >= 17 (LayerNormalization)")
    auto_class = AutoModelForMaskedLM if head == "masked-lm" else AutoModel
    tokenizer = AutoTokenizer.from_pretrained(model_dir, trust_remote_code=True)
    model = auto_class.from_pretrained(model_dir, trust_remote_code=True, dtype=torch.float32).eval()
    output_names = ["last_hidden_state"] + (["logits"] if head == "masked-lm" else [])
    wrapper = PaddedEncoder(model, with_logits=head == "masked-lm").eval()
    input_ids, attention_mask = parity_batch(tokenizer)

    with torch.no_grad():
        ours = [t.numpy() for t in wrapper(input_ids, attention_mask)]
    references = _reference_outputs(model, head, input_ids, attention_mask)
    torch_parity = {name: float(np.abs(a - b).max()) for name, a, b in zip(output_names, ours, references, strict=True)}
    logger.info("PaddedEncoder vs model forward: %s", torch_parity)

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / ONNX_FILE
    start = time.perf_counter()
    with torch.no_grad():
        used = _export(wrapper, (input_ids, attention_mask), path, output_names, opset, exporter)
    export_seconds = time.perf_counter() - start

    ort_outputs = run_onnxruntime(path, input_ids.numpy(), attention_mask.numpy())
    max_abs_diff = {name: float(np.abs(ort_outputs[name] - ref).max())
                    for name, ref in zip(output_names, references, strict=True)}
    report = OnnxExportReport(str(path), head, opset, used, output_names, list(input_ids.shape), max_abs_diff,
                              torch_parity, tolerance, round(export_seconds, 2))
    summary = {**asdict(report), "onnx_path": ONNX_FILE, "passed": report.passed}  # no local paths on the Hub
    (out / PARITY_FILE).write_text(json.dumps(summary, indent=2) + "\n")
    log = logger.info if report.passed else logger.error
    log("%s", report.describe())
    return report


def run_onnxruntime(path: str | Path, input_ids: np.ndarray, attention_mask: np.ndarray) -> dict[str, np.ndarray]:
    """Run an exported graph on CPU with onnxruntime; returns outputs by name."""
    try:
        import onnxruntime as ort
    except ImportError as err:
        raise ImportError("onnxruntime is needed for the parity check: pip install onnxruntime") from err
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    feeds = {"input_ids": input_ids.astype(np.int64), "attention_mask": attention_mask.astype(np.int64)}
    return dict(zip(names, session.run(names, feeds), strict=True))
