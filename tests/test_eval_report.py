"""Reports: comparison table, bar chart, aggregated JSON, model-index and model card front matter."""

import json

import pytest
import yaml

from eval.report import comparison_table, model_index, update_model_card, write_reports


def result(model, task, mean, sd, mode="full", task_type="single_label", main="f1_macro", seeds=(0, 1, 2)):
    return {"model": model, "task": task, "task_type": task_type, "main_metric": main, "mode": mode,
            "description": f"{task} description", "seeds": list(seeds),
            "mean": {main: mean, "accuracy": 0.9, "n_labels_scored": 3}, "sd": {main: sd, "accuracy": 0.01}}


RESULTS = [
    result("clinical-modernbert", "icd10cm_chapter", 0.8123, 0.0104),
    result("clinical-modernbert", "radiology_findings", 0.9, 0.02, task_type="multi_label", main="auroc_macro"),
    result("bert-base", "icd10cm_chapter", 0.75, 0.0),
    result("bert-base", "icd10cm_chapter", 0.6, 0.05, mode="probe"),
]


def test_comparison_table_rows_tasks_columns_models():
    table = comparison_table(RESULTS).splitlines()
    assert table[0] == "| task | metric | clinical-modernbert | bert-base | bert-base (probe) |"
    assert table[2] == "| icd10cm_chapter | f1_macro | 0.812 ± 0.010 | 0.750 ± 0.000 | 0.600 ± 0.050 |"
    assert table[3] == "| radiology_findings | auroc_macro | 0.900 ± 0.020 | — | — |"


def test_write_reports_files(tmp_path):
    paths = write_reports(tmp_path, RESULTS)
    assert paths["plot"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    aggregated = json.loads(paths["json"].read_text())
    assert aggregated["models"]["bert-base (probe)"]["icd10cm_chapter"]["mean"]["f1_macro"] == 0.6
    assert "| icd10cm_chapter |" in paths["table"].read_text()


def test_write_reports_without_results_says_what_to_do(tmp_path):
    with pytest.raises(ValueError, match="No results JSON files under"):
        write_reports(tmp_path)


def test_model_index_structure():
    (entry,) = model_index(RESULTS, "clinical-modernbert")
    assert entry["name"] == "clinical-modernbert"
    first, second = entry["results"]
    assert first["task"] == {"type": "text-classification", "name": "icd10cm_chapter"}
    assert first["dataset"] == {"type": "icd10cm_chapter", "name": "icd10cm_chapter description"}
    assert first["metrics"][0] == {"type": "f1_macro", "value": 0.8123, "name": "f1_macro (mean of 3 seeds, full)"}
    assert [m["type"] for m in first["metrics"]] == ["f1_macro", "accuracy"]  # counts (n_*) left out
    assert second["metrics"][0]["type"] == "auroc_macro"
    with pytest.raises(ValueError, match="No results for model 'gpt'"):
        model_index(RESULTS, "gpt")


def test_update_model_card_inserts_then_replaces(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("---\nlicense: apache-2.0\ntags:\n- clinical\n---\n# Clinical ModernBERT\n\nBody text.\n")
    update_model_card(readme, model_index(RESULTS, "bert-base"))
    text = readme.read_text()
    front = yaml.safe_load(text.split("---\n")[1])
    assert list(front) == ["license", "tags", "model-index"]
    assert front["model-index"][0]["results"][0]["metrics"][0]["value"] == 0.75
    assert text.endswith("---\n# Clinical ModernBERT\n\nBody text.\n")
    update_model_card(readme, model_index(RESULTS, "clinical-modernbert"))
    front = yaml.safe_load(readme.read_text().split("---\n")[1])
    assert front["model-index"][0]["name"] == "clinical-modernbert"
    assert readme.read_text().count("model-index") == 1


def test_update_model_card_without_front_matter(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("# Title\n")
    update_model_card(readme, [{"name": "m", "results": []}])
    assert readme.read_text() == "---\nmodel-index:\n- name: m\n  results: []\n---\n# Title\n"
