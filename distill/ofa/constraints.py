"""`TokenTrie`: the closed answer set OFA constrains decoding and fine-tuning to (its `constraint_trie`), over
token sequences that each end with EOS."""
from __future__ import annotations

from typing import Sequence


class TokenTrie:
    """Allowed next tokens for decoding constrained to a fixed set of token sequences (each ending with EOS)."""

    def __init__(self, sequences: Sequence[Sequence[int]]):
        self.root: dict[int, dict] = {}
        for seq in sequences:
            node = self.root
            for tok in seq:
                node = node.setdefault(int(tok), {})

    def next_tokens(self, prefix: Sequence[int]) -> list[int]:
        """Tokens that extend `prefix` toward some sequence; [] when `prefix` left the trie or is complete."""
        node = self.root
        for tok in prefix:
            node = node.get(int(tok))
            if node is None:
                return []
        return list(node)
