"""`save_model_folder`: the one layout every model folder narvl-pipe writes has (teacher and student alike), which
`distill.loader.load_model`, `AutoProcessor.from_pretrained` and `narvl-pipe export` read."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from distill.ofa.processing_ofa import OFAProcessor

__all__ = ["save_model_folder"]


def save_model_folder(model, processor: OFAProcessor, out: str | os.PathLike,
                      train_config: dict[str, Any] | None = None) -> Path:
    """Write one usable folder: model (safetensors), the `OFAProcessor` (`AutoProcessor.from_pretrained(out)`) with
    its tokenizer and image processor, and `train_config.json`."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out))
    processor.save_pretrained(str(out))
    processor.image_processor.save_pretrained(str(out))  # preprocessor_config.json too: older readers use it
    if train_config is not None:
        (out / "train_config.json").write_text(json.dumps(train_config, indent=1, default=str))
    return out
