"""bf16 accuracy of our unpadded varlen path against an fp32 reference, next to transformers' own bf16 error.

The tolerance adjusts itself (after nomic-ai/contrastors): our bf16 error against the fp32 eager reference must be
within 3x transformers' bf16 error against the same reference, on the same inputs, forward and backward.

    python -m bench.parity --layers 4 --out outputs/bench/parity.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from configuration_clinical_modernbert import ClinicalModernBertConfig  # noqa: E402
from modeling_clinical_modernbert import ClinicalModernBertForMaskedLM  # noqa: E402


def relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    return ((got.float() - want.float()).norm() / want.float().norm().clamp(min=1e-12)).item()


def _native(model: ClinicalModernBertForMaskedLM, attn_implementation: str) -> torch.nn.Module:
    import transformers

    config = transformers.ModernBertConfig(**model.config.to_modernbert_dict())
    config._attn_implementation = attn_implementation
    native = transformers.ModernBertForMaskedLM(config)
    native.load_state_dict(model.state_dict())
    return native


def _run(model: torch.nn.Module, ids: torch.Tensor, mask: torch.Tensor, labels: torch.Tensor,
         autocast: bool = False):
    """Forward + backward on a padded batch; returns (hidden at real tokens, {param: grad})."""
    model.zero_grad(set_to_none=True)
    with torch.autocast(ids.device.type, dtype=torch.bfloat16, enabled=autocast):
        out = model(input_ids=ids, attention_mask=mask, labels=labels, output_hidden_states=True)
    out.loss.backward()
    hidden = out.hidden_states[-1][mask.bool()]
    grads = {name: p.grad.detach().float().clone() for name, p in model.named_parameters() if p.grad is not None}
    return hidden.detach().float(), grads


# Gradients of the attention weights of a global layer and of a local (sliding window) layer, and overall.
PICKS = {"layer0_global_Wqkv": "model.layers.0.attn.Wqkv.weight",
         "layer1_local_Wqkv": "model.layers.1.attn.Wqkv.weight",
         "embeddings": "model.embeddings.tok_embeddings.weight"}


def measure(num_layers: int = 4, lengths: tuple[int, ...] = (1500, 700, 300, 90, 17), seed: int = 0,
            device: str = "cuda", varlen_kernel: str = "auto") -> dict:
    """Errors against our fp32 eager reference, in two precisions.

    - top level (`forward`, `backward`): bf16 weights, ours varlen vs transformers sdpa;
    - `autocast`: fp32 weights under bf16 autocast, as the Trainer runs with `bf16=True`: ours in its training
      configuration (compiled layers, bf16 residual stream, fused loss), ours with an fp32 residual stream, and
      transformers sdpa.
    """
    torch.manual_seed(seed)
    config = ClinicalModernBertConfig.from_preset("base", num_hidden_layers=num_layers, attention_backend="eager")
    reference = ClinicalModernBertForMaskedLM(config).to(device).train()
    batch, seq_len = len(lengths), max(lengths)
    generator = torch.Generator().manual_seed(seed + 1)
    ids = torch.randint(5, 50000, (batch, seq_len), generator=generator)
    mask = (torch.arange(seq_len)[None] < torch.tensor(lengths)[:, None]).long()
    labels = torch.where((torch.rand(batch, seq_len, generator=generator) < 0.3) & mask.bool(), ids, -100)
    ids, mask, labels = ids.to(device), mask.to(device), labels.to(device)

    ref_hidden, ref_grads = _run(reference, ids, mask, labels)

    def errors(hidden: torch.Tensor, grads: dict[str, torch.Tensor]) -> dict[str, float]:
        return {"forward": relative_error(hidden, ref_hidden),
                **{label: relative_error(grads[name], ref_grads[name]) for label, name in PICKS.items()}}

    def ours(dtype: torch.dtype, **overrides) -> ClinicalModernBertForMaskedLM:
        model = ClinicalModernBertForMaskedLM(config).to(device)
        model.load_state_dict(reference.state_dict())
        for key, value in {"attention_backend": "flash_attention_2", "varlen_kernel": varlen_kernel,
                           **overrides}.items():
            setattr(model.config, key, value)
        return model.to(dtype).train()

    bf16_ours = errors(*_run(ours(torch.bfloat16), ids, mask, labels))
    bf16_native = errors(*_run(_native(reference, "sdpa").to(device).to(torch.bfloat16).train(), ids, mask, labels))
    autocast = {
        "ours_training": errors(*_run(ours(torch.float32, compile_layers="on"), ids, mask, labels, autocast=True)),
        "ours_fp32_residual": errors(*_run(ours(torch.float32, compile_layers="on", residual_dtype="float32"),
                                           ids, mask, labels, autocast=True)),
        "transformers_sdpa": errors(*_run(_native(reference, "sdpa").to(device).train(), ids, mask, labels,
                                          autocast=True)),
    }
    return {
        "device": torch.cuda.get_device_name() if device == "cuda" else device, "torch": torch.__version__,
        "layers": num_layers, "lengths": list(lengths), "varlen_kernel": varlen_kernel,
        "forward": {"ours_varlen_bf16": bf16_ours["forward"], "transformers_sdpa_bf16": bf16_native["forward"]},
        "backward": {label: {"ours_varlen_bf16": bf16_ours[label], "transformers_sdpa_bf16": bf16_native[label]}
                     for label in PICKS},
        "autocast": autocast,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--varlen-kernel", default="auto", help="config.varlen_kernel of ours: auto, flash-attn-4, "
                        "flash-attn or torch")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    result = measure(args.layers, varlen_kernel=args.varlen_kernel)
    print(f"{'quantity':<28} {'ours varlen bf16':>18} {'transformers sdpa bf16':>24} {'ratio':>7}")
    rows = {"forward hidden": result["forward"], **{f"grad {k}": v for k, v in result["backward"].items()}}
    for label, row in rows.items():
        ratio = row["ours_varlen_bf16"] / row["transformers_sdpa_bf16"]
        print(f"{label:<28} {row['ours_varlen_bf16']:>18.3e} {row['transformers_sdpa_bf16']:>24.3e} {ratio:>7.2f}")
    print("\nbf16 autocast, fp32 weights (relative error vs the fp32 reference):")
    columns = list(result["autocast"])
    print(f"{'quantity':<28} " + " ".join(f"{c:>22}" for c in columns))
    for quantity in result["autocast"][columns[0]]:
        print(f"{quantity:<28} " + " ".join(f"{result['autocast'][c][quantity]:>22.3e}" for c in columns))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
