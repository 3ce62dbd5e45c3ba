"""OFA tokenizer: the official layout against OFA's own encodings, and the same rules on a tiny trained tokenizer."""
import json

import pytest

from distill.errors import UserError
from distill.ofa.tokenization_ofa import (
    bin_token_ids,
    bins_to_text,
    bins_to_token_ids,
    load_ofa_tokenizer,
    num_bins,
    num_codes,
    text_to_bins,
    token_ids_to_bins,
    train_tiny_tokenizer,
)

CORPUS = [
    "a red circle left of a blue square",
    "what colour is the small triangle?",
    "which region does the text describe?",
    "two green squares above one yellow circle",
] * 20


@pytest.fixture(scope="module")
def ofa_dir(fixtures_dir):
    return fixtures_dir / "ofa-tokenizer"


@pytest.fixture(scope="module")
def reference(ofa_dir):
    return json.loads((ofa_dir / "reference_encodings.json").read_text())


@pytest.fixture(scope="module")
def ofa_tok(ofa_dir):
    return load_ofa_tokenizer(ofa_dir)


def test_official_layout_and_special_ids(ofa_tok, reference):
    assert len(ofa_tok) == reference["len_tokenizer"] == 59457
    special = reference["special_ids"]
    assert ofa_tok.bos_token_id == special["bos"]
    assert ofa_tok.pad_token_id == special["pad"]
    assert ofa_tok.eos_token_id == special["eos"]
    assert ofa_tok.unk_token_id == special["unk"]
    assert ofa_tok.mask_token_id == special["mask"]
    for tok, i in {**reference["code_ids"], **reference["bin_ids"]}.items():
        assert ofa_tok.convert_tokens_to_ids(tok) == i
    ids = bin_token_ids(ofa_tok)
    assert ids == list(range(58457, 59457))
    assert num_bins(ofa_tok) == 1000 and num_codes(ofa_tok) == 8192


def test_official_encodings(ofa_tok, reference):
    for text, ids in reference["encodings"].items():
        assert ofa_tok(text).input_ids == ids, text


def test_bins_are_single_tokens_without_space_tokens(ofa_tok, reference):
    ref = reference["bins_without_spaces"]
    assert ofa_tok(ref["text"]).input_ids == ref["ids"]
    # OFA's original tokenizer gives no space token between bins (see the fixture note): neither do we.
    assert ofa_tok(reference["bins_with_spaces"]["text"]).input_ids == ref["ids"]
    assert bins_to_token_ids([10, 20, 300, 400], ofa_tok) == ref["ids"][1:-1]
    assert token_ids_to_bins(ref["ids"], ofa_tok) == [None, 10, 20, 300, 400, None]
    assert text_to_bins(bins_to_text([10, 20, 300, 400])) == [10, 20, 300, 400]
    assert text_to_bins("<bin_1> <bin_2> oops") is None


def test_save_pretrained_round_trip_does_not_add_twice(ofa_tok, reference, tmp_path):
    ofa_tok.save_pretrained(tmp_path)
    again = load_ofa_tokenizer(tmp_path)
    assert len(again) == 59457
    for text, ids in reference["encodings"].items():
        assert again(text).input_ids == ids
    assert bin_token_ids(again) == bin_token_ids(ofa_tok)


def test_missing_source_is_a_user_error(tmp_path):
    with pytest.raises(UserError):
        load_ofa_tokenizer(tmp_path)  # empty folder
    with pytest.raises(UserError):
        load_ofa_tokenizer("no-such-org/no-such-tokenizer")  # offline in tests: Hub lookup fails cleanly


@pytest.mark.parametrize("codes,bins", [(0, 100), (16, 50)])
def test_tiny_tokenizer_follows_ofa_rules(codes, bins, tmp_path):
    tok = train_tiny_tokenizer(CORPUS, vocab_size=400, num_codes=codes, num_bins=bins)
    assert tok.convert_ids_to_tokens([0, 1, 2, 3]) == ["<s>", "<pad>", "</s>", "<unk>"]
    assert (tok.bos_token_id, tok.pad_token_id, tok.eos_token_id, tok.unk_token_id) == (0, 1, 2, 3)
    mask = tok.mask_token_id
    assert mask <= 399  # the text vocabulary stays within vocab_size
    # <mask> closes the BPE vocabulary, then codes, then bins, contiguous.
    assert [tok.convert_tokens_to_ids(f"<code_{i}>") for i in range(codes)] == list(range(mask + 1, mask + 1 + codes))
    assert bin_token_ids(tok) == list(range(mask + 1 + codes, mask + 1 + codes + bins))
    assert len(tok) == mask + 1 + codes + bins
    assert num_bins(tok) == bins and num_codes(tok) == codes

    ids = tok(" a red circle <bin_3> <bin_4>").input_ids
    assert ids[0] == 0 and ids[-1] == 2  # BART post-processor
    assert ids[-3:-1] == bins_to_token_ids([3, 4], tok)  # no space token between bins
    assert tok.decode(tok(" a red circle").input_ids, skip_special_tokens=True) == " a red circle"

    tok.save_pretrained(tmp_path)
    again = load_ofa_tokenizer(tmp_path)
    assert len(again) == len(tok) and again.get_vocab() == tok.get_vocab()
    for text in CORPUS[:4] + ["<bin_0><bin_1> <code_0>" if codes else "<bin_0><bin_1>"]:
        assert again(text).input_ids == tok(text).input_ids


def test_tiny_tokenizer_from_ofa_sys_layout(tmp_path):
    """A tiny vocab.json + merges.txt folder loads through the same path as OFA-Sys's files."""
    tok = train_tiny_tokenizer(CORPUS, vocab_size=400, num_codes=8, num_bins=20)
    backend = json.loads(tok.backend_tokenizer.to_str())["model"]
    (tmp_path / "vocab.json").write_text(json.dumps(backend["vocab"]))
    merges = [" ".join(m) if isinstance(m, list) else m for m in backend["merges"]]
    (tmp_path / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    loaded = load_ofa_tokenizer(tmp_path, num_codes=8, num_bins=20)
    assert loaded.get_vocab() == tok.get_vocab()
    for text in CORPUS[:4]:
        assert loaded(text).input_ids == tok(text).input_ids
