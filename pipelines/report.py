"""The report stage: quality vs latency of evaluated systems, as a printed table, `report.md`, `report.json` and a PNG.

Inputs are evaluate-stage folders, each holding `metrics.json` (written by `pipelines.stage_kinds`):
`{"task", "metric", "score", "ms_per_sample", "num_samples", "model", "decoding", "metrics": {...},
"metric_implementation"}`. The table shows the headline metric, then every other metric of the rows (e.g. BLEU-4,
METEOR, ROUGE-L for captions), and the report names the implementation that computed them.
Speed-ups are relative to the `reference` system (teacher beam search, the paper's AR baseline).
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

METRICS_FILE = "metrics.json"
REPORT_FILES = ("report.md", "report.json", "report.png")


@dataclass
class ReportConfig:
    """What the report compares."""

    results: dict[str, str] = field(default_factory=dict)
    """System label -> evaluate-stage folder holding metrics.json; the table keeps this order."""
    reference: str = "teacher-beam5"
    """Label of the baseline for speed-ups and for the student-quality ratio."""
    kd: str = "student-kd"
    """Label of the student trained on teacher targets (for the claim checks; skipped when absent)."""
    raw: str = "student-raw"
    """Label of the student trained on raw references (for the claim checks; skipped when absent)."""
    kd_quality_ratio: float = 0.9
    """The claim 'student-KD is close to the teacher' holds when kd score >= this ratio x reference score."""
    title: str = "narvl-pipe report"
    """Heading of report.md and of the plot."""
    note: str | None = None
    """A caveat on reading the numbers, printed under the claim checks and written into report.md."""


def load_results(results: dict[str, str]) -> list[dict[str, Any]]:
    """One entry per system: its label plus the fields of its metrics.json."""
    from distill.errors import UserError

    entries = []
    for label, folder in results.items():
        path = Path(folder) / METRICS_FILE
        if not path.is_file():
            raise UserError(f"report: {label!r} has no {METRICS_FILE} in {folder}")
        entries.append({"label": label, **json.loads(path.read_text())})
    return entries


def build_report(entries: list[dict[str, Any]], cfg: ReportConfig) -> dict[str, Any]:
    """Rows with speed-ups over the reference, and the paper's three claims checked on these numbers."""
    ref = next((e for e in entries if e["label"] == cfg.reference), None)
    rows = []
    for e in entries:
        speedup = ref["ms_per_sample"] / e["ms_per_sample"] if ref and e["ms_per_sample"] > 0 else None
        rows.append({**e, "speedup": speedup})
    by = {r["label"]: r for r in rows}
    implementations = list(dict.fromkeys(e.get("metric_implementation") or "unrecorded" for e in entries))
    report = {"title": cfg.title, "reference": cfg.reference, "rows": rows, "checks": [], "note": cfg.note,
              "metric_implementation": "; ".join(implementations),
              "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    metric = metric_name(report)
    kd, raw = by.get(cfg.kd), by.get(cfg.raw)
    if kd and ref:
        ratio = f" = {kd['score'] / ref['score']:.2f}x" if ref["score"] > 0 else ""
        report["checks"].append({
            "claim": f"{cfg.kd} {metric} >= {cfg.kd_quality_ratio:g} x {cfg.reference}",
            "passed": kd["score"] >= cfg.kd_quality_ratio * ref["score"],
            "detail": f"{kd['score']:.1f} vs {ref['score']:.1f}{ratio}"})
        report["checks"].append({"claim": f"{cfg.kd} faster than {cfg.reference}", "passed": kd["speedup"] > 1.0,
                                 "detail": f"{kd['speedup']:.1f}x speed-up"})
    if kd and raw:
        report["checks"].append({"claim": f"{cfg.kd} {metric} > {cfg.raw}", "passed": kd["score"] > raw["score"],
                                 "detail": f"{kd['score']:.1f} vs {raw['score']:.1f}"})
    return report


DISPLAY_NAMES = {"cider": "CIDEr", "bleu1": "BLEU-1", "bleu2": "BLEU-2", "bleu3": "BLEU-3", "bleu4": "BLEU-4",
                 "meteor": "METEOR", "rouge_l": "ROUGE-L", "spice": "SPICE", "vqa_accuracy": "VQA acc",
                 "acc@0.5": "Acc@0.5", "accuracy": "accuracy"}


def metric_name(report: dict[str, Any]) -> str:
    """The shared metric's display name ("CIDEr" for cider)."""
    names = {r["metric"] for r in report["rows"]}
    name = names.pop() if len(names) == 1 else "score"
    return DISPLAY_NAMES.get(name, name)


def _other_metrics(report: dict[str, Any]) -> list[str]:
    """Metric keys besides the headline one, in first-seen order over the rows."""
    headline = {r["metric"] for r in report["rows"]}
    keys = [k for r in report["rows"] for k in (r.get("metrics") or {}) if k not in headline]
    return list(dict.fromkeys(keys))


def format_table(report: dict[str, Any], markdown: bool = False) -> str:
    """The comparison table (plain aligned text for the terminal, or Markdown): the headline metric, the other
    metrics the evaluations computed, latency and speed-up."""
    metric = metric_name(report)
    others = _other_metrics(report)
    head = ["system", "decoding", metric, *[DISPLAY_NAMES.get(k, k) for k in others], "ms/sample",
            f"speed-up vs {report['reference']}"]
    body = [
        [r["label"], r.get("decoding", ""), f"{r['score']:.1f}",
         *[f"{r['metrics'][k]:.1f}" if k in (r.get("metrics") or {}) else "-" for k in others],
         f"{r['ms_per_sample']:.1f}", f"{r['speedup']:.1f}x" if r["speedup"] is not None else "-"]
        for r in report["rows"]
    ]
    if markdown:
        lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
        return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in body])
    widths = [max(len(str(x)) for x in col) for col in zip(head, *body)]
    fmt = lambda row: "  ".join(str(x).ljust(w) if i < 2 else str(x).rjust(w) for i, (x, w) in enumerate(zip(row, widths)))  # noqa: E731
    return "\n".join([fmt(head), "  ".join("-" * w for w in widths)] + [fmt(row) for row in body])


def format_checks(report: dict[str, Any]) -> str:
    return "\n".join(f"[{'x' if c['passed'] else ' '}] {c['claim']}: {'yes' if c['passed'] else 'NO'} ({c['detail']})"
                     for c in report["checks"])


def plot(report: dict[str, Any], path: Path) -> None:
    """Quality (y) against latency (x, log scale) with one labelled point per system."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.2), dpi=120)
    for r in report["rows"]:
        student = r.get("model_type") == "narvl"
        ax.scatter(r["ms_per_sample"], r["score"], s=60, marker="o" if student else "s",
                   color="tab:orange" if student else "tab:blue", zorder=3)
        ax.annotate(r["label"], (r["ms_per_sample"], r["score"]), textcoords="offset points", xytext=(6, 5), fontsize=9)
    from matplotlib.lines import Line2D

    ax.legend(handles=[Line2D([], [], marker="s", color="tab:blue", ls="", label="AR teacher (OFA)"),
                       Line2D([], [], marker="o", color="tab:orange", ls="", label="NAR student (NARVL)")],
              loc="lower right", fontsize=8)
    ax.set_xscale("log")
    ax.set_xlabel("latency (ms / sample, log scale; left is faster)")
    ax.set_ylabel(metric_name(report))
    ax.set_title(report["title"], fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.margins(x=0.25, y=0.15)
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
    if report["checks"]:
        text += ["Claims of the paper, checked on these numbers:", ""]
        text += [f"- {'PASS' if c['passed'] else 'FAIL'}: {c['claim']} ({c['detail']})" for c in report["checks"]]
        text.append("")
    if report.get("note"):
        text += [f"Note: {report['note']}", ""]
    text += [f"![quality vs latency]({png.name})", ""]
    md.write_text("\n".join(text))
    return [md, js, png]


def run_report(cfg: ReportConfig, out_dir: Path) -> dict[str, Any]:
    """The report stage function."""
    report = build_report(load_results(cfg.results), cfg)
    write_report(report, out_dir)
    return report
