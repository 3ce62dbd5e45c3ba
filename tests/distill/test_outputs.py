"""distill.outputs: an output path that is a file, or a folder that cannot be written, is one line before any
compute, in every command that writes (distill's own cases are in test_distill_run.py)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from distill_helpers import REPO, cli_env, without_root_override  # noqa: E402

from distill.errors import UserError  # noqa: E402
from distill.outputs import check_output_dir, check_output_file  # noqa: E402


def test_a_file_is_not_a_folder_and_a_folder_is_not_a_file(tmp_path):
    f = tmp_path / "taken.txt"
    f.write_text("x")
    with pytest.raises(UserError) as err:
        check_output_dir(f)
    assert str(err.value) == f"output folder {f} is an existing file; give a folder path (it is created if missing)"
    with pytest.raises(UserError, match="is an existing file"):
        check_output_dir(f, writable=False)
    with pytest.raises(UserError, match=f"output file {tmp_path} is an existing folder; give a file path"):
        check_output_file(tmp_path)
    assert check_output_dir(tmp_path / "new" / "deeper").is_dir()  # created
    assert check_output_file(tmp_path / "made" / "preds.jsonl") == tmp_path / "made" / "preds.jsonl"
    assert list((tmp_path / "new" / "deeper").iterdir()) == []  # the write probe leaves nothing


_CHECK = "import sys; from distill.outputs import check_output_dir, check_output_file as f; {call}; print('ok')"


def _run_unprivileged(call: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", _CHECK.format(call=call)], env=cli_env(), cwd=REPO,
                          capture_output=True, text=True, timeout=120, preexec_fn=without_root_override)


def test_read_only_folder_is_refused_with_one_line(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        res = _run_unprivileged(f"check_output_dir({str(ro)!r})")
        assert res.returncode == 1 and res.stderr.strip().splitlines()[-1] == (
            f"distill.errors.UserError: output folder {ro} is not writable (Permission denied); "
            "choose a writable folder or fix its permissions")
        res = _run_unprivileged(f"f({str(ro / 'preds.jsonl')!r})")
        assert res.stderr.strip().splitlines()[-1].endswith(f"the folder of preds.jsonl {ro} is not writable "
                                                            "(Permission denied); choose a writable folder or fix its permissions")
        res = _run_unprivileged(f"check_output_dir({str(ro)!r}, writable=False)")  # a no-op run may read it
        assert res.returncode == 0 and res.stdout.strip() == "ok"
    finally:
        ro.chmod(0o755)


@pytest.mark.parametrize("command", ["train-student", "train-teacher", "evaluate"])
def test_every_writing_command_checks_its_output_before_loading_anything(command, tmp_path, capsys):
    from pipelines import cli

    taken = tmp_path / "taken"
    taken.write_text("x")
    missing = str(tmp_path / "missing")  # any model/data load would fail differently
    argv = {"train-student": ["--task", "caption", "--data", missing, "--init", missing, "--out", str(taken)],
            "train-teacher": ["--task", "caption", "--data", missing, "--arch", "tiny", "--out", str(taken)],
            "evaluate": ["--task", "caption", "--data", missing, "--model", missing, "--out", str(tmp_path)]}[command]
    old = sys.argv
    sys.argv = ["narvl-pipe", command, *argv]
    try:
        with pytest.raises(SystemExit) as exc:
            cli.main()
    finally:
        sys.argv = old
    err = capsys.readouterr().err
    assert exc.value.code == 2 and err.count("\n") == 1
    assert err.strip() == (f"error: output file {tmp_path} is an existing folder; give a file path" if command == "evaluate"
                           else f"error: output folder {taken} is an existing file; give a folder path (it is created if missing)")
