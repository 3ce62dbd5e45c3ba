"""NARVL configuration: an OFA configuration plus the query decoder's few settings.

`NARVLConfig` subclasses `OFAConfig`, so the reused OFA encoder and decoder modules read their fields from it
unchanged, and `config.json` is one flat file (the OFA fields next to the NARVL ones) that `save_pretrained` /
`from_pretrained` round-trip exactly. `vocab_size` stays the OFA vocabulary: the blank is the extra output row
`blank_id = vocab_size`, outside the embedding.
"""
from __future__ import annotations

from huggingface_hub.dataclasses import strict

from distill.ofa.configuration_ofa import OFAConfig

__all__ = ["NARVLConfig"]


@strict
class NARVLConfig(OFAConfig):
    """Configuration of a NARVL student: OFA encoder, non-causal query decoder, vocabulary + blank output head."""

    model_type = "narvl"

    num_queries: int = 20
    """Number N of learned decoder queries, i.e. of CTC frames: the longest target (plus blanks between repeated
    labels) it can emit. Resolve the per-task default from `distill.tasks.get_task(task).num_queries`."""
    query_init_std: float = 0.02
    """Std of the normal initialisation of the query embeddings."""
    blank_init_std: float | None = None
    """Std of the normal initialisation of the blank output row; None means d_model ** -0.5."""
    task: str | None = None
    """Task the student is trained for (caption, vqa, grounding, entailment), recorded for evaluate/predict."""
    label_smoothing: float = 0.0
    """Query-CTC label smoothing used by forward() when targets are given (NARVL: 0.1, entailment 0)."""

    @property
    def blank_id(self) -> int:
        """Id of the CTC blank: the row appended after the OFA vocabulary."""
        return self.vocab_size

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        if self.num_queries < 1:
            raise ValueError(f"num_queries must be >= 1, got {self.num_queries}")
        if self.num_queries > self.max_position_embeddings:
            # The decoder's absolute position table covers positions 0..max_position_embeddings-1 only.
            raise ValueError(
                f"num_queries ({self.num_queries}) exceeds max_position_embeddings ({self.max_position_embeddings})"
            )

    @classmethod
    def from_ofa_config(cls, ofa_config: OFAConfig, **kwargs) -> "NARVLConfig":
        """Build a NARVL config from an OFA one (every OFA field copied), overriding/adding `kwargs`."""
        values = ofa_config.to_dict()
        for key in ("model_type", "architectures", "transformers_version", "auto_map"):
            values.pop(key, None)
        values.update(kwargs)
        return cls(**values)
