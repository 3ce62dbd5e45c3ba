"""OFA's tokenizer: BART byte-level BPE, then `<code_i>` image-code tokens, then `<bin_i>` location tokens.

Id layout (OFA-Sys checkpoints): `<s>`0 `<pad>`1 `</s>`2 `<unk>`3, the BPE vocabulary, `<mask>` (50264), then
`<code_0..8191>` (50265-58456), then `<bin_0..999>` (58457-59456): 59,457 ids. A tiny tokenizer trained with
`tokenizers` follows the same rules with smaller counts, so every consumer discovers ids from the vocabulary
(`bin_token_ids`, `num_bins`) instead of assuming the official numbers.

Codes and bins are `AddedToken(lstrip=True, normalized=False)`: each is one token, and the whitespace before it is
absorbed, so `"<bin_1> <bin_2>"` does not produce a stray space token (1437) between bins under transformers 5.
"""
from __future__ import annotations

import json
import re
import weakref
from pathlib import Path
from typing import Iterable, Sequence

from huggingface_hub import snapshot_download
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AddedToken, BartTokenizerFast, PreTrainedTokenizerBase, PreTrainedTokenizerFast

from distill.errors import UserError

SPECIAL_TOKENS = ("<s>", "<pad>", "</s>", "<unk>")
MASK_TOKEN = "<mask>"
_BIN_RE = re.compile(r"^<bin_(\d+)>$")
_CODE_RE = re.compile(r"^<code_(\d+)>$")
# Files a Hub repo may hold for a tokenizer, in either layout.
_TOKENIZER_FILES = ["vocab.json", "merges.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"]


def bin_token(k: int) -> str:
    """The text of location token `k`: `<bin_k>`."""
    return f"<bin_{k}>"


def code_token(k: int) -> str:
    """The text of image-code token `k`: `<code_k>`."""
    return f"<code_{k}>"


def _added(content: str) -> AddedToken:
    return AddedToken(content, lstrip=True, rstrip=False, single_word=False, normalized=False, special=False)


def _add_codes_and_bins(tokenizer: PreTrainedTokenizerFast, num_codes: int, num_bins: int) -> None:
    """Append `<code_0..num_codes-1>` then `<bin_0..num_bins-1>`, skipping any already present (idempotent)."""
    vocab = tokenizer.get_vocab()
    missing_codes = [code_token(i) for i in range(num_codes) if code_token(i) not in vocab]
    missing_bins = [bin_token(i) for i in range(num_bins) if bin_token(i) not in vocab]
    if missing_codes:
        tokenizer.add_tokens([_added(t) for t in missing_codes])
    if missing_bins:
        tokenizer.add_tokens([_added(t) for t in missing_bins])


def build_ofa_tokenizer(
    vocab: dict[str, int], merges: Sequence[tuple[str, str]], num_codes: int = 8192, num_bins: int = 1000
) -> PreTrainedTokenizerFast:
    """A BART tokenizer over `vocab`/`merges` (fairseq order, `<mask>` last), then `num_codes` codes, `num_bins` bins.

    The BPE vocabulary must hold `<s> <pad> </s> <unk>` at ids 0-3 and end with `<mask>`, as OFA-Sys's vocab.json does.
    """
    for i, tok in enumerate(SPECIAL_TOKENS):
        if vocab.get(tok) != i:
            raise UserError(f"OFA vocabulary must map {tok} to id {i}, found {vocab.get(tok)}")
    if vocab.get(MASK_TOKEN) != len(vocab) - 1:
        found = vocab.get(MASK_TOKEN)
        raise UserError(f"OFA vocabulary must end with {MASK_TOKEN} (id {len(vocab) - 1}), found {found}")
    # transformers 5: `vocab_file=` is silently ignored (empty vocabulary); pass the dict and merges directly.
    tokenizer = BartTokenizerFast(vocab=dict(vocab), merges=[tuple(m) for m in merges])
    _add_codes_and_bins(tokenizer, num_codes, num_bins)
    return tokenizer


def _read_merges(path: Path) -> list[tuple[str, str]]:
    merges = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("#version") or not line.strip():
            continue
        a, b = line.split(" ")
        merges.append((a, b))
    return merges


def _resolve_folder(path_or_hub_id: str | Path) -> Path:
    """A local folder as is, otherwise a Hub snapshot holding only tokenizer files (cached, offline-aware)."""
    path = Path(path_or_hub_id)
    if path.is_dir():
        return path
    if path.exists():
        raise UserError(f"tokenizer source {path} is a file, expected a folder or a Hub id")
    try:
        return Path(snapshot_download(str(path_or_hub_id), allow_patterns=_TOKENIZER_FILES))
    except Exception as exc:  # noqa: BLE001  (offline, missing repo, bad id: all one user-facing message)
        raise UserError(
            f"cannot find a tokenizer at {path_or_hub_id}: not a local folder, and Hub download failed ({exc})"
        ) from exc


def load_ofa_tokenizer(
    path_or_hub_id: str | Path, num_codes: int = 8192, num_bins: int = 1000
) -> PreTrainedTokenizerFast:
    """Load OFA's tokenizer from a folder or Hub id.

    - A folder written by `save_pretrained` (`tokenizer.json`) is loaded as is: its codes/bins are already there, so
      `num_codes`/`num_bins` are ignored.
    - An OFA-Sys folder (`vocab.json` + `merges.txt`) gets `num_codes` codes then `num_bins` bins appended.
    """
    folder = _resolve_folder(path_or_hub_id)
    if (folder / "tokenizer.json").is_file():
        return BartTokenizerFast.from_pretrained(str(folder))
    vocab_path, merges_path = folder / "vocab.json", folder / "merges.txt"
    if not (vocab_path.is_file() and merges_path.is_file()):
        raise UserError(f"{folder} holds neither tokenizer.json nor vocab.json + merges.txt")
    vocab = json.loads(vocab_path.read_text(encoding="utf-8"))
    return build_ofa_tokenizer(vocab, _read_merges(merges_path), num_codes=num_codes, num_bins=num_bins)


def train_tiny_tokenizer(
    texts: Iterable[str], vocab_size: int = 1000, num_codes: int = 0, num_bins: int = 100
) -> PreTrainedTokenizerFast:
    """Train a small byte-level BPE on `texts` with OFA's id rules, for tests and the offline demo.

    `vocab_size` bounds the text vocabulary (4 specials + the 256 byte symbols + merges + `<mask>`); a small corpus
    may yield fewer merges. Codes and bins follow, so `len(tokenizer) <= vocab_size + num_codes + num_bins`.
    """
    if vocab_size < len(SPECIAL_TOKENS) + 256 + 1:
        raise UserError(f"vocab_size must be at least {len(SPECIAL_TOKENS) + 257} (specials + 256 bytes + <mask>)")
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - 1,  # one slot left for <mask>
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(texts, trainer=trainer)
    model = json.loads(bpe.to_str())["model"]
    vocab = dict(model["vocab"])
    vocab[MASK_TOKEN] = len(vocab)
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in model["merges"]]
    return build_ofa_tokenizer(vocab, merges, num_codes=num_codes, num_bins=num_bins)


# Bin ids per tokenizer, discovered once: decoding runs per row, the vocabulary scan costs ~10 ms.
_BIN_CACHE: "weakref.WeakKeyDictionary[PreTrainedTokenizerBase, list[int]]" = weakref.WeakKeyDictionary()


def bin_token_ids(tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """Ids of `<bin_0>..<bin_{M-1}>`, in bin order, discovered from the vocabulary (empty if it has no bins)."""
    cached = _BIN_CACHE.get(tokenizer)
    if cached is not None and len(cached) and tokenizer.convert_tokens_to_ids(bin_token(len(cached) - 1)) == cached[-1]:
        return cached
    vocab = tokenizer.get_vocab()
    found = {int(m.group(1)): i for tok, i in vocab.items() if (m := _BIN_RE.match(tok))}
    ids = [found[k] for k in range(len(found)) if k in found]
    if len(ids) != len(found):
        raise UserError(f"tokenizer bins are not contiguous: {len(found)} <bin_k> tokens but not k=0..{len(found) - 1}")
    _BIN_CACHE[tokenizer] = ids
    return ids


def num_bins(tokenizer: PreTrainedTokenizerBase) -> int:
    """How many `<bin_k>` tokens the tokenizer holds."""
    return len(bin_token_ids(tokenizer))


def num_codes(tokenizer: PreTrainedTokenizerBase) -> int:
    """How many `<code_k>` tokens the tokenizer holds."""
    return sum(1 for tok in tokenizer.get_vocab() if _CODE_RE.match(tok))


def bins_to_token_ids(bins: Sequence[int], tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """Token ids for bin indices (no text round trip, so no space tokens can sneak in)."""
    ids = bin_token_ids(tokenizer)
    out = []
    for k in bins:
        if not 0 <= int(k) < len(ids):
            raise ValueError(f"bin index {k} outside 0..{len(ids) - 1}")
        out.append(ids[int(k)])
    return out


def token_ids_to_bins(token_ids: Sequence[int], tokenizer: PreTrainedTokenizerBase) -> list[int | None]:
    """Bin index of each token id, or None for a token that is not a bin."""
    index = {tid: k for k, tid in enumerate(bin_token_ids(tokenizer))}
    return [index.get(int(t)) for t in token_ids]


def bins_to_text(bins: Sequence[int]) -> str:
    """`"<bin_a><bin_b>..."`, joined without spaces."""
    return "".join(bin_token(int(k)) for k in bins)


def text_to_bins(text: str) -> list[int] | None:
    """Bin indices of a text made only of `<bin_k>` tokens (whitespace between them allowed), else None."""
    found = re.findall(r"<bin_(\d+)>", text)
    rest = re.sub(r"<bin_\d+>", "", text).strip()
    if rest:
        return None
    return [int(k) for k in found]
