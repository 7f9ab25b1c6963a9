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


def _run(model: torch.nn.Module, ids: torch.Tensor, mask: torch.Tensor, labels: torch.Tensor):
    """Forward + backward on a padded batch; returns (hidden at real tokens, {param: grad})."""
    model.zero_grad(set_to_none=True)
    out = model(input_ids=ids, attention_mask=mask, labels=labels, output_hidden_states=True)
    out.loss.backward()
    hidden = out.hidden_states[-1][mask.bool()]
    grads = {name: p.grad.detach().float().clone() for name, p in model.named_parameters() if p.grad is not None}
    return hidden.detach().float(), grads


def measure(num_layers: int = 4, lengths: tuple[int, ...] = (1500, 700, 300, 90, 17), seed: int = 0,
            device: str = "cuda") -> dict:
    """Errors of ours (varlen bf16) and transformers (sdpa bf16) against our fp32 eager reference."""
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

    ours = ClinicalModernBertForMaskedLM(config).to(device)
    ours.load_state_dict(reference.state_dict())
    ours = ours.to(torch.bfloat16).train()
    ours.config.attention_backend = "flash_attention_2"
    our_hidden, our_grads = _run(ours, ids, mask, labels)

    native = _native(reference, "sdpa").to(device).to(torch.bfloat16).train()
    native_hidden, native_grads = _run(native, ids, mask, labels)

    result = {"device": torch.cuda.get_device_name() if device == "cuda" else device, "torch": torch.__version__,
              "layers": num_layers, "lengths": list(lengths), "forward": {}, "backward": {}}
    result["forward"] = {"ours_varlen_bf16": relative_error(our_hidden, ref_hidden),
                         "transformers_sdpa_bf16": relative_error(native_hidden, ref_hidden)}
    # Gradients of the attention weights of a global layer and of a local (sliding window) layer, and overall.
    picks = {"layer0_global_Wqkv": "model.layers.0.attn.Wqkv.weight",
             "layer1_local_Wqkv": "model.layers.1.attn.Wqkv.weight",
             "embeddings": "model.embeddings.tok_embeddings.weight"}
    for label, name in picks.items():
        result["backward"][label] = {"ours_varlen_bf16": relative_error(our_grads[name], ref_grads[name]),
                                     "transformers_sdpa_bf16": relative_error(native_grads[name], ref_grads[name])}
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    result = measure(args.layers)
    print(f"{'quantity':<28} {'ours varlen bf16':>18} {'transformers sdpa bf16':>24} {'ratio':>7}")
    rows = {"forward hidden": result["forward"], **{f"grad {k}": v for k, v in result["backward"].items()}}
    for label, row in rows.items():
        ratio = row["ours_varlen_bf16"] / row["transformers_sdpa_bf16"]
        print(f"{label:<28} {row['ours_varlen_bf16']:>18.3e} {row['transformers_sdpa_bf16']:>24.3e} {ratio:>7.2f}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
