"""Every output names the metric implementation: the report (table with all caption metrics, report.md/json) and
the dataset card rendered from a distill manifest."""
from __future__ import annotations

import json
import sys
from pathlib import Path


from pipelines import hub
from pipelines.report import ReportConfig, format_table, run_report

sys.path.insert(0, str(Path(__file__).parent))
from test_hub import REPO, _write_distilled  # noqa: E402

IMPL = "pycocoevalcap 1.2, Java PTB tokenizer"


def _metrics(tmp_path, label, cider, meteor, impl=IMPL):
    folder = tmp_path / label
    folder.mkdir()
    metrics = {"cider": cider, "bleu1": 70.0, "bleu2": 50.0, "bleu3": 35.0, "bleu4": 25.5, "meteor": meteor,
               "rouge_l": 55.0}
    (folder / "metrics.json").write_text(json.dumps({
        "task": "caption", "metric": "cider", "score": cider, "ms_per_sample": 10.0, "num_samples": 10,
        "model": label, "model_type": "ofa", "decoding": "AR beam 5", "metrics": metrics,
        "metric_implementation": impl, "latency_batch_size": 1, "latency_statistic": "median"}))
    return str(folder)


def test_report_shows_every_caption_metric_and_names_the_implementation(tmp_path):
    results = {"teacher-beam5": _metrics(tmp_path, "teacher-beam5", 100.0, 30.0),
               "student-kd": _metrics(tmp_path, "student-kd", 90.0, 28.25)}
    report = run_report(ReportConfig(results=results), tmp_path / "out")
    head = format_table(report).splitlines()[0].split()
    assert head[:11] == ["system", "decoding", "CIDEr", "95%", "CI", "BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "METEOR",
                         "ROUGE-L"]
    assert "| student-kd | AR beam 5 | 90.0 | - | 70.0 | 50.0 | 35.0 | 25.5 | 28.2 | 55.0 | 10.0 | 1.00x |" in \
        (tmp_path / "out" / "report.md").read_text()
    assert f"Metrics computed by: {IMPL}." in (tmp_path / "out" / "report.md").read_text()
    assert json.loads((tmp_path / "out" / "report.json").read_text())["metric_implementation"] == IMPL


def test_report_lists_each_implementation_once(tmp_path):
    fallback = "pycocoevalcap 1.2, Python PTB fallback, METEOR left out (no java)"
    results = {"a": _metrics(tmp_path, "a", 1.0, 1.0), "b": _metrics(tmp_path, "b", 1.0, 1.0),
               "c": _metrics(tmp_path, "c", 1.0, 1.0, impl=fallback)}
    report = run_report(ReportConfig(results=results, reference="a"), tmp_path / "out")
    assert report["metric_implementation"] == f"{IMPL}; {fallback}"


def test_dataset_card_names_the_metric_implementation(tmp_path):
    path = tmp_path / "distilled"
    _write_distilled(path, 4)
    manifest = json.loads((path / "manifest.json").read_text())
    manifest["metric_implementation"] = IMPL
    (path / "manifest.json").write_text(json.dumps(manifest))
    dsd, m = hub.load_distilled(path)
    card = hub.render_card(hub.card_input(dsd), m, REPO).content
    assert f"- **Evaluation metric (`narvl-pipe evaluate`):** {IMPL}" in card
    del manifest["metric_implementation"]  # older manifests: the line is left out
    assert "Evaluation metric" not in hub.render_card(hub.card_input(dsd), manifest, REPO).content
