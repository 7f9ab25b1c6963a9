"""Is the pretrained-vs-random comparison wired correctly? Loads both models the way the runner does and checks.

1. tokenizer: the model folder's tokenizer encodes like the pretraining tokenizer (cache/tokenizer-*), both models
   share it, and the runner's inputs start with [CLS] and end with [SEP] like the packed pretraining rows;
2. weights: the runner's `load_task_model` reports only the task head (`classifier.*`) as newly initialised, and
   every other tensor equals the checkpoint's (so the encoder and the MLM prediction head really load);
3. the random-init twin really is random (no tensor equal to the pretrained one except LayerNorm ones/zeros);
4. config: dropout, pooling and every other field that shapes fine-tuning are identical for both models;
5. scale: norms of what the classifier reads (pooled encoder output, prediction-head output) and the initial logits.

    python -m eval.analysis.sanity_checks --model outputs/demo --random outputs/demo-random-init
"""

from __future__ import annotations

import argparse
import glob
import json
from pathlib import Path

import torch
from safetensors.torch import load_file

from eval import runner
from eval.data import load_task_data
from eval.tasks import get_task


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True)
    parser.add_argument("--random", required=True)
    parser.add_argument("--task", default="icd10cm_chapter")
    parser.add_argument("--pretrain-tokenizer", help="pretraining tokenizer folder (default: newest cache/tokenizer-*)")
    args = parser.parse_args(argv)
    report: dict = {}
    spec = get_task(args.task)
    data = load_task_data(spec, max_train=1000, max_eval=300)
    texts = list(data.splits["train"]["text"][:200])

    # 1. tokenizers
    tok_model, tok_random = runner.load_tokenizer(args.model), runner.load_tokenizer(args.random)
    pre_dir = args.pretrain_tokenizer or max(glob.glob("cache/tokenizer-*"), key=lambda p: Path(p).stat().st_mtime)
    from transformers import AutoTokenizer

    tok_pre = AutoTokenizer.from_pretrained(pre_dir)
    enc = [tok(texts)["input_ids"] for tok in (tok_model, tok_random, tok_pre)]
    report["tokenizer_same_as_pretraining"] = enc[0] == enc[2]
    report["tokenizer_same_for_both_models"] = enc[0] == enc[1]
    first = enc[0][0]
    report["runner_input_example"] = tok_model.convert_ids_to_tokens(first)
    report["starts_cls_ends_sep"] = first[0] == tok_model.cls_token_id and first[-1] == tok_model.sep_token_id
    report["unk_rate"] = sum(i == tok_model.unk_token_id for row in enc[0] for i in row) / sum(map(len, enc[0]))

    # 2. weights loaded
    label_list = data.label_list
    checkpoint = load_file(str(Path(args.model) / "model.safetensors"))
    for name, source in (("pretrained", args.model), ("random", args.random)):
        torch.manual_seed(0)
        model = runner.load_task_model(source, spec, label_list)
        saved = load_file(str(Path(source) / "model.safetensors"))
        state = model.state_dict()
        differing = [k for k in state if k in saved and not torch.equal(state[k], saved[k])]
        report[f"{name}_new_parameters"] = model.eval_new_parameters
        report[f"{name}_loaded_but_different"] = differing
        report[f"{name}_checkpoint_keys_unused"] = sorted(set(saved) - set(state))
    random_saved = load_file(str(Path(args.random) / "model.safetensors"))
    same = [k for k in checkpoint if k in random_saved and torch.equal(checkpoint[k], random_saved[k])]
    report["tensors_equal_pretrained_vs_random"] = same
    report["embedding_std"] = {"pretrained": float(checkpoint["model.embeddings.tok_embeddings.weight"].std()),
                               "random": float(random_saved["model.embeddings.tok_embeddings.weight"].std())}
    report["head_norm_weight_mean"] = {"pretrained": float(checkpoint["head.norm.weight"].mean()),
                                       "random": float(random_saved["head.norm.weight"].mean())}
    report["final_norm_weight_mean"] = {"pretrained": float(checkpoint["model.final_norm.weight"].mean()),
                                        "random": float(random_saved["model.final_norm.weight"].mean())}

    # 4. configs
    cfg_a, cfg_b = runner.load_config(args.model).to_dict(), runner.load_config(args.random).to_dict()
    report["config_differences"] = {k: (cfg_a.get(k), cfg_b.get(k)) for k in sorted(set(cfg_a) | set(cfg_b))
                                    if cfg_a.get(k) != cfg_b.get(k) and k not in ("transformers_version",)}
    report["fine_tuning_fields"] = {k: cfg_a.get(k) for k in ("classifier_pooling", "classifier_dropout",
                                                              "embedding_dropout", "mlp_dropout", "attention_dropout",
                                                              "classifier_activation")}

    # 5. scale of what the classifier reads
    for name, source in (("pretrained", args.model), ("random", args.random)):
        torch.manual_seed(0)
        model = runner.load_task_model(source, spec, label_list).eval()
        batch = tok_model(texts[:64], padding=True, return_tensors="pt")
        with torch.no_grad():
            hidden = model.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
            pooled = runner.mean_pool(hidden, batch["attention_mask"])
            head = model.head(pooled)
            logits = model.classifier(head)
        normed = torch.nn.functional.normalize(pooled, dim=-1)
        report[f"{name}_scale"] = {
            "pooled_norm": float(pooled.norm(dim=-1).mean()),
            "pooled_mean_cosine": float((normed @ normed.T).mean()),
            "head_norm": float(head.norm(dim=-1).mean()),
            "initial_logit_std": float(logits.std()),
        }
    print(json.dumps(report, indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
