"""The OFA teacher's caption and grounding decoding beside fairseq's `SequenceGenerator`: shared by the side-by-side
test, the recorded-fixture test and the command that records the fixture.

The teacher is an OFA-tiny-shaped model (4+4 layers, d_model 256, ResNet50 stem, OFA's 59,457 ids) whose weights are
drawn from a seed (`tiny_model`), with OFA's real tokenizer (tests/fixtures/ofa-tokenizer); the inputs are OFA's
prompts, of different lengths (right-padded in a batch), and seeded random images at 128 px. The project side is the
path `narvl-pipe distill` runs (`OFATeacher.infer` with `distill.generation.generation_settings`); the official side is
the port's `SequenceGenerator`, run by `official_port`'s worker in its own process.

Record the fixture (tests/fixtures/ofa-sequence-generator/README.md) with
    PYTHONPATH=. python tests/distill/fairseq_cases.py --official-src /opt/ofa-official
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "benchmarks"))
sys.path.insert(0, str(Path(__file__).parent))  # the suite runs with --import-mode=importlib
import official_port as port  # noqa: E402
from ofa_shapes import ofa_shape  # noqa: E402
from ofa_helpers import randomized  # noqa: E402

from distill.config import DistillConfig  # noqa: E402
from distill.generation import generation_settings  # noqa: E402
from distill.ofa import OFAConfig, OFAModel  # noqa: E402
from distill.tasks import get_task  # noqa: E402
from distill.tasks.caption import CaptionTask  # noqa: E402
from distill.seam import ModelOptions  # noqa: E402
from distill.teachers.ofa import OFATeacher  # noqa: E402

FIXTURE = REPO / "tests" / "fixtures" / "ofa-sequence-generator"
TOKENIZER = REPO / "tests" / "fixtures" / "ofa-tokenizer"
SEED, RESOLUTION, ROWS, EOS_GAIN = 0, 128, 6, 4.0
REGIONS = ["man", "the dog on the left", "a red car parked next to the tall building", "woman in white",
           "the second bowl from the right on the wooden table", "sky"]
CAPTION_PROMPTS = [" what does the image describe?", " what does the image describe? a photo of",
                   " what does the image describe?", " describe the image in detail, with every object you see",
                   " what does the image describe?", " what is in the picture?"]
# OFA's flags for each case (run_scripts/caption/evaluate_caption.sh, run_scripts/refcoco/evaluate_refcoco.sh);
# grounding: as OFA's script (no constraint_range) and as the project decodes it (the bins' constraint_range; the
# project also suppresses <s> and <unk>, which none of the recorded official hypotheses holds)
TINY = ofa_shape("tiny")[0]
"""The OFA-tiny shape (4+4 layers, d_model 256, ResNet50 stem) the cases are built at."""
CASES = {"caption": ("caption", port.FAIRSEQ_FLAGS["caption"]),
         "grounding": ("grounding", port.FAIRSEQ_FLAGS["grounding"]),
         "grounding_bins": ("grounding", port.FAIRSEQ_FLAGS["grounding_bins"])}


def tiny_model(seed: int = SEED, eos_gain: float = EOS_GAIN) -> OFAModel:
    """OFA-tiny shape, every float tensor drawn from `seed` by name (`randomized`, sorted names: independent of the
    model's own initialisation and module order), then EOS's row of the tied embedding scaled by `eos_gain`: random
    weights otherwise put EOS near the bottom at every step (log-prob about -30), so every hypothesis would run to
    `max_len`; with it they end at every length and fairseq's finalisation rules are exercised."""
    model = randomized(OFAModel(OFAConfig(**TINY)), seed=seed, by_name=True)
    with torch.no_grad():
        model.decoder.embed_tokens.weight[model.config.eos_token_id] *= eos_gain
    return model


def teacher(model: OFAModel) -> OFATeacher:
    """The OFA teacher over the fixture tokenizer (an OFA-Sys-layout folder without weights), holding `model`."""
    t = OFATeacher.from_pretrained(TOKENIZER, {"id": "tiny-random"}, ModelOptions(resolution=RESOLUTION), "cpu")
    t.model = model
    return t


class PromptPerRow(CaptionTask):
    """Captioning with each row's own prompt: OFA's one caption prompt never pads a batch, these do (the decoding is
    the caption task's)."""

    def prompt(self, row):
        return row["prompt"]


def batch_inputs(t: OFATeacher, case: str, batch: int) -> tuple[object, dict]:
    """(task, the teacher's prepared first `batch` rows for `case`), padded to the batch's longest prompt."""
    rng = np.random.default_rng(SEED)
    images = [Image.fromarray(rng.integers(0, 255, (40 + 8 * k, 56, 3), dtype=np.uint8)) for k in range(batch)]
    if CASES[case][0] == "caption":
        task = PromptPerRow(resolution=RESOLUTION)
        rows = [{"id": str(k), "prompt": CAPTION_PROMPTS[k]} for k in range(batch)]
    else:
        task = get_task("grounding", resolution=RESOLUTION)
        rows = [{"id": str(k), "region_text": REGIONS[k]} for k in range(batch)]
    return task, t.prepare(rows, images, task)


def project_hypos(t: OFATeacher, case: str, batch: int) -> list:
    """The teacher's n-best (n = beam) per row of the first `batch` rows, in `official_port.compare_hypos`'
    form (the normalised score is the summed log-prob / length ** lenpen, what generate() ranks by)."""
    task, inputs = batch_inputs(t, case, batch)
    flags = CASES[case][1]
    config = DistillConfig(task=task.name, teacher=str(TOKENIZER), data="-", out="-",
                           num_return_sequences=flags["beam"])
    settings, _ = generation_settings(config, task, t, None)
    if "constraint_range" not in flags:  # OFA's own RefCOCO script: no constraint over the bins
        settings.pop("constraint_range", None)
        settings.pop("suppress_tokens", None)
    return [[{"tokens": p.ids, "logprob": p.logprob, "score": p.logprob / len(p.ids) ** flags.get("lenpen", 1.0)}
             for p in row] for row in t.infer(inputs, task, settings)]


def official_hypos(src: str, model: OFAModel, t: OFATeacher, requests: list[tuple[str, int]]) -> list[list]:
    """`SequenceGenerator` of the official port at `src` on the same weights and batches, one answer per request."""
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp)
        torch.save({k: v.contiguous() for k, v in model.state_dict().items()}, data / "weights.pt")
        (data / "config.json").write_text(json.dumps({**TINY, "vocab_size": model.config.vocab_size}))
        side = port.Side("official", src, data, threads=1)
        try:
            answers = []
            for case, batch in requests:
                _, inputs = batch_inputs(t, case, batch)
                torch.save({k: inputs[k] for k in ("input_ids", "patch_images")}, data / "batch.pt")
                answers.append(side.request({"fairseq": CASES[case][1], "batch": batch, "inputs": "batch.pt"})["hypos"])
        finally:
            side.close()
    return answers


def record(src: str, out: Path = FIXTURE) -> dict:
    """The official n-best lists for every case at batch 1 and batch ROWS -> `out/expected.json`."""
    model = tiny_model()
    t = teacher(model)
    requests = [(case, batch) for case in CASES for batch in (1, ROWS)]
    answers = official_hypos(src, model, t, requests)
    keep = ("tokens", "score", "logprob")
    expected = {"seed": SEED, "eos_gain": EOS_GAIN, "resolution": RESOLUTION, "rows": ROWS, "model": TINY,
                "official": "OFA-Sys/OFA feature/add_transformers @ 134ad29, "
                            "transformers/src/transformers/models/ofa/generate/sequence_generator.py",
                "cases": {f"{case}_b{batch}": {"flags": CASES[case][1],
                                               "hypos": [[{k: h[k] for k in keep} for h in row] for row in hypos]}
                          for (case, batch), hypos in zip(requests, answers)}}
    out.mkdir(parents=True, exist_ok=True)
    text = json.dumps(expected, indent=1)  # number lists on one line each: one hypothesis is three short lines
    text = re.sub(r"\[\s+([-\d.e+,\s]+?)\s+\]", lambda m: "[" + ",".join(m.group(1).split()).replace(",,", ",") + "]",
                  text)
    (out / "expected.json").write_text(text + "\n")
    return expected


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--official-src", default=os.environ.get("OFA_OFFICIAL_SRC"), required=False)
    ap.add_argument("--out", type=Path, default=FIXTURE)
    args = ap.parse_args()
    if not args.official_src:
        raise SystemExit("pass --official-src DIR (or set OFA_OFFICIAL_SRC): the official port's install folder")
    torch.set_num_threads(1)
    record(args.official_src, args.out)
    print(f"wrote {args.out / 'expected.json'}")
