"""Teacher generation speed: OFA with random weights at tiny and base sizes, greedy and beam 5, the KV cache on vs off,
and (cache on) float32 vs bfloat16 weights with the bf16 token agreement. Timed by the harness
(`benchmarks/timing.py`): each variant is a pinned worker process, rounds interleaved, "x faster" is the median of
paired per-round ratios.

Every generation is forced to exactly `--new-tokens` tokens (min_new_tokens = max_new_tokens, no forced </s>), so
cached and uncached runs do the same work, and must give the same ids (checked every round). Writes
benchmarks/results/teacher_generate.json.

    python benchmarks/teacher_generate.py [--sizes tiny base] [--batches 1 16] [--dtypes float32 bfloat16]

bf16 agreement: the share of generated positions (and of whole sequences) where the bfloat16 model's ids equal the
float32 model's. Random weights make near-ties common, so a trained teacher usually agrees more.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import timing  # noqa: E402
from ofa_shapes import SHAPES, ofa_shape  # noqa: E402

DECODINGS = {"greedy": 1, "beam5": 5}
TEXT_LEN = 12
REPO = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).parent / "results" / "teacher_generate.json"


def side(dtype: str, use_cache: bool, new_tokens: int):
    """A harness side: OFA of each size (seed 0, so every side has the same weights) in `dtype`."""
    import torch

    from distill.ofa import OFAConfig, OFAModel

    models = {}

    def prepare(case: str):
        size, decoding, batch = case.split("/")
        if size not in models:
            torch.manual_seed(0)
            models[size] = OFAModel(OFAConfig(**ofa_shape(size)[0])).eval().to(getattr(torch, dtype))
        model, resolution, b = models[size], ofa_shape(size)[1], int(batch[1:])
        generator = torch.Generator().manual_seed(0)
        input_ids = torch.randint(4, 50000, (b, TEXT_LEN), generator=generator)
        input_ids[:, 0], input_ids[:, -1] = 0, 2
        patch_images = (torch.rand(b, 3, resolution, resolution, generator=generator) * 2 - 1).to(model.dtype)

        def run():
            with torch.inference_mode():
                out = model.generate(input_ids=input_ids, patch_images=patch_images, num_beams=DECODINGS[decoding],
                                     use_cache=use_cache, min_new_tokens=new_tokens, max_new_tokens=new_tokens,
                                     forced_eos_token_id=None)
            if out.shape[1] != new_tokens + 1:
                raise RuntimeError(f"expected {new_tokens} new tokens, got {out.shape[1] - 1}")
            return out
        return run

    return prepare


def agreement(half: list[list[int]], ref: list[list[int]]) -> dict[str, float]:
    """Share of generated positions, and of whole sequences, where `half`'s ids equal `ref`'s."""
    tokens = [x == y for a, b in zip(half, ref) for x, y in zip(a[1:], b[1:])]
    return {"token_agreement": sum(tokens) / len(tokens),
            "sequence_agreement": sum(a == b for a, b in zip(half, ref)) / len(ref)}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", default=["tiny", "base"], choices=SHAPES)
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 16])
    parser.add_argument("--new-tokens", type=int, default=16)
    parser.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"],
                        choices=["float32", "bfloat16", "float16"], help="weight types timed with the cache on")
    parser.add_argument("--out", type=Path, default=RESULTS)
    timing.add_args(parser)
    args = parser.parse_args()
    settings = timing.Settings.from_args(args)
    halves = [d for d in args.dtypes if d != "float32"]
    variants = {"fp32-cache": ("float32", True), "fp32-nocache": ("float32", False),
                **{f"{d}-cache": (d, True) for d in halves}}
    sides = [timing.Side(name, __file__, "side", {"dtype": d, "use_cache": c, "new_tokens": args.new_tokens},
                         python_path=[str(REPO)]) for name, (d, c) in variants.items()]
    cases = [f"{s}/{d}/b{b}" for s in args.sizes for b in args.batches for d in DECODINGS]
    entries = [timing.Entry(name, c) for c in cases for name in variants]
    pairs = []
    for c in cases:
        pairs.append(timing.Pair(f"kv cache on vs off {c}", timing.Entry("fp32-cache", c),
                                 timing.Entry("fp32-nocache", c), same_outputs=True))
        pairs += [timing.Pair(f"{d} vs float32 {c}", timing.Entry(f"{d}-cache", c), timing.Entry("fp32-cache", c),
                              same_outputs=False) for d in halves]
    agreements = {}
    with timing.Session(sides, settings) as session:
        session.run(entries, pairs)
        for c in cases:  # untimed: the ids of each dtype, compared with float32's
            ref = session.call(timing.Entry("fp32-cache", c), fetch=True)["outputs"]
            for d in halves:
                agreements[f"{d} {c}"] = agreement(session.call(timing.Entry(f"{d}-cache", c), fetch=True)["outputs"],
                                                   ref)
        result = session.result()

    print(f"\n{settings.rounds} rounds, {settings.threads} thread(s), cores {settings.cores}")
    for p in result["pairs"]:
        extra = agreements.get(p["name"].replace(" vs float32", ""))
        print(timing.pair_line(p) + (f"; token / sequence agreement {extra['token_agreement']:.1%} / "
                                     f"{extra['sequence_agreement']:.1%}" if extra else ""))
    timing.write(args.out, {
        "benchmark": "teacher_generate", "new_tokens": args.new_tokens, "variants": variants,
        "sizes": {s: {**ofa_shape(s)[0], "resolution": ofa_shape(s)[1]} for s in args.sizes}, "agreement": agreements,
        "note": "OFA with random weights on CPU; generate() forced to exactly new_tokens new tokens", **result})
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
