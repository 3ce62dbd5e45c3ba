"""The official OFA-Sys transformers port (branch `feature/add_transformers`, a vendored transformers 4.18 installed
apart with `pip install --no-deps --target DIR`) run side by side with this project: its fairseq `SequenceGenerator`
(`models/ofa/generate/sequence_generator.py`) in a worker process of its own on the same weights and batches, and
the comparison of n-best lists. Test support for `fairseq_cases.py` / `test_fairseq_decoding.py`; the worker reuses
`benchmarks/teacher_vs_official.py`'s import of the port.

    python tests/distill/official_port.py OFFICIAL_SRC DATA   # the worker (started by `Side`)
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

BINS_RANGE = "58457,59457"  # <bin_0..999> of OFA's vocabulary, as fairseq's --constraint-range takes it
# OFA's evaluation flags (run_scripts/caption/evaluate_caption.sh, run_scripts/refcoco/evaluate_refcoco.sh)
FAIRSEQ_FLAGS = {
    "caption": dict(beam=5, max_len_a=0, max_len_b=16, min_len=1, no_repeat_ngram_size=3),
    "grounding": dict(beam=5, max_len_a=0, max_len_b=4, min_len=4, no_repeat_ngram_size=3),
    "grounding_bins": dict(beam=5, max_len_a=0, max_len_b=4, min_len=4, no_repeat_ngram_size=3,
                           constraint_range=BINS_RANGE),
}
SCORE_TOL = 1e-4  # relative (absolute below 1): float32 sums of up to 17 log-probs, two implementations


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


class Side:
    """The official port in a worker process of its own (its transformers 4.18 never meets this project's), asked
    JSON-line requests {"fairseq": flags, "batch": n, "inputs": a file in `data`}."""

    def __init__(self, name: str, src: str, data: Path, threads: int):
        env = dict(os.environ, OMP_NUM_THREADS=str(threads), HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
        env.pop("PYTHONPATH", None)  # each side imports only its own source
        self.name = name
        self.proc = subprocess.Popen([sys.executable, __file__, src, str(data)], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE,
                                     text=True, env=env, cwd=tempfile.gettempdir())
        self.info = self._read()

    def _read(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            raise SystemExit(f"{self.name} worker exited (rc {self.proc.wait()}); see its stderr above")
        return json.loads(line)

    def request(self, request: dict) -> dict:
        """One JSON-line request: a named case, or {"fairseq": flags, "batch": n, "inputs": file in the data folder}."""
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        return self._read()

    def close(self):
        self.proc.stdin.close()
        self.proc.wait()


def worker(src: str, data: Path) -> None:
    """Serve JSON-line fairseq requests on stdin with the official port's model of `data` (config + weights)."""
    import torch
    from teacher_vs_official import _official_import

    model_cls, config_cls = _official_import(src)
    model = model_cls(config_cls(**json.loads((data / "config.json").read_text()))).eval()
    missing, unexpected = model.load_state_dict(torch.load(data / "weights.pt"), strict=False)
    missing = [k for k in missing if not k.endswith(("rp_bucket", "image_position_idx", "num_batches_tracked"))]
    if missing or unexpected:
        raise SystemExit(f"official: weights do not match: missing {missing[:5]}, unexpected {unexpected[:5]}")
    print(json.dumps({"ready": "official"}), flush=True)
    for line in sys.stdin:
        request = json.loads(line)
        inputs = {k: v[:request["batch"]] for k, v in torch.load(data / request["inputs"]).items()}
        print(json.dumps({"hypos": official_sequence_generator(model, request["fairseq"], inputs)}), flush=True)


if __name__ == "__main__":
    worker(sys.argv[1], Path(sys.argv[2]))
