"""Hub packaging and round trips: our folders load anywhere through AutoModel*, native folders convert both ways."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
import transformers
from conftest import make_tiny_tokenizer, tiny_config

from configuration_clinical_modernbert import ClinicalModernBertConfig
from modeling_clinical_modernbert import (
    ClinicalModernBertForMaskedLM,
    ClinicalModernBertForMultipleChoice,
    ClinicalModernBertForQuestionAnswering,
    ClinicalModernBertForSequenceClassification,
    ClinicalModernBertForTokenClassification,
    ClinicalModernBertModel,
)

pytestmark = pytest.mark.oldest  # also run against the oldest supported transformers

HEADS = {
    "AutoModel": ClinicalModernBertModel,
    "AutoModelForMaskedLM": ClinicalModernBertForMaskedLM,
    "AutoModelForSequenceClassification": ClinicalModernBertForSequenceClassification,
    "AutoModelForTokenClassification": ClinicalModernBertForTokenClassification,
    "AutoModelForQuestionAnswering": ClinicalModernBertForQuestionAnswering,
    "AutoModelForMultipleChoice": ClinicalModernBertForMultipleChoice,
}


def first_output(outputs) -> torch.Tensor:
    for key in ("last_hidden_state", "logits", "start_logits"):
        if getattr(outputs, key, None) is not None:
            return getattr(outputs, key)
    raise AssertionError(f"no known output in {type(outputs)}")


def test_saved_folder_is_a_complete_hub_repository(tmp_path):
    model = ClinicalModernBertForMaskedLM(tiny_config())
    model.save_pretrained(tmp_path)
    names = {p.name for p in tmp_path.iterdir()}
    assert {"config.json", "model.safetensors", "configuration_clinical_modernbert.py",
            "modeling_clinical_modernbert.py"} <= names
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["model_type"] == "clinical_modernbert"
    for auto_class, model_class in HEADS.items():
        assert config["auto_map"][auto_class] == f"modeling_clinical_modernbert.{model_class.__name__}"
    assert config["auto_map"]["AutoConfig"] == "configuration_clinical_modernbert.ClinicalModernBertConfig"


def test_every_auto_class_loads_in_a_fresh_offline_process(tmp_path):
    """Each head saved by us loads through its AutoModel* class in a new process that cannot see this checkout."""
    torch.manual_seed(0)
    ids = torch.randint(5, 128, (2, 24))
    mask = torch.ones_like(ids)
    mask[1, 15:] = 0
    expected = {}
    for auto_class, model_class in HEADS.items():
        model = model_class(tiny_config(num_labels=3)).eval()
        model.save_pretrained(tmp_path / auto_class)
        inputs = (ids[:, None].expand(2, 2, 24), mask[:, None].expand(2, 2, 24)) if "MultipleChoice" in auto_class \
            else (ids, mask)
        with torch.no_grad():
            expected[auto_class] = first_output(model(input_ids=inputs[0], attention_mask=inputs[1]))
    torch.save({"ids": ids, "mask": mask}, tmp_path / "inputs.pt")
    script = textwrap.dedent(f"""
        import sys, torch, transformers
        assert not any('configuration_clinical_modernbert' in m for m in sys.modules)
        data = torch.load({str(tmp_path / "inputs.pt")!r})
        results = {{}}
        for auto_class in {list(HEADS)!r}:
            model = getattr(transformers, auto_class).from_pretrained(
                {str(tmp_path)!r} + "/" + auto_class, trust_remote_code=True).eval()
            ids, mask = data["ids"], data["mask"]
            if "MultipleChoice" in auto_class:
                ids, mask = ids[:, None].expand(2, 2, 24), mask[:, None].expand(2, 2, 24)
            with torch.no_grad():
                out = model(input_ids=ids, attention_mask=mask)
            for key in ("last_hidden_state", "logits", "start_logits"):
                if getattr(out, key, None) is not None:
                    results[auto_class] = (type(model).__name__, getattr(out, key))
                    break
        torch.save(results, {str(tmp_path / "results.pt")!r})
    """)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(HF_HUB_OFFLINE="1", HF_MODULES_CACHE=str(tmp_path / "modules"))
    subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, check=True, timeout=300)
    results = torch.load(tmp_path / "results.pt")
    for auto_class, model_class in HEADS.items():
        class_name, got = results[auto_class]
        assert class_name == model_class.__name__
        assert torch.equal(got, expected[auto_class]), auto_class


def test_native_modernbert_folder_round_trip(tmp_path):
    """transformers ModernBERT -> ours (config converted, every weight loaded) -> native export -> vanilla load."""
    torch.manual_seed(1)
    native_config = transformers.ModernBertConfig(**tiny_config().to_modernbert_dict())
    native = transformers.ModernBertForMaskedLM(native_config).eval()
    native.save_pretrained(tmp_path / "native")

    ours = ClinicalModernBertForMaskedLM.from_pretrained(tmp_path / "native").eval()
    assert isinstance(ours.config, ClinicalModernBertConfig)
    assert ours.config.layer_types == ["full_attention", "sliding_attention", "sliding_attention"]
    for name, tensor in native.state_dict().items():
        assert torch.equal(ours.state_dict()[name], tensor), f"{name} was not loaded"

    ids = torch.randint(5, 128, (2, 40))
    mask = torch.ones_like(ids)
    mask[0, 30:] = 0
    ours.save_pretrained_native(tmp_path / "exported")
    exported_config = json.loads((tmp_path / "exported" / "config.json").read_text())
    assert exported_config["model_type"] == "modernbert" and "auto_map" not in exported_config
    reloaded = transformers.AutoModelForMaskedLM.from_pretrained(tmp_path / "exported").eval()
    assert type(reloaded) is transformers.ModernBertForMaskedLM
    with torch.no_grad():
        want = native(input_ids=ids, attention_mask=mask).logits
        got_ours = ours(input_ids=ids, attention_mask=mask).logits
        got_back = reloaded(input_ids=ids, attention_mask=mask).logits
    real = mask.bool()
    assert (got_ours[real] - want[real]).abs().max().item() <= 1e-4
    assert torch.equal(got_back, want)


def test_fill_mask_pipeline_on_our_folder(tmp_path):
    model = ClinicalModernBertForMaskedLM(tiny_config())
    model.save_pretrained(tmp_path)
    make_tiny_tokenizer(tmp_path)
    fill = transformers.pipeline("fill-mask", model=str(tmp_path), trust_remote_code=True, top_k=5)
    predictions = fill("the patient has type [MASK] mellitus")
    assert len(predictions) == 5
    assert all({"score", "token", "token_str", "sequence"} <= set(p) for p in predictions)
    scores = [p["score"] for p in predictions]
    assert scores == sorted(scores, reverse=True) and 0 < sum(scores) <= 1.0 + 1e-6


@pytest.mark.parametrize("major_keys", ["4.x", "5.x"])
def test_config_reads_both_transformers_key_generations(major_keys):
    if major_keys == "4.x":
        raw = {"model_type": "modernbert", "global_attn_every_n_layers": 2, "num_hidden_layers": 4,
               "global_rope_theta": 80000.0, "local_rope_theta": 5000.0, "reference_compile": True}
    else:
        raw = {"model_type": "modernbert", "num_hidden_layers": 4,
               "layer_types": ["full_attention", "sliding_attention", "full_attention", "sliding_attention"],
               "rope_parameters": {"full_attention": {"rope_type": "default", "rope_theta": 80000.0},
                                   "sliding_attention": {"rope_type": "default", "rope_theta": 5000.0}}}
    config = ClinicalModernBertConfig.from_modernbert_config(raw)
    assert config.layer_types == ["full_attention", "sliding_attention"] * 2
    assert config.global_attn_every_n_layers == 2
    assert (config.global_rope_theta, config.local_rope_theta) == (80000.0, 5000.0)
    assert not hasattr(config, "reference_compile")
