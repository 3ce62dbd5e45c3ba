"""narvl-pipe's OFA teacher side by side with another implementation: identical weights and inputs, `generate()`
timed by the harness (`benchmarks/timing.py`: pinned workers, interleaved rounds, median of paired ratios) with the
ids checked identical in every round.

Sides (each in its own worker process, so that two `distill` or `transformers` packages never meet):
- `project`: this checkout's `distill.ofa`;
- `official`: OFA-Sys's transformers port (branch `feature/add_transformers` of github.com/OFA-Sys/OFA, a vendored
  transformers 4.18), given by `--official-src` or `$OFA_OFFICIAL_SRC`: a folder holding its `transformers`
  package. It is never a dependency of narvl-pipe; install it apart from the project's environment, e.g.
      git clone -b feature/add_transformers https://github.com/OFA-Sys/OFA ofa-official
      pip install --no-deps --target /opt/ofa-official ofa-official/transformers \\
          'huggingface_hub==0.10.1' requests urllib3 charset_normalizer idna certifi
      python benchmarks/teacher_vs_official.py --official-src /opt/ofa-official
  (`huggingface_hub` 0.10 because transformers 4.18 imports names that 1.x removed; its import-time version check
  of the project's tokenizers is skipped in the worker: the model code does not use them);
- `old`: another checkout of narvl-pipe (e.g. `git worktree add /tmp/main main`), given by `--old-src`.

Timed cases (issue 21): greedy and beam 5 (OFA's caption decoding: no_repeat_ngram_size 3) x batch 1, 8, 32, on
the OFA-tiny shape (4+4 layers, d_model 256, ResNet50 stem, 256 px) and the OFA-base shape (6+6, 768, ResNet101,
384 px); random weights, 59,457 ids, 16 new tokens, KV cache on. Before timing, identity: greedy, beam, n-best,
prefix_allowed_tokens_fn and no_repeat_ngram_size at batch 1 and 8 must give the same ids on every side.
Writes benchmarks/results/teacher_vs_official.json; "x faster" is the harness's paired ratio.

    python benchmarks/teacher_vs_official.py --official-src DIR [--old-src DIR] [--sizes tiny base] [--rounds 7]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import timing  # noqa: E402
from ofa_shapes import SHAPES, ofa_shape  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "teacher_vs_official.json"
TEXT_LEN, NEW_TOKENS, MAX_BATCH = 12, 16, 32
ALLOWED = list(range(1000, 1100)) + [2]  # prefix_allowed_tokens_fn: 100 ids (think <bin_i>) and </s>
DECODINGS = {  # every case keeps the config's forced </s> at the last step (as OFA-Sys does)
    "greedy": dict(num_beams=1),
    "beam5": dict(num_beams=5, no_repeat_ngram_size=3),  # OFA's caption decoding
}
IDENTITY = {
    "greedy": dict(num_beams=1),
    "beam5": dict(num_beams=5),
    "nbest3_beam5": dict(num_beams=5, num_return_sequences=3),
    "prefix_beam5": dict(num_beams=5, prefix="allowed"),
    "norepeat3_beam5": dict(num_beams=5, no_repeat_ngram_size=3),
    "norepeat3_greedy": dict(num_beams=1, no_repeat_ngram_size=3),
}


def case_name(size: str, decoding: str, batch: int) -> str:
    return f"{size}/{decoding}/b{batch}"


# ------------------------------------------------------------------------------------------------------ sides
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
    return OFAModel, OFAConfig


def side(kind: str, src: str, data: str):
    """A harness side: `kind` (project / official / old) loads each size's weights from `data` on first use."""
    import torch

    if kind == "official":
        model_cls, config_cls = _official_import(src)
    else:
        sys.path.insert(0, src)
        from distill.ofa import OFAConfig as config_cls, OFAModel as model_cls
    models: dict[str, tuple] = {}

    def load(size: str):
        if size not in models:
            folder = Path(data) / size
            model = model_cls(config_cls(**json.loads((folder / "config.json").read_text()))).eval()
            missing, unexpected = model.load_state_dict(torch.load(folder / "weights.pt"), strict=False)
            missing = [k for k in missing if not k.endswith(("rp_bucket", "image_position_idx", "num_batches_tracked"))]
            if missing or unexpected:
                raise SystemExit(f"{kind}: weights do not match: missing {missing[:5]}, unexpected {unexpected[:5]}")
            models[size] = (model, torch.load(folder / "inputs.pt"))
        return models[size]

    def prepare(case: str):
        size, decoding, batch = case.split("/")
        model, inputs = load(size)
        b = int(batch[1:])
        kw = dict(IDENTITY[decoding[3:]] if decoding.startswith("id-") else DECODINGS[decoding])
        if kw.pop("prefix", None):
            kw["prefix_allowed_tokens_fn"] = lambda batch_id, prefix: ALLOWED
        args = dict(input_ids=inputs["input_ids"][:b], patch_images=inputs["patch_images"][:b],
                    patch_masks=torch.ones(b, dtype=torch.bool), use_cache=True, **kw)
        # transformers 4.18 counts the start token in max_length; 5.x takes max_new_tokens.
        args.update(max_length=NEW_TOKENS + 1) if kind == "official" else args.update(max_new_tokens=NEW_TOKENS)

        def run():
            with torch.inference_mode():
                return model.generate(**args)
        return run

    return prepare


def make_data(root: Path, size: str, seed: int = 0) -> None:
    """Random weights of `size` (the project's initialisation, saved as a plain state dict) and MAX_BATCH inputs."""
    import torch

    sys.path.insert(0, str(REPO))
    from distill.ofa import OFAConfig, OFAModel

    config, resolution = ofa_shape(size)
    torch.manual_seed(seed)
    model = OFAModel(OFAConfig(**config)).eval()
    (root / size).mkdir(parents=True)
    torch.save({k: v.contiguous() for k, v in model.state_dict().items()}, root / size / "weights.pt")
    (root / size / "config.json").write_text(json.dumps({**config, "vocab_size": model.config.vocab_size}))
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(4, 50000, (MAX_BATCH, TEXT_LEN), generator=generator)
    input_ids[:, 0], input_ids[:, -1] = 0, 2
    patch_images = torch.rand(MAX_BATCH, 3, resolution, resolution, generator=generator) * 2 - 1
    torch.save({"input_ids": input_ids, "patch_images": patch_images}, root / size / "inputs.pt")


def _shape_record(size: str) -> dict:
    config, resolution = ofa_shape(size)
    return {**config, "resolution": resolution}


# ------------------------------------------------------------------------------------------------------ main
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--official-src", default=os.environ.get("OFA_OFFICIAL_SRC"),
                    help="folder holding OFA-Sys's transformers 4.18 package (default: $OFA_OFFICIAL_SRC)")
    ap.add_argument("--old-src", help="another narvl-pipe checkout to compare with (its root folder)")
    ap.add_argument("--sizes", nargs="+", default=["tiny", "base"], choices=SHAPES)
    ap.add_argument("--decodings", nargs="+", default=list(DECODINGS), choices=list(DECODINGS))
    ap.add_argument("--batches", nargs="+", type=int, default=[1, 8, 32], choices=[1, 8, 32])
    ap.add_argument("--out", type=Path, default=RESULTS)
    timing.add_args(ap)
    args = ap.parse_args()
    settings = timing.Settings.from_args(args)
    others = {k: v for k, v in {"official": args.official_src, "old": args.old_src}.items() if v}
    if not others:
        raise SystemExit("nothing to compare with: pass --official-src DIR (or set OFA_OFFICIAL_SRC) and/or "
                         "--old-src DIR")
    for name, src in others.items():
        if not Path(src).is_dir():
            raise SystemExit(f"--{name}-src {src}: not a folder")

    with tempfile.TemporaryDirectory() as tmp:
        for size in args.sizes:
            make_data(Path(tmp), size)
        sides = [timing.Side(k, __file__, "side", {"kind": k, "src": src, "data": tmp}, isolated=True)
                 for k, src in {"project": str(REPO), **others}.items()]
        with timing.Session(sides, settings) as session:
            identity = {}
            for name in IDENTITY:  # untimed: every decoding path gives the same ids on every side
                for b in (1, 8):
                    case = case_name(args.sizes[0], f"id-{name}", b)
                    got = {s.name: session.call(timing.Entry(s.name, case))["digest"] for s in sides}
                    identity[case] = len(set(got.values())) == 1
                    print(f"identity {case:28s} {'same ids' if identity[case] else 'DIFFERENT ids: ' + str(got)}")
            if not all(identity.values()):
                raise timing.OutputMismatch("ids differ between implementations: see the identity lines above")
            cases = [case_name(s, d, b) for s in args.sizes for d in args.decodings for b in args.batches]
            entries = [timing.Entry(s.name, c) for c in cases for s in sides]
            pairs = [timing.Pair(f"project vs {k} {c}", timing.Entry("project", c), timing.Entry(k, c), True)
                     for c in cases for k in others]
            session.run(entries, pairs)
            result = session.result()

    timing.print_pairs(result, "project's generate() speed-up (median of paired per-round ratios, min-max)")
    timing.write(args.out, {
        "benchmark": "teacher_vs_official", "sizes": {s: _shape_record(s) for s in args.sizes},
        "text_len": TEXT_LEN, "new_tokens": NEW_TOKENS, "decodings": DECODINGS, "identity": identity, **result})
    print(f"identical ids in {sum(identity.values())}/{len(identity)} identity cases and every timed round; "
          f"wrote {args.out}")


if __name__ == "__main__":
    main()
