"""Teacher options a GPU user expects, checked on CPU: SDPA and the static cache (also torch.compile'd) give the
eager/dynamic ids in float32; half-precision weights load in that type; `distill` passes all of them through."""
import sys
from pathlib import Path

import pytest
import torch
from datasets import DatasetDict, Image
from transformers import CompileConfig

sys.path.insert(0, str(Path(__file__).parent))  # the suite runs with --import-mode=importlib
from distill_helpers import make_dataset, make_teacher  # noqa: E402
from ofa_helpers import expected, fixture_model, other_config, randomized  # noqa: E402

from distill.errors import UserError  # noqa: E402
from distill.ofa import OFAModel  # noqa: E402
from distill.run import DistillConfig, run_distill  # noqa: E402
from student.data import load_training_data  # noqa: E402

DECODINGS = {"greedy": dict(num_beams=1), "beam": dict(num_beams=3, no_repeat_ngram_size=2),
             "nbest": dict(num_beams=4, num_return_sequences=2)}


def _setup(name):
    if name == "fixture":
        e = expected()
        return fixture_model(), dict(input_ids=e["main.input_ids"], patch_images=e["main.patch_images"])
    model = randomized(OFAModel(other_config()), seed=5).eval()
    generator = torch.Generator().manual_seed(4)
    input_ids = torch.randint(4, 300, (3, 6), generator=generator)
    input_ids[:, 0], input_ids[:, -1], input_ids[1, 3], input_ids[1, 4:] = 0, 2, 2, 1
    return model, dict(input_ids=input_ids, patch_images=torch.rand(3, 3, 48, 32, generator=generator) * 2 - 1)


def _generate(model, inputs, **kwargs):
    with torch.inference_mode():
        return model.generate(**inputs, max_new_tokens=7, forced_eos_token_id=None, return_dict_in_generate=True,
                              output_scores=True, **kwargs)


def _assert_same(a, b, tol=1e-4):
    assert a.sequences.tolist() == b.sequences.tolist()
    for x, y in zip(a.scores, b.scores):
        finite = x.isfinite()
        assert torch.equal(finite, y.isfinite()) and (x[finite] - y[finite]).abs().max() < tol


@pytest.mark.parametrize("setup", ["fixture", "other"])
def test_sdpa_and_static_cache_give_the_eager_dynamic_results(setup):
    model, inputs = _setup(setup)
    for decoding, kwargs in DECODINGS.items():
        reference = _generate(model, inputs, **kwargs)
        _assert_same(reference, _generate(model, inputs, cache_implementation="static", **kwargs))
        model.set_attn_implementation("sdpa")
        try:
            _assert_same(reference, _generate(model, inputs, **kwargs))
        finally:
            model.set_attn_implementation("eager")


def test_static_cache_decoding_compiles_to_one_graph():
    """The decoding step traces whole (fullgraph) with a static cache; dynamo's eager backend keeps CI fast."""
    torch._dynamo.reset()
    model, inputs = _setup("other")
    compile_config = CompileConfig(backend="eager", fullgraph=True, mode=None)
    compile_config._compile_all_devices = True  # transformers compiles only on accelerators otherwise
    for kwargs in (DECODINGS["greedy"], DECODINGS["beam"]):
        reference = _generate(model, inputs, **kwargs)
        compiled = _generate(model, inputs, cache_implementation="static", compile_config=compile_config, **kwargs)
        _assert_same(reference, compiled)
    assert hasattr(model, "_compiled_call")
    torch._dynamo.reset()


def test_sdpa_is_opt_in():
    model = OFAModel(other_config())
    assert model.config._attn_implementation == "eager"
    assert OFAModel(other_config(attn_implementation="sdpa")).config._attn_implementation == "sdpa"


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("options")
    teacher = make_teacher(root / "teacher")
    DatasetDict({"train": make_dataset(8, "caption")}).save_to_disk(str(root / "src"))
    return root, teacher


def _distill(world, name, **options):
    root, teacher = world
    config = DistillConfig(task="caption", teacher=str(teacher), data=str(root / "src"), out=str(root / name),
                           batch_size=4, shard_size=8, num_workers=0, progress=False, **options)
    run_distill(config)
    return load_training_data(root / name).cast_column("image", Image(decode=False)).to_list()


def test_distill_options_fp32_equal_default_and_bf16_runs(world):
    default = _distill(world, "default")
    same_maths = _distill(world, "sdpa_static", attn_implementation="sdpa", cache_implementation="static")
    assert [r["target_ids"] for r in same_maths] == [r["target_ids"] for r in default]
    assert [r["teacher_logprob"] for r in same_maths] == pytest.approx([r["teacher_logprob"] for r in default],
                                                                        abs=1e-4)
    half = _distill(world, "bf16", dtype="bfloat16")
    assert len(half) == len(default) and all(r["target_ids"][-1] == 2 for r in half)
    manifest = (Path(world[0]) / "bf16" / "manifest.json").read_text()
    assert '"dtype": "bfloat16"' in manifest


def test_half_weights_load_in_that_dtype(world):
    from distill.loader import open_model
    from distill.teachers.ofa import OFATeacher

    root, teacher = world
    for dtype in ("bfloat16", "float16"):
        config = DistillConfig(task="caption", teacher=str(teacher), data="-", out="-", dtype=dtype,
                               attn_implementation="sdpa")
        loaded = open_model(teacher, {"id": str(teacher)}, options=config, device="cpu")
        assert isinstance(loaded, OFATeacher) and loaded.model is None  # weights only at load()
        loaded.load()
        model = loaded.model
        assert {p.dtype for p in model.parameters()} == {getattr(torch, dtype)}
        assert model.config._attn_implementation == "sdpa"


@pytest.mark.parametrize("field,value", [("dtype", "float64"), ("attn_implementation", "flash"),
                                         ("cache_implementation", "paged")])
def test_bad_teacher_option_is_one_line_error(world, field, value):
    root, teacher = world
    config = DistillConfig(task="caption", teacher=str(teacher), data=str(root / "src"), out=str(root / "bad"),
                           progress=False, **{field: value})
    with pytest.raises(UserError, match=f"^`{field}` must be one of .*got '{value}'$"):
        run_distill(config)
