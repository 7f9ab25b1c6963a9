"""Runner: chunking math, label alignment, model loading, modes, and fast end-to-end runs on a tiny BERT."""

import inspect
import json
import math
import statistics

import numpy as np
import pytest
import torch
import transformers
from transformers import BertTokenizerFast

from eval import runner
from eval.data import load_task_data
from eval.runner import (
    ModelLoadError,
    RunConfig,
    align_labels_to_first_subword,
    chunk_windows,
    detect_lora_targets,
    load_task_model,
    pool_chunk_logits,
    resolve_max_length,
    run_task,
    sequence_features,
)
from eval.tasks import TaskSpec
from eval.tiny import make_tiny_model

FIXTURES = "tests/fixtures/eval"
LONG_DOC_WORDS = 9000  # > 8192 tokens: every word below is one token of the tiny vocabulary


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    transformers.logging.set_verbosity_error()


def fixture_texts():
    texts = []
    for split in ("train", "dev", "test"):
        with open(f"{FIXTURES}/cls/{split}.jsonl") as handle:
            texts += [json.loads(line)["text"] for line in handle]
        with open(f"{FIXTURES}/ner/{split}.conll") as handle:
            texts.append(" ".join(line.split("\t")[0] for line in handle if line.strip()))
    return texts


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory):
    """A random 2-layer BERT (hidden 32) with only 64 positions and a WordPiece tokenizer of the fixture words."""
    return str(make_tiny_model(tmp_path_factory.mktemp("tiny") / "tiny-bert", "bert", fixture_texts(),
                               vocab_size=300, max_position_embeddings=64))


def cls_spec(tmp_path, long_doc=False):
    paths = {split: f"{FIXTURES}/cls/{split}.jsonl" for split in ("train", "dev", "test")}
    if long_doc:
        rows = [json.loads(line) for line in open(paths["test"])]
        rows.append({"text": " ".join(["chest pain"] * (LONG_DOC_WORDS // 2)), "label": "cardiac"})
        paths["test"] = str(tmp_path / "test_long.jsonl")
        (tmp_path / "test_long.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    return TaskSpec(name="fixture_cls", task_type="single_label", data=paths, metrics=("accuracy", "f1"),
                    main_metric="f1_macro", max_length=64)


def fast_config(**overrides):
    values = dict(seeds=(0,), learning_rate=1e-3, lora_learning_rate=1e-2, max_steps=4, eval_steps=2, chunk_stride=8,
                  per_device_train_batch_size=8, early_stopping_patience=2, disable_tqdm=True)
    values.update(overrides)
    return RunConfig(**values)


# ---------------------------------------------------------------------------------------------------------------
# Pure functions


def test_chunk_windows_at_the_8192_limit():
    window = 8192 - 2  # [CLS] and [SEP] leave 8,190 content tokens
    assert chunk_windows(8190, window, 256) == [(0, 8190)]
    assert chunk_windows(8191, window, 256) == [(0, 8190), (7934, 8191)]
    assert chunk_windows(20000, window, 256) == [(0, 8190), (7934, 16124), (15868, 20000)]
    assert all(end - start + 2 <= 8192 for start, end in chunk_windows(100_000, window, 256))


def test_chunk_windows_small_and_invalid():
    assert chunk_windows(0, 10, 2) == [(0, 0)]
    assert chunk_windows(10, 4, 1) == [(0, 4), (3, 7), (6, 10)]
    with pytest.raises(ValueError, match="stride"):
        chunk_windows(10, 4, 4)


def test_resolve_max_length_caps_at_model_and_8192():
    assert resolve_max_length(128, transformers.BertConfig(max_position_embeddings=512)) == 128
    assert resolve_max_length(8192, transformers.ModernBertConfig()) == 8192
    assert resolve_max_length(128, transformers.ModernBertConfig(), override=16384) == 8192
    assert resolve_max_length(1024, transformers.BertConfig(max_position_embeddings=512)) == 512


def test_pool_chunk_logits_is_mean_per_document():
    logits = np.array([[1.0, 0.0], [3.0, 2.0], [5.0, 5.0]])
    pooled = pool_chunk_logits(logits, [0, 0, 1], n_docs=2)
    assert pooled.tolist() == [[2.0, 1.0], [5.0, 5.0]]
    with pytest.raises(ValueError, match="documents without chunks"):
        pool_chunk_logits(logits, [0, 0, 2], n_docs=3)


def test_first_subword_alignment_with_a_real_fast_tokenizer():
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "hyper", "##tension", "is", "present"]
    vocab = {word: index for index, word in enumerate(words)}
    if "vocab" in inspect.signature(BertTokenizerFast.__init__).parameters:  # transformers 5
        tokenizer = BertTokenizerFast(vocab=vocab)
    else:  # pragma: no cover - transformers 4
        pytest.skip("needs the transformers 5 vocab= argument")
    encoded = tokenizer(["Hypertension", "is", "present"], is_split_into_words=True)
    assert tokenizer.convert_ids_to_tokens(encoded["input_ids"]) == [
        "[CLS]", "hyper", "##tension", "is", "present", "[SEP]"]
    labels = align_labels_to_first_subword(encoded.word_ids(), [1, 0, 0])  # B-DISEASE O O
    assert labels == [-100, 1, -100, 0, 0, -100]


# ---------------------------------------------------------------------------------------------------------------
# Models


def test_hub_model_id_offline_gives_actionable_error():
    with pytest.raises(ModelLoadError, match=r"'no-org/no-model'.*offline.*hf download no-org/no-model"):
        runner.load_config("no-org/no-model")


def test_local_folder_without_config_is_rejected(tmp_path):
    with pytest.raises(ModelLoadError, match="has no config.json"):
        runner.load_config(str(tmp_path))


def test_lora_targets_and_head_detection(tiny_bert, tmp_path):
    spec = TaskSpec(name="t", task_type="single_label", data={}, metrics=("accuracy",))
    bert = load_task_model(tiny_bert, spec, ["a", "b"])
    assert detect_lora_targets(bert) == ["query", "value"]
    assert runner.head_module_names(bert) == ["classifier"]
    modern_dir = make_tiny_model(tmp_path / "modern", "modernbert", fixture_texts(), vocab_size=300,
                                 max_position_embeddings=64)
    modern = load_task_model(str(modern_dir), spec, ["a", "b"])
    assert detect_lora_targets(modern) == ["Wqkv", "Wo", "Wi"]
    assert runner.head_module_names(modern) == ["head", "classifier"]


def test_probe_mode_trains_only_the_head(tiny_bert):
    spec = TaskSpec(name="t", task_type="single_label", data={}, metrics=("accuracy",))
    model = runner.apply_mode(load_task_model(tiny_bert, spec, ["a", "b", "c"]), spec, RunConfig(mode="probe"))
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    # the tiny checkpoint was saved from a masked-LM model without a pooler: its random pooler trains with the head
    assert trainable == {"classifier.weight", "classifier.bias", "bert.pooler.dense.weight", "bert.pooler.dense.bias"}
    assert runner.new_encoder_modules(model) == ["bert.pooler.dense"]


# ---------------------------------------------------------------------------------------------------------------
# End to end


def test_document_longer_than_8192_tokens_gets_a_prediction(tiny_bert, tmp_path):
    spec = cls_spec(tmp_path, long_doc=True)
    data = load_task_data(spec)
    tokenizer = runner.load_tokenizer(tiny_bert)
    features = sequence_features(data.splits["test"], spec, tokenizer, max_length=64, stride=16,
                                 label_to_id={label: i for i, label in enumerate(data.label_list)})
    long_doc_windows = features.doc_index.count(3)
    assert long_doc_windows == math.ceil((LONG_DOC_WORDS - 62) / (62 - 16)) + 1  # 9,000 tokens, 62 per window
    assert max(len(ids) for ids in features.dataset["input_ids"]) == 64
    model = load_task_model(tiny_bert, spec, data.label_list).eval()
    windows = [features.dataset[i] for i in range(len(features.dataset) - long_doc_windows, len(features.dataset))]
    batch = runner.DataCollatorWithPadding(tokenizer)(windows)
    batch.pop("labels")
    with torch.inference_mode():
        logits = model(**batch).logits
    pooled = pool_chunk_logits(logits.numpy(), [0] * long_doc_windows, n_docs=1)
    assert pooled.shape == (1, 3) and np.isfinite(pooled).all()


def test_run_task_end_to_end_two_seeds(tiny_bert, tmp_path):
    spec = cls_spec(tmp_path, long_doc=True)
    result = run_task(tiny_bert, spec, fast_config(seeds=(0, 1)), out_dir=tmp_path / "out")
    written = json.loads((tmp_path / "out" / "tiny-bert" / "fixture_cls.json").read_text())
    assert written["per_seed"].keys() == {"0", "1"}
    assert written["sizes"] == {"train": 15, "dev": 3, "test": 4}
    assert written["n_windows"]["test"] > 4  # the long document was chunked, not truncated
    accuracies = [written["per_seed"][seed]["accuracy"] for seed in ("0", "1")]
    assert all(value * 4 == round(value * 4) for value in accuracies)  # scored over exactly 4 documents
    assert written["mean"]["accuracy"] == pytest.approx(statistics.fmean(accuracies))
    assert written["sd"]["accuracy"] == pytest.approx(statistics.stdev(accuracies))
    assert written["mode"] == "full" and written["config"]["max_steps"] == 4
    assert result["data"]["skipped"] == {"train": {"empty text": 1}}
    assert all(details["train_steps"] <= 4 for details in written["seed_details"].values())


def test_run_task_token_classification(tiny_bert, tmp_path):
    spec = TaskSpec(name="fixture_ner", task_type="token", label_field="tags", metrics=("seqeval_strict",),
                    main_metric="f1", max_length=64,
                    data={split: f"{FIXTURES}/ner/{split}.conll" for split in ("train", "dev", "test")})
    result = run_task(tiny_bert, spec, fast_config())
    assert result["labels"] == ["O", "B-DISEASE", "I-DISEASE", "B-DRUG", "I-DRUG"]
    assert 0.0 <= result["mean"]["f1"] <= 1.0 and "precision" in result["mean"]
    assert result["n_truncated_words"] == {"train": 0, "dev": 0, "test": 0}


def test_run_task_retrieval(tiny_bert, tmp_path):
    corpus = [{"doc_id": f"d{i}", "text": text} for i, text in enumerate(
        ["chest pain", "kidney injury", "pneumonia", "heart murmur", "urine output"])]
    queries = [{"query_id": "q1", "text": "chest pain", "relevant_ids": ["d0"]},
               {"query_id": "q2", "text": "pneumonia", "relevant_ids": ["d2"]}]
    for name, rows in (("corpus", corpus), ("queries", queries)):
        (tmp_path / f"{name}.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    spec = TaskSpec(name="fixture_retrieval", task_type="retrieval", label_field="relevant_ids",
                    metrics=("retrieval",), main_metric="ndcg@10", max_length=32,
                    data={"corpus": str(tmp_path / "corpus.jsonl"), "test": str(tmp_path / "queries.jsonl")})
    result = run_task(tiny_bert, spec, fast_config())
    # a query identical to a document embeds identically: cosine 1, ranked first
    assert result["mean"]["recall@1"] == 1.0 and result["mean"]["ndcg@10"] == pytest.approx(1.0)
    assert result["sizes"] == {"queries": 2, "corpus": 5}


def test_lora_adapter_save_reload_gives_identical_predictions(tiny_bert, tmp_path):
    from peft import PeftModel

    spec = cls_spec(tmp_path)
    config = fast_config(mode="lora")
    data = load_task_data(spec)
    tokenizer = runner.load_tokenizer(tiny_bert)
    prepared = runner.prepare_task(spec, data, tokenizer, runner.load_config(tiny_bert), config)
    metric_modules = {name: runner.load_metric(name) for name in spec.metrics}
    seed_result, trainer = runner.train_one_seed(tiny_bert, prepared, tokenizer, config, 0, tmp_path / "work",
                                                 metric_modules)
    assert seed_result.trainable_params < seed_result.total_params
    trainer.model.save_pretrained(tmp_path / "adapter")
    assert (tmp_path / "adapter" / "adapter_config.json").is_file()

    batch = trainer.data_collator(list(prepared.features["test"].dataset))
    batch.pop("labels")
    trained = trainer.model.eval()
    reloaded = PeftModel.from_pretrained(load_task_model(tiny_bert, spec, data.label_list), tmp_path / "adapter").eval()
    with torch.inference_mode():
        expected = trained(**batch).logits
        actual = reloaded(**batch).logits
    torch.testing.assert_close(actual, expected, rtol=0, atol=1e-6)
    assert not torch.allclose(expected, load_task_model(tiny_bert, spec, data.label_list).eval()(**batch).logits)


def test_run_task_regression(tiny_bert, tmp_path):
    texts = ["chest pain", "kidney injury", "pneumonia", "heart murmur", "urine output", "productive cough"]
    paths = {}
    for split, rows in (("train", texts), ("dev", texts[:3]), ("test", texts[3:])):
        paths[split] = str(tmp_path / f"{split}.jsonl")
        (tmp_path / f"{split}.jsonl").write_text(
            "".join(json.dumps({"text": text, "score": float(len(text))}) + "\n" for text in rows))
    spec = TaskSpec(name="fixture_regression", task_type="regression", label_field="score", data=paths,
                    metrics=("correlation",), main_metric="spearman", max_length=32)
    result = run_task(tiny_bert, spec, fast_config())
    assert set(result["mean"]) == {"pearson", "spearman"}
    assert result["labels"] == [] and result["sizes"]["test"] == 3


def test_our_remote_code_model_runs_in_lora_mode(tmp_path):
    """Clinical ModernBERT saved with save_pretrained loads through the Auto classes (trust_remote_code)."""
    from configuration_clinical_modernbert import ClinicalModernBertConfig
    from modeling_clinical_modernbert import ClinicalModernBertForMaskedLM

    folder = make_tiny_model(tmp_path / "tokenizer-only", "bert", fixture_texts(), vocab_size=300)
    tokenizer = runner.load_tokenizer(str(folder))
    ids = {name: tokenizer.convert_tokens_to_ids(token) for name, token in (("pad", "[PAD]"), ("cls", "[CLS]"),
                                                                            ("sep", "[SEP]"))}
    config = ClinicalModernBertConfig.from_preset(
        "tiny", vocab_size=len(tokenizer), max_position_embeddings=64, pad_token_id=ids["pad"],
        cls_token_id=ids["cls"], bos_token_id=ids["cls"], sep_token_id=ids["sep"], eos_token_id=ids["sep"])
    ClinicalModernBertForMaskedLM(config).save_pretrained(tmp_path / "ours")
    tokenizer.save_pretrained(tmp_path / "ours")

    spec = cls_spec(tmp_path)
    model = load_task_model(str(tmp_path / "ours"), spec, ["a", "b", "c"])
    assert detect_lora_targets(model) == ["Wqkv", "Wo", "Wi"]
    result = run_task(str(tmp_path / "ours"), spec, fast_config(mode="lora"))
    assert result["mode"] == "lora" and 0.0 <= result["mean"]["accuracy"] <= 1.0
    details = result["seed_details"]["0"]
    assert details["trainable_params"] < details["total_params"]
