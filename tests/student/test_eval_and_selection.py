"""Evaluation during training: the default evaluation source is the same for every source kind and both trainers
(`student.train_eval`), and `select_best` keeps the best-scoring evaluation's weights as the model."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "pipelines"))  # --import-mode=importlib
import paper_data  # noqa: E402

from distill.errors import UserError  # noqa: E402
from student.checkpoints import load_best  # noqa: E402
from student.trainer import TrainConfig, train  # noqa: E402


def _imagefolder(root: Path) -> Path:
    for split, idx in (("train", range(4)), ("validation", range(4, 6))):
        (root / split).mkdir(parents=True)
        lines = []
        for i in idx:
            (root / split / f"{i}.png").write_bytes(paper_data.image_bytes(i))
            lines.append(json.dumps({"file_name": f"{i}.png", "captions": paper_data.CAPTIONS[i]}))
        (root / split / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    return root


def _tsv_folder(root: Path) -> Path:
    root.mkdir(parents=True)
    for split, idx in (("train", range(4)), ("validation", range(4, 6))):
        rows = [f"{i}\t{i}\t{'&&'.join(paper_data.CAPTIONS[i])}\tx\t{paper_data.b64(i)}" for i in idx]
        (root / f"caption_{split}.tsv").write_text("\n".join(rows) + "\n")
    return root


@pytest.mark.parametrize("kind", ["imagefolder", "ofa-tsv"])
@pytest.mark.parametrize("command", ["train-student", "train-teacher"])
def test_default_evaluation_is_the_sources_validation_split_for_every_kind(tmp_path, kind, command):
    """`--eval-data` defaults to `--data` (its `--eval-split`, validation): with an imagefolder the student used to
    print `note: no evaluation source (pass --eval-data)` where the teacher on the same data evaluated."""
    from typer.testing import CliRunner

    from pipelines.cli import app

    data = _imagefolder(tmp_path / "data") if kind == "imagefolder" else _tsv_folder(tmp_path / "data")
    init = paper_data.ofa_sys_folder(tmp_path / "ofa", seed=0)
    out = tmp_path / "out"
    args = [command, "--task", "caption", "--data", str(data), "--init", str(init), "--out", str(out),
            "--max-steps", "1", "--batch-size", "2", "--resolution", "32", "--eval-limit", "2", "--report-to", "none"]
    if command == "train-student":
        args += ["--target-column", "references"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert "no evaluation" not in result.output
    assert "cider" in json.loads((out / "train_config.json").read_text())["eval"]


def test_select_best_keeps_the_best_evaluation_as_the_model(tmp_path):
    """Evaluations at steps 1, 2 (every step) and 3 (the end) score 0.5, 0.9, 0.1: the weights of step 2 are kept
    (fairseq `--best-checkpoint-metric`, `--maximize-best-checkpoint-metric`), the result's model is the last."""
    scores, seen = iter([0.5, 0.9, 0.1]), []

    def loss_fn(model, batch, step):
        return model(batch).pow(2).mean(), {}

    def eval_fn(model, accelerator):
        seen.append({k: v.detach().clone() for k, v in model.state_dict().items()})
        return {"score": next(scores), "other": 1.0}

    torch.manual_seed(0)
    model = torch.nn.Linear(3, 3)
    data = [torch.randn(3) for _ in range(8)]
    cfg = TrainConfig(output_dir=str(tmp_path), max_steps=3, batch_size=2, lr=0.1, eval_every=1,
                      select_best="score", report_to="none")
    result = train(model, loss_fn, data, cfg, collate_fn=torch.stack, eval_fn=eval_fn)
    assert (result.best["step"], result.best["value"], result.best["metrics"]["other"]) == (2, 0.9, 1.0)
    assert torch.equal(result.model.weight, seen[2]["weight"])  # the last step's weights
    best = load_best(torch.nn.Linear(3, 3), result.best)
    assert torch.equal(best.weight, seen[1]["weight"]) and not torch.equal(best.weight, seen[2]["weight"])

    with pytest.raises(UserError, match="`select_best` score needs evaluations to choose from"):
        TrainConfig(output_dir="x", select_best="score").validate()
    with pytest.raises(UserError, match="`select_best` nope: the evaluation reports other, score"):
        scores = iter([0.5])
        train(torch.nn.Linear(3, 3), loss_fn, data, TrainConfig(output_dir=str(tmp_path / "b"), max_steps=2,
              batch_size=2, eval_every=1, select_best="nope", report_to="none"), collate_fn=torch.stack,
              eval_fn=eval_fn)


def test_select_best_resumes_with_the_checkpoint_s_record(tmp_path):
    """A run resumed from its step-2 checkpoint starts from that checkpoint's best record (step 2), drops best
    weights written after it (a crash between checkpoints), and ends with the same best as an uninterrupted run."""
    import shutil

    from safetensors.torch import load_file

    def loss_fn(model, batch, step):
        return model(batch).pow(2).mean(), {}

    def run(out, scores, resume=False):
        it = iter(scores)
        torch.manual_seed(0)
        cfg = TrainConfig(output_dir=str(out), max_steps=3, batch_size=2, lr=0.1, eval_every=1, save_every=1,
                          keep_checkpoints=5, select_best="score", report_to="none", resume=resume)
        data = [torch.randn(3, generator=torch.Generator().manual_seed(i)) for i in range(8)]
        return train(torch.nn.Linear(3, 3), loss_fn, data, cfg, collate_fn=torch.stack,
                     eval_fn=lambda m, a: {"score": next(it)})

    ref = run(tmp_path / "ref", [0.5, 0.9, 0.1])
    out = tmp_path / "crashed"
    run(out, [0.5, 0.9, 0.95])  # a different step-3 score: its best file must not survive the resume
    shutil.rmtree(out / "checkpoints" / "step_00000003")
    resumed = run(out, [0.1], resume=True)  # only step 3 is replayed
    assert resumed.best["step"] == ref.best["step"] == 2 and resumed.best["value"] == 0.9
    assert sorted(p.name for p in (out / "checkpoints" / "best").iterdir()) == ["step_00000002.safetensors"]
    a, b = load_file(ref.best["weights"]), load_file(resumed.best["weights"])
    assert all(torch.equal(a[k], b[k]) for k in a)
