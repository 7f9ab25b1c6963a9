"""Tests for the ONNX export and its onnxruntime parity check."""

from __future__ import annotations

import contextlib
import io
import json

import numpy as np
import pytest
import torch
from publish_fixtures import build_tiny_model_folder

from publish.__main__ import main
from publish.onnx import PaddedEncoder, export_onnx, run_onnxruntime
from publish.push import check_model_folder

pytest.importorskip("onnxruntime")

# A local window of +-4 tokens, shorter than the parity batch, so the sliding-window masks are exercised.
LOCAL_ATTENTION = 8


@pytest.fixture(scope="module")
def mlm_folder(tmp_path_factory):
    return build_tiny_model_folder(tmp_path_factory.mktemp("onnx") / "mlm", head="masked-lm",
                                   local_attention=LOCAL_ATTENTION)


@pytest.fixture(scope="module")
def cli_export(mlm_folder):
    """The CLI export of the base encoder into the model folder's onnx/ (as it would be published): the output
    folder and what the CLI printed."""
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert main(["onnx", str(mlm_folder), str(mlm_folder / "onnx")]) == 0
    return mlm_folder / "onnx", printed.getvalue()


@pytest.fixture(scope="module")
def base_export(cli_export):
    return cli_export[0]


def _model_outputs(folder, input_ids, attention_mask):
    from transformers import AutoModelForMaskedLM

    model = AutoModelForMaskedLM.from_pretrained(folder, trust_remote_code=True).eval()
    with torch.no_grad():
        hidden = model.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        logits = model(input_ids=input_ids, attention_mask=attention_mask).logits
    return hidden.numpy(), logits.numpy()


def test_cli_export_passes_parity_and_is_publishable(cli_export, base_export, mlm_folder):
    lines = cli_export[1].splitlines()
    outputs = "outputs ['last_hidden_state']"
    assert lines[0] == f"wrote {base_export / 'model.onnx'} (opset 18, torchscript exporter, {outputs})"
    assert lines[1].startswith("parity onnxruntime vs torch on a padded batch [3, ")
    assert lines[1].endswith("(tolerance 1e-04): PASS")
    parity = json.loads((base_export / "parity.json").read_text())
    assert parity["passed"] is True and parity["opset"] == 18 and parity["onnx_path"] == "model.onnx"
    assert parity["batch_shape"][0] == 3
    assert parity["max_abs_diff"]["last_hidden_state"] <= 1e-4
    assert parity["torch_parity"]["last_hidden_state"] <= 1e-5
    check = check_model_folder(mlm_folder)
    assert check.ok, check.problems()
    assert {"onnx/model.onnx", "onnx/parity.json"} <= {f.path for f in check.files}


def test_dynamic_batch_and_sequence_with_left_padding(base_export, mlm_folder):
    """A batch of another size and a longer sequence than at export time, padded on the left."""
    pad, ids = 0, [7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31, 33, 35, 37, 39, 41, 43, 45]
    rows = [[2, *ids, 3], [pad] * 16 + [2, 8, 10, 12, 14, 3], [pad] * 20 + [2, 3]]
    input_ids = torch.tensor(rows)
    attention_mask = (input_ids != pad).long()
    assert input_ids.shape == (3, 22)
    ort = run_onnxruntime(base_export / "model.onnx", input_ids.numpy(), attention_mask.numpy())
    hidden, _ = _model_outputs(mlm_folder, input_ids, attention_mask)
    assert ort["last_hidden_state"].shape == (3, 22, 32)
    assert np.abs(ort["last_hidden_state"] - hidden).max() <= 1e-4
    assert not ort["last_hidden_state"][1, :16].any()  # zeros at padding, as in PyTorch


def test_masked_lm_export_has_logits(mlm_folder, tmp_path):
    report = export_onnx(mlm_folder, tmp_path, head="masked-lm")
    assert report.passed and report.output_names == ["last_hidden_state", "logits"]
    input_ids = torch.tensor([[2, 7, 4, 9, 3], [2, 4, 3, 0, 0]])
    attention_mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    ort = run_onnxruntime(tmp_path / "model.onnx", input_ids.numpy(), attention_mask.numpy())
    _, logits = _model_outputs(mlm_folder, input_ids, attention_mask)
    assert ort["logits"].shape == (2, 5, 54)  # vocab: 5 special tokens + 49 corpus words
    assert np.abs(ort["logits"] - logits).max() <= 1e-4


def test_padded_encoder_matches_model_with_sliding_window(mlm_folder):
    from transformers import AutoModelForMaskedLM

    model = AutoModelForMaskedLM.from_pretrained(mlm_folder, trust_remote_code=True).eval()
    assert [layer.attn.local_window for layer in model.model.layers] == [None, LOCAL_ATTENTION // 2]
    input_ids = torch.arange(5, 35).reshape(2, 15)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, 11:] = 0
    with torch.no_grad():
        hidden, logits = PaddedEncoder(model, with_logits=True)(input_ids, attention_mask)
        reference = model(input_ids=input_ids, attention_mask=attention_mask).logits
        reference_hidden = model.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
    assert torch.allclose(logits, reference, atol=1e-5)
    assert torch.allclose(hidden, reference_hidden, atol=1e-5)
    with pytest.raises(TypeError, match="no MLM head"):
        PaddedEncoder(model.model, with_logits=True)


@pytest.mark.slow
def test_dynamo_exporter(mlm_folder, tmp_path):
    pytest.importorskip("onnxscript")
    report = export_onnx(mlm_folder, tmp_path, exporter="dynamo")
    assert report.exporter == "dynamo" and report.passed
    input_ids = torch.tensor([[2, 7, 9, 11, 13, 15, 17, 19, 21, 3], [2, 8, 3, 0, 0, 0, 0, 0, 0, 0]])
    attention_mask = (input_ids != 0).long()
    ort = run_onnxruntime(tmp_path / "model.onnx", input_ids.numpy(), attention_mask.numpy())
    hidden, _ = _model_outputs(mlm_folder, input_ids, attention_mask)
    assert np.abs(ort["last_hidden_state"] - hidden).max() <= 1e-4


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"head": "qa"}, "head='qa'"), ({"opset": 16}, "opset=16"), ({"exporter": "tflite"}, "exporter='tflite'")],
)
def test_bad_arguments(mlm_folder, tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        export_onnx(mlm_folder, tmp_path, **kwargs)
