"""`narvl-pipe serve` with a real client: the FastAPI app run by uvicorn on a free 127.0.0.1 port, concurrent
httpx requests, answers checked against `student.evaluate.predict` (batch 1), batching read from the responses and
/stats, bad requests (4xx, one line) mixed into good ones without disturbing them, and oversized bodies (413)."""
from __future__ import annotations

import asyncio
import base64
import io
import sys
from pathlib import Path

import datasets
import httpx
import pytest
from typer.testing import CliRunner

sys.path.insert(0, str(Path(__file__).parents[1] / "student"))  # shared builders (--import-mode=importlib)
import student_helpers as h  # noqa: E402

from distill.errors import UserError  # noqa: E402
from distill.loader import load_model  # noqa: E402
from pipelines.cli import app  # noqa: E402
from pipelines.serve import background_server, create_app  # noqa: E402
from pipelines.serve_config import ServeConfig  # noqa: E402
from student.eval_config import PredictConfig  # noqa: E402
from student.evaluate import predict  # noqa: E402
from student.predictor import Predictor  # noqa: E402

# A batch closes only when full: with multiples of BATCH requests in flight, the batch sizes do not depend on timing.
BATCH = 4
NEVER_MS = 60_000


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve")
    world = h.make_world(root, n_train=8, n_val=8)
    teacher = h.make_teacher(world, root / "teacher", "caption", 1)
    students = {task: h.make_student(teacher, root / f"student-{task}", task, num_queries=8, weight_std=0.3)
                for task in ("caption", "vqa")}
    rows = [dict(r) for r in datasets.load_from_disk(str(world))["validation"]]
    for i, r in enumerate(rows):
        r["path"] = root / f"row{i}.png"
        r["image"].save(r["path"])
    return students, rows


def predictor(student: Path, task: str) -> Predictor:
    model = load_model(student, device="cpu")
    model.load()
    return Predictor(model, task)


def one_by_one(student: Path, task: str, rows: list[dict], text: str | None = None) -> list:
    """What `narvl-pipe predict` answers for each row alone (`student.evaluate.predict`, batch 1)."""
    return [predict(PredictConfig(model=str(student), task=task, image=str(r["path"]),
                                  text=r[text] if text else None, device="cpu")) for r in rows]


def png(image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def b64(image) -> str:
    return base64.b64encode(png(image)).decode()


def running(predictor, max_batch_size: int = BATCH, batch_timeout_ms: float = NEVER_MS, max_request_mb: float = 4.0):
    """The app served from a thread on a free 127.0.0.1 port; the context yields its base URL once /health answers."""
    return background_server(create_app(predictor, max_batch_size=max_batch_size, batch_timeout_ms=batch_timeout_ms,
                                        max_request_mb=max_request_mb))


def send_all(url: str, requests: list[dict]) -> list[httpx.Response]:
    """POST every request at once (one asyncio client) and return the responses in order."""
    async def go():
        async with httpx.AsyncClient(base_url=url, timeout=120) as client:
            return await asyncio.gather(*[client.post("/predict", **r) for r in requests])

    return asyncio.run(go())


def test_concurrent_requests_are_batched_and_equal_predict(setup):
    students, rows = setup
    with running(predictor(students["caption"], "caption")) as url:
        assert httpx.get(url + "/health").json() == {"status": "ok", "task": "caption", "backend": "torch",
                                                      "kind": "narvl"}
        json_requests = [{"json": {"image": b64(r["image"])}} for r in rows[:8]]
        # `base64` on the command line wraps lines; a data URL prefix is fine too
        json_requests[1]["json"]["image"] = base64.encodebytes(png(rows[1]["image"])).decode()
        json_requests[2]["json"]["image"] = "data:image/png;base64," + b64(rows[2]["image"])
        form_requests = [{"files": {"image": ("x.png", png(r["image"]), "image/png")}} for r in rows[:BATCH]]
        responses = send_all(url, json_requests + form_requests)
        stats = httpx.get(url + "/stats").json()
    assert [r.status_code for r in responses] == [200] * 12
    got = [r.json() for r in responses]
    want = one_by_one(students["caption"], "caption", rows[:8] + rows[:BATCH])
    assert [g["prediction"] for g in got] == [w.prediction for w in want]
    assert [g["output"] for g in got] == [w.output for w in want]
    assert len({w.output for w in want}) > 1  # each answer is its own request's, not a neighbour's
    assert {g["batch_size"] for g in got} == {BATCH}
    assert stats["batches"] == 3 and stats["batch_sizes"] == {str(BATCH): 3} and stats["requests"] == 12


def test_bad_requests_get_4xx_without_disturbing_good_ones(setup):
    students, rows = setup
    image = b64(rows[0]["image"])
    bad = {
        "no image": ({"json": {"question": "what is it?"}}, 400, "no image"),
        "undecodable": ({"json": {"image": base64.b64encode(b"not a picture" * 8).decode(), "question": "a?"}},
                        400, "cannot decode the image: not an image format PIL reads"),
        "truncated": ({"json": {"image": base64.b64encode(png(rows[1]["image"])[:60]).decode(), "question": "a?"}},
                      400, "cannot decode the image"),
        "not base64": ({"json": {"image": "%%% not base64 %%%", "question": "a?"}}, 400, "not valid base64"),
        "missing question": ({"json": {"image": image}}, 400, "task vqa needs the text field 'question'"),
        "blank question": ({"json": {"image": image, "question": "  "}}, 400, "needs the text field 'question'"),
        "question not text": ({"json": {"image": image, "question": 3}}, 400, "'question' must be a string"),
        "wrong task": ({"json": {"image": image, "question": "a?", "task": "caption"}}, 400,
                       "this server serves task vqa, not 'caption'"),
        "typo": ({"json": {"image": image, "questoin": "a?"}}, 400, "unknown field(s) ['questoin']"),
        "not json": ({"content": b"{oops", "headers": {"content-type": "application/json"}}, 400, "not valid JSON"),
        "json list": ({"json": [image]}, 400, "must be a JSON object"),
        "text/plain": ({"content": b"hello", "headers": {"content-type": "text/plain"}}, 415, "unsupported content"),
    }
    good = [{"json": {"image": b64(r["image"]), "question": r["question"]}} for r in rows[:BATCH]]
    with running(predictor(students["vqa"], "vqa")) as url:
        # The bad ones interleaved with the good ones, all in flight together.
        mixed = [x for pair in zip(good, list(bad.values())[:BATCH]) for x in (pair[0], pair[1][0])]
        mixed += [req for req, _, _ in list(bad.values())[BATCH:]]
        responses = send_all(url, mixed)
        again = send_all(url, good)  # and the server keeps serving
        stats = httpx.get(url + "/stats").json()
    by_request = dict(zip(map(id, mixed), responses))
    for name, (req, status, reason) in bad.items():
        res = by_request[id(req)]
        assert res.status_code == status, (name, res.text)
        detail = res.json()["detail"]
        assert reason in detail and "\n" not in detail, (name, detail)
    want = one_by_one(students["vqa"], "vqa", rows[:BATCH], text="question")
    for res in [by_request[id(g)] for g in good] + again:
        assert res.status_code == 200, res.text
    got = [by_request[id(g)].json() for g in good]
    assert [g["prediction"] for g in got] == [w.prediction for w in want] == [r.json()["prediction"] for r in again]
    assert {g["batch_size"] for g in got} == {BATCH}
    assert stats["batch_sizes"] == {str(BATCH): 2}
    assert stats["refused"] == {"400": len(bad) - 1, "415": 1}


def test_a_body_over_the_limit_gets_413_before_it_is_read(setup):
    """A body over `max_request_mb` is refused 413 (declared length or chunked), never decoded: the model never sees
    it, and requests within the limit are answered as before."""
    students, rows = setup
    image = b64(rows[0]["image"])
    big = {"image": image, "pad": "x" * (2 * 2**20)}  # 2 MiB of JSON, over a 1 MiB limit

    def chunked():  # no Content-Length: the limit must hold while the body streams in
        payload = httpx.Request("POST", "http://x", json=big).content
        for i in range(0, len(payload), 64 * 1024):
            yield payload[i: i + 64 * 1024]

    with running(predictor(students["caption"], "caption"), max_batch_size=1, max_request_mb=1.0) as url:
        declared = httpx.post(url + "/predict", json=big, timeout=60)
        streamed = httpx.post(url + "/predict", content=chunked(), headers={"content-type": "application/json"},
                              timeout=60)
        fine = httpx.post(url + "/predict", json={"image": image}, timeout=60)
        stats = httpx.get(url + "/stats").json()
    for res in (declared, streamed):
        assert res.status_code == 413 and "over the limit of 1 MiB" in res.json()["detail"], res.text
    assert fine.status_code == 200 and stats["requests"] == 1  # only the good one reached the model


def test_serve_settings_are_checked(setup, tmp_path):
    students, _ = setup
    student = students["caption"]
    with pytest.raises(UserError, match="`max_batch_size` must be >= 1"):
        ServeConfig(model=str(student), max_batch_size=0)
    with pytest.raises(UserError, match="`batch_timeout_ms` must be >= 0"):
        ServeConfig(model=str(student), batch_timeout_ms=-1)
    res = CliRunner().invoke(app, ["serve", "--model", str(student), "--max-batch-size", "0"])
    assert isinstance(res.exception, UserError) and "--max-batch-size must be >= 1" in str(res.exception)
    with pytest.raises(UserError, match="`max_request_mb` must be > 0"):
        ServeConfig(model=str(student), max_request_mb=0)
    res = CliRunner().invoke(app, ["serve", "--model", str(tmp_path / "nowhere")])
    assert isinstance(res.exception, UserError) and "no such folder" in str(res.exception)
