"""Task definitions: OFA prompts (checked against OFA's own encodings), targets, decoding, constraints, metrics."""
import json
import random

import numpy as np
import pytest
import torch
from PIL import Image

from distill.errors import UserError
from distill.tasks import TASKS, get_task
from distill.ofa.constraints import TokenTrie
from distill.tasks.base import pre_caption, pre_question
from distill.tasks.grounding import bins_to_box, box_to_bins
from distill.tasks.vqa import candidate_answers
from distill.ofa.tokenization_ofa import bin_token_ids, bins_to_token_ids, load_ofa_tokenizer, train_tiny_tokenizer

CORPUS = [
    " what does the image describe?",
    " what colour is the shape? red blue green yellow red car",
    " yes no maybe a red circle left of a blue square",
] * 20


@pytest.fixture(scope="module")
def ofa_tok(fixtures_dir):
    return load_ofa_tokenizer(fixtures_dir / "ofa-tokenizer")


@pytest.fixture(scope="module")
def reference(fixtures_dir):
    return json.loads((fixtures_dir / "ofa-tokenizer" / "reference_encodings.json").read_text())["encodings"]


@pytest.fixture(scope="module")
def tiny_tok():
    return train_tiny_tokenizer(CORPUS, vocab_size=320, num_codes=0, num_bins=50)


def test_get_task_and_defaults():
    expected = {  # name: (resolution, num_queries, label_smoothing)
        "caption": (480, 20, 0.1), "vqa": (480, 6, 0.1), "grounding": (512, 5, 0.1), "entailment": (480, 3, 0.0),
    }  # fmt: skip
    assert set(TASKS) == set(expected)
    for name, (res, queries, smoothing) in expected.items():
        task = get_task(name)
        assert (task.name, task.resolution, task.num_queries, task.label_smoothing) == (name, res, queries, smoothing)
    # OFA's flags, decoded by fairseq's rules (distill.ofa.fairseq_rules); max_len_b 16: 16 tokens + EOS
    assert get_task("caption").generation == {"num_beams": 5, "max_new_tokens": 17, "min_new_tokens": 1,
                                              "no_repeat_ngram_size": 3, "decoding": "fairseq"}
    assert get_task("grounding").generation == {"num_beams": 5, "max_new_tokens": 5, "min_new_tokens": 4,
                                                "no_repeat_ngram_size": 3, "decoding": "fairseq"}
    assert get_task("grounding", resolution=64).resolution == 64
    with pytest.raises(UserError, match="caption, vqa, grounding, entailment"):
        get_task("segmentation")
    with pytest.raises(UserError, match="no setting"):
        get_task("vqa", beams=3)


def test_prompts_reproduce_ofa_encodings(ofa_tok, reference):
    """The prompt strings, tokenised, equal OFA's own encodings of the same prompts (fixture)."""
    rows_and_prompts = [
        (get_task("caption"), {}, " what does the image describe?"),
        (get_task("vqa"), {"question": "What color is the car"}, " what color is the car?"),
        (get_task("grounding"), {"region_text": "A man in a red shirt"},
         ' which region does the text " a man in a red shirt " describe?'),
        (get_task("entailment"), {"premise": "", "hypothesis": "Two dogs playing"},
         ' does the image describe " two dogs playing "?'),
    ]  # fmt: skip
    for task, row, prompt in rows_and_prompts:
        assert task.prompt(row) == prompt
        assert ofa_tok(task.prompt(row)).input_ids == reference[prompt]


def test_ofa_text_normalisation():
    assert pre_question(",What's  the man-made/wooden thing?\n") == "what's the man made wooden thing?"
    assert get_task("vqa").prompt({"question": "Is it red?"}) == " is it red?"
    assert get_task("vqa").prompt({"question": "What is   this"}) == " what is this?"
    assert pre_caption("<person> holding a CUP") == "person holding a cup"
    assert pre_caption(" ".join(["word"] * 100), 80) == " ".join(["word"] * 80)
    task = get_task("entailment")
    assert task.prompt({"premise": "A Dog runs.", "hypothesis": "An animal moves"}) == (
        ' can image and text1 " a dog runs. " imply text2 " an animal moves "?'
    )
    long_text = " ".join(f"w{i}" for i in range(100))
    prompt = get_task("grounding").prompt({"region_text": long_text})
    assert " w79 " in prompt and "w80" not in prompt


def test_references_and_targets(ofa_tok, reference):
    caption = get_task("caption")
    row = {"captions": ["A cat.", "A small, grey cat!", "Cat on a mat"]}
    assert caption.reference(row) == "a cat"
    picks = {caption.reference(row, rng=random.Random(s)) for s in range(30)}
    assert picks == {"a cat", "a small grey cat", "cat on a mat"}
    assert caption.reference(row, rng=np.random.default_rng(0)) in picks
    # " a cat" ends the fixture encoding " ... caption: a cat": target = its BPE + EOS, no <s>.
    assert caption.encode_target("a cat", ofa_tok) == reference[" what is the complete image? caption: a cat"][-3:]
    assert caption.encode_target(" a cat", ofa_tok) == caption.encode_target("a cat", ofa_tok)

    vqa = get_task("vqa")
    assert vqa.reference({"answers": ["Two", "2", "two", "3", "three"]}) == "2"
    assert vqa.reference({"answers": ["a dog", "cat", "dog"]}) == "dog"

    ent = get_task("entailment")
    labels = ("entailment", "contradiction", "neutral", "Yes")
    assert [ent.reference({"label": label}) for label in labels] == ["yes", "no", "maybe", "yes"]
    with pytest.raises(UserError):
        ent.reference({"label": "unknown"})


def test_grounding_target_ids_are_bins_without_space_tokens(ofa_tok):
    task = get_task("grounding")
    expected = [58467, 58477, 58757, 58857, 2]  # OFA fixture: <bin_10><bin_20><bin_300><bin_400></s>
    assert task.encode_target("<bin_10><bin_20><bin_300><bin_400>", ofa_tok) == expected
    assert task.encode_target("<bin_10> <bin_20> <bin_300> <bin_400>", ofa_tok) == expected
    with pytest.raises(UserError):
        task.encode_target("<bin_10><bin_20>", ofa_tok)


def _ofa_quantise(box, w, h, num_bins, resolution, max_image_size):
    """OFA's RefCOCO pipeline in torch: scale to the square resize, / max_image_size, * (num_bins - 1), round."""
    ratio = torch.tensor([resolution / w, resolution / h, resolution / w, resolution / h], dtype=torch.float64)
    return (torch.tensor(box, dtype=torch.float64) * ratio / max_image_size * (num_bins - 1)).round().long().tolist()


@pytest.mark.parametrize("num_bins,resolution", [(1000, 512), (100, 64)])
def test_box_bins_round_trip(num_bins, resolution):
    rng = np.random.default_rng(0)
    for _ in range(200):
        w, h = int(rng.integers(20, 1200)), int(rng.integers(20, 1200))
        x0, x1 = sorted(rng.uniform(0, w, 2))
        y0, y1 = sorted(rng.uniform(0, h, 2))
        box = [x0, y0, x1, y1]
        bins = box_to_bins(box, w, h, num_bins, resolution)
        assert bins == _ofa_quantise(box, w, h, num_bins, resolution, resolution)
        back = bins_to_box(bins, w, h, num_bins, resolution)
        bin_w, bin_h = resolution / (num_bins - 1) * w / resolution, resolution / (num_bins - 1) * h / resolution
        for a, b, width in zip(box, back, (bin_w, bin_h, bin_w, bin_h)):
            assert abs(a - b) <= width / 2 + 1e-9  # within half a bin (one bin's width, as asked, holds a fortiori)
    assert box_to_bins([0, 0, 640, 480], 640, 480, 1000, 512) == [0, 0, 999, 999]
    assert box_to_bins([320, 240, 640, 480], 640, 480, 1000, 512) == [500, 500, 999, 999]  # 499.5 rounds to even


def test_grounding_reference_and_decode_with_images(tiny_tok):
    import datasets

    task = get_task("grounding", resolution=64)
    img = Image.new("RGB", (80, 40))
    data = {"id": ["a"], "image": [img], "region_text": ["red circle"], "box": [[8.0, 4.0, 40.0, 20.0]]}
    ds = datasets.Dataset.from_dict(data)
    ds = ds.cast_column("image", datasets.Image())
    row = ds[0]
    text = task.reference(row, tokenizer=tiny_tok)
    ids = task.encode_target(text, tiny_tok)
    assert len(ids) == 5 and ids[-1] == tiny_tok.eos_token_id and set(ids[:4]) <= set(bin_token_ids(tiny_tok))
    expected_bins = box_to_bins(row["box"], 80, 40, 50, 64)
    assert ids[:4] == bins_to_token_ids(expected_bins, tiny_tok)
    box = task.decode([0] + ids, row, tiny_tok)  # with <s> and </s>, as generate() returns
    assert box == pytest.approx(bins_to_box(expected_bins, 80, 40, 50, 64))
    assert task.decode(text, {"width": 80, "height": 40}, tiny_tok) == box
    assert task.decode(ids[:3] + [2], row, tiny_tok) is None  # 3 bins: a miss
    assert task.decode([ids[0], 5] + ids[1:], row, tiny_tok) is None  # a non-bin token: a miss
    assert task.evaluate([box, None], [row, row]) == {"acc@0.5": 50.0}


def test_trie_allows_exactly_the_answers(tiny_tok):
    answers = ["red", "blue", "red car", "yes"]
    targets = {tuple(get_task("vqa").encode_target(a, tiny_tok)) for a in answers}
    trie = TokenTrie([list(t) for t in targets])
    found, stack = set(), [[]]
    while stack:  # brute force: every path the trie allows from the root
        seq = stack.pop()
        for tok in trie.next_tokens(seq):
            (found.add(tuple(seq + [tok])) if tok == tiny_tok.eos_token_id else stack.append(seq + [tok]))
    assert found == targets
    assert trie.next_tokens([3, 3]) == []  # off the trie
    assert TokenTrie([[5, 6], [5, 7]]).next_tokens([5]) == [6, 7]
    rows = [{"answers": ["red"] * 3}, {"answers": ["Blue"]}, {"answers": ["red", "red", "blue"]},
            {"answers": ["x"], "answer_scores": [{"answer": "x", "confidence": 0.3}, {"answer": "red", "confidence": 1}]}]
    assert candidate_answers(rows) == ["red", "blue"]


def test_tasks_describe_their_answers_and_run_no_model():
    """A task says what an answer is; the models decide how to infer it (no task method takes a model)."""
    spaces = {name: get_task(name).answer_space for name in TASKS}
    assert spaces == {"caption": "text", "vqa": "answer_list", "grounding": "box", "entailment": "candidates"}
    assert get_task("entailment").candidates == ("yes", "no", "maybe")
    for name in TASKS:
        task = get_task(name)
        for attr in ("ofa_inference", "generate_kwargs", "ar_decoding", "max_return_sequences", "check_columns"):
            assert not hasattr(task, attr), (name, attr)


def test_decode_and_evaluate(tiny_tok):
    caption = get_task("caption")
    ids = [0] + tiny_tok(" A red circle, left.", add_special_tokens=False).input_ids + [2, 1, 1]
    assert caption.decode(ids, {}, tiny_tok) == "a red circle left"
    rows = [{"captions": ["a red circle left of a blue square"]}, {"captions": ["two green squares above one circle"]}]
    assert caption.training_metrics([r["captions"][0] for r in rows], rows) == {"cider": pytest.approx(1000.0)}

    vqa = get_task("vqa")
    assert vqa.decode(" two ", {}) == "two"
    # official: ten identical "2" are not normalised, so "two" scores 0 there
    assert vqa.evaluate(["2", "two"], [{"answers": ["2"] * 10}, {"answers": ["2"] * 10}]) == {"vqa_accuracy": 50.0}
    tsv = {"answers": ["yes", "no"], "answer_scores": [{"answer": "yes", "confidence": 1.0},
                                                       {"answer": "no", "confidence": 0.3}]}
    human = {"answers": ["yes"] * 9 + ["no"]}
    assert vqa.evaluate(["yes", "no", "no"], [tsv, tsv, human]) == {"vqa_accuracy": pytest.approx(100 * 1.6 / 3)}
    assert vqa.reference(tsv) == "yes" and vqa.target_weight(tsv, "no") == pytest.approx(0.3)
    assert vqa.target_weight(human, "yes") == 1.0 and vqa.target_weight({"answers": ["Yes"] * 10}, "yes") == 1.0
    assert "vqaEval" in vqa.metric_implementation([human]) and "OFA" in vqa.metric_implementation([tsv])
    assert vqa.prompt({"question": "What is it", "object_tags": ["car", "red tree"]}) == " what is it? object: car red tree"

    ent = get_task("entailment")
    assert ent.decode(" maybe yes", {}) == "maybe"
    assert ent.decode("", {}) is None
    assert ent.evaluate(["yes", "no"], [{"label": "entailment"}, {"label": "neutral"}]) == {"accuracy": 50.0}
