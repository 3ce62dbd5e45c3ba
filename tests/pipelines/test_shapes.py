"""The shapes world: determinism, ground truth checked against the pixels, multimodal captions, the CLI output.

Ground truth is re-derived from the rendered image alone (flood-fill connected components, fill ratio -> kind,
width -> size, box disjointness -> relations) and compared with what the world wrote.
"""
from __future__ import annotations

import itertools
import json
import re
from collections import Counter

import datasets
import numpy as np
import pytest
from datasets import load_from_disk
from typer.testing import CliRunner

from distill.errors import UserError
from distill.ofa.tokenization_ofa import bin_token_ids, load_ofa_tokenizer
from pipelines.cli import app
from distill.shapes import (
    BACKGROUND,
    COLORS,
    KINDS,
    SHAPES_ANSWERS,
    ShapesConfig,
    build_shapes_dataset,
    generate_example,
    world_texts,
    write_shapes,
)

NUMBERS = {"one": 1, "two": 2, "three": 3}


def _components(image) -> list[dict]:
    """Connected components (4-neighbour flood fill) of each non-background colour, described from pixels only."""
    a = np.asarray(image.convert("RGB"))
    height, width, _ = a.shape
    colour_of = {v: k for k, v in COLORS.items()}
    seen = np.zeros((height, width), bool)
    found = []
    for y, x in zip(*np.nonzero((a != BACKGROUND).any(-1))):
        if seen[y, x]:
            continue
        rgb = tuple(int(v) for v in a[y, x])
        stack, pixels = [(y, x)], []
        seen[y, x] = True
        while stack:
            cy, cx = stack.pop()
            pixels.append((cy, cx))
            for ny, nx in ((cy + 1, cx), (cy - 1, cx), (cy, cx + 1), (cy, cx - 1)):
                if 0 <= ny < height and 0 <= nx < width and not seen[ny, nx] and tuple(a[ny, nx]) == rgb:
                    seen[ny, nx] = True
                    stack.append((ny, nx))
        ys, xs = zip(*pixels)
        box = (min(xs), min(ys), max(xs) + 1, max(ys) + 1)
        fill = len(pixels) / ((box[2] - box[0]) * (box[3] - box[1]))
        kind = "square" if fill > 0.95 else "circle" if fill > 0.68 else "triangle"
        size = "large" if (box[2] - box[0]) > 0.58 * width / 3 else "small"
        found.append({"color": colour_of[rgb], "kind": kind, "size": size, "box": box, "name": f"{colour_of[rgb]} {kind}"})
    return found


def _holds(a: dict, b: dict, relation: str) -> bool:
    (ax0, ay0, ax1, ay1), (bx0, by0, bx1, by1) = a["box"], b["box"]
    return {"left of": ax1 <= bx0, "right of": ax0 >= bx1, "above": ay1 <= by0, "below": ay0 >= by1}[relation]


def _vqa_answer(question: str, comps: list[dict]) -> str:
    """Answer the world's question from the pixel-derived components."""
    if question == "how many shapes are there?":
        return str(len(comps))
    if m := re.fullmatch(r"how many (\w+)s are there\?", question):
        return str(sum(c["kind"] == m[1] for c in comps))
    if m := re.fullmatch(r"how many (\w+) shapes are there\?", question):
        return str(sum(c["color"] == m[1] for c in comps))
    if m := re.fullmatch(r"is there a (\w+ \w+)\?", question):
        return "yes" if any(c["name"] == m[1] for c in comps) else "no"
    if m := re.fullmatch(r"what color is the (?:(small|large) )?(\w+)\?", question):
        match = [c for c in comps if c["kind"] == m[2] and m[1] in (None, c["size"])]
        assert len(match) == 1, question
        return match[0]["color"]
    m = re.fullmatch(r"what is (left of|right of|above|below) the (\w+ \w+)\?", question)
    assert m, f"unknown question form: {question}"
    (ref,) = [c for c in comps if c["name"] == m[2]]
    match = [c for c in comps if _holds(c, ref, m[1])]
    assert len(match) == 1, question
    return match[0]["name"]


def _entailment_label(hypothesis: str, comps: list[dict]) -> str:
    names = {c["name"]: c for c in comps}
    if re.fullmatch(r"the \w+ \w+ is (heavy|soft|warm|old)", hypothesis):
        return "neutral"
    if m := re.fullmatch(r"there is a (\w+ \w+)", hypothesis):
        truth = m[1] in names
    elif m := re.fullmatch(r"there (?:is|are) (\w+) shapes?", hypothesis):
        truth = NUMBERS[m[1]] == len(comps)
    elif m := re.fullmatch(r"the (\w+ \w+) is (small|large)", hypothesis):
        truth = names[m[1]]["size"] == m[2]
    else:
        m = re.fullmatch(r"the (\w+ \w+) is (left of|right of|above|below) the (\w+ \w+)", hypothesis)
        assert m, f"unknown hypothesis form: {hypothesis}"
        truth = _holds(names[m[1]], names[m[3]], m[2])
    return "entailment" if truth else "contradiction"


@pytest.fixture(scope="module")
def world():
    return build_shapes_dataset(ShapesConfig(n_train=300, n_val=20, n_test=20, seed=3))


def test_same_seed_is_byte_identical_and_other_seed_differs(world):
    config = ShapesConfig(n_train=300, n_val=20, n_test=20, seed=3)
    again = build_shapes_dataset(config)
    for split in world:
        a, b = world[split].with_format("arrow")[:], again[split].with_format("arrow")[:]
        assert a.equals(b), split  # images are stored as PNG bytes: equal tables mean equal bytes
    other = build_shapes_dataset(ShapesConfig(n_train=300, n_val=20, n_test=20, seed=4))["train"]
    first = world["train"].cast_column("image", datasets.Image(decode=False))
    second = other.cast_column("image", datasets.Image(decode=False))
    same = sum(x["bytes"] == y["bytes"] for x, y in zip(first["image"], second["image"]))
    assert same < 10  # a few tiny scenes may coincide by chance; most must differ
    assert first["captions"] != second["captions"]
    # Rows are a function of (seed, split, index): a smaller world is a prefix of a bigger one.
    small = build_shapes_dataset(ShapesConfig(n_train=7, n_val=1, n_test=1, seed=3))["train"]
    assert small.with_format("arrow")[:].equals(world["train"].select(range(7)).with_format("arrow")[:])
    assert len(set(world["train"]["id"]) | set(world["validation"]["id"]) | set(world["test"]["id"])) == 340


def test_ground_truth_matches_pixels(world):
    labels, yes_no = Counter(), Counter()
    for row in world["train"]:
        pixels = np.asarray(row["image"])
        assert row["image"].size == (64, 64)
        assert {tuple(p) for p in pixels.reshape(-1, 3)} <= {BACKGROUND, *COLORS.values()}  # no anti-aliasing
        comps = _components(row["image"])
        assert 1 <= len(comps) <= 3 and len({c["name"] for c in comps}) == len(comps)

        # grounding: the region is one component, and the box is exactly that component's pixel bounds
        (region,) = [c for c in comps if f"the {c['name']}" == row["region_text"]]
        assert row["box"] == list(region["box"])

        # captions: every shape, fully described, and nothing else
        for caption in row["captions"]:
            for c in comps:
                assert f"a {c['size']} {c['color']} {c['kind']}" in caption, (caption, c)
            assert len(re.findall(r"\ba (small|large) ", caption)) == len(comps), caption

        # VQA: the exact answer, ten times, from the closed answer set
        answer = _vqa_answer(row["question"], comps)
        assert row["answers"] == [answer] * 10 and answer in SHAPES_ANSWERS
        if m := re.fullmatch(r"what color is the (?:small |large )?(\w+)\?", row["question"]):
            (target,) = [c for c in comps if c["kind"] == m[1] and c["color"] == answer]
            x0, y0, x1, y1 = target["box"]
            inside = {tuple(int(v) for v in p) for p in pixels[y0:y1, x0:x1].reshape(-1, 3)}
            assert COLORS[answer] in inside and inside <= {BACKGROUND, COLORS[answer]}
        if answer in ("yes", "no"):
            yes_no[answer] += 1

        # entailment: the label follows from the scene; the premise, when present, is a true caption
        assert row["label"] == _entailment_label(row["hypothesis"], comps), row["hypothesis"]
        assert row["premise"] == "" or all(f"{c['color']} {c['kind']}" in row["premise"] for c in comps)
        labels[row["label"]] += 1
    assert all(0.25 < labels[k] / 300 < 0.42 for k in ("entailment", "contradiction", "neutral")), labels
    assert 0.3 < yes_no["yes"] / sum(yes_no.values()) < 0.7, yes_no


@pytest.mark.parametrize("size", [24, 37, 64, 128])
def test_geometry_makes_grid_relations_exact(size):
    """Shapes never touch, and two shapes share a column (row) exactly when their boxes overlap horizontally
    (vertically): so the world's grid relations are the relations a viewer reads off the boxes."""
    config = ShapesConfig(size=size)
    for index in range(1500):
        shapes = generate_example(config, "train", index).shapes
        for a in shapes:
            assert 0 <= a.box[0] < a.box[2] <= size and 0 <= a.box[1] < a.box[3] <= size
        for a, b in itertools.combinations(shapes, 2):
            x_overlap = a.box[0] < b.box[2] and b.box[0] < a.box[2]
            y_overlap = a.box[1] < b.box[3] and b.box[1] < a.box[3]
            assert x_overlap == (a.col == b.col) and y_overlap == (a.row == b.row), (index, a, b)
            gap = max(b.box[0] - a.box[2], a.box[0] - b.box[2], b.box[1] - a.box[3], a.box[1] - b.box[3])
            assert gap >= 1, (index, a, b)  # at least one background pixel between any two shapes


def test_captions_are_multimodal(world):
    for row in world["train"]:
        captions = row["captions"]
        assert len(set(captions)) == len(captions) >= 3
        assert all(len(c.replace(",", " ").split()) <= 16 for c in captions)
        comps = _components(row["image"])
        phrases = [f"a {c['size']} {c['color']} {c['kind']}" for c in comps]
        if len(comps) == 1:  # the phrase at different places of the sentence
            assert len({len(c[: c.index(phrases[0])].split()) for c in captions}) >= 2, captions
        else:  # the shapes mentioned in different orders
            assert len({tuple(sorted(phrases, key=c.index)) for c in captions}) >= 2, captions
    words = {w for row in world["train"] for c in row["captions"] for w in c.replace(",", " ").split()}
    assert len(words) <= 40, sorted(words)


def test_cli_writes_loadable_world_and_tokenizer(tmp_path):
    out = tmp_path / "world"
    args = ["data", "shapes", "--out", str(out), "--n-train", "12", "--n-val", "4", "--n-test", "4", "--seed", "5"]
    result = CliRunner().invoke(app, [*args, "--size", "48"])
    assert result.exit_code == 0, result.output
    ds = load_from_disk(str(out))
    assert {k: len(v) for k, v in ds.items()} == {"train": 12, "validation": 4, "test": 4}
    assert ds["test"][0]["image"].size == (48, 48)
    config = ShapesConfig(**json.loads((out / "shapes_config.json").read_text()))
    assert (config.n_train, config.seed, config.size) == (12, 5, 48)
    from distill.tasks.vqa import read_answers  # the AR teacher's --answers file: every answer a row can hold

    answers = read_answers(str(out / "answers.txt"))
    assert answers == list(SHAPES_ANSWERS) and {a for split in ds.values() for r in split["answers"] for a in r} <= set(answers)

    tok = load_ofa_tokenizer(out / "tokenizer")
    assert tok.convert_tokens_to_ids(["<s>", "<pad>", "</s>", "<unk>"]) == [0, 1, 2, 3]
    bins = bin_token_ids(tok)
    assert len(bins) == 100 and bins == list(range(bins[0], bins[0] + 100)) and bins[-1] == len(tok) - 1
    assert tok.convert_tokens_to_ids("<mask>") == bins[0] - 1
    rows = ds["train"].remove_columns("image")
    for text in world_texts(rows):
        assert tok.unk_token_id not in tok(text)["input_ids"], text
    for row in rows:  # every caption word (and comma) is one token, for a bigger world's unseen sentences too
        for caption in row["captions"]:
            assert len(tok.tokenize(f" {caption}")) == len(caption.replace(",", " ,").split()), caption
    assert tok.decode(tok(" " + rows[0]["captions"][0], add_special_tokens=False)["input_ids"]) == " " + rows[0]["captions"][0]

    again = CliRunner().invoke(app, args)
    assert again.exit_code != 0 and isinstance(again.exception, UserError)
    assert CliRunner().invoke(app, [*args, "--overwrite"]).exit_code == 0
    assert load_from_disk(str(out))["test"][0]["image"].size == (64, 64)


def test_bad_input_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="size"):
        build_shapes_dataset(ShapesConfig(n_train=1, size=16))
    with pytest.raises(UserError, match="n_train"):
        build_shapes_dataset(ShapesConfig(n_train=-1))
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(UserError, match="not a shapes world"):
        write_shapes(tmp_path / "mine", ShapesConfig(n_train=1, n_val=0, n_test=0), overwrite=True)
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"


def test_max_shapes_bounds_the_scene():
    world = build_shapes_dataset(ShapesConfig(n_train=40, n_val=0, n_test=0, max_shapes=1))
    assert len(world["validation"]) == len(world["test"]) == 0
    for row in world["train"]:
        assert len(_components(row["image"])) == 1
        assert not row["question"].startswith("what is")  # relation questions need two shapes
    with pytest.raises(UserError, match="max_shapes"):
        build_shapes_dataset(ShapesConfig(max_shapes=4))
