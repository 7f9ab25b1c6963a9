"""Tests for the guarded Hub push (publish.push and ``python -m publish push``)."""

from __future__ import annotations

import json
import logging
import time

import huggingface_hub
import pytest
from publish_fixtures import FAKE_FILES, write_fake_model_folder

from publish.__main__ import main
from publish.push import (
    DEFAULT_REFUSAL,
    HubUnavailableError,
    PushRefused,
    _escape_glob,
    check_model_folder,
    clinical_text_markers,
    glob_match,
    looks_like_clinical_text,
    push_to_hub,
)

# Synthetic text in the layout of a MIMIC-IV discharge note (no real patient data).
FAKE_NOTE = (
    "Name:  ___  Unit No:   ___\n"
    "Admission Date:  ___  Discharge Date:   ___\n"
    "Chief Complaint:\ncough\n"
    "History of Present Illness:\n62 year old with cough for three days.\n"
)


@pytest.fixture
def folder(tmp_path):
    return write_fake_model_folder(tmp_path / "model")


@pytest.fixture
def no_network(monkeypatch):
    """Fail the test if anything tries to reach the Hub."""

    def forbidden(*args, **kwargs):
        raise AssertionError("network call attempted")

    monkeypatch.setattr(huggingface_hub, "create_repo", forbidden)
    monkeypatch.setattr(huggingface_hub, "upload_folder", forbidden)


def test_valid_folder_passes_with_exact_file_list(folder):
    check = check_model_folder(folder)
    assert check.ok, check.problems()
    assert {f.path: f.size for f in check.files} == {name: len(data) for name, data in FAKE_FILES.items()}
    assert check.warnings == []
    reasons = {f.path: f.reason for f in check.files}
    assert reasons["modeling_clinical_modernbert.py"] == "remote code referenced by auto_map"


@pytest.mark.parametrize(
    ("stray", "reason_part"),
    [
        ("notes.csv", "data file"),
        ("train/shard-0.jsonl", "data file"),
        ("optimizer.pt", "optimizer state"),
        ("pytorch_model.bin", "pickle"),
        ("trainer_state.json", "Trainer log and state"),
        ("corpus.txt", "not a known tokenizer vocabulary"),
        ("pubmed.xml.gz", "data file"),
        ("checkpoint-500/model.safetensors", "Trainer checkpoint directory"),
        ("helper.py", "not referenced by auto_map"),
        ("weights.onnx", DEFAULT_REFUSAL),
    ],
)
def test_stray_file_refused_and_named(folder, stray, reason_part, capsys):
    (folder / stray).parent.mkdir(parents=True, exist_ok=True)
    (folder / stray).write_bytes(b"a,b\n1,2\n")
    with pytest.raises(PushRefused) as info:
        push_to_hub(folder, "lab/model", dry_run=True)
    assert [(r.path, reason_part in r.reason) for r in info.value.check.refused] == [(stray, True)]
    assert f"{stray}: " in str(info.value)
    # The CLI exits 2 and names the file too.
    assert main(["push", str(folder), "--repo-id", "lab/model", "--dry-run"]) == 2
    assert stray in capsys.readouterr().err


def test_caches_silently_excluded(folder):
    for rel in ("__pycache__/modeling.cpython-311.pyc", "cache/tokenized.arrow", ".git/HEAD", "stray.pyc"):
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).write_bytes(b"x")
    check = check_model_folder(folder)
    assert check.ok
    assert sorted(r.path for r in check.excluded) == [".git/", "__pycache__/", "cache/", "stray.pyc"]
    assert sorted(f.path for f in check.files) == sorted(FAKE_FILES)


def test_dry_run_lists_files_and_sizes_without_network(folder, no_network, capsys):
    assert main(["push", str(folder), "--repo-id", "lab/model", "--dry-run"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "dry run: would upload to lab/model (private):"
    listed = {line.split()[0]: line.split()[1] for line in out[1:-1]}
    assert listed == {name: str(len(data)) for name, data in FAKE_FILES.items()}
    assert out[-1].startswith(f"8 files, {sum(len(d) for d in FAKE_FILES.values())} bytes (")


def test_offline_push_fails_fast_and_clearly(folder, no_network, monkeypatch, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.monotonic()
    with pytest.raises(HubUnavailableError, match="HF_HUB_OFFLINE is set"):
        push_to_hub(folder, "lab/model", token="hf_test")
    assert main(["push", str(folder), "--repo-id", "lab/model", "--token", "hf_test"]) == 1
    assert "--dry-run" in capsys.readouterr().err
    assert time.monotonic() - start < 5


def test_connection_error_becomes_actionable_error(folder, monkeypatch):
    import httpx2

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)

    def unreachable(*args, **kwargs):
        raise httpx2.ConnectError("Name or service not known")

    monkeypatch.setattr(huggingface_hub, "create_repo", unreachable)
    with pytest.raises(HubUnavailableError, match="cannot reach the Hugging Face Hub"):
        push_to_hub(folder, "lab/model", token="hf_test")


def test_missing_token_is_reported_before_network(folder, no_network, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: None)
    with pytest.raises(HubUnavailableError, match="no Hugging Face token"):
        push_to_hub(folder, "lab/model")


@pytest.mark.parametrize(("public", "private"), [(False, True), (True, False)])
def test_push_uploads_exactly_the_checked_files(folder, monkeypatch, public, private):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_TOKEN", "hf_env")
    (folder / "__pycache__").mkdir()
    (folder / "__pycache__" / "x.pyc").write_bytes(b"x")
    calls = {}

    def create_repo(repo_id, **kwargs):
        calls["create_repo"] = (repo_id, kwargs)
        return f"https://huggingface.co/{repo_id}"

    def upload_folder(**kwargs):
        calls["upload_folder"] = kwargs

    monkeypatch.setattr(huggingface_hub, "create_repo", create_repo)
    monkeypatch.setattr(huggingface_hub, "upload_folder", upload_folder)
    result = push_to_hub(folder, "lab/model", public=public)
    assert calls["create_repo"] == ("lab/model", {"private": private, "exist_ok": True, "token": "hf_env"})
    upload = calls["upload_folder"]
    assert (upload["repo_id"], upload["folder_path"], upload["token"]) == ("lab/model", str(folder), "hf_env")
    assert sorted(upload["allow_patterns"]) == sorted(FAKE_FILES)
    assert result.private is private and result.repo_url == "https://huggingface.co/lab/model"


def test_missing_readme_warns_but_passes(folder):
    (folder / "README.md").unlink()
    check = check_model_folder(folder)
    assert check.ok
    assert [w.split(":")[0] for w in check.warnings] == ["README.md"]


@pytest.mark.parametrize(
    ("change", "error_start"),
    [
        ("no_config", "config.json: missing"),
        ("no_auto_map", "config.json: model_type 'clinical_modernbert' needs an auto_map"),
        ("no_modeling_py", "modeling_clinical_modernbert.py: referenced by config.json auto_map['AutoModel']"),
        ("no_config_py", "configuration_clinical_modernbert.py: referenced by config.json auto_map['AutoConfig']"),
        ("no_weights", "model.safetensors: missing"),
        ("no_tokenizer", "tokenizer.json: missing"),
        ("missing_shard", "model-00002-of-00002.safetensors: listed in model.safetensors.index.json but missing"),
    ],
)
def test_structural_errors(folder, change, error_start):
    if change == "no_config":
        (folder / "config.json").unlink()
    elif change == "no_auto_map":
        (folder / "config.json").write_text(json.dumps({"model_type": "clinical_modernbert"}))
    elif change == "no_modeling_py":
        (folder / "modeling_clinical_modernbert.py").unlink()
    elif change == "no_config_py":
        (folder / "configuration_clinical_modernbert.py").unlink()
    elif change == "no_weights":
        (folder / "model.safetensors").unlink()
    elif change == "no_tokenizer":
        (folder / "tokenizer.json").unlink()
    elif change == "missing_shard":
        (folder / "model.safetensors").unlink()
        (folder / "model-00001-of-00002.safetensors").write_bytes(FAKE_FILES["model.safetensors"])
        weight_map = {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}
        (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    check = check_model_folder(folder)
    assert not check.ok
    assert [e for e in check.errors if e.startswith(error_start)], check.errors


def test_sharded_weights_and_st_onnx_files_allowed(folder):
    (folder / "model.safetensors").unlink()
    weight_map = {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    extra = ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors", "modules.json",
             "sentence_bert_config.json", "config_sentence_transformers.json", "1_Pooling/config.json",
             "onnx/model.onnx"]
    for rel in extra:
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).write_bytes(FAKE_FILES["model.safetensors"] if rel.endswith(".safetensors") else b"{}")
    check = check_model_folder(folder)
    assert check.ok, check.problems()
    assert len(check.files) == len(FAKE_FILES) - 1 + 1 + len(extra)


def test_clinical_text_markers_counts_by_hand():
    deid, sections = clinical_text_markers(FAKE_NOTE)
    assert deid == 4
    assert sections == ["admission date", "chief complaint", "history of present illness"]
    assert clinical_text_markers("[**Hospital1 18**] on [**2150-3-2**]") == (2, [])
    # Markdown rules (a line of 3 or more underscores) are not placeholders.
    assert clinical_text_markers("intro\n___\nmore text\n_____\n") == (0, [])


def test_model_card_with_note_text_refused(folder):
    (folder / "README.md").write_text("# Model\n\nExample input:\n\n" + FAKE_NOTE)
    check = check_model_folder(folder)
    assert [(r.path, r.reason.startswith("looks like clinical note text")) for r in check.refused] == [
        ("README.md", True)
    ]


def test_model_card_mentioning_a_section_passes(folder):
    card = "# Model\n\nTrained on discharge summaries; we drop the\nChief Complaint: section and ___ placeholders.\n"
    (folder / "README.md").write_text(card)
    assert looks_like_clinical_text(card) is None
    assert check_model_folder(folder).ok


def test_unknown_text_file_with_note_text_says_so(folder):
    (folder / "sample").write_text(FAKE_NOTE)
    check = check_model_folder(folder)
    assert [r.path for r in check.refused] == ["sample"]
    assert check.refused[0].reason.startswith("looks like clinical note text")
    assert check.refused[0].reason.endswith(DEFAULT_REFUSAL)


@pytest.mark.parametrize(
    ("name", "content", "reason_part"),
    [
        ("eval_results.json", json.dumps({"mlm_accuracy": 0.5, "example": "x" * 201}), "201-character string"),
        ("eval_results.json", "[1, 2]", "top level is list"),
        ("loss.png", "step,loss\n1,2.0\n", "not a PNG image"),
        ("model.safetensors", "step,loss\n1,2.0\n", "not a safetensors file (header length"),
        ("model.safetensors", "\x02\x00\x00\x00\x00\x00\x00\x00{}extra", "header describes 10 bytes, file has 15"),
    ],
)
def test_content_checks_refuse_disguised_files(folder, name, content, reason_part):
    (folder / name).write_text(content)
    check = check_model_folder(folder)
    assert [(r.path, reason_part in r.reason) for r in check.refused] == [(name, True)]


def test_metrics_and_png_accepted(folder):
    (folder / "eval_results.json").write_text(json.dumps({"mlm": {"accuracy": 0.5, "split": "test"}, "n": [1, 2]}))
    (folder / "loss.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 8)
    assert check_model_folder(folder).ok


def test_user_allow_override_is_logged_but_note_text_still_refused(folder, caplog):
    (folder / "extra_vocab.txt").write_text("angina\nstent\n")
    assert not check_model_folder(folder).ok
    with caplog.at_level(logging.WARNING, logger="publish.push"):
        check = check_model_folder(folder, allow=["extra_*.txt"])
    assert check.ok and "extra_vocab.txt" in [f.path for f in check.files]
    assert any("extra_vocab.txt: allowed by --allow 'extra_*.txt'" in r.getMessage() for r in caplog.records)
    (folder / "extra_vocab.txt").write_text(FAKE_NOTE)
    assert [r.path for r in check_model_folder(folder, allow=["extra_*.txt"]).refused] == ["extra_vocab.txt"]


def test_glob_match_does_not_cross_slash():
    assert glob_match("loss.png", "*.png")
    assert not glob_match("checkpoint-1/loss.png", "*.png")
    assert glob_match("1_Pooling/config.json", "1_Pooling/config.json")
    assert glob_match("model-00001-of-00002.safetensors", "model-[0-9]*-of-[0-9]*.safetensors")


def test_escape_glob_matches_only_itself():
    import fnmatch

    pattern = _escape_glob("figs/[run*1]?.png")
    assert pattern == "figs/[[]run[*]1[]][?].png"
    assert fnmatch.fnmatchcase("figs/[run*1]?.png", pattern)
    assert not fnmatch.fnmatchcase("figs/r.png", pattern)


def test_bad_repo_id_rejected(folder):
    with pytest.raises(ValueError, match="namespace/name"):
        push_to_hub(folder, "no-namespace", dry_run=True)
