"""The shapes world: a seeded, procedurally rendered vision-language dataset with exact ground truth for all four tasks.

An image holds 1-3 shapes (kind x colour x size), each in its own cell of a 3x3 grid on a plain background. One row
carries every task's fields: several caption references, one VQA question, one region with its box, one
entailment pair. Captions are deliberately multimodal (many valid orders and phrasings per image), which is the
case where a NAR student trained on raw references degrades and one trained on a deterministic teacher does not.

Geometry rules that make the ground truth exact:
- each shape stays 1 px inside its cell, so shapes never touch (each is one connected component of its colour);
- each shape covers its cell's centre line, so two shapes of one column overlap horizontally and two of one row
  vertically: "a left of b" (a's column < b's) is then the same as "a's box lies wholly left of b's box";
- (colour, kind) pairs are unique per image, so "the red circle" names one shape.

Every row is drawn from its own `random.Random(f"{seed}/{split}/{index}")` (string seeds are hashed with sha512,
so they are stable across processes): rows do not depend on the split sizes, and ids are stable across runs.
"""
from __future__ import annotations

import dataclasses
import io
import itertools
import json
import random
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from datasets import Dataset, DatasetDict, Features, Image as ImageFeature, List, Value
from PIL import Image, ImageDraw
from tqdm.auto import tqdm

from distill.errors import UserError
from distill.ofa.tokenization_ofa import train_tiny_tokenizer
from distill.tasks import get_task

if TYPE_CHECKING:
    import datasets
    from transformers import PreTrainedTokenizerFast

COLORS = {"red": (220, 40, 40), "green": (40, 160, 60), "blue": (40, 80, 220), "yellow": (240, 200, 20)}  # exact RGB
BACKGROUND = (235, 235, 235)
KINDS = ("circle", "square", "triangle")
SIZES = ("small", "large")
GRID = 3
POSITIONS = {
    (0, 0): "top left", (0, 1): "top", (0, 2): "top right",
    (1, 0): "left", (1, 1): "center", (1, 2): "right",
    (2, 0): "bottom left", (2, 1): "bottom", (2, 2): "bottom right",
}  # fmt: skip
NUMBER_WORDS = ("zero", "one", "two", "three")
RELATIONS = ("left of", "right of", "above", "below")
NEUTRAL_PROPERTIES = ("heavy", "soft", "warm", "old")  # not depicted: the image can neither confirm nor deny them
LABELS = ("entailment", "contradiction", "neutral")
SPLITS = ("train", "validation", "test")
NUM_VQA_ANSWERS = 10  # VQAv2 rows hold 10 human answers; here all 10 are the exact answer
ANSWERS_FILE = "answers.txt"
"""The world's closed VQA answer list, one per line, in the world folder: the AR teacher's `--answers` file."""

# The closed VQA answer set (for the answer trie): colours, counts, yes/no, and "colour kind" for relation questions.
SHAPES_ANSWERS: tuple[str, ...] = (
    *COLORS, *(str(i) for i in range(GRID + 1)), "yes", "no", *(f"{c} {k}" for c in COLORS for k in KINDS)
)


@dataclass
class ShapesConfig:
    """How much of the shapes world to write, and how."""

    n_train: int = 2000
    """Rows in the train split."""
    n_val: int = 200
    """Rows in the validation split."""
    n_test: int = 200
    """Rows in the test split."""
    seed: int = 0
    """World seed: the same seed gives byte-identical images and rows."""
    size: int = 64
    """Image side in pixels (square RGB images); at least 24."""
    max_shapes: int = 3
    """Shapes per image are drawn uniformly from 1..max_shapes (at most 3)."""
    num_captions: int = 5
    """Caption references per image (fewer when the image has fewer valid phrasings)."""
    tokenizer_vocab_size: int = 1000
    """Upper bound on the BPE text vocabulary of the world's tokenizer (the small corpus usually stops earlier)."""
    num_bins: int = 100
    """`<bin_i>` location tokens in the world's tokenizer (100 is finer than a pixel of a 64 px image)."""

    def validate(self) -> None:
        for name in ("n_train", "n_val", "n_test"):
            if getattr(self, name) < 0:
                raise UserError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.n_train + self.n_val + self.n_test == 0:
            raise UserError("the shapes world needs at least one row (n_train + n_val + n_test is 0)")
        if self.size < 24:
            raise UserError(f"size must be at least 24 px (shapes need a few pixels per grid cell), got {self.size}")
        if not 1 <= self.max_shapes <= GRID:
            raise UserError(f"max_shapes must be in 1..{GRID}, got {self.max_shapes}")
        if self.num_captions < 1:
            raise UserError(f"num_captions must be >= 1, got {self.num_captions}")
        if self.num_bins < 2:
            raise UserError(f"num_bins must be >= 2, got {self.num_bins}")


@dataclass(frozen=True)
class Shape:
    """One drawn shape: what it is, its grid cell and its exact pixel box (x1, y1 exclusive)."""

    kind: str
    color: str
    size: str
    row: int
    col: int
    box: tuple[int, int, int, int]

    @property
    def name(self) -> str:
        """Unique within an image: "red circle"."""
        return f"{self.color} {self.kind}"

    @property
    def description(self) -> str:
        """Caption phrase: "a large red circle"."""
        return f"a {self.size} {self.color} {self.kind}"


@dataclass
class ShapesExample:
    """One generated row (canonical schema fields) plus the scene it was drawn from."""

    shapes: list[Shape]
    image: Image.Image
    row: dict


def _cell_edges(size: int) -> list[int]:
    return [round(i * size / GRID) for i in range(GRID + 1)]


def _draw_mask(kind: str, x0: int, y0: int, side: int, size: int) -> Image.Image:
    mask = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(mask)  # aliased drawing: every pixel is exactly the shape's colour or the background
    x1, y1 = x0 + side - 1, y0 + side - 1  # PIL coordinates are inclusive
    if kind == "circle":
        draw.ellipse([x0, y0, x1, y1], fill=255)
    elif kind == "square":
        draw.rectangle([x0, y0, x1, y1], fill=255)
    else:
        draw.polygon([(x0, y1), (x1, y1), ((x0 + x1) / 2, y0)], fill=255)
    return mask


def sample_scene(rng: random.Random, size: int, max_shapes: int = GRID) -> tuple[list[Shape], Image.Image]:
    """Draw 1..max_shapes shapes in distinct cells with unique (colour, kind) pairs; return them and the image."""
    n = rng.randint(1, max_shapes)
    cells = rng.sample(range(GRID * GRID), n)
    pairs = rng.sample([(c, k) for c in COLORS for k in KINDS], n)
    edges = _cell_edges(size)
    cell = size / GRID
    small = (max(3, round(0.35 * cell)), max(3, round(0.5 * cell)))
    large = (round(0.65 * cell), min(round(0.8 * cell), int(cell) - 2))
    jitter = (small[0] - 1) // 2  # < half the smallest side: every shape covers its cell's centre line
    image = Image.new("RGB", (size, size), BACKGROUND)
    shapes = []
    for (color, kind), index in zip(pairs, cells):
        row, col = divmod(index, GRID)
        size_name = rng.choice(SIZES)
        side = rng.randint(*{"small": small, "large": large}[size_name])
        origin = []
        for lo, hi in ((edges[col], edges[col + 1]), (edges[row], edges[row + 1])):
            start = round((lo + hi) / 2 + rng.randint(-jitter, jitter) - side / 2)
            origin.append(min(max(start, lo + 1), hi - 1 - side))  # 1 px margin: neighbours never touch
        mask = _draw_mask(kind, origin[0], origin[1], side, size)
        image.paste(COLORS[color], mask=mask)
        shapes.append(Shape(kind, color, size_name, row, col, mask.getbbox()))
    return shapes, image


def relation_holds(a: Shape, b: Shape, relation: str) -> bool:
    """Whether `a` is `relation` `b` (by grid cell, which the geometry rules make equal to box disjointness)."""
    return {
        "left of": a.col < b.col,
        "right of": a.col > b.col,
        "above": a.row < b.row,
        "below": a.row > b.row,
    }[relation]


def _listing(shapes: tuple[Shape, ...] | list[Shape]) -> str:
    descriptions = [s.description for s in shapes]
    return descriptions[0] if len(descriptions) == 1 else ", ".join(descriptions[:-1]) + " and " + descriptions[-1]


def caption_candidates(shapes: list[Shape]) -> list[str]:
    """Every valid caption of the scene: each order of the shapes, with and without "there is", plus relations."""
    if len(shapes) == 1:
        d, where = shapes[0].description, f"at the {POSITIONS[shapes[0].row, shapes[0].col]}"
        return [d, f"there is {d}", f"{d} {where}", f"{where} there is {d}"]
    out = []
    for order in itertools.permutations(shapes):
        out += [_listing(order), f"there is {_listing(order)}"]
    if len(shapes) == 2:
        out += [
            f"{a.description} {rel} {b.description}"
            for a, b in itertools.permutations(shapes)
            for rel in RELATIONS
            if relation_holds(a, b, rel)
        ]
    return out


def _plural(kind: str) -> str:
    return kind + "s"


def _question(shapes: list[Shape], rng: random.Random) -> tuple[str, str]:
    """One VQA question of a random feasible type (colour, count, existence, relation) and its exact answer."""
    names = {s.name for s in shapes}
    color_refs = []  # (shape, shortest unambiguous reference without its colour)
    for s in shapes:
        same_kind = [t for t in shapes if t.kind == s.kind]
        if len(same_kind) == 1:
            color_refs.append((s, s.kind))
        elif sum(t.size == s.size for t in same_kind) == 1:
            color_refs.append((s, f"{s.size} {s.kind}"))
    relation_refs = [  # (a, relation, b) where a is the only shape in that relation to b
        (a, rel, b)
        for b in shapes
        for rel in RELATIONS
        for a in shapes
        if relation_holds(a, b, rel) and sum(relation_holds(t, b, rel) for t in shapes) == 1
    ]
    qtype = rng.choice(["count", "exist"] + ["color"] * bool(color_refs) + ["relation"] * bool(relation_refs))
    if qtype == "color":
        s, ref = rng.choice(color_refs)
        return f"what color is the {ref}?", s.color
    if qtype == "relation":
        a, rel, b = rng.choice(relation_refs)
        return f"what is {rel} the {b.name}?", a.name
    if qtype == "exist":
        present = rng.random() < 0.5
        pool = sorted(names) if present else [f"{c} {k}" for c in COLORS for k in KINDS if f"{c} {k}" not in names]
        return f"is there a {rng.choice(pool)}?", "yes" if present else "no"
    what = rng.choice(["shapes", "kind", "color"])
    if what == "shapes":
        return "how many shapes are there?", str(len(shapes))
    if what == "kind":
        k = rng.choice(KINDS)
        return f"how many {_plural(k)} are there?", str(sum(s.kind == k for s in shapes))
    c = rng.choice(list(COLORS))
    return f"how many {c} shapes are there?", str(sum(s.color == c for s in shapes))


def _count_statement(n: int) -> str:
    return f"there is {NUMBER_WORDS[n]} shape" if n == 1 else f"there are {NUMBER_WORDS[n]} shapes"


def _hypothesis(shapes: list[Shape], label: str, rng: random.Random) -> str:
    """A statement that the image makes true (entailment), false (contradiction) or leaves open (neutral)."""
    if label == "neutral":
        return f"the {rng.choice(shapes).name} is {rng.choice(NEUTRAL_PROPERTIES)}"
    truth = label == "entailment"
    names = {s.name for s in shapes}
    families = {  # family -> [(statement, whether the image makes it true)]
        "exist": [(f"there is a {c} {k}", f"{c} {k}" in names) for c in COLORS for k in KINDS],
        "count": [(_count_statement(m), m == len(shapes)) for m in range(1, GRID + 1)],
        "size": [(f"the {s.name} is {z}", s.size == z) for s in shapes for z in SIZES],
        "relation": [
            (f"the {a.name} is {rel} the {b.name}", relation_holds(a, b, rel))
            for a, b in itertools.permutations(shapes, 2)
            for rel in RELATIONS
        ],
    }
    # Pick the family first so the twelve "there is a ..." statements do not swamp the rest.
    pools = {f: [text for text, holds in items if holds == truth] for f, items in families.items()}
    family = rng.choice([f for f, pool in pools.items() if pool])
    return rng.choice(pools[family])


def generate_example(config: ShapesConfig, split: str, index: int) -> ShapesExample:
    """Row `index` of `split`: a pure function of the config (split sizes aside), `split` and `index`."""
    rng = random.Random(f"{config.seed}/{split}/{index}")
    shapes, image = sample_scene(rng, config.size, config.max_shapes)
    candidates = caption_candidates(shapes)
    captions = rng.sample(candidates, min(config.num_captions, len(candidates)))
    question, answer = _question(shapes, rng)
    region = rng.choice(shapes)
    label = rng.choice(LABELS)
    row = {
        "id": f"shapes-{config.seed}-{split}-{index:06d}",
        "captions": captions,
        "question": question,
        "answers": [answer] * NUM_VQA_ANSWERS,
        "region_text": f"the {region.name}",
        "box": [float(v) for v in region.box],
        "premise": rng.choice(candidates) if rng.random() < 0.5 else "",
        "hypothesis": _hypothesis(shapes, label, rng),
        "label": label,
    }
    return ShapesExample(shapes, image, row)


def shapes_features() -> "datasets.Features":
    """The canonical schema (docs/ARCHITECTURE.md) as `datasets.Features`."""
    text = Value("string")
    return Features(
        {
            "id": text, "image": ImageFeature(), "captions": List(text), "question": text, "answers": List(text),
            "region_text": text, "box": List(Value("float32")), "premise": text, "hypothesis": text, "label": text,
        }
    )  # fmt: skip


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")  # lossless and deterministic: same pixels, same bytes
    return buffer.getvalue()


def build_shapes_dataset(config: ShapesConfig) -> "datasets.DatasetDict":
    """The world as a `DatasetDict` with train, validation and test splits in the canonical schema."""
    config.validate()
    sizes = dict(zip(SPLITS, (config.n_train, config.n_val, config.n_test)))
    features = shapes_features()
    splits = {}
    with tqdm(total=sum(sizes.values()), desc="shapes world", unit="img") as bar:
        for split, n in sizes.items():
            columns: dict[str, list] = {name: [] for name in features}
            for index in range(n):
                example = generate_example(config, split, index)
                for name, value in example.row.items():
                    columns[name].append(value)
                columns["image"].append({"bytes": _png(example.image), "path": None})
                bar.update()
            splits[split] = Dataset.from_dict(columns, features=features)
    return DatasetDict(splits)


def world_texts(rows: "datasets.Dataset | list[dict]") -> list[str]:
    """Every text a model sees in this world: each task's OFA prompt (from `distill.tasks`) and target texts."""
    tasks = [get_task(name) for name in ("caption", "vqa", "grounding", "entailment")]
    caption, entailment = tasks[0], tasks[-1]
    texts = [f" {answer}" for answer in (*SHAPES_ANSWERS, *entailment.candidates)]  # targets are OFA's " {text}"
    for row in rows:
        texts += [task.prompt(row) for task in tasks]
        texts.append(entailment.prompt({**row, "premise": ""}))  # the no-premise prompt, whatever the row holds
        texts += [" " + caption.reference({"captions": [c]}) for c in row["captions"]]  # each reference, cleaned
    return texts


# Words of the templates above that no constant lists.
_TEMPLATE_WORDS = ("a", "the", "at", "there", "is", "are", "and", "shape", "shapes", "what", "color", "how", "many", "of")


def _vocabulary_texts() -> list[str]:
    """Every word the world can produce, so a tokenizer trained on a small sample still holds them all."""
    words = [*COLORS, *KINDS, *map(_plural, KINDS), *SIZES, *NUMBER_WORDS, *NEUTRAL_PROPERTIES, *_TEMPLATE_WORDS]
    words += [w for phrase in (*RELATIONS, *POSITIONS.values()) for w in phrase.split()]
    return words + [f" {w}" for w in words]


def train_shapes_tokenizer(dataset: "datasets.DatasetDict", config: ShapesConfig) -> "PreTrainedTokenizerFast":
    """A byte-level BPE over the world's texts with OFA's id rules (specials, BPE, `<mask>`, no codes, bins)."""
    texts = _vocabulary_texts()
    for split in dataset.values():
        texts += world_texts(split.remove_columns("image"))
    return train_tiny_tokenizer(texts, vocab_size=config.tokenizer_vocab_size, num_codes=0, num_bins=config.num_bins)


def write_shapes(out_dir: str | Path, config: ShapesConfig | None = None, overwrite: bool = False) -> Path:
    """Write `out_dir/` = `save_to_disk` DatasetDict + `tokenizer/` + `shapes_config.json` + `answers.txt` (the VQA
    answer list, `SHAPES_ANSWERS`); return `out_dir`.

    The folder is assembled under a temporary sibling and renamed into place, so `out_dir` is either complete or
    absent. An existing `out_dir` is replaced only with `overwrite=True`, and only if it is a shapes world.
    """
    config = config or ShapesConfig()
    config.validate()
    out_dir = Path(out_dir)
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        if not overwrite:
            raise UserError(f"{out_dir} already exists and is not empty (pass --overwrite to replace a shapes world)")
        if not (out_dir / "shapes_config.json").is_file():
            raise UserError(f"refusing to overwrite {out_dir}: it holds no shapes_config.json, so it is not a shapes world")
    dataset = build_shapes_dataset(config)
    tokenizer = train_shapes_tokenizer(dataset, config)
    tmp = out_dir.with_name(f".{out_dir.name}.partial")
    if tmp.exists():
        shutil.rmtree(tmp)  # our own leftover from a killed run
    tmp.mkdir(parents=True)
    dataset.save_to_disk(str(tmp))
    tokenizer.save_pretrained(str(tmp / "tokenizer"))
    (tmp / "shapes_config.json").write_text(json.dumps(dataclasses.asdict(config), indent=2) + "\n")
    (tmp / ANSWERS_FILE).write_text("".join(a + "\n" for a in SHAPES_ANSWERS))
    if out_dir.exists():
        shutil.rmtree(out_dir)
    tmp.rename(out_dir)
    return out_dir
