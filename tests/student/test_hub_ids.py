"""Hub ids everywhere, offline: `train-student --init`, `train-teacher --init`, `evaluate --model` and
`predict --model` resolve an id through a pre-filled Hugging Face cache folder exactly as `distill --teacher` does
(`distill.hub_ids.resolve_model_folder`), and record the commit they used."""
from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest

from distill.tasks import get_task

sys.path.insert(0, str(Path(__file__).parent))  # the suite runs with --import-mode=importlib
import student_helpers as h  # noqa: E402

SHA = "0123456789abcdef0123456789abcdef01234567"


def _cache(root: Path, repo_id: str, folder: Path, sha: str = SHA) -> Path:
    """The HF cache layout `snapshot_download` reads offline: models--owner--name/{snapshots/<sha>, refs/main}."""
    repo = root / ("models--" + repo_id.replace("/", "--"))
    snap = repo / "snapshots" / sha
    shutil.copytree(folder, snap, ignore=shutil.ignore_patterns("checkpoints", "logs", "log.jsonl"))
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(sha)
    return snap


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    root = tmp_path_factory.mktemp("hubids")
    world = h.make_world(root, n_train=8, n_val=4)
    teacher = h.make_teacher(world, root / "teacher")
    cache = root / "hub"
    _cache(cache, "me/tiny-ofa", teacher)
    return world, teacher, cache


@pytest.fixture
def offline_cache(hub, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(hub[2]))
    return hub


def test_resolver_gives_the_cached_snapshot_and_its_commit(offline_cache, tmp_path):
    from distill.errors import UserError
    from distill.hub_ids import resolve_model_folder
    from distill.run import resolve_teacher

    _, teacher, cache = offline_cache
    folder, ident = resolve_model_folder("me/tiny-ofa")
    assert folder == cache / "models--me--tiny-ofa" / "snapshots" / SHA and ident == {"id": "me/tiny-ofa",
                                                                                        "revision": SHA}
    assert resolve_teacher("me/tiny-ofa", None)[0] == folder  # distill goes through the same function
    assert resolve_model_folder(str(teacher)) == (teacher, {"id": str(teacher.resolve())})
    with pytest.raises(UserError, match="`init` me/absent: not a local folder, and the Hub download failed"):
        resolve_model_folder("me/absent", field="init")


def test_trainers_evaluate_and_predict_take_a_hub_id(offline_cache, tmp_path):
    world, teacher, cache = offline_cache
    student = tmp_path / "student"
    h.cli("train-student", "--task", "caption", "--data", world, "--target-column", "references",
          "--init", "me/tiny-ofa", "--out", student, "--max-steps", "1", "--batch-size", "4", "--eval-limit", "2",
          "--report-to", "none")
    record = json.loads((student / "train_config.json").read_text())
    assert record["init"] == "me/tiny-ofa" and record["init_identity"] == {"id": "me/tiny-ofa", "revision": SHA}

    again = tmp_path / "teacher2"
    h.cli("train-teacher", "--task", "caption", "--data", world, "--init", "me/tiny-ofa", "--out", again,
          "--max-steps", "1", "--batch-size", "4", "--eval-limit", "2", "--report-to", "none")
    assert json.loads((again / "train_config.json").read_text())["init_identity"]["revision"] == SHA

    sha2 = "fedcba9876543210fedcba9876543210fedcba98"
    _cache(cache, "me/tiny-narvl", student, sha2)
    res = tmp_path / "eval.json"
    out = h.cli("evaluate", "--model", "me/tiny-narvl", "--task", "caption", "--data", world, "--split", "test",
                "--json", res)
    assert "caption narvl (one pass + CTC) me/tiny-narvl: cider=" in out.output
    assert json.loads(res.read_text())["model_revision"] == sha2
    image = tmp_path / "img.png"
    import datasets

    datasets.load_from_disk(str(world))["test"][0]["image"].save(image)
    out = h.cli("predict", "--model", "me/tiny-ofa", "--task", "caption", "--image", image)
    assert out.output.strip()  # the teacher's caption of the image
    # OFA-Sys Hub folders carry no image processor: OFA's preprocessing at the task's resolution is used.
    snap = _cache(cache, "OFA-Sys/ofa-like", teacher)
    (snap / "preprocessor_config.json").unlink()
    from distill.loader import load_model

    assert load_model("OFA-Sys/ofa-like", task=get_task("caption"), device="cpu").resolution == 480
    assert h.cli("predict", "--model", "OFA-Sys/ofa-like", "--task", "caption", "--image", image).output.strip()


def test_unknown_hub_id_is_one_line(offline_cache, monkeypatch, capsys):
    from pipelines.cli import main

    monkeypatch.setattr(sys, "argv", ["narvl-pipe", "evaluate", "--model", "me/absent", "--task", "caption",
                                      "--data", "x"])
    with pytest.raises(SystemExit) as exc:
        main()
    assert exc.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("error: --model me/absent: not a local folder, and the Hub download failed: ")
    assert lines[0].endswith("(LocalEntryNotFoundError)")
