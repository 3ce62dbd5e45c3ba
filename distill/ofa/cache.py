"""OFA's generation cache: per-beam self-attention keys/values, per-sample cross-attention keys/values.

All beams (or returned sequences) of one sample attend to the same encoder output, so the cross-attention half
holds one row per sample (B, H, S, hd) rather than one per beam (B * beams, H, S, hd), and beam search never
re-orders it: it only ever moves beams within their own sample. See `OFAAttention` for how (B * beams) queries
attend to (B) keys.
"""
import torch
from transformers.cache_utils import Cache, DynamicCache, EncoderDecoderCache


class OFACache(EncoderDecoderCache):
    """`EncoderDecoderCache` whose cross-attention half is per sample; it also keeps what the decoder derives from
    the encoder output alone: the projected cross-attention position keys (B, H, S, hd) and the padding mask
    (B, 1, 1, S) (valid once the keys are set), as constant during generation as the encoder output."""

    def __init__(self, self_attention_cache: Cache | None = None, cross_attention_cache: Cache | None = None):
        super().__init__(self_attention_cache if self_attention_cache is not None else DynamicCache(),
                         cross_attention_cache if cross_attention_cache is not None else DynamicCache())
        self.cross_position_keys: torch.Tensor | None = None
        self.cross_attention_mask: torch.Tensor | None = None

    @classmethod
    def wrap(cls, cache: EncoderDecoderCache) -> "OFACache":
        """The same self/cross caches (and their contents) as an OFACache."""
        if isinstance(cache, cls):
            return cache
        wrapped = cls(cache.self_attention_cache, cache.cross_attention_cache)
        wrapped.is_updated = dict(cache.is_updated)
        return wrapped

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        """Beam search's re-ordering: `beam_idx` (B * beams) only permutes beams within a sample, so the per-sample
        cross-attention half stays as it is."""
        self.self_attention_cache.reorder_cache(beam_idx)

    def reset(self) -> None:
        super().reset()
        self.cross_position_keys = self.cross_attention_mask = None
