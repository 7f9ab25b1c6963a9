"""Extractive QA and multiple choice in the eval runner: SQuAD metric, window labels, post-processing, collator,
data errors, and end-to-end runs of our remote-code tiny model on tiny jsonl tasks written in tmp_path."""

import json
import random

import datasets
import numpy as np
import pytest
import torch
import transformers
from conftest import make_tiny_tokenizer, tiny_config

from eval import runner, tasks
from eval.data import DataError, load_task_data
from eval.metrics import load_metric
from eval.runner import (
    MultipleChoiceCollator,
    RunConfig,
    answer_token_span,
    multiple_choice_features,
    postprocess_qa_predictions,
    qa_features,
    run_task,
)
from eval.tasks import RUNNABLE_TASK_TYPES, TASK_TYPES, TaskSpec
from eval.tiny import train_wordpiece_tokenizer

# Words of the conftest tokenizer's vocabulary: every word is exactly one token.
WORDS = ("patient has type diabetes mellitus without complications with acute chronic kidney disease heart failure "
         "pain of and in to is was for on left right lung lobe pneumonia fracture code chapter hypertension "
         "essential primary infection fever cough chest normal findings history blood pressure").split()
ANSWERS = ["left lung lobe", "chronic kidney disease", "heart failure", "blood pressure", "chest pain"]


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    transformers.logging.set_verbosity_error()


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models on a shared 2-core machine train several times faster on one thread (see eval/README.md)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(path)


def qa_row(rng, index, n_words=40):
    """A context of random vocabulary words with one answer phrase at a random word position."""
    answer = ANSWERS[index % len(ANSWERS)]
    words = [rng.choice(WORDS) for _ in range(n_words)]
    position = rng.randrange(n_words)
    before = " ".join(words[:position])
    context = (before + " " if before else "") + answer + " " + " ".join(words[position:])
    start = len(before) + 1 if before else 0
    return {"id": f"q{index}", "question": "what is the history of " + answer.split()[0], "context": context,
            "answers": {"text": [answer], "answer_start": [start]}}


def qa_task(tmp_path, sizes=(12, 4, 5), **spec_overrides):
    rng = random.Random(0)
    paths, index = {}, 0
    for split, size in zip(("train", "dev", "test"), sizes):
        rows = []
        for _ in range(size):
            rows.append(qa_row(rng, index))
            index += 1
        paths[split] = write_jsonl(tmp_path / f"qa_{split}.jsonl", rows)
    values = dict(name="tiny_qa", task_type="qa", data=paths, max_length=32)
    values.update(spec_overrides)
    return TaskSpec(**values)


def mc_rows(n, n_choices=3, seed=0):
    """The question names a word of the correct choice (learnable), e.g. "history of failure" -> "heart failure"."""
    rng = random.Random(seed)
    rows = []
    for index in range(n):
        choices = rng.sample(ANSWERS, n_choices)
        label = rng.randrange(n_choices)
        rows.append({"id": f"m{index}", "question": "history of " + rng.choice(choices[label].split()),
                     "choices": choices, "label": label})
    return rows


def mc_task(tmp_path, sizes=(12, 4, 6), **spec_overrides):
    paths = {split: write_jsonl(tmp_path / f"mc_{split}.jsonl", mc_rows(size, seed=seed))
             for seed, (split, size) in enumerate(zip(("train", "dev", "test"), sizes))}
    values = dict(name="tiny_mc", task_type="multiple_choice", data=paths, max_length=32)
    values.update(spec_overrides)
    return TaskSpec(**values)


@pytest.fixture
def tokenizer(tmp_path):
    return make_tiny_tokenizer(tmp_path / "tokenizer")


@pytest.fixture
def ours(tmp_path):
    """Our remote-code Clinical ModernBERT (tiny preset) saved with save_pretrained beside the conftest tokenizer."""
    from modeling_clinical_modernbert import ClinicalModernBertForMaskedLM

    folder = tmp_path / "ours"
    tokenizer = make_tiny_tokenizer(folder)
    transformers.set_seed(0)
    ClinicalModernBertForMaskedLM(tiny_config(vocab_size=128, max_position_embeddings=64)).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


def fast_config(**overrides):
    values = dict(seeds=(0,), learning_rate=1e-3, lora_learning_rate=1e-2, max_steps=4, eval_steps=2, chunk_stride=8,
                  per_device_train_batch_size=8, per_device_eval_batch_size=8, early_stopping_patience=2,
                  disable_tqdm=True)
    values.update(overrides)
    return RunConfig(**values)


# ---------------------------------------------------------------------------------------------------------------
# Registry


def test_qa_and_multiple_choice_are_runnable_with_type_defaults():
    assert {"qa", "multiple_choice"} <= set(RUNNABLE_TASK_TYPES) <= set(TASK_TYPES)
    qa = TaskSpec(name="q", task_type="qa", data={})
    assert (qa.text_fields, qa.label_field, qa.metrics, qa.main_metric) == (
        ("question", "context"), "answers", ("squad",), "f1")
    mc = TaskSpec(name="m", task_type="multiple_choice", data={}, choice_fields="options")
    assert (mc.metrics, mc.main_metric, mc.choice_fields) == (("accuracy",), "accuracy", ("options",))
    custom = TaskSpec(name="c", task_type="qa", data={}, text_fields=("q", "passage"), label_field="spans")
    assert (custom.text_fields, custom.label_field) == (("q", "passage"), "spans")
    with pytest.raises(ValueError, match=r"'bad'.*qa task needs text_fields \(question, context\)"):
        TaskSpec(name="bad", task_type="qa", data={}, text_fields=("question",))


def test_yaml_task_file_registers_qa_and_multiple_choice(tmp_path, monkeypatch):
    monkeypatch.setattr(tasks, "TASKS", dict(tasks.TASKS))
    (tmp_path / "tasks.yaml").write_text(
        "- name: my_qa\n  task_type: qa\n  data: {train: a.jsonl, dev: b.jsonl, test: c.jsonl}\n"
        "  extra: {max_answer_length: 12, version_2_with_negative: true}\n"
        "- name: my_mcq\n  task_type: multiple_choice\n  data: {train: a.jsonl, dev: b.jsonl, test: c.jsonl}\n"
        "  choice_fields: [opa, opb, opc, opd]\n  label_field: cop\n"
    )
    qa, mcq = tasks.load_task_file(tmp_path / "tasks.yaml")
    assert (qa.metrics, qa.main_metric, qa.extra["max_answer_length"]) == (("squad",), "f1", 12)
    assert mcq.choice_fields == ("opa", "opb", "opc", "opd") and mcq.label_field == "cop"
    assert tasks.get_task("my_mcq") is mcq


# ---------------------------------------------------------------------------------------------------------------
# SQuAD metric


def test_squad_metric_against_hand_computed_exact_match_and_f1():
    predictions = ["The Pneumonia.", "left lung lobe", "chest pain", "an  acute   kidney injury"]
    references = [["pneumonia"], ["right lung lobe", "lung lobe"], ["fever"], ["Acute kidney-injury"]]
    # 1: case, article and punctuation are normalised away: EM 1, F1 1.
    # 2: vs "right lung lobe" 2 of 3 tokens each way (F1 2/3); vs "lung lobe" P 2/3, R 1 -> F1 0.8; best 0.8.
    # 3: no overlap.
    # 4: "kidney-injury" loses its hyphen -> "kidneyinjury"; "an" is dropped: pred [acute, kidney, injury],
    #    gold [acute, kidneyinjury]: 1 common, P 1/3, R 1/2 -> F1 0.4.
    result = load_metric("squad").compute(predictions=predictions, references=references)
    assert result["exact_match"] == pytest.approx(1 / 4)
    assert result["f1"] == pytest.approx((1 + 0.8 + 0 + 0.4) / 4)
    assert load_metric("squad").compute(predictions=["", "fever"], references=[[], []]) == pytest.approx(
        {"exact_match": 0.5, "f1": 0.5})  # unanswerable: only the empty answer is right


# ---------------------------------------------------------------------------------------------------------------
# Windows and labels


def long_qa_rows():
    rng = random.Random(1)
    words = [rng.choice(WORDS) for _ in range(60)]
    context = " ".join(words[:30] + ["left", "lung", "lobe"] + words[30:])
    return datasets.Dataset.from_list([
        {"question": "where is the pneumonia", "context": context,
         "answers": {"text": ["left lung lobe"], "answer_start": [context.index("left lung lobe")]}}])


@pytest.mark.parametrize("padding_side", ["right", "left"])
def test_qa_windows_label_the_answer_span_or_cls(tokenizer, padding_side):
    tokenizer.padding_side = padding_side  # left padding puts the context first, as in run_qa.py
    rows = long_qa_rows()
    spec = TaskSpec(name="long", task_type="qa", data={})
    features = qa_features(rows, spec, tokenizer, max_length=24, stride=6, split="train")
    context = rows[0]["context"]
    answer_ids = tokenizer("left lung lobe", add_special_tokens=False)["input_ids"]
    holding = []
    assert len(features.dataset) >= 3 and features.doc_index == [0] * len(features.dataset)
    for window, row in enumerate(features.dataset):
        ids = row["input_ids"]
        assert len(ids) <= 24
        offsets = features.offset_mapping[window]
        context_ids = [token for token, offset in zip(ids, offsets) if offset is not None]
        has_answer = any(context_ids[i:i + 3] == answer_ids for i in range(len(context_ids)))
        start, end = row["start_positions"], row["end_positions"]
        if has_answer:
            holding.append(window)
            assert context[offsets[start][0]:offsets[end][1]] == "left lung lobe"
            assert tokenizer.decode(ids[start:end + 1]) == "left lung lobe"
        else:
            assert start == end == features.cls_index[window] == ids.index(tokenizer.cls_token_id) == 0
    assert 1 <= len(holding) < len(features.dataset)
    assert "token_type_ids" not in features.dataset.column_names  # this tokenizer (like ModernBERT's) has none


def test_qa_features_keep_token_type_ids_when_the_tokenizer_has_them():
    # a BERT-style WordPiece tokenizer: segment ids 0 for [CLS] question [SEP], 1 for context [SEP]
    tokenizer = train_wordpiece_tokenizer([" ".join(WORDS)] * 4, vocab_size=200)
    tokenizer.model_input_names = ["input_ids", "token_type_ids", "attention_mask"]
    rows = long_qa_rows()
    features = qa_features(rows, TaskSpec(name="t", task_type="qa", data={}), tokenizer, max_length=24, stride=6)
    for window, row in enumerate(features.dataset):
        context_positions = [i for i, offset in enumerate(features.offset_mapping[window]) if offset is not None]
        assert all(row["token_type_ids"][i] == 0 for i in range(context_positions[0]))  # [CLS] question [SEP]
        assert all(row["token_type_ids"][i] == 1 for i in context_positions)


def test_answer_token_span_edges():
    offsets = [None, (0, 3), (4, 11), (12, 15), None]  # [CLS] the patient has [SEP]
    assert answer_token_span(offsets, 4, 11) == (2, 2)
    assert answer_token_span(offsets, 0, 15) == (1, 3)
    assert answer_token_span(offsets, 6, 9) == (2, 2)  # inside one token: that token
    assert answer_token_span(offsets, 12, 20) is None  # runs past the window
    assert answer_token_span([None, None], 0, 1) is None


def test_question_too_long_for_the_window_is_a_clear_error(tokenizer):
    def rows(n_question_words):
        context = " ".join(["fever"] * 30)
        return datasets.Dataset.from_list([{"id": "long-q", "question": " ".join(["pain"] * n_question_words),
                                            "context": context, "answers": {"text": ["fever"], "answer_start": [0]}}])

    spec = TaskSpec(name="t", task_type="qa", data={})
    # 32 = 3 special tokens + 20 question tokens + 9 context tokens: 9 > stride 8, windows still advance
    features = qa_features(rows(20), spec, tokenizer, 32, 8, split="dev")
    assert len(features.dataset) == 30 - 9 + 1 and all(len(ids) == 32 for ids in features.dataset["input_ids"])
    with pytest.raises(DataError, match=r"split 'dev', row 0 \(id 'long-q'\): the question has 21 tokens.*"
                                        r"chunk_stride=8"):
        qa_features(rows(21), spec, tokenizer, 32, 8, split="dev")


# ---------------------------------------------------------------------------------------------------------------
# Post-processing


def hand_built_logits():
    """Question 0 has two windows, question 1 one. Positions 0-2 are [CLS] question [SEP]; -100 pads like Trainer."""
    context = "the patient has chest pain and fever with cough"
    offsets = [
        [None, None, None, (0, 3), (4, 11), (12, 15), (16, 21), None],  # the patient has chest
        [None, None, None, (16, 21), (22, 26), (27, 30), (31, 36), None],  # chest pain and fever
        [None, None, None, (0, 5), (6, 10), None],  # question 1: "fever with"
    ]
    start = np.full((3, 9), -100.0)
    end = np.full((3, 9), -100.0)
    start[0, :8] = [0, 20, 0, 1, 0, 2, 0, 0]  # the question token (position 1) scores high but is not context
    end[0, :8] = [0, 20, 0, 0, 0, 2.5, 0, 0]  # best valid span here: "has" 4.5
    start[1, :8] = [0, 0, 0, 3, 1, 0, 6, 0]  # "fever" starts high, but ends before it are invalid
    end[1, :8] = [0, 0, 0, 0, 4, 0, 0, 0]  # -> best valid span over both windows: "chest pain" 3 + 4 = 7
    start[1, 8] = end[1, 8] = 50  # past the window: ignored
    start[2, :6] = [0, 0, 0, 1, 0, 0]
    end[2, :6] = [0, 0, 0, 0, 1, 0]  # "fever with"
    return [context, "fever with"], [0, 0, 1], offsets, start, end


def test_postprocess_picks_the_best_valid_span_across_windows():
    contexts, doc_index, offsets, start, end = hand_built_logits()
    answers, nbest = postprocess_qa_predictions(contexts, doc_index, offsets, start, end, n_best_size=20,
                                                max_answer_length=30)
    assert answers == ["chest pain", "fever with"]
    assert nbest[0][0]["score"] == pytest.approx(7.0) and nbest[0][0]["offsets"] == (16, 26)
    assert all(a["score"] >= b["score"] for a, b in zip(nbest[0], nbest[0][1:]))
    # at most one token per answer: "fever" (6 + 0) beats "has" (2 + 2.5) and "pain" (1 + 4)
    answers, _ = postprocess_qa_predictions(contexts, doc_index, offsets, start, end, max_answer_length=1)
    assert answers == ["fever", "fever"]


def test_postprocess_version_2_answers_empty_when_the_null_score_wins():
    contexts, doc_index, offsets, start, end = hand_built_logits()
    cls_index = [0, 0, 0]
    start[0, 0] = end[0, 0] = 5.0  # window 0 null score 10 > 7, but the null score is the minimum over windows
    answers, _ = postprocess_qa_predictions(contexts, doc_index, offsets, start, end, cls_index=cls_index,
                                            version_2_with_negative=True)
    assert answers[0] == "chest pain"  # window 1's null score is 0
    start[1, 0] = end[1, 0] = 4.0  # now both windows' null scores (10, 8) beat the best span (7)
    answers, _ = postprocess_qa_predictions(contexts, doc_index, offsets, start, end, cls_index=cls_index,
                                            version_2_with_negative=True)
    assert answers == ["", "fever with"]
    answers, _ = postprocess_qa_predictions(contexts, doc_index, offsets, start, end, cls_index=cls_index,
                                            version_2_with_negative=True, null_score_diff_threshold=1.5)
    assert answers[0] == "chest pain"  # 8 - 7 = 1 is within the threshold


# ---------------------------------------------------------------------------------------------------------------
# Multiple choice features and collator


def test_multiple_choice_collator_pads_to_batch_choices_seq(tokenizer):
    rows = datasets.Dataset.from_list([
        {"question": "the patient has", "choices": ["fever", "chest pain", "left lung lobe pneumonia"],
         "label": "left lung lobe pneumonia"},  # labels may be choice texts (an index is tested below)
        {"question": "history of chronic", "choices": ["kidney disease", "cough", "heart"], "label": "cough"},
    ])
    spec = TaskSpec(name="mc", task_type="multiple_choice", data={})
    features = multiple_choice_features(rows, spec, tokenizer, max_length=32)
    assert features.dataset["labels"] == [2, 1]
    lengths = [[len(ids) for ids in row] for row in features.dataset["input_ids"]]
    assert lengths[0] == [3 + 1 + 3, 3 + 2 + 3, 3 + 4 + 3]  # [CLS] q [SEP] choice [SEP]
    batch = MultipleChoiceCollator(tokenizer)(list(features.dataset))
    longest = max(max(row) for row in lengths)
    assert batch["input_ids"].shape == (2, 3, longest) and batch["attention_mask"].shape == (2, 3, longest)
    assert batch["attention_mask"].sum(-1).tolist() == lengths
    assert batch["labels"].tolist() == [2, 1] and batch["labels"].dtype == torch.long
    assert (batch["input_ids"][batch["attention_mask"] == 0] == tokenizer.pad_token_id).all()
    odd = {"input_ids": [[1, 2]] * 2, "attention_mask": [[1, 1]] * 2, "labels": 0}
    with pytest.raises(ValueError, match=r"mixes rows with \[2, 3\] choices"):
        MultipleChoiceCollator(tokenizer)([list(features.dataset)[0], odd])


def test_multiple_choice_context_question_pairs_and_choice_columns(tokenizer):
    """Two text fields pair the context with "question choice" (SWAG); several choice fields give one choice each."""
    rows = datasets.Dataset.from_list([{"context": "fever", "question": "history of", "opa": "cough", "opb": "pain",
                                        "cop": 1}])
    spec = TaskSpec(name="mc", task_type="multiple_choice", data={}, text_fields=("context", "question"),
                    choice_fields=("opa", "opb"), label_field="cop")
    features = multiple_choice_features(rows, spec, tokenizer, max_length=32)
    decoded = [tokenizer.decode(ids, skip_special_tokens=True) for ids in features.dataset[0]["input_ids"]]
    assert decoded == ["fever history of cough", "fever history of pain"]
    assert features.dataset["labels"] == [1]


# ---------------------------------------------------------------------------------------------------------------
# Data errors


def test_qa_answer_start_that_misses_the_text_names_the_row(tmp_path):
    spec = qa_task(tmp_path)
    rows = [json.loads(line) for line in open(spec.data["dev"])]
    rows[2]["answers"]["answer_start"][0] += 1
    write_jsonl(tmp_path / "qa_dev.jsonl", rows)
    with pytest.raises(DataError, match=r"'tiny_qa', split 'dev', row 2 \(id 'q14'\): answer_start \d+ does not "
                                        r"match the answer text '[a-z ]+': the context reads"):
        load_task_data(spec)


def test_qa_answer_without_answer_start_names_the_field_and_row(tmp_path):
    spec = qa_task(tmp_path)
    rows = [json.loads(line) for line in open(spec.data["train"])]
    del rows[3]["answers"]["answer_start"]
    write_jsonl(tmp_path / "qa_train.jsonl", rows)
    with pytest.raises(DataError, match=r"split 'train', row 3 \(id 'q3'\): field 'answers': answers has no "
                                        r"'answer_start'"):
        load_task_data(spec)


def test_qa_missing_field_and_unanswerable_rows(tmp_path):
    spec = qa_task(tmp_path)
    rows = [json.loads(line) for line in open(spec.data["test"])]
    write_jsonl(tmp_path / "qa_test.jsonl", [{k: v for k, v in row.items() if k != "context"} for row in rows])
    with pytest.raises(DataError, match=r"'tiny_qa', split 'test': missing field\(s\) \['context'\]"):
        load_task_data(spec)
    rows[1]["answers"] = {"text": [], "answer_start": []}
    write_jsonl(tmp_path / "qa_test.jsonl", rows)
    with pytest.raises(DataError, match=r"split 'test', row 1 \(id 'q17'\): no answer in 'answers'.*"
                                        r"version_2_with_negative"):
        load_task_data(spec)
    v2 = qa_task(tmp_path, extra={"version_2_with_negative": True})
    write_jsonl(tmp_path / "qa_test.jsonl", rows)  # qa_task rewrote the files
    assert load_task_data(v2).sizes() == {"train": 12, "dev": 4, "test": 5}


def test_qa_original_squad_answer_layout_is_accepted(tmp_path):
    spec = qa_task(tmp_path)
    rows = [json.loads(line) for line in open(spec.data["train"])]
    for row in rows:
        row["answers"] = [{"text": t, "answer_start": s} for t, s in zip(row["answers"]["text"],
                                                                         row["answers"]["answer_start"])]
    write_jsonl(tmp_path / "qa_train.jsonl", rows)
    assert load_task_data(spec).sizes()["train"] == 12


def test_multiple_choice_label_errors_name_the_row(tmp_path):
    spec = mc_task(tmp_path)
    rows = mc_rows(4, seed=1)
    rows[3]["label"] = 3
    write_jsonl(tmp_path / "mc_dev.jsonl", rows)
    with pytest.raises(DataError, match=r"'tiny_mc', split 'dev', row 3 \(id 'm3'\): field 'label': label 3 is out "
                                        r"of range for 3 choices"):
        load_task_data(spec)
    rows[3]["label"] = "no such choice"
    write_jsonl(tmp_path / "mc_dev.jsonl", rows)
    with pytest.raises(DataError, match=r"row 3 \(id 'm3'\): field 'label': label 'no such choice' is neither"):
        load_task_data(spec)
    rows[3]["label"] = rows[3]["choices"][1]  # the text of a choice is a valid label
    write_jsonl(tmp_path / "mc_dev.jsonl", rows)
    assert load_task_data(spec).sizes()["dev"] == 4


def test_multiple_choice_different_numbers_of_choices_name_the_row(tmp_path):
    spec = mc_task(tmp_path)
    rows = mc_rows(6, seed=2)
    rows[4]["choices"] = rows[4]["choices"] + ["fever"]
    write_jsonl(tmp_path / "mc_test.jsonl", rows)
    with pytest.raises(DataError, match=r"split 'test', row 4 \(id 'm4'\): 4 choices, but split 'train', row 0 has "
                                        r"3"):
        load_task_data(spec)


def test_multiple_choice_missing_choice_names_field_and_row(tmp_path):
    rows = [{"question": "pain", "opa": "fever", "opb": "cough", "cop": 0} for _ in range(3)]
    rows[1]["opb"] = None
    paths = {split: write_jsonl(tmp_path / f"{split}.jsonl", rows) for split in ("train", "dev", "test")}
    spec = TaskSpec(name="cols", task_type="multiple_choice", data=paths, choice_fields=("opa", "opb"),
                    label_field="cop")
    with pytest.raises(DataError, match=r"'cols', split 'train', row 1: choice field 'opb' is missing"):
        load_task_data(spec)


def test_hub_qa_task_offline_gives_the_clear_hub_error():
    spec = TaskSpec(name="hub_qa", task_type="qa", data="no-org/no-clinical-qa")
    with pytest.raises(DataError, match=r"'hub_qa'.*'no-org/no-clinical-qa'.*offline.*save_to_disk"):
        load_task_data(spec)


# ---------------------------------------------------------------------------------------------------------------
# End to end with our remote-code model


def test_run_task_qa_end_to_end(ours, tmp_path):
    spec = qa_task(tmp_path)
    config = fast_config(save_models=True)
    result = run_task(ours, spec, config, out_dir=tmp_path / "out")
    written = json.loads((tmp_path / "out" / "ours" / "tiny_qa.json").read_text())
    assert written["task_type"] == "qa" and written["main_metric"] == "f1"
    assert set(written["per_seed"]["0"]) == {"exact_match", "f1"} and set(written["mean"]) == {"exact_match", "f1"}
    assert written["sizes"] == {"train": 12, "dev": 4, "test": 5}
    assert written["n_windows"]["test"] > 5  # 40-word contexts in 32-token windows: several windows each
    assert written["mean"]["exact_match"] * 5 == pytest.approx(round(written["mean"]["exact_match"] * 5))
    assert result["seed_details"]["0"]["train_steps"] <= 4

    # Independent re-scoring of the saved model on test: predict every window, post-process, SQuAD metric.
    model = transformers.AutoModelForQuestionAnswering.from_pretrained(
        tmp_path / "out" / "ours" / "tiny_qa" / "seed0", trust_remote_code=True).eval()
    assert type(model).__name__ == "ClinicalModernBertForQuestionAnswering"
    tok = runner.load_tokenizer(ours)
    test = load_task_data(spec).splits["test"]
    features = qa_features(test, spec, tok, 32, config.chunk_stride)
    batch = transformers.DataCollatorWithPadding(tok)([
        {k: v for k, v in row.items() if k in ("input_ids", "attention_mask")} for row in features.dataset])
    with torch.inference_mode():
        output = model(**batch)
    answers, _ = postprocess_qa_predictions(list(test["context"]), features.doc_index, features.offset_mapping,
                                            output.start_logits.numpy(), output.end_logits.numpy(),
                                            cls_index=features.cls_index)
    expected = load_metric("squad").compute(predictions=answers, references=[r["text"] for r in test["answers"]])
    assert written["per_seed"]["0"] == pytest.approx(expected, abs=1e-9)


def test_run_task_multiple_choice_end_to_end_lora(ours, tmp_path):
    spec = mc_task(tmp_path)
    result = run_task(ours, spec, fast_config(mode="lora"), out_dir=tmp_path / "out")
    written = json.loads((tmp_path / "out" / "ours" / "tiny_mc__lora.json").read_text())
    assert written["task_type"] == "multiple_choice" and written["mode"] == "lora"
    assert set(written["mean"]) == {"accuracy"} and written["per_seed"].keys() == {"0"}
    accuracy = written["per_seed"]["0"]["accuracy"]
    assert accuracy * 6 == pytest.approx(round(accuracy * 6))  # scored over exactly 6 rows
    assert written["mean"] == {"accuracy": accuracy} and written["sd"] == {"accuracy": 0.0}
    assert written["n_windows"] == {"train": 12, "dev": 4, "test": 6}
    details = result["seed_details"]["0"]
    assert details["trainable_params"] < details["total_params"]


@pytest.mark.parametrize(("kind", "steps", "metric", "floor"), [
    ("qa", 100, "exact_match", 0.5),  # an untrained model scores 0: its spans are random
    ("multiple_choice", 150, "accuracy", 0.7),  # chance: 1/3
])
def test_fine_tuning_learns_the_fixture_tasks(ours, tmp_path, kind, steps, metric, floor):
    """Labels, collator and post-processing agree: the tiny model learns where the answer is (qa: the answer phrase
    among random words; multiple choice: the choice sharing a word with the question)."""
    spec = qa_task(tmp_path, sizes=(200, 10, 20)) if kind == "qa" else mc_task(tmp_path, sizes=(200, 10, 20))
    config = fast_config(max_steps=steps, eval_steps=steps, learning_rate=3e-3, warmup_ratio=0.0,
                         per_device_train_batch_size=16)
    result = run_task(ours, spec, config)
    assert result["mean"][metric] >= floor, result["mean"]
