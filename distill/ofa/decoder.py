"""OFA decoder: token (or query) embeddings -> states, attending causally to itself and to the encoder."""
from dataclasses import dataclass

import torch
from torch import nn
from transformers.cache_utils import Cache
from transformers.utils import ModelOutput

from .cache import OFACache
from .configuration_ofa import OFAConfig
from .encoder import padding_bias
from .drop_path import linear_rates
from .layers import OFADecoderLayer
from .positions import code_position_ids, image_bucket_position, token_bucket_position


@dataclass
class OFADecoderOutput(ModelOutput):
    """Decoder output.

    last_hidden_state: (B, T, D) after the decoder's final layer norm, not projected to the vocabulary.
    cache: the updated cache (an `OFACache` unless one was given) when `use_cache` (named as transformers >= 5.24
        names it).
    hidden_states: optional tuple of (B, T, D): the input of each layer, then the last output before the final norm.
    """

    last_hidden_state: torch.FloatTensor | None = None
    cache: Cache | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None


class OFADecoder(nn.Module):
    """OFA decoder with absolute-position and relative-position attention biases and a tied output projection."""

    def __init__(self, config: OFAConfig, embed_tokens: nn.Embedding):
        super().__init__()
        d, heads = config.d_model, config.decoder_attention_heads
        self.config = config
        self.num_heads = heads
        self.embed_scale = d**0.5 if config.scale_embedding else 1.0
        self.pos_scaling = (d / heads * config.attn_scale_factor) ** -0.5
        self.dropout = nn.Dropout(config.dropout)
        self.layerdrop = config.decoder_layerdrop
        self.register_buffer("token_rp_bucket", token_bucket_position(config.token_bucket_size))
        self.register_buffer("image_rp_bucket", image_bucket_position(config.image_bucket_size))
        self.register_buffer("image_position_idx", code_position_ids(config.code_image_size, config.image_bucket_size))
        self.embed_tokens = embed_tokens
        rates = linear_rates(config.decoder_drop_path_rate, config.decoder_layers)
        self.layers = nn.ModuleList([OFADecoderLayer(config, i, rate) for i, rate in enumerate(rates)])
        self.layernorm_embedding = nn.LayerNorm(d) if config.layernorm_embedding else None
        self.embed_positions = nn.Embedding(config.max_position_embeddings + 2, d)
        # Image positions, image relative table and code layer norm serve image-code generation (OFA pre-training);
        # they are part of every checkpoint but unused when generating text.
        self.embed_image_positions = nn.Embedding(config.image_bucket_size**2 + 1, d)
        self.pos_ln = nn.LayerNorm(d)
        self.image_pos_ln = nn.LayerNorm(d)
        self.self_pos_q_linear = nn.Linear(d, d)
        self.self_pos_k_linear = nn.Linear(d, d)
        self.cross_pos_q_linear = nn.Linear(d, d)
        self.cross_pos_k_linear = nn.Linear(d, d)
        self.code_layernorm_embedding = nn.LayerNorm(d) if config.code_layernorm_embedding else None
        self.layer_norm = nn.LayerNorm(d) if config.decoder_normalize_before else None
        self.output_projection = nn.Linear(d, config.vocab_size, bias=False)
        self.output_projection.weight = embed_tokens.weight
        num_token_rel = 2 * config.token_bucket_size - 1
        num_image_rel = (2 * config.image_bucket_size - 1) ** 2 + 3
        self.token_rel_pos_table_list = nn.ModuleList(
            [nn.Embedding(num_token_rel, heads) for _ in range(config.decoder_layers)])
        self.image_rel_pos_table_list = nn.ModuleList(
            [nn.Embedding(num_image_rel, heads) for _ in range(config.decoder_layers)])

    def _split_heads(self, x: torch.Tensor) -> torch.Tensor:
        """(..., T, D) -> (..., H, T, head_dim)."""
        return x.view(*x.shape[:-1], self.num_heads, -1).transpose(-3, -2)

    def _cross_constants(self, encoder_position_embedding: torch.Tensor, encoder_padding_mask: torch.Tensor | None,
                         dtype: torch.dtype, cache: Cache | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """What cross-attention derives from the encoder output alone: the projected position keys (B, H, S, hd)
        and the additive padding mask (B, 1, 1, S) or None. B is the encoder's batch (one row per sample, shared by
        its beams). Both are constant during generation: an `OFACache` keeps them from the first step on."""
        if isinstance(cache, OFACache) and cache.cross_position_keys is not None:
            return cache.cross_position_keys, cache.cross_attention_mask
        keys = self._split_heads(self.cross_pos_k_linear(encoder_position_embedding))
        mask = padding_bias(encoder_padding_mask, dtype) if encoder_padding_mask is not None else None
        if isinstance(cache, OFACache):
            cache.cross_position_keys, cache.cross_attention_mask = keys, mask
        return keys, mask

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        encoder_hidden_states: torch.FloatTensor | None = None,
        encoder_padding_mask: torch.BoolTensor | None = None,
        encoder_position_embedding: torch.FloatTensor | None = None,
        past_key_values: Cache | None = None,
        use_cache: bool = False,
        causal: bool = True,
        output_hidden_states: bool = False,
    ) -> OFADecoderOutput:
        """input_ids (B, T) or inputs_embeds (B, T, D) (used as given: they take the token-embedding path from
        `layernorm_embedding` on); encoder_hidden_states (B, S, D), encoder_padding_mask (B, S) True = pad,
        encoder_position_embedding (B, S, D) from the encoder output. Positions are past_len .. past_len + T - 1.
        The encoder tensors may also have B / g rows (one per sample, g consecutive decoder rows per sample, as
        generate() orders beams): cross-attention then shares them without copying (see `OFAAttention`).
        `causal=False` drops the causal mask (NARVL's parallel queries)."""
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids and inputs_embeds")
        x = self.embed_scale * self.embed_tokens(input_ids) if inputs_embeds is None else inputs_embeds
        batch, tgt_len = x.shape[:2]
        if use_cache and past_key_values is None:
            past_key_values = OFACache()
        # past_len: an int, or a 0-dim tensor for a static cache (whose keys are its whole length, masked beyond
        # the last written position): tensor positions keep a compiled step free of data-dependent shapes.
        past_len = past_key_values.get_seq_length() if past_key_values is not None else 0
        static = past_key_values is not None and past_key_values.is_compileable
        key_len = past_key_values.get_max_length() if static else past_len + tgt_len
        query_pos = torch.arange(tgt_len, device=x.device) + past_len  # (T,)
        key_pos = torch.arange(key_len, device=x.device)  # (K,)
        positions = self.embed_positions(key_pos)  # (K, D)
        new_positions = positions[past_len:] if not static else self.embed_positions(query_pos)  # (T, D)
        if self.config.entangle_position_embedding:
            x = x + new_positions
        if self.layernorm_embedding is not None:
            x = self.layernorm_embedding(x)
        x = self.dropout(x)

        normed = self.pos_ln(positions)
        new_normed = normed[past_len:] if not static else self.pos_ln(new_positions)
        self_q = self._split_heads(self.self_pos_q_linear(new_normed)) * self.pos_scaling  # (H, T, hd)
        self_k = self._split_heads(self.self_pos_k_linear(normed))  # (H, K, hd)
        self_abs_bias = torch.matmul(self_q, self_k.transpose(1, 2))  # (H, T, K)
        cross_bias = cross_mask = None
        if encoder_hidden_states is not None:
            cross_q = self._split_heads(self.cross_pos_q_linear(new_normed)) * self.pos_scaling  # (H, T, hd)
            cross_keys, cross_mask = self._cross_constants(encoder_position_embedding, encoder_padding_mask, x.dtype,
                                                           past_key_values)
            cross_bias = torch.matmul(cross_q, cross_keys.transpose(-1, -2))  # (B, H, T, S)
        self_mask = None
        if (causal and tgt_len > 1) or static:
            self_mask = torch.zeros(tgt_len, key_len, dtype=x.dtype, device=x.device).masked_fill(
                key_pos[None, :] > query_pos[:, None], torch.finfo(x.dtype).min)[None, None]
        buckets = self.token_rp_bucket[past_len:past_len + tgt_len, :key_len] if not static else (
            self.token_rp_bucket[query_pos, :key_len])
        hidden_states = []
        for idx, layer in enumerate(self.layers):
            if output_hidden_states:
                hidden_states.append(x)
            if self.training and self.layerdrop > 0 and torch.rand(()) < self.layerdrop:
                continue
            self_bias = (self_abs_bias + self.token_rel_pos_table_list[idx](buckets).permute(2, 0, 1))[None]
            x = layer(x, attention_mask=self_mask, position_bias=self_bias,
                      encoder_hidden_states=encoder_hidden_states, encoder_attention_mask=cross_mask,
                      encoder_position_bias=cross_bias, past_key_values=past_key_values)
        if output_hidden_states:
            hidden_states.append(x)
        if self.layer_norm is not None:
            x = self.layer_norm(x)
        return OFADecoderOutput(
            last_hidden_state=x,
            cache=past_key_values if use_cache else None,
            hidden_states=tuple(hidden_states) if output_hidden_states else None,
        )
