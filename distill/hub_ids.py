"""One way to turn a model argument into a folder: a local folder as is, anything else a Hub id resolved through the
Hugging Face cache (`snapshot_download`, which honours `HF_HUB_OFFLINE` and `HF_HUB_CACHE`).

Used by `distill --teacher`, `train-student --init`, `train-teacher --init`, `evaluate --model` and
`predict --model`, so that they accept the same things and record the same identity.
"""
from __future__ import annotations

from pathlib import Path

from huggingface_hub import snapshot_download
from huggingface_hub.utils import HFValidationError, validate_repo_id

from distill.errors import UserError, error_reason

__all__ = ["resolve_model_folder"]


def resolve_model_folder(name: str, revision: str | None = None, field: str = "model") -> tuple[Path, dict]:
    """(folder, identity): `{"id": absolute path}` for a local folder, `{"id": hub id, "revision": commit sha}` for a
    Hub id (the snapshot folder is named by its commit). `field` is the config field that error messages name (the
    CLI spells it as its flag; an old `--flag` spelling is taken as its field).

    Checks that the folder holds a `config.json`; loads nothing.
    """
    field = f"`{field.lstrip('-').replace('-', '_')}`"
    path = Path(name)
    if path.is_dir():
        folder, ident = path, {"id": str(path.resolve())}
    elif path.exists():
        raise UserError(f"{field} {name} is a file; expected a folder (save_pretrained) or a Hub model id")
    else:
        try:
            validate_repo_id(name)
        except HFValidationError:  # a path that does not exist, not a Hub id: say that, not a Hub error
            raise UserError(f"{field} {name}: no such folder (and not a Hub model id)") from None
        try:
            folder = Path(snapshot_download(name, revision=revision))
        except Exception as exc:  # noqa: BLE001 (offline, unknown id: one user-facing line)
            raise UserError(f"{field} {name}: not a local folder, and the Hub download failed: "
                            f"{error_reason(exc)}") from exc
        ident = {"id": name, "revision": folder.name}  # snapshots/<commit sha>
    if not (folder / "config.json").is_file():
        raise UserError(f"{field} {name} has no config.json (expected a save_pretrained folder)")
    return folder, ident
