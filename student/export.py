"""Export a NARVL student to ONNX: one graph, images + prompt ids -> per-query logits.

A NARVL student has no generation loop (one encoder pass, one decoder pass over N fixed queries), so its whole
forward is one static graph. The export folder holds:

* `model.onnx` (plus `model.onnx.data` when the weights pass ONNX's 2 GB protobuf limit): inputs `input_ids`
  (batch, prompt_length) int64 and `patch_images` (batch, 3, S, S) float32, output `logits` (batch, N, V + 1);
  batch and prompt length are dynamic, the image side is the processor's.
* the student's `config.json`, tokenizer and image processor files, so that it reads inputs like the student does;
* `export.json` (`ExportSpec`): inputs, outputs, task, decoding rule and the ids it needs. It is written last,
  so a folder that holds it is a complete export.

Decoding (CTC collapse, then `Task.decode`) stays in Python and is the very code the PyTorch student runs
(`student.decoding.ctc_decode`), so the two backends can only differ by the logits' float error.
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from distill.errors import UserError
from distill.jsonio import atomic_write_text
from distill.loader import model_type
from distill.loading import load_pretrained
from distill.ofa.positions import TOKEN_BUCKET_POSITIONS
from distill.ofa.processing_ofa import OFAProcessor, load_ofa_processor
from distill.tasks import get_task

from .modeling_narvl import NARVLModel

__all__ = ["EXPORT_FILE", "ONNX_FILE", "FORMATS", "DEFAULT_OPSET", "ExportSpec", "ExportResult", "is_exported",
           "read_spec", "export_onnx"]

EXPORT_FILE = "export.json"
ONNX_FILE = "model.onnx"
FORMATS = ("onnx",)
DEFAULT_OPSET = 18
MIN_OPSET = 18  # the dynamo exporter's own floor
# Above this many bytes of weights the initializers go to an external data file (protobuf's limit is 2 GiB).
_EXTERNAL_DATA_BYTES = 1_500_000_000
DECODING_RULE = ("CTC greedy: argmax over the V + 1 scores of each query, then NARVL's rule for the task "
                 "(student.decoding.narvl_rule: caption/VQA merge adjacent repeats; grounding/entailment do not; "
                 "the blank, <pad> and every EOS dropped; grounding keeps only bin tokens); then the task's decode "
                 "(text, box or label)")


@dataclass
class ExportSpec:
    """What `export.json` records about an exported student."""

    format: str
    """Graph format (`onnx`)."""
    file: str
    """Graph file inside the folder."""
    opset: int
    """ONNX opset of the graph."""
    task: str | None
    """Task the student was trained for (its prompts are what it understands)."""
    num_queries: int
    """N, the decoder queries: the second dimension of `logits`."""
    vocab_size: int
    """V, the OFA vocabulary; `logits` has V + 1 columns."""
    blank_id: int
    """CTC blank id (= V, the last column)."""
    eos_id: int
    """End of sequence: decoding stops before it."""
    pad_id: int
    """`<pad>`: pads prompts on the right, and is dropped when decoded."""
    bos_id: int
    """`<s>`, which starts every prompt."""
    resolution: int
    """Square image side S the graph takes."""
    max_prompt_length: int
    """Longest prompt (in tokens, `<s>` and `</s>` included) the graph accepts."""
    decoding: str = DECODING_RULE
    """The decoding rule applied to `logits` (`student.decoding.ctc_decode`, then `Task.decode`)."""
    inputs: dict[str, Any] = field(default_factory=dict)
    """Input name -> dtype and shape (symbolic dimensions by name)."""
    outputs: dict[str, Any] = field(default_factory=dict)
    """Output name -> dtype and shape."""
    source: str = ""
    """The student folder that was exported."""
    torch_version: str = ""
    """torch that exported it."""
    max_abs_diff: float | None = None
    """Largest |onnxruntime - PyTorch| logit difference on the export's check batches."""


@dataclass
class ExportResult:
    """What `export_onnx` returns (and `narvl-pipe export` prints)."""

    out: Path
    """The export folder."""
    spec: ExportSpec
    """Its `export.json`."""

    def line(self) -> str:
        s = self.spec
        return (f"exported {s.source} ({s.task}, {s.num_queries} queries, opset {s.opset}) -> {self.out / s.file}; "
                f"onnxruntime vs torch max |logit diff| {s.max_abs_diff:.2e}")


def is_exported(path: str | os.PathLike) -> bool:
    """Whether `path` is a complete export folder (it holds `export.json`)."""
    return (Path(path) / EXPORT_FILE).is_file()


def read_spec(path: str | os.PathLike) -> ExportSpec:
    """The `ExportSpec` of an export folder, checked to name a graph file that is there."""
    path = Path(path)
    try:
        spec = ExportSpec(**json.loads((path / EXPORT_FILE).read_text()))
    except (OSError, ValueError, TypeError) as exc:
        raise UserError(f"{path / EXPORT_FILE} is not a readable export description: {exc}") from exc
    if spec.format not in FORMATS:
        raise UserError(f"{path}: export format {spec.format!r} is not one of {', '.join(FORMATS)}")
    if not (path / spec.file).is_file():
        raise UserError(f"{path}: the graph file {spec.file} named in {EXPORT_FILE} is missing")
    return spec


class LogitsGraph(nn.Module):
    """What is exported: ``(input_ids (B, L), patch_images (B, 3, S, S)) -> logits (B, N, V + 1)``."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, patch_images: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids, patch_images=patch_images).logits


def _example_inputs(processor: OFAProcessor, resolution: int, prompts: list[str],
                    seed: int = 0) -> tuple[torch.Tensor, ...]:
    """Right-padded prompt ids (B, L) and random images (B, 3, S, S): the trace example and the check batch."""
    gen = torch.Generator().manual_seed(seed)
    return (processor(text=prompts)["input_ids"],
            torch.rand(len(prompts), 3, resolution, resolution, generator=gen) * 2 - 1)


def _check_batches(processor: OFAProcessor, resolution: int, task: str | None) -> list[tuple[torch.Tensor, ...]]:
    t = get_task(task or "caption")
    prompt = t.prompt({"id": "export", **{c: "" if c in t.optional_columns else "the shape" for c in t.text_columns}})
    # Other batch sizes and prompt lengths than the trace's, so that a baked-in shape fails here, not in use.
    return [_example_inputs(processor, resolution, [prompt], seed=1),
            _example_inputs(processor, resolution, [" a b c d e f g h", prompt, " what?"], seed=2)]


def export_onnx(model_dir: str | os.PathLike, out: str | os.PathLike, opset: int = DEFAULT_OPSET,
                format: str = "onnx") -> ExportResult:
    """Export the NARVL student in `model_dir` to an ONNX folder `out` (see the module docstring).

    The graph is checked with `onnx.checker` and run with onnxruntime against PyTorch on batches of other sizes
    and prompt lengths than the trace's; `ExportSpec.max_abs_diff` records the largest logit difference.

    Args:
        model_dir: a NARVL student folder (`save_pretrained` + tokenizer + image processor).
        out: the export folder (created; an earlier export there is replaced).
        opset: ONNX opset (>= 18).
        format: only `onnx`.
    """
    if format not in FORMATS:
        raise UserError(f"export format {format!r} is not supported; formats: {', '.join(FORMATS)}")
    if opset < MIN_OPSET:
        raise UserError(f"opset {opset} is too old: the exporter needs opset >= {MIN_OPSET}")
    if Path(out).resolve() == Path(model_dir).resolve():
        raise UserError(f"the export folder must not be the student folder {model_dir}")
    import onnx
    import onnxruntime as ort


    if is_exported(model_dir):
        raise UserError(f"{model_dir} is already an ONNX export; export the student folder it came from")
    kind = model_type(model_dir)
    if kind != "narvl":
        raise UserError(f"{model_dir} holds model_type {kind!r}: only a NARVL student exports as one graph")
    model = load_pretrained(NARVLModel, model_dir).float().eval()
    processor = load_ofa_processor(model_dir)
    proc = processor.image_processor
    cfg = model.config
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / EXPORT_FILE).unlink(missing_ok=True)  # the folder is an export again only once this one is complete

    graph = LogitsGraph(model).eval()
    resolution = int(proc.size)
    max_len = min(cfg.max_position_embeddings, TOKEN_BUCKET_POSITIONS)
    example = _example_inputs(processor, resolution, [" what does the image describe?", " what?"])
    batch = torch.export.Dim("batch", min=1, max=65536)
    length = torch.export.Dim("prompt_length", min=2, max=max_len)
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    path = out / ONNX_FILE
    with torch.no_grad():
        program = torch.onnx.export(
            graph, example, dynamo=True, opset_version=opset, input_names=["input_ids", "patch_images"],
            output_names=["logits"], dynamic_shapes={"input_ids": {0: batch, 1: length}, "patch_images": {0: batch}},
            verbose=False)
    program.save(str(path), external_data=weight_bytes > _EXTERNAL_DATA_BYTES)
    onnx.checker.check_model(str(path), full_check=True)

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    diff = 0.0
    for ids, images in _check_batches(processor, resolution, cfg.task):
        got = session.run(None, {"input_ids": ids.numpy(), "patch_images": images.numpy()})[0]
        with torch.no_grad():
            want = graph(ids, images)
        diff = max(diff, float((torch.from_numpy(got) - want).abs().max()))

    cfg.save_pretrained(str(out))
    processor.save_pretrained(str(out))  # AutoProcessor.from_pretrained(out) works
    proc.save_pretrained(str(out))
    v1 = cfg.vocab_size + 1
    spec = ExportSpec(
        format="onnx", file=ONNX_FILE, opset=opset, task=cfg.task, num_queries=cfg.num_queries,
        vocab_size=cfg.vocab_size, blank_id=cfg.blank_id, eos_id=cfg.eos_token_id, pad_id=cfg.pad_token_id,
        bos_id=cfg.bos_token_id, resolution=resolution, max_prompt_length=max_len,
        inputs={"input_ids": {"dtype": "int64", "shape": ["batch", "prompt_length"]},
                "patch_images": {"dtype": "float32", "shape": ["batch", 3, resolution, resolution]}},
        outputs={"logits": {"dtype": "float32", "shape": ["batch", cfg.num_queries, v1]}},
        source=str(model_dir), torch_version=torch.__version__, max_abs_diff=diff,
    )
    atomic_write_text(out / EXPORT_FILE, json.dumps(asdict(spec), indent=1))
    return ExportResult(out=out, spec=spec)
