"""Caption metrics before/after issue 10 on the same predictions: the old CIDEr-D-only figure (Python PTB
approximation, from `git show main:distill/tasks/metrics.py`) vs pycocoevalcap's full set with the Java PTB tokenizer.

Predictions are deterministic stand-ins on the demo's shapes-world test split (200 images, seed 0, 48 px): a held-out
human caption (refs = the other captions), the same with its first colour word dropped, and another image's caption.
Also counts how often each Python tokenizer (old / new) disagrees with the Java one on those captions and on the
tokenizer test's generated strings. Writes benchmarks/results/caption_metrics_table.json.

Run: PYTHONPATH=. python benchmarks/caption_metrics_table.py [--base main]
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
COLOURS = ("red", "green", "blue", "yellow", "purple", "orange", "white", "black", "gray", "grey")


def old_metrics(base: str):
    src = subprocess.run(["git", "-C", str(REPO), "show", f"{base}:distill/tasks/metrics.py"], check=True,
                         capture_output=True, text=True).stdout
    path = Path(tempfile.mkdtemp()) / "old_metrics.py"
    path.write_text(src)
    spec = importlib.util.spec_from_file_location("old_metrics", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def systems(rows):
    held = [r["captions"][0] for r in rows]
    refs = [r["captions"][1:] for r in rows]

    def drop_colour(c):
        words = c.split()
        for i, w in enumerate(words):
            if w.lower().strip(".,") in COLOURS:
                return " ".join(words[:i] + words[i + 1:])
        return c

    return refs, {"held-out caption": held, "colour dropped": [drop_colour(c) for c in held],
                  "another image's caption": held[1:] + held[:1]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--base", default="main")
    args = ap.parse_args()
    sys.path.insert(0, str(REPO))
    sys.path.insert(0, str(REPO / "tests" / "distill"))
    from distill.tasks.caption_metrics import caption_scores, java_ptb_tokenize, ptb_tokenize
    from distill.shapes import ShapesConfig, generate_example
    from test_caption_metrics import ptb_cases

    old = old_metrics(args.base)
    cfg = ShapesConfig(n_train=2000, n_val=100, n_test=200, seed=0, size=48)
    rows = [generate_example(cfg, "test", i).row for i in range(cfg.n_test)]
    refs, preds = systems(rows)
    table = []
    for name, p in preds.items():
        new = caption_scores(p, refs)
        table.append({"system": name, "old_cider_d": old.cider_d(p, refs), **new})
    keys = [k for k in table[0] if k != "system"]
    print("| system | " + " | ".join(keys) + " |")
    print("|---|" + "---|" * len(keys))
    for t in table:
        print(f"| {t['system']} | " + " | ".join(f"{t[k]:.2f}" for k in keys) + " |")
    texts = {"shapes captions": [c for r in rows for c in r["captions"]], "tokenizer test strings": ptb_cases(300)}
    agreement = {}
    for name, tx in texts.items():
        java = java_ptb_tokenize(tx)
        agreement[name] = {
            "n": len(tx), "old_python_mismatches": sum(old.ptb_tokenize(t) != j for t, j in zip(tx, java)),
            "new_python_mismatches": sum(ptb_tokenize(t) != j for t, j in zip(tx, java))}
        print(f"{name}: {agreement[name]}")
    out = REPO / "benchmarks" / "results" / "caption_metrics_table.json"
    out.write_text(json.dumps({"table": table, "tokenizer_agreement": agreement}, indent=1) + "\n")
    print(f"-> {out}")


if __name__ == "__main__":
    main()
