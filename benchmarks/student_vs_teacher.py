"""NARVL student vs AR OFA teacher: inference latency, in one process, interleaved.

For each size (tiny at 256 px, base at 384 px; random weights, the official 59,457-token vocabulary), task and batch
size, it times, round-robin over `--repeats` rounds (median reported):

* `encoder`: the OFA encoder alone (ResNet stem + transformer over image patches and prompt);
* `enc+1dec`: the encoder plus one AR decoder pass over a single token (the floor of any generation);
* `narvl`: the student's single pass (encoder + N parallel queries) plus greedy CTC collapse;
* `ar_greedy` / `ar_beam5`: `generate()` with the KV cache, forced to realistic target lengths
  (caption 16, VQA 3, grounding 4, entailment 1 new tokens: min = max).

It prints a table with the speed-ups of NARVL over AR greedy / beam 5 and the ratio narvl / (enc+1dec), whose goal
is <= 1.1 (NARVL costs about one encoder pass), and writes `benchmarks/results/student_vs_teacher.json`.

    python benchmarks/student_vs_teacher.py            # tiny@256 and base@384, batch 1 and 16 (slow on CPU)
    python benchmarks/student_vs_teacher.py --quick    # tiny@256 only, 2 rounds
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

from distill.ofa import OFAConfig, OFAModel
from distill.tasks import get_task
from student.train_teacher import ARCHS
from student.decoding import ctc_greedy_decode
from student.modeling_narvl import NARVLModel

SIZES = {"tiny": 256, "base": 384}
AR_LENGTHS = {"caption": 16, "vqa": 3, "grounding": 4, "entailment": 1}
PROMPT_ROWS = {
    "caption": {},
    "vqa": {"question": "what color is the large circle"},
    "grounding": {"region_text": "the small red square on the left"},
    "entailment": {"premise": "", "hypothesis": "two shapes are in the picture"},
}
RESULTS = Path(__file__).parent / "results" / "student_vs_teacher.json"
FIXTURE_TOKENIZER = Path(__file__).parents[1] / "tests" / "fixtures" / "ofa-tokenizer"


def build_ofa(size: str) -> OFAModel:
    a = ARCHS[size]
    cfg = OFAConfig(d_model=a["d_model"], encoder_layers=a["encoder_layers"], decoder_layers=a["decoder_layers"],
                    encoder_attention_heads=a["heads"], decoder_attention_heads=a["heads"],
                    encoder_ffn_dim=4 * a["d_model"], decoder_ffn_dim=4 * a["d_model"], resnet_type=a["resnet_type"])
    return OFAModel(cfg).eval()


def prompt_ids(task: str, batch: int) -> torch.Tensor:
    from distill.ofa.tokenization_ofa import load_ofa_tokenizer

    tok = load_ofa_tokenizer(FIXTURE_TOKENIZER)
    t = get_task(task)
    ids = tok(t.prompt({"id": "x", **PROMPT_ROWS[task]}))["input_ids"]
    return torch.tensor([ids] * batch)


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return (time.perf_counter() - t0) * 1000.0


def bench_case(ofa: OFAModel, size: str, task: str, batch: int, repeats: int) -> dict:
    t = get_task(task)
    res = SIZES[size]
    narvl = NARVLModel.from_ofa(ofa, num_queries=t.num_queries).eval()
    ids = prompt_ids(task, batch)
    images = torch.randn(batch, 3, res, res)
    masks = torch.ones(batch, dtype=torch.bool)
    length = AR_LENGTHS[task]
    blank, eos = narvl.config.blank_id, ofa.config.eos_token_id
    start = torch.full((batch, 1), ofa.config.decoder_start_token_id, dtype=torch.long)

    def encoder():
        ofa.encoder(ids, patch_images=images, patch_masks=masks)

    def enc_one_dec():
        ofa(input_ids=ids, patch_images=images, patch_masks=masks, decoder_input_ids=start, use_cache=False)

    def nar():
        ctc_greedy_decode(narvl(ids, patch_images=images, patch_masks=masks).logits, blank, eos)

    def ar(beams: int):
        def run():
            out = ofa.generate(input_ids=ids, patch_images=images, patch_masks=masks, num_beams=beams,
                               min_new_tokens=length, max_new_tokens=length, use_cache=True, do_sample=False)
            assert out.shape[1] == length + 1, out.shape  # forced length (+ start token)
        return run

    methods = {"encoder": encoder, "enc+1dec": enc_one_dec, "narvl": nar, "ar_greedy": ar(1), "ar_beam5": ar(5)}
    times: dict[str, list[float]] = {k: [] for k in methods}
    with torch.inference_mode():
        for fn in methods.values():  # warm-up
            fn()
        for _ in range(repeats):  # interleaved rounds: load drift hits every method alike
            for name, fn in methods.items():
                times[name].append(_timed(fn))
    med = {k: statistics.median(v) for k, v in times.items()}
    return {
        "size": size, "resolution": res, "task": task, "batch": batch, "ar_new_tokens": length,
        "num_queries": t.num_queries, "ms": med, "ms_all": times,
        "speedup_vs_greedy": med["ar_greedy"] / med["narvl"], "speedup_vs_beam5": med["ar_beam5"] / med["narvl"],
        "nar_over_enc_1dec": med["narvl"] / med["enc+1dec"],
    }


def print_table(rows: list[dict]) -> None:
    head = (f"{'size':<5} {'px':>4} {'task':<10} {'B':>3} | {'encoder':>8} {'enc+1dec':>9} {'narvl':>8} "
            f"{'ar_greedy':>10} {'ar_beam5':>9} | {'x greedy':>8} {'x beam5':>8} {'nar/(enc+1dec)':>14}")
    print(head)
    print("-" * len(head))
    for r in rows:
        m = r["ms"]
        print(f"{r['size']:<5} {r['resolution']:>4} {r['task']:<10} {r['batch']:>3} | {m['encoder']:>8.1f} "
              f"{m['enc+1dec']:>9.1f} {m['narvl']:>8.1f} {m['ar_greedy']:>10.1f} {m['ar_beam5']:>9.1f} | "
              f"{r['speedup_vs_greedy']:>7.2f}x {r['speedup_vs_beam5']:>7.2f}x {r['nar_over_enc_1dec']:>14.2f}")
    print("(ms per batch call, median of interleaved rounds; goal nar/(enc+1dec) <= 1.1)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="tiny,base", help="comma list of tiny, base")
    ap.add_argument("--tasks", default="caption,vqa,grounding,entailment")
    ap.add_argument("--batches", default="1,16")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="tiny only, 2 rounds")
    ap.add_argument("--out", default=str(RESULTS))
    ap.add_argument("--overwrite", action="store_true", help="drop earlier results in --out instead of merging")
    args = ap.parse_args()
    sizes = ["tiny"] if args.quick else args.sizes.split(",")
    repeats = 2 if args.quick else args.repeats
    torch.manual_seed(0)
    rows = []
    for size in sizes:
        ofa = build_ofa(size)
        for task in args.tasks.split(","):
            for batch in (int(b) for b in args.batches.split(",")):
                rows.append(bench_case(ofa, size, task, batch, repeats))
                print(f"done {size} {task} batch {batch}: narvl {rows[-1]['ms']['narvl']:.1f} ms", flush=True)
    print()
    print_table(rows)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"torch": torch.__version__, "threads": torch.get_num_threads(), "machine": platform.machine(),
            "processor": platform.processor(), "device": "cpu", "repeats": repeats, "quick": args.quick,
            "cases": [[r["size"], r["task"], r["batch"]] for r in rows],
            "note": "random weights; AR forced to min=max new tokens; KV cache on"}
    # Merge with earlier runs (e.g. tiny and base measured separately): same (size, task, batch) is replaced.
    old = json.loads(out.read_text()) if out.is_file() and not args.overwrite else {"runs": [], "results": []}
    key = lambda r: (r["size"], r["task"], r["batch"])  # noqa: E731
    merged = {key(r): r for r in old.get("results", [])} | {key(r): r for r in rows}
    out.write_text(json.dumps({"runs": old.get("runs", []) + [meta], "results": list(merged.values())}, indent=1))
    print(f"wrote {out} ({len(merged)} cases)")


if __name__ == "__main__":
    main()
