"""Teacher generation speed: OFA with random weights at tiny and base sizes, greedy vs beam 5, KV cache on vs off,
and (cache on) float32 vs bfloat16 weights with the bf16 token agreement.

Every generation is forced to exactly `--new-tokens` tokens (min_new_tokens = max_new_tokens, no forced </s>), so
cached and uncached runs do the same work. Prints a table and writes benchmarks/results/teacher_generate.json.

    python benchmarks/teacher_generate.py            # 2 timed repeats per cell
    python benchmarks/teacher_generate.py --quick    # 1 timed repeat per cell
    python benchmarks/teacher_generate.py --threads 1   # on a shared, oversubscribed CPU
    python benchmarks/teacher_generate.py --dtypes float32   # skip the bfloat16 cells

bf16 agreement: the share of generated positions (and of whole sequences) where the bfloat16 model's ids equal the
float32 model's. Random weights make near-ties common, so a trained teacher usually agrees more.
"""
import argparse
import copy
import json
import os
import platform
import time
from pathlib import Path

import torch
import transformers
from tqdm.auto import tqdm

from distill.ofa import OFAConfig, OFAModel

SIZES = {
    # name: (config overrides, image resolution); vocabulary is OFA's 59,457 ids for both.
    "tiny": (dict(encoder_layers=4, decoder_layers=4, d_model=256, encoder_attention_heads=4,
                  decoder_attention_heads=4, encoder_ffn_dim=1024, decoder_ffn_dim=1024, resnet_type="resnet50"), 256),
    "base": (dict(encoder_layers=6, decoder_layers=6, d_model=768, encoder_attention_heads=12,
                  decoder_attention_heads=12, encoder_ffn_dim=3072, decoder_ffn_dim=3072, resnet_type="resnet101"),
             384),
}
DECODINGS = {"greedy": 1, "beam5": 5}
TEXT_LEN = 12


def make_inputs(batch: int, resolution: int, vocab: int, seed: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(4, min(vocab, 50000), (batch, TEXT_LEN), generator=generator)
    input_ids[:, 0], input_ids[:, -1] = 0, 2
    patch_images = torch.rand(batch, 3, resolution, resolution, generator=generator) * 2 - 1
    return {"input_ids": input_ids, "patch_images": patch_images}


def time_generate(model: OFAModel, inputs: dict, beams: int, use_cache: bool, new_tokens: int,
                  repeats: int) -> tuple[float, torch.Tensor]:
    """Median wall time of one generate() call in seconds, and the ids it generated."""
    times = []
    inputs = dict(inputs, patch_images=inputs["patch_images"].to(model.dtype))
    for _ in range(repeats):
        start = time.perf_counter()
        with torch.inference_mode():
            out = model.generate(**inputs, num_beams=beams, use_cache=use_cache, min_new_tokens=new_tokens,
                                 max_new_tokens=new_tokens, forced_eos_token_id=None)
        times.append(time.perf_counter() - start)
        if out.shape[1] != new_tokens + 1:
            raise RuntimeError(f"expected {new_tokens} new tokens, got {out.shape[1] - 1}")
    return sorted(times)[len(times) // 2], out


def run(sizes: list[str], batches: list[int], repeats: int, new_tokens: int, dtypes: list[str]) -> list[dict]:
    rows = []
    variants = [("float32", False), ("float32", True)] + [(d, True) for d in dtypes if d != "float32"]
    cells = [(s, b, d, v) for s in sizes for b in batches for d in DECODINGS for v in variants]
    progress = tqdm(cells, desc="teacher generate")
    models, reference = {}, {}
    for size, batch, decoding, (dtype, use_cache) in progress:
        progress.set_postfix_str(f"{size} b{batch} {decoding} {dtype} cache={'on' if use_cache else 'off'}")
        if size not in models:
            torch.manual_seed(0)
            models.clear()
            models[size] = {"float32": OFAModel(OFAConfig(**SIZES[size][0])).eval()}
            for half in dtypes:  # the same weights, cast (as from_pretrained(dtype=...) loads them)
                if half != "float32":
                    models[size][half] = copy.deepcopy(models[size]["float32"]).to(getattr(torch, half))
            warm = make_inputs(1, SIZES[size][1], models[size]["float32"].config.vocab_size)
            for model in models[size].values():
                time_generate(model, warm, 1, True, 2, 1)  # warm-up: allocator, kernels
        model, resolution = models[size][dtype], SIZES[size][1]
        inputs = make_inputs(batch, resolution, model.config.vocab_size)
        seconds, ids = time_generate(model, inputs, DECODINGS[decoding], use_cache, new_tokens, repeats)
        row = {"size": size, "batch": batch, "decoding": decoding, "kv_cache": use_cache, "dtype": dtype,
               "resolution": resolution, "new_tokens": new_tokens, "repeats": repeats,
               "seconds": round(seconds, 4), "ms_per_sample": round(1000 * seconds / batch, 2)}
        if dtype == "float32" and use_cache:
            reference[(size, batch, decoding)] = ids
        elif dtype != "float32":
            ref = reference[(size, batch, decoding)]
            row["token_agreement"] = round((ids[:, 1:] == ref[:, 1:]).float().mean().item(), 4)
            row["sequence_agreement"] = round((ids == ref).all(dim=1).float().mean().item(), 4)
        rows.append(row)
    return rows


def table(rows: list[dict]) -> str:
    lines = ["| size | batch | decoding | cache off ms/sample | cache on ms/sample | cache speed-up |",
             "|---|---|---|---|---|---|"]
    fp32 = [r for r in rows if r["dtype"] == "float32"]
    keyed = {(r["size"], r["batch"], r["decoding"], r["kv_cache"]): r["ms_per_sample"] for r in fp32}
    for size, batch, decoding, cache in keyed:
        if cache:
            continue
        off, on = keyed[(size, batch, decoding, False)], keyed.get((size, batch, decoding, True))
        ratio = f"{off / on:.2f}x" if on else "-"
        lines.append(f"| {size} | {batch} | {decoding} | {off:.1f} | {on:.1f} | {ratio} |")
    half = [r for r in rows if r["dtype"] != "float32"]
    if half:
        lines += ["", "| size | batch | decoding | dtype | float32 ms/sample | half ms/sample | time half/fp32 | "
                      "token agreement | sequence agreement |", "|---|---|---|---|---|---|---|---|---|"]
        for r in half:
            ref = keyed[(r["size"], r["batch"], r["decoding"], True)]
            lines.append(f"| {r['size']} | {r['batch']} | {r['decoding']} | {r['dtype']} | {ref:.1f} | "
                         f"{r['ms_per_sample']:.1f} | {r['ms_per_sample'] / ref:.2f} | {r['token_agreement']:.1%} | "
                         f"{r['sequence_agreement']:.1%} |")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="one timed repeat per cell instead of two")
    parser.add_argument("--sizes", nargs="+", default=list(SIZES), choices=list(SIZES))
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 16])
    parser.add_argument("--new-tokens", type=int, default=16)
    parser.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"],
                        choices=["float32", "bfloat16", "float16"], help="weight types timed with the cache on")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default: torch's choice); 1 is far faster on an oversubscribed CPU")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "teacher_generate.json")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    load_before = os.getloadavg()
    started = time.time()
    rows = run(args.sizes, args.batches, 1 if args.quick else 2, args.new_tokens, args.dtypes)
    result = {
        "benchmark": "teacher_generate",
        "note": "OFA with random weights on CPU; ms per sample of generate() with exactly new_tokens new tokens; "
                "half-precision rows: cache on, agreement with the float32 ids. "
                "The CPU is shared with other jobs: compare cells of one run, not runs.",
        "torch": torch.__version__, "transformers": transformers.__version__, "threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
        "load_average_before": load_before, "load_average_after": os.getloadavg(),
        "wall_seconds": round(time.time() - started, 1), "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(table(rows))
    print(f"written {args.out} ({result['wall_seconds']} s, "
          f"load average {load_before} -> {result['load_average_after']})")


if __name__ == "__main__":
    main()
