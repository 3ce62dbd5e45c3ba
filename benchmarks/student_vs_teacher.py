"""NARVL student vs AR OFA teacher: inference latency for the four tasks at batch 1, 8 and 64, timed by the harness
(`benchmarks/timing.py`: the student and the teacher are two pinned worker processes, rounds interleaved, every
"x faster" the median of paired per-round ratios with its min-max).

For each size (tiny at 256 px, base at 384 px; random weights, the official 59,457-token vocabulary), task and batch
size, it times:
* `narvl` (student side): the student's single pass (encoder + N parallel queries) plus greedy CTC collapse;
* `enc+1dec` (teacher side): the encoder plus one AR decoder pass over a single token (the floor of any generation);
* `ar_greedy` / `ar_beam5` (teacher side): `generate()` with the KV cache, forced to realistic target lengths
  (caption 16, VQA 3, grounding 4, entailment 1 new tokens: min = max).

Figures: NARVL's speed-up over AR greedy and over AR beam 5, and narvl / (enc+1dec) (time ratio; goal <= 1.1: NARVL
costs about one encoder pass). Writes `benchmarks/results/student_vs_teacher.json`.

    python benchmarks/student_vs_teacher.py [--sizes tiny base] [--tasks ...] [--batches 1 8 64]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import timing  # noqa: E402
from ofa_shapes import SHAPES, ofa_shape  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
AR_LENGTHS = {"caption": 16, "vqa": 3, "grounding": 4, "entailment": 1}
PROMPT_ROWS = {
    "caption": {},
    "vqa": {"question": "what color is the large circle"},
    "grounding": {"region_text": "the small red square on the left"},
    "entailment": {"premise": "", "hypothesis": "two shapes are in the picture"},
}
METHODS = {"student": ("narvl",), "teacher": ("enc+1dec", "ar_greedy", "ar_beam5")}
RESULTS = Path(__file__).parent / "results" / "student_vs_teacher.json"
FIXTURE_TOKENIZER = REPO / "tests" / "fixtures" / "ofa-tokenizer"


def run_model(method: str, model, inputs: dict, new_tokens: int):
    """Run one timed method on today's model API (the one place that does; the `Model` seam replaces it):
    `narvl` -> CTC-collapsed ids per sample; `enc+1dec` -> the first decoder step's argmax (B, 1);
    `ar_greedy` / `ar_beam5` -> `generate()` ids (B, 1 + new_tokens)."""
    import torch

    from student.decoding import ctc_greedy_decode

    with torch.inference_mode():
        if method == "narvl":
            return ctc_greedy_decode(model(**inputs).logits, model.config.blank_id, model.config.eos_token_id)
        if method == "enc+1dec":
            start = torch.full((len(inputs["input_ids"]), 1), model.config.decoder_start_token_id)
            return model(**inputs, decoder_input_ids=start, use_cache=False).logits.argmax(-1)
        out = model.generate(**inputs, num_beams=1 if method == "ar_greedy" else 5, min_new_tokens=new_tokens,
                             max_new_tokens=new_tokens, use_cache=True, do_sample=False)
        if out.shape[1] != new_tokens + 1:  # forced length (+ start token)
            raise RuntimeError(f"{method}: expected {new_tokens} new tokens, got {out.shape[1] - 1}")
        return out


def side(kind: str):
    """A harness side: the AR teacher (`teacher`) or its NARVL student (`student`), built per size (seed 0: both
    sides hold the same OFA weights) and per task (the student's query count)."""
    import torch

    from distill.ofa import OFAConfig, OFAModel
    from distill.ofa.tokenization_ofa import load_ofa_tokenizer
    from distill.tasks import get_task
    from student.modeling_narvl import NARVLModel

    tok = load_ofa_tokenizer(FIXTURE_TOKENIZER)
    models: dict[tuple, object] = {}

    def model_for(size: str, task: str):
        if (size, "ofa") not in models:
            torch.manual_seed(0)
            models[size, "ofa"] = OFAModel(OFAConfig(**ofa_shape(size)[0])).eval()
        if kind == "teacher":
            return models[size, "ofa"]
        if (size, task) not in models:
            models[size, task] = NARVLModel.from_ofa(models[size, "ofa"], num_queries=get_task(task).num_queries).eval()
        return models[size, task]

    def prepare(case: str):
        size, task, batch, method = case.split("/")
        b, resolution = int(batch[1:]), ofa_shape(size)[1]
        ids = tok(get_task(task).prompt({"id": "x", **PROMPT_ROWS[task]}))["input_ids"]
        generator = torch.Generator().manual_seed(0)
        inputs = {"input_ids": torch.tensor([ids] * b), "patch_masks": torch.ones(b, dtype=torch.bool),
                  "patch_images": torch.randn(b, 3, resolution, resolution, generator=generator)}
        model = model_for(size, task)
        return lambda: run_model(method, model, inputs, AR_LENGTHS[task])

    return prepare


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", nargs="+", default=["tiny", "base"], choices=SHAPES)
    ap.add_argument("--tasks", nargs="+", default=list(AR_LENGTHS), choices=list(AR_LENGTHS))
    ap.add_argument("--batches", nargs="+", type=int, default=[1, 8, 64])
    ap.add_argument("--out", type=Path, default=RESULTS)
    timing.add_args(ap)
    args = ap.parse_args()
    settings = timing.Settings.from_args(args)
    sides = [timing.Side(k, __file__, "side", {"kind": k}, python_path=[str(REPO)]) for k in METHODS]
    entries, pairs, cases = [], [], []
    for size in args.sizes:
        for task in args.tasks:
            for b in args.batches:
                case = f"{size}/{task}/b{b}"
                e = {m: timing.Entry(k, f"{case}/{m}") for k, ms in METHODS.items() for m in ms}
                entries += [e["enc+1dec"], e["narvl"], e["ar_greedy"], e["ar_beam5"]]
                pairs += [timing.Pair(f"narvl vs ar_greedy {case}", e["narvl"], e["ar_greedy"], same_outputs=False),
                          timing.Pair(f"narvl vs ar_beam5 {case}", e["narvl"], e["ar_beam5"], same_outputs=False),
                          timing.Pair(f"enc+1dec vs narvl {case}", e["enc+1dec"], e["narvl"], same_outputs=False)]
                cases.append({"size": size, "resolution": ofa_shape(size)[1], "task": task, "batch": b,
                              "ar_new_tokens": AR_LENGTHS[task]})
    with timing.Session(sides, settings) as session:
        session.run(entries, pairs)
        result = session.result()
    timing.print_pairs(result, "'enc+1dec vs narvl' is narvl / (enc+1dec) in time (goal <= 1.1)")
    timing.write(args.out, {"benchmark": "student_vs_teacher", "cases": cases, "methods": METHODS,
                            "note": "random weights; AR forced to min=max new tokens; KV cache on", **result})
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
