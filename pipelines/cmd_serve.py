"""`narvl-pipe export` and `serve`: thin layers over `student.export` and `pipelines.serve`."""
from __future__ import annotations

from typing import Optional

import typer


def export(
    model: str = typer.Option(..., "--model", help="NARVL student folder."),
    out: str = typer.Option(..., "--out", help="Export folder: model.onnx, export.json, tokenizer, image processor."),
    format: str = typer.Option("onnx", "--format", help="Graph format (onnx)."),
    opset: int = typer.Option(18, "--opset", min=18, help="ONNX opset (>= 18)."),
) -> None:
    """Export a NARVL student as one ONNX graph (images + prompt ids -> per-query logits), checked against PyTorch."""
    from student.export import export_onnx

    typer.echo(export_onnx(model, out, opset=opset, format=format).line())


def serve(
    model: str = typer.Option(..., "--model", help="NARVL student folder, its ONNX export, or an OFA teacher folder."),
    task: Optional[str] = typer.Option(None, "--task", help="Task served (default: the student's own)."),
    host: str = typer.Option("127.0.0.1", "--host", help="Interface to listen on (0.0.0.0: all)."),
    port: int = typer.Option(8000, "--port", min=0, max=65535, help="TCP port."),
    max_batch_size: int = typer.Option(8, "--max-batch-size", min=1, help="Requests answered together at most."),
    batch_timeout_ms: float = typer.Option(0.0, "--batch-timeout-ms", min=0.0, help="How long a batch waits for more requests after its first (0: it takes those waiting when the model frees up)."),
    answers: Optional[str] = typer.Option(None, "--answers", help="VQA candidate answers (AR teacher)."),
) -> None:
    """Serve predictions over HTTP (POST /predict), batching concurrent requests."""
    from pipelines.serve import ServeConfig, serve as run

    run(ServeConfig(model=model, task=task, host=host, port=port, max_batch_size=max_batch_size,
                    batch_timeout_ms=batch_timeout_ms, answers=answers))
