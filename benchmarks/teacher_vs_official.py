"""narvl-pipe's OFA teacher side by side with another implementation: identical weights and inputs, identical ids
checked, generate() timed in interleaved rounds (medians), one CPU thread each.

Sides (each in its own worker process, so that two `distill` or `transformers` packages never meet):
- `project`: this checkout's `distill.ofa`;
- `official`: OFA-Sys's transformers port (branch `feature/add_transformers` of github.com/OFA-Sys/OFA, a vendored
  transformers 4.18), given by `--official-src` or `$OFA_OFFICIAL_SRC`: a folder holding its `transformers`
  package. It is never a dependency of narvl-pipe; install it apart from the project's environment, e.g.
      git clone -b feature/add_transformers https://github.com/OFA-Sys/OFA ofa-official
      pip install --no-deps --target /opt/ofa-official ofa-official/transformers \\
          'huggingface_hub==0.10.1' requests urllib3 charset_normalizer
      python benchmarks/teacher_vs_official.py --official-src /opt/ofa-official
  (`huggingface_hub` 0.10 because transformers 4.18 imports names that 1.x removed; its import-time version check
  of the project's tokenizers is skipped in the worker: the model code does not use them);
- `old`: another checkout of narvl-pipe (e.g. `git worktree add /tmp/main main`), given by `--old-src`.

The model is OFA-tiny shaped with random weights (4+4 layers, d_model 256, ResNet50 stem, 59,457 ids, 256 px).
The timed case is beam 5, batch 8, 16 new tokens, no_repeat_ngram_size 3, KV cache on (`--timed` adds others).
Identity: greedy, beam, n-best, prefix_allowed_tokens_fn and no_repeat_ngram_size at batch 1 and 8 must give the
same ids on every side. The `fairseq_*` identity cases run OFA's own decoder: the official side fairseq's
`SequenceGenerator` (the port's `models/ofa/generate/sequence_generator.py`), the project side its `generate()` with
`distill.ofa.fairseq_rules`, with OFA's caption flags (beam 5, max_len_b 16, min_len 1, no-repeat-ngram 3) and RefCOCO
flags (beam 5, min_len 4, max_len_b 4, no-repeat-ngram 3; with and without the bins' `constraint_range`) on prompts of
different lengths (right-padded at batch 8): every hypothesis of every n-best list must be the same ids with scores
within 1e-4 (relative). Writes benchmarks/results/teacher_vs_official.json (`--identity-only`: no timing).

    python benchmarks/teacher_vs_official.py --official-src DIR [--old-src DIR] [--rounds 5] [--identity-only]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "teacher_vs_official.json"
TINY = dict(encoder_layers=4, decoder_layers=4, d_model=256, encoder_attention_heads=4, decoder_attention_heads=4,
            encoder_ffn_dim=1024, decoder_ffn_dim=1024, resnet_type="resnet50")
RESOLUTION, TEXT_LEN, NEW_TOKENS = 256, 12, 16
ALLOWED = list(range(1000, 1100)) + [2]  # prefix_allowed_tokens_fn: 100 ids (think <bin_i>) and </s>
# name: (batch, generate kwargs). Every case keeps the config's forced </s> at the last step (as OFA-Sys does).
CASES = {
    f"{name}_b{b}": (b, kw) for b in (1, 8) for name, kw in {
        "greedy": dict(num_beams=1),
        "beam5": dict(num_beams=5),
        "nbest3_beam5": dict(num_beams=5, num_return_sequences=3),
        "prefix_beam5": dict(num_beams=5, prefix="allowed"),
        "norepeat3_beam5": dict(num_beams=5, no_repeat_ngram_size=3),
        "norepeat3_greedy": dict(num_beams=1, no_repeat_ngram_size=3),
    }.items()
}
TIMED = "norepeat3_beam5_b8"
BINS_RANGE = "58457,59457"  # <bin_0..999> of OFA's vocabulary, as fairseq's --constraint-range takes it
# OFA's evaluation flags (run_scripts/caption/evaluate_caption.sh, run_scripts/refcoco/evaluate_refcoco.sh)
FAIRSEQ_FLAGS = {
    "caption": dict(beam=5, max_len_a=0, max_len_b=16, min_len=1, no_repeat_ngram_size=3),
    "grounding": dict(beam=5, max_len_a=0, max_len_b=4, min_len=4, no_repeat_ngram_size=3),
    "grounding_bins": dict(beam=5, max_len_a=0, max_len_b=4, min_len=4, no_repeat_ngram_size=3,
                           constraint_range=BINS_RANGE),
}
FAIRSEQ_CASES = {f"fairseq_{name}_b{b}": (b, flags) for b in (1, 8) for name, flags in FAIRSEQ_FLAGS.items()}
SCORE_TOL = 1e-4  # relative (absolute below 1): float32 sums of up to 17 log-probs, two implementations


# ------------------------------------------------------------------------------------------------------ worker
def _official_import(src: str):
    """transformers 4.18 from `src`, skipping its import-time check of the installed tokenizers' version."""
    import types

    sys.path.insert(0, src)
    stub = types.ModuleType("transformers.dependency_versions_check")
    stub.dep_version_check = lambda *args, **kwargs: None
    sys.modules["transformers.dependency_versions_check"] = stub
    import transformers
    from transformers.models.ofa.configuration_ofa import OFAConfig
    from transformers.models.ofa.modeling_ofa import OFAModel

    if not transformers.__version__.startswith("4.18"):
        raise SystemExit(f"--official-src {src} holds transformers {transformers.__version__}, expected 4.18")
    return OFAModel, OFAConfig, transformers.__version__


def worker(side: str, src: str, data: Path, threads: int) -> None:
    """Serve JSON-line requests on stdin: {"case": name, "repeat": n} -> {"seconds": [...], "ids": [[...]]}."""
    import torch

    torch.set_num_threads(threads)
    config = json.loads((data / "config.json").read_text())
    if side == "official":
        model_cls, config_cls, version = _official_import(src)
    else:
        sys.path.insert(0, src)
        import transformers

        from distill.ofa import OFAConfig as config_cls, OFAModel as model_cls
        version = transformers.__version__
    model = model_cls(config_cls(**config)).eval()
    missing, unexpected = model.load_state_dict(torch.load(data / "weights.pt"), strict=False)
    missing = [k for k in missing if not k.endswith(("rp_bucket", "image_position_idx", "num_batches_tracked"))]
    if missing or unexpected:
        raise SystemExit(f"{side}: weights do not match: missing {missing[:5]}, unexpected {unexpected[:5]}")
    inputs = torch.load(data / "inputs.pt") if (data / "inputs.pt").is_file() else None
    print(json.dumps({"ready": side, "transformers": version, "module": model_cls.__module__}), flush=True)
    for line in sys.stdin:
        request = json.loads(line)
        if request.get("case") in FAIRSEQ_CASES:  # a named fairseq case: the padded inputs of make_data
            batch, flags = FAIRSEQ_CASES[request["case"]]
            request = {"fairseq": flags, "batch": batch, "inputs": "inputs_padded.pt"}
        if "fairseq" in request:
            batch_inputs = {k: v[:request["batch"]] for k, v in torch.load(data / request["inputs"]).items()}
            run = official_sequence_generator if side == "official" else project_sequence_generator
            try:
                print(json.dumps({"hypos": run(model, request["fairseq"], batch_inputs)}), flush=True)
            except ImportError as e:  # an older checkout without distill.ofa.fairseq_rules
                print(json.dumps({"error": str(e)}), flush=True)
            continue
        batch, kw = CASES[request["case"]]
        kw = dict(kw)
        if kw.pop("prefix", None):
            kw["prefix_allowed_tokens_fn"] = lambda batch_id, prefix: ALLOWED
        args = dict(input_ids=inputs["input_ids"][:batch], patch_images=inputs["patch_images"][:batch],
                    patch_masks=torch.ones(batch, dtype=torch.bool), use_cache=True, **kw)
        # transformers 4.18 counts the start token in max_length; 5.x takes max_new_tokens.
        args.update(max_length=NEW_TOKENS + 1) if side == "official" else args.update(max_new_tokens=NEW_TOKENS)
        seconds = []
        for _ in range(request.get("repeat", 1)):
            start = time.perf_counter()
            with torch.inference_mode():
                out = model.generate(**args)
            seconds.append(time.perf_counter() - start)
        print(json.dumps({"seconds": seconds, "ids": out.tolist()}), flush=True)


class SpecialIds:
    """What fairseq's `SequenceGenerator` and `fairseq_rules` read of a tokenizer: OFA's special ids and the vocabulary
    size (the generator sizes its beams by `len(get_vocab())`), without a BPE."""

    bos_token_id, pad_token_id, eos_token_id, unk_token_id = 0, 1, 2, 3

    def __init__(self, vocab_size: int):
        self.vocab_size = vocab_size

    def get_vocab(self) -> dict:
        return {str(i): i for i in range(self.vocab_size)}

    def get_added_vocab(self) -> dict:
        return {}


def _net_input(inputs) -> dict:
    import torch

    return {"input_ids": inputs["input_ids"], "patch_images": inputs["patch_images"],
            "patch_masks": torch.ones(len(inputs["input_ids"]), dtype=torch.bool)}


def official_sequence_generator(model, flags: dict, inputs) -> list:
    """fairseq's `SequenceGenerator` of the official port with `flags` -> per sample its hypotheses, best first:
    {"tokens" (ending with EOS), "score" (normalised), "positional_scores"}."""
    import torch
    from transformers.models.ofa.generate.sequence_generator import SequenceGenerator

    flags = dict(flags)
    generator = SequenceGenerator(tokenizer=SpecialIds(model.config.vocab_size), beam_size=flags.pop("beam"),
                                  len_penalty=flags.pop("lenpen", 1.0), unk_penalty=flags.pop("unkpen", 0.0), **flags)
    with torch.inference_mode():
        hypos = generator.generate([model], {"net_input": _net_input(inputs)})
    return [[{"tokens": h["tokens"].tolist(), "score": float(h["score"]),
              "logprob": float(h["positional_scores"].sum()), "positional_scores": h["positional_scores"].tolist()}
             for h in sample] for sample in hypos]


def project_sequence_generator(model, flags: dict, inputs) -> list:
    """The same flags through this checkout's `generate()` with `distill.ofa.fairseq_rules`, in the same form."""
    import torch

    from distill.ofa.fairseq_rules import generate_kwargs, sequence_generator_settings

    flags = dict(flags)
    if flags.pop("max_len_a", 0):
        raise SystemExit("fairseq_rules supports max_len_a 0 only (OFA's caption and RefCOCO flags)")
    rng = flags.pop("constraint_range", None)
    settings = sequence_generator_settings(**flags, constraint_range=rng and [int(v) for v in rng.split(",")])
    settings["num_return_sequences"] = beams = settings["num_beams"]
    with torch.inference_mode():
        res = model.generate(**_net_input(inputs), **generate_kwargs(settings, SpecialIds(model.config.vocab_size)),
                             output_scores=True, return_dict_in_generate=True)
        steps = model.compute_transition_scores(res.sequences, res.scores, res.beam_indices, normalize_logits=False)
    out = []
    for k, (seq, pos) in enumerate(zip(res.sequences.tolist(), steps.tolist())):
        length = seq[1:].index(SpecialIds.eos_token_id) + 1
        hypo = {"tokens": seq[1:1 + length], "score": float(res.sequences_scores[k]), "logprob": sum(pos[:length]),
                "positional_scores": pos[:length]}
        out.append([hypo]) if k % beams == 0 else out[-1].append(hypo)
    return out


def _score_values(hypo: dict) -> list[float]:
    return [hypo["score"], hypo["logprob"]] + list(hypo.get("positional_scores", []))


def compare_hypos(ours: list, theirs: list, tol: float = SCORE_TOL) -> dict:
    """Per-sample n-best lists ({"tokens", "score" (normalised), "logprob" (summed), optional "positional_scores"}
    per hypothesis, best first) side by side: samples whose best ids agree, samples whose whole n-best lists agree
    (the same ids in the same order, every score within `tol` relative, absolute below 1), and the largest absolute
    score difference over hypotheses with the same ids at the same rank."""
    best = nbest = 0
    worst = 0.0
    for a, b in zip(ours, theirs):
        best += a[0]["tokens"] == b[0]["tokens"]
        same_ids = [h["tokens"] for h in a] == [h["tokens"] for h in b]
        diffs = [(abs(x - y), y) for h, g in zip(a, b) if h["tokens"] == g["tokens"]
                 for x, y in zip(_score_values(h), _score_values(g))]
        worst = max([worst] + [d for d, _ in diffs])
        nbest += same_ids and all(d <= tol * max(1.0, abs(y)) for d, y in diffs)
    return {"rows": len(theirs), "best_equal": best, "nbest_equal": nbest, "max_score_diff": worst,
            "identical": len(ours) == len(theirs) == nbest}


# ------------------------------------------------------------------------------------------------------ parent
class Side:
    def __init__(self, name: str, src: str, data: Path, threads: int):
        env = dict(os.environ, OMP_NUM_THREADS=str(threads), HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
        env.pop("PYTHONPATH", None)  # each side imports only its own source
        self.name = name
        self.proc = subprocess.Popen([sys.executable, __file__, "--worker", name, "--src", src, "--data", str(data),
                                      "--threads", str(threads)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     text=True, env=env, cwd=tempfile.gettempdir())
        self.info = self._read()

    def _read(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            raise SystemExit(f"{self.name} worker exited (rc {self.proc.wait()}); see its stderr above")
        return json.loads(line)

    def ask(self, case: str, repeat: int = 1) -> dict:
        return self.request({"case": case, "repeat": repeat})

    def request(self, request: dict) -> dict:
        """One JSON-line request: a named case, or {"fairseq": flags, "batch": n, "inputs": file in the data folder}."""
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        return self._read()

    def close(self):
        self.proc.stdin.close()
        self.proc.wait()


def make_data(root: Path, seed: int = 0) -> None:
    """Random OFA-tiny weights (the project's initialisation, saved as a plain state dict) and 8 random inputs."""
    import torch

    sys.path.insert(0, str(REPO))
    from distill.ofa import OFAConfig, OFAModel

    torch.manual_seed(seed)
    config = OFAConfig(**TINY)
    model = OFAModel(config).eval()
    torch.save({k: v.contiguous() for k, v in model.state_dict().items()}, root / "weights.pt")
    (root / "config.json").write_text(json.dumps({**TINY, "vocab_size": config.vocab_size}))
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(4, 50000, (8, TEXT_LEN), generator=generator)
    input_ids[:, 0], input_ids[:, -1] = 0, 2
    patch_images = torch.rand(8, 3, RESOLUTION, RESOLUTION, generator=generator) * 2 - 1
    torch.save({"input_ids": input_ids, "patch_images": patch_images}, root / "inputs.pt")
    padded = input_ids.clone()  # row k: TEXT_LEN - k % 5 tokens, then <pad>
    for k in range(len(padded)):
        length = TEXT_LEN - k % 5
        padded[k, length - 1], padded[k, length:] = 2, 1
    torch.save({"input_ids": padded, "patch_images": patch_images}, root / "inputs_padded.pt")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--official-src", default=os.environ.get("OFA_OFFICIAL_SRC"),
                    help="folder holding OFA-Sys's transformers 4.18 package (default: $OFA_OFFICIAL_SRC)")
    ap.add_argument("--old-src", help="another narvl-pipe checkout to compare with (its root folder)")
    ap.add_argument("--rounds", type=int, default=5, help="interleaved timing rounds (>= 5 for the record)")
    ap.add_argument("--timed", nargs="+", default=[TIMED], choices=list(CASES), help="cases to time")
    ap.add_argument("--identity-only", action="store_true", help="check identity only, time nothing")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--worker", choices=["project", "official", "old"], help=argparse.SUPPRESS)
    ap.add_argument("--src", help=argparse.SUPPRESS)
    ap.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(args.worker, args.src, args.data, args.threads)
        return
    others = {"official": args.official_src, "old": args.old_src}
    others = {k: v for k, v in others.items() if v}
    if not others:
        raise SystemExit("nothing to compare with: pass --official-src DIR (or set OFA_OFFICIAL_SRC) and/or "
                         "--old-src DIR")
    for name, src in others.items():
        if not Path(src).is_dir():
            raise SystemExit(f"--{name}-src {src}: not a folder")

    load_before, started = os.getloadavg(), time.time()
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp)
        make_data(data)
        sides = [Side("project", str(REPO), data, args.threads)] + [Side(k, v, data, args.threads)
                                                                    for k, v in others.items()]
        try:
            identity = {}
            for case in CASES:
                ids = {s.name: s.ask(case)["ids"] for s in sides}
                identity[case] = all(v == ids["project"] for v in ids.values())
                print(f"identity {case:22s} {'same ids' if identity[case] else 'DIFFERENT ids: ' + str(ids)}")
            fairseq = {}
            for case in FAIRSEQ_CASES:
                answers = {s.name: s.ask(case) for s in sides}
                if "official" not in answers or "hypos" not in answers["project"]:
                    continue
                fairseq[case] = cmp = compare_hypos(answers["project"]["hypos"], answers["official"]["hypos"])
                identity[case] = cmp["identical"]
                print(f"identity {case:22s} vs SequenceGenerator: best {cmp['best_equal']}/{cmp['rows']}, n-best "
                      f"{cmp['nbest_equal']}/{cmp['rows']}, max score diff {cmp['max_score_diff']:.1e}")
            timings = {case: {s.name: [] for s in sides} for case in ([] if args.identity_only else args.timed)}
            for case in timings:
                for s in sides:
                    s.ask(case)  # warm-up
                for r in range(args.rounds):  # interleaved, the order rotating each round
                    for s in sides[r % len(sides):] + sides[:r % len(sides)]:
                        timings[case][s.name] += s.ask(case)["seconds"]
        finally:
            for s in sides:
                s.close()

    rows = []
    if timings:
        print(f"\n{args.rounds} interleaved rounds, {args.threads} thread(s), median seconds per generate() call")
        header = "| case | " + " | ".join(s.name for s in sides) + " | " + " | ".join(
            f"project / {k} (median of per-round ratios, range)" for k in others) + " |"
        print(header + "\n|" + "---|" * (header.count("|") - 1))
    for case, per_side in timings.items():
        row = {"case": case, "median_s": {k: statistics.median(v) for k, v in per_side.items()}, "rounds": per_side}
        cells = [f"{row['median_s'][s.name]:.3f}" for s in sides]
        for k in others:
            ratios = [p / o for p, o in zip(per_side["project"], per_side[k])]
            row[f"project_over_{k}"] = {"median": statistics.median(ratios), "min": min(ratios), "max": max(ratios)}
            cells.append(f"{statistics.median(ratios):.3f} ({min(ratios):.3f}-{max(ratios):.3f}; "
                         f"{statistics.median(per_side[k]) / statistics.median(per_side['project']):.2f}x faster)")
        rows.append(row)
        print(f"| {case} | " + " | ".join(cells) + " |")
    result = {
        "benchmark": "teacher_vs_official", "model": {**TINY, "resolution": RESOLUTION, "text_len": TEXT_LEN,
                                                      "new_tokens": NEW_TOKENS},
        "sides": {s.name: s.info for s in sides}, "threads": args.threads, "rounds": args.rounds,
        "identity": identity, "all_identical": all(identity.values()), "fairseq_identity": fairseq, "timings": rows,
        "cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
        "load_average_before": load_before, "load_average_after": os.getloadavg(),
        "wall_seconds": round(time.time() - started, 1),
        "note": "shared CPU: compare the sides of one run (interleaved rounds), not runs",
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"identical ids in {sum(identity.values())}/{len(identity)} cases; wrote {args.out}")


if __name__ == "__main__":
    main()
