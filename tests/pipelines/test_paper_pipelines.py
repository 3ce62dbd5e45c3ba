"""pipelines/paper/*.yaml: the paper's four recipes parse, resolve every stage against its config dataclass once
their variables are set, and fail in one line naming the variable while data is missing."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import yaml

from distill.errors import UserError

PAPER = Path(__file__).resolve().parents[2] / "pipelines" / "paper"
FIRST_DATA = {"caption": "COCO_ROOT", "vqa": "VQA_TRAIN", "refcoco": "REFCOCO_TRAIN", "snli_ve": "SNLI_VE_TRAIN"}
TASKS = {"caption": "caption", "vqa": "vqa", "refcoco": "grounding", "snli_ve": "entailment"}


def _variables(name: str) -> dict:
    return yaml.safe_load((PAPER / f"{name}.yaml").read_text())["variables"]


def _values(name: str, tmp_path: Path) -> dict[str, str]:
    """Every variable set: path ones to files/folders that exist, the others to a Hub id."""
    out = {}
    for var, spec in _variables(name).items():
        if spec.get("path"):
            p = tmp_path / var.lower()
            p.write_text("x")
            out[var] = str(p)
        else:
            out[var] = f"someone/{var.lower()}"
    return out


@pytest.fixture
def no_env(monkeypatch):
    for name in FIRST_DATA:
        for var in _variables(name):
            monkeypatch.delenv(var, raising=False)


@pytest.mark.parametrize("name", sorted(FIRST_DATA))
def test_paper_pipeline_parses_and_resolves(name, tmp_path, no_env):
    from pipelines.stages import load_pipeline, plan

    values = _values(name, tmp_path)
    pipe = load_pipeline(PAPER / f"{name}.yaml", values)
    planned = {s.spec.name: s for s in plan(pipe, tmp_path / "out")}
    kinds = [s.kind for s in pipe.stages]
    assert kinds[-1] == "report" and kinds.count("train-student") == 1
    # caption: the AR row (OFA-base fine-tuned here), the KD teacher and the student; elsewhere teacher and student
    assert kinds.count("evaluate") == (3 if name == "caption" else 2)
    assert kinds.count("train-teacher") == (name == "caption")
    assert ("distill" in kinds) == (name in ("caption", "vqa"))  # the paper distils caption and VQA only
    student = planned["student"].config
    assert student["task"] == TASKS[name] and student["init"] == "someone/student_init"
    assert student["target_column"] == ("target" if name in ("caption", "vqa") else "references")
    # The recipe fields are left to student/presets.py: nothing in the YAML overrides them.
    for field in ("batch_size", "epochs", "lr", "warmup_ratio", "drop_path", "freeze_embeddings", "ema_decay"):
        assert student[field] is None, field
    assert planned["eval-student"].config["model"] == str(planned["student"].dir)
    if name == "caption":  # the paper's AR row is OFA-base, not the KD teacher
        assert planned["eval-ar"].config["model"] == str(planned["ar"].dir)
        assert planned["ar"].config["init"] == "someone/ar_init" and planned["distill"].config["teacher"] == (
            "someone/teacher")
    if name == "vqa":  # the AR VQA teacher decodes over OFA's answer list
        assert planned["eval-teacher"].config["answers"] == values["VQA_ANSWERS"]
    data = next(v for k, v in values.items() if k == FIRST_DATA[name])
    assert data in {str(c.get("data")) for c in (s.config for s in planned.values())}


@pytest.mark.parametrize("name", sorted(FIRST_DATA))
def test_missing_data_is_one_line_naming_the_variable(name, tmp_path, no_env, monkeypatch):
    from pipelines.stages import load_pipeline

    var = FIRST_DATA[name]
    with pytest.raises(UserError, match=rf"^data not found: set {var} \("):
        load_pipeline(PAPER / f"{name}.yaml")
    values = _values(name, tmp_path)
    values[var] = str(tmp_path / "nowhere")
    with pytest.raises(UserError, match=rf"^data not found: {var}=.*nowhere does not exist; set {var} \("):
        load_pipeline(PAPER / f"{name}.yaml", values)
    # The environment works as well as --set.
    monkeypatch.setenv(var, str(tmp_path / "gone"))
    with pytest.raises(UserError, match=rf"^data not found: {var}=.*gone does not exist"):
        load_pipeline(PAPER / f"{name}.yaml")


def test_cli_prints_one_line_and_exits_2(tmp_path, no_env, monkeypatch, capsys):
    from pipelines.cli import main

    monkeypatch.setattr(sys, "argv", ["narvl-pipe", "run", str(PAPER / "caption.yaml"), "--out", str(tmp_path)])
    with pytest.raises(SystemExit) as exc:
        main()
    err = capsys.readouterr().err.strip().splitlines()
    assert exc.value.code == 2 and len(err) == 1
    assert err[0].startswith("error: data not found: set COCO_ROOT (folder holding Karpathy's dataset_coco.json")
    monkeypatch.setattr(sys, "argv", ["narvl-pipe", "run", str(PAPER / "caption.yaml"), "--set", "COCO=1"])
    with pytest.raises(SystemExit):
        main()
    assert "--set COCO: not a variable of" in capsys.readouterr().err


def test_variables_are_declared_and_substituted():
    from pipelines.variables import substitute_variables

    doc = {"variables": {"A": {"default": "x"}}, "stages": [{"name": "s", "kind": "data", "config": {"p": "${vars.A}/y"}}]}
    assert substitute_variables(doc, environ={})["stages"][0]["config"]["p"] == "x/y"
    assert substitute_variables(doc, {"A": "z"}, environ={"A": "e"})["stages"][0]["config"]["p"] == "z/y"
    assert substitute_variables(doc, environ={"A": "e"})["stages"][0]["config"]["p"] == "e/y"
    with pytest.raises(UserError, match=r"\$\{vars.B\} is used but not declared"):
        substitute_variables({"stages": [{"config": {"p": "${vars.B}"}}]}, environ={})
