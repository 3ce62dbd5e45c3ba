"""The report stage: quality vs latency of evaluated systems, as a printed table, `report.md`, `report.json` and a PNG.

Inputs are evaluate-stage folders, each holding `metrics.json` (written by `pipelines.stage_kinds`):
`{"task", "metric", "score", "interval", "row_ids", "row_scores", "ms_per_sample", "latency": {batch: {...}},
"num_samples", "model", "decoding", "metrics": {...}, "metric_implementation"}`, and `predictions.jsonl`; a
`baseline` stage folder (`pipelines.baseline`) has the same files, without latency.
Systems are grouped by task (one group for `results`, one per entry of `tasks`). In each group speed-ups are relative
to the `reference` system (the AR teacher with OFA's decoding, the paper's baseline), at each batch size both were
timed at, the paper's claims are checked on the student with paired intervals (`pipelines.claims`: PASS, FAIL or
inconclusive), and a few example predictions are shown next to the reference answer. A one-task table also shows
every other metric of the rows (e.g. BLEU-4, METEOR, ROUGE-L for captions); the report names the implementation
that computed them.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from distill.errors import UserError
from distill.tasks import get_task
from pipelines.claims import better_claim, comparable, latency_by_batch, quality_claim, speed_claims, speedup
from student.intervals import Interval

METRICS_FILE = "metrics.json"
PER_ROW = ("row_ids", "row_scores")
"""metrics.json fields that hold one value per row: read for the claims, left out of the report's rows."""
PREDICTIONS_FILE = "predictions.jsonl"
REPORT_FILES = ("report.md", "report.json", "report.png")
DISPLAY_NAMES = {"cider": "CIDEr", "bleu1": "BLEU-1", "bleu2": "BLEU-2", "bleu3": "BLEU-3", "bleu4": "BLEU-4",
                 "meteor": "METEOR", "rouge_l": "ROUGE-L", "spice": "SPICE", "vqa_accuracy": "VQA acc",
                 "acc@0.5": "Acc@0.5", "accuracy": "accuracy"}


@dataclass
class ReportConfig:
    """What the report compares."""

    results: dict[str, str] = field(default_factory=dict)
    """System label -> evaluate-stage folder holding metrics.json; the table keeps this order (one task)."""
    tasks: dict[str, dict[str, str]] = field(default_factory=dict)
    """Task -> {system label -> folder}: one group of rows per task, in this order (the multi-task table). The
    labels `reference`, `kd`/`student`, `raw` and `baseline` play the same roles in every group."""
    reference: str = "teacher-beam5"
    """Label of the baseline for speed-ups and for the student-quality ratio."""
    kd: str = "student-kd"
    """Label of the student trained on teacher targets (for the claim checks; skipped when absent)."""
    student: str = "student"
    """Label of a group's student when it has no `kd` one (tasks the paper does not distil: trained on the labels)."""
    raw: str = "student-raw"
    """Label of the student trained on raw references (for the claim checks; skipped when absent)."""
    baseline: str = "baseline"
    """Label of the constant-prediction row (`baseline` stage): no latency, and the source of the examples'
    reference answers."""
    kd_quality_ratio: float = 0.9
    """The claim 'student is close to the teacher' holds when its score >= this ratio x the reference score."""
    quality_margin: dict[str, float] = field(default_factory=lambda: {"grounding": 2.0, "entailment": 2.0})
    """Tasks whose 'close to the teacher' claim is 'within this many points or better' instead of the ratio (the
    paper's grounding and entailment students are within a point or two of OFA)."""
    num_examples: int = 3
    """Example predictions shown per task (the first rows of the baseline's predictions)."""
    title: str = "narvl-pipe report"
    """Heading of report.md and of the plot."""
    note: str | None = None
    """A caveat on reading the numbers, printed under the claim checks and written into report.md."""


def load_results(results: dict[str, str]) -> list[dict[str, Any]]:
    """One entry per system: its label, the fields of its metrics.json and its folder."""

    entries = []
    for label, folder in results.items():
        path = Path(folder) / METRICS_FILE
        if not path.is_file():
            raise UserError(f"report: {label!r} has no {METRICS_FILE} in {folder}")
        entries.append({"label": label, **json.loads(path.read_text()), "folder": str(folder)})
    return entries


def metric_display(metric: str) -> str:
    """A metric's display name ("CIDEr" for cider)."""
    return DISPLAY_NAMES.get(metric, metric)


def _check_group(task: str, by: dict[str, dict], cfg: ReportConfig, prefix: str) -> list[dict[str, Any]]:
    """The paper's claims in one group (`pipelines.claims`): student close to the teacher, faster at each latency
    batch size, and above the raw student."""
    ref, raw = by.get(cfg.reference), by.get(cfg.raw)
    student = by.get(cfg.kd) or by.get(cfg.student)
    checks = []
    if student and ref:
        margin = cfg.quality_margin.get(task)
        checks.append(quality_claim(task, student, ref, metric_display(ref["metric"]),
                                    None if margin is not None else cfg.kd_quality_ratio, margin, prefix))
        checks += speed_claims(task, student, ref, prefix)
    if student and raw and student is by.get(cfg.kd):
        checks.append(better_claim(task, student, raw, metric_display(raw["metric"]), prefix))
    return checks


def _read_predictions(folder: str) -> dict[str, dict]:
    path = Path(folder) / PREDICTIONS_FILE
    if not path.is_file():
        return {}
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return {r["id"]: r for r in rows}


def _shown(pred: dict | None, task: str) -> str:
    if pred is None:
        return "-"
    return get_task(task).example_text(pred.get("prediction"), str(pred.get("output", "")))


def _examples(task: str, entries: list[dict], cfg: ReportConfig) -> list[dict[str, Any]]:
    """The first `num_examples` rows of the baseline's predictions: id, input, reference, and each model's output."""
    base = next((e for e in entries if e["label"] == cfg.baseline), None)
    if base is None or cfg.num_examples <= 0:
        return []
    refs = list(_read_predictions(base["folder"]).values())[: cfg.num_examples]
    models = {e["label"]: _read_predictions(e["folder"]) for e in entries if e["label"] != cfg.baseline}
    return [{"id": r["id"], "input": r.get("input", ""), "reference": r.get("reference", ""),
             "outputs": {label: _shown(preds.get(r["id"]), task) for label, preds in models.items()}}
            for r in refs]


def build_report(entries: list[dict[str, Any]] | dict[str, list[dict[str, Any]]], cfg: ReportConfig) -> dict[str, Any]:
    """Rows with speed-ups over each group's reference, the paper's claims checked, and examples per task.

    `entries`: one task's systems (a list, as `load_results` returns), or task -> systems.
    """
    groups = entries if isinstance(entries, dict) else {(entries[0]["task"] if entries else ""): entries}
    implementations = list(dict.fromkeys(e.get("metric_implementation") or "unrecorded"
                                         for group in groups.values() for e in group))
    report = {"title": cfg.title, "reference": cfg.reference, "tasks": list(groups), "rows": [], "checks": [],
              "examples": {}, "note": cfg.note, "metric_implementation": "; ".join(implementations),
              "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    prefix = len(groups) > 1
    for task, group in groups.items():
        ref = next((e for e in group if e["label"] == cfg.reference), None)
        for e in group:
            row = {k: v for k, v in e.items() if k not in PER_ROW}  # the per-row lists stay in metrics.json
            report["rows"].append({**row, "group": task, "speedups": _speedups(ref, e) if ref else {}})
        report["checks"] += _check_group(task, {e["label"]: e for e in group}, cfg, f"{task}: " if prefix else "")
        report["examples"][task] = _examples(task, group, cfg)
    report["latency"] = latency_note(report["rows"], cfg.reference)
    return report


def _speedups(ref: dict, entry: dict) -> dict[str, dict[str, float]]:
    """Batch size -> the reference's ms/sample over the entry's ({estimate, low, high, ...} or {estimate}), at each
    batch size both were timed with the same statistic."""
    out = {}
    for b in comparable(ref, entry):
        sp = speedup(ref, entry, b)
        out[str(b)] = sp.to_dict() if isinstance(sp, Interval) else {"estimate": sp}
    return out


def latency_note(rows: list[dict[str, Any]], reference: str) -> str:
    """How the latency columns were measured (batch sizes, thread count, statistic, calls), from the rows' records."""
    seen: dict[tuple, set[int]] = {}
    for r in rows:
        for b, v in latency_by_batch(r).items():
            seen.setdefault((v["statistic"], v.get("calls", "?"), r.get("latency_threads", "?")), set()).add(b)
    parts = [f"batch {'/'.join(map(str, sorted(bs)))}: {s} over {n} calls, {t} CPU thread(s)"
             for (s, n, t), bs in sorted(seen.items(), key=str)]
    return ("ms/sample: model + decoding time per sample (image loading excluded), at the first batch size; "
            f"speed-up bN: {reference}'s ms/sample over the row's at batch N (same batch size and statistic); "
            + "; ".join(parts))


def metric_name(report: dict[str, Any]) -> str:
    """The shared metric's display name ("CIDEr" for cider), or "score" when the rows mix metrics."""
    names = {r["metric"] for r in report["rows"]}
    return metric_display(names.pop()) if len(names) == 1 else "score"


def _other_metrics(report: dict[str, Any]) -> list[str]:
    """Metric keys besides the headline one, in first-seen order over the rows."""
    headline = {r["metric"] for r in report["rows"]}
    keys = [k for r in report["rows"] for k in (r.get("metrics") or {}) if k not in headline]
    return list(dict.fromkeys(keys))


def format_table(report: dict[str, Any], markdown: bool = False) -> str:
    """The comparison table (plain aligned text for the terminal, or Markdown): one block of rows per task with its
    headline metric, latency and speed-up; a one-task table adds the other metrics the evaluations computed."""
    multi = len(report.get("tasks", [])) > 1
    others = [] if multi else _other_metrics(report)
    head = (["task"] if multi else []) + ["system", "decoding"] + (["metric", "score"] if multi else [metric_name(report)])
    batches = sorted({int(b) for r in report["rows"] for b in r.get("speedups", {})})
    head += ["95% CI"] + [DISPLAY_NAMES.get(k, k) for k in others] + ["ms/sample"]
    head += [f"speed-up b{b}" for b in batches]
    body = []
    for r in report["rows"]:
        ms, iv = r.get("ms_per_sample"), r.get("interval")
        cells = [r["label"], r.get("decoding", "")]
        cells += [metric_display(r["metric"]), f"{r['score']:.1f}"] if multi else [f"{r['score']:.1f}"]
        cells += [f"{iv['low']:.1f}-{iv['high']:.1f}" if iv else "-"]
        cells += [f"{r['metrics'][k]:.1f}" if k in (r.get("metrics") or {}) else "-" for k in others]
        cells += [f"{ms:.1f}" if ms is not None else "-"]
        cells += [f"{r['speedups'][str(b)]['estimate']:.2f}x" if str(b) in r.get("speedups", {}) else "-"
                  for b in batches]
        body.append(([r["group"]] if multi else []) + cells)
    if markdown:
        lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
        return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in body])
    widths = [max(len(str(x)) for x in col) for col in zip(head, *body)]
    left = 4 if multi else 2  # text columns are left-aligned, numbers right-aligned
    fmt = lambda row: "  ".join(str(x).ljust(w) if i < left else str(x).rjust(w) for i, (x, w) in enumerate(zip(row, widths)))  # noqa: E731
    return "\n".join([fmt(head), "  ".join("-" * w for w in widths)] + [fmt(row) for row in body])


def format_checks(report: dict[str, Any]) -> str:
    """One line per claim: PASS (its 95% interval clears the threshold), FAIL (the interval is wholly below) or
    inconclusive, with the figures."""
    return "\n".join(f"{c['verdict']:<12} {c['claim']} ({c['detail']})" for c in report["checks"])


def format_examples(report: dict[str, Any], markdown: bool = False) -> str:
    """Each task's example predictions: image id, the text input, the reference and every model's output."""
    out = []
    for task, examples in report.get("examples", {}).items():
        for ex in examples:
            if markdown:
                out.append(f"- **{task}** `{ex['id']}`" + (f" ({ex['input']})" if ex["input"] else "") + ": "
                           + "; ".join([f"reference *{ex['reference']}*"]
                                       + [f"{k} *{v}*" for k, v in ex["outputs"].items()]))
                continue
            out.append(f"{task}  {ex['id']}" + (f"  \"{ex['input']}\"" if ex["input"] else ""))
            width = max(len("reference"), *(len(k) for k in ex["outputs"]))
            out += [f"  {k.ljust(width)}  {v}" for k, v in [("reference", ex["reference"]), *ex["outputs"].items()]]
    return "\n".join(out)


def plot(report: dict[str, Any], path: Path) -> None:
    """One panel per task: quality (y, from 0) against latency (x, log scale), one labelled point per system; the
    baseline (no latency) is a dashed horizontal line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    tasks = report.get("tasks") or [""]
    fig, axes = plt.subplots(1, len(tasks), figsize=(4.6 * len(tasks) + 1.4, 4.2), dpi=120, squeeze=False)
    for ax, task in zip(axes[0], tasks):
        rows = [r for r in report["rows"] if r.get("group", "") == task]
        for r in rows:
            if r.get("ms_per_sample") is None:
                ax.axhline(r["score"], color="gray", ls="--", lw=1)
                ax.annotate(f"{r['label']} ({r.get('decoding', '')})", (0.02, r["score"]), xycoords=("axes fraction", "data"),
                            textcoords="offset points", xytext=(0, 3), fontsize=7, color="gray")
                continue
            student = not r.get("autoregressive", r.get("model_type") != "narvl")  # one-pass models: orange dots
            ax.scatter(r["ms_per_sample"], r["score"], s=60, marker="o" if student else "s",
                       color="tab:orange" if student else "tab:blue", zorder=3)
            ax.annotate(r["label"], (r["ms_per_sample"], r["score"]), textcoords="offset points", xytext=(6, 5),
                        fontsize=8)
        top = max([r["score"] for r in rows] + [1.0])
        ax.set_ylim(0, top * 1.15)  # from 0: a small gap between two systems looks small
        ax.set_xscale("log")
        ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))  # 1-2-5 ticks, plain numbers: readable
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel("ms / sample (log scale; left is faster)")
        ax.set_ylabel(metric_display(rows[0]["metric"]) + " (axis from 0)" if rows else "")
        ax.set_title(task or report["title"], fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
        ax.margins(x=0.3)
    axes[0][-1].legend(handles=[Line2D([], [], marker="s", color="tab:blue", ls="", label="AR teacher (OFA)"),
                                Line2D([], [], marker="o", color="tab:orange", ls="", label="NAR student (NARVL)"),
                                Line2D([], [], color="gray", ls="--", label="constant baseline")],
                       loc="lower right", fontsize=7)
    if len(tasks) > 1:
        fig.suptitle(report["title"], fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def write_report(report: dict[str, Any], out_dir: str | Path) -> list[Path]:
    """Write report.md, report.json and report.png into `out_dir`; return their paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    md, js, png = (out_dir / name for name in REPORT_FILES)
    js.write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")
    plot(report, png)
    text = [f"# {report['title']}", "", format_table(report, markdown=True), "",
            f"Metrics computed by: {report.get('metric_implementation', 'unrecorded')}.", ""]
    if report.get("latency"):
        text += [report["latency"] + ".", ""]
    if report["checks"]:
        text += ["Claims of the paper, checked on these numbers (PASS: the 95% paired bootstrap interval clears the "
                 "threshold; FAIL: it lies wholly on the wrong side; inconclusive: neither):", ""]
        text += [f"- {c['verdict']}: {c['claim']} ({c['detail']})" for c in report["checks"]]
        text.append("")
    if any(report.get("examples", {}).values()):
        text += ["Example predictions (the first test rows):", "", format_examples(report, markdown=True), ""]
    if report.get("note"):
        text += [f"Note: {report['note']}", ""]
    text += [f"![quality vs latency]({png.name})", ""]
    md.write_text("\n".join(text))
    return [md, js, png]


def run_report(cfg: ReportConfig, out_dir: Path) -> dict[str, Any]:
    """The report stage function."""

    if bool(cfg.results) == bool(cfg.tasks):
        raise UserError("report: set exactly one of results (one task) and tasks (task -> systems)")
    entries = load_results(cfg.results) if cfg.results else {t: load_results(r) for t, r in cfg.tasks.items()}
    report = build_report(entries, cfg)
    write_report(report, out_dir)
    return report
