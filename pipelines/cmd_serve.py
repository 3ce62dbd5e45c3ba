"""`narvl-pipe export` and `serve`: thin layers over `student.export` and `pipelines.serve`."""
from __future__ import annotations

import typer

from pipelines.options import config_command
from pipelines.serve_config import ServeConfig
from student.export import export_onnx


def export(
    model: str = typer.Option(..., "--model", help="NARVL student folder."),
    out: str = typer.Option(..., "--out", help="Export folder: model.onnx, export.json, tokenizer, image processor."),
    format: str = typer.Option("onnx", "--format", help="Graph format (onnx)."),
    opset: int = typer.Option(18, "--opset", min=18, help="ONNX opset (>= 18)."),
) -> None:
    """Export a NARVL student as one ONNX graph (images + prompt ids -> per-query logits), checked against PyTorch."""
    typer.echo(export_onnx(model, out, opset=opset, format=format).line())


@config_command(ServeConfig)
def serve(cfg: ServeConfig) -> None:
    """Serve predictions over HTTP (POST /predict), batching concurrent requests."""
    from pipelines.serve import serve as run  # the optional `serve` extra (fastapi, uvicorn)

    run(cfg)
