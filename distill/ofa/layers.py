"""OFA's transformer layers, written as transformers writes its models.

Attention runs through one function per implementation, picked by `config._attn_implementation`: "eager" is
`eager_attention_forward` below, "sdpa" is transformers' own `sdpa_attention_forward` from
`ALL_ATTENTION_FUNCTIONS`. Both take the position biases as `position_bias`, added to the logits with the mask.
The layers are NormFormer pre-LN: `x + mid_LN(attn(LN(x)))` per attention and `x + fc2(ffn_LN(gelu(fc1(LN(x)))))`,
each residual branch through dropout and drop-path.
"""
from collections.abc import Callable

import torch
from torch import nn
from transformers.activations import ACT2FN
from transformers.cache_utils import Cache, EncoderDecoderCache
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from .configuration_ofa import OFAConfig
from .drop_path import DropPath

# OFA scales queries by (head_dim * 2) ** -0.5 in every attention, independently of `attn_scale_factor`.
ATTENTION_SCALE_FACTOR = 2.0


def eager_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    position_bias: torch.Tensor | None = None,
    **kwargs,
) -> tuple[torch.Tensor, torch.Tensor]:
    """softmax(query @ key^T * scaling + position_bias + attention_mask) @ value, as transformers' T5 computes it.

    query (B, H, T, hd), key/value (B, H, S, hd); position_bias and attention_mask additive, broadcastable to
    (B, H, T, S). Returns the output (B, T, H, hd) and the attention weights (B, H, T, S)."""
    weights = torch.matmul(query, key.transpose(2, 3))
    scaling = query.shape[-1] ** -0.5 if scaling is None else scaling
    if scaling != 1.0:
        weights = weights * scaling
    if position_bias is not None:
        weights = weights + position_bias
    if attention_mask is not None:
        weights = weights + attention_mask
    weights = nn.functional.dropout(nn.functional.softmax(weights, dim=-1), p=dropout, training=module.training)
    return torch.matmul(weights, value).transpose(1, 2).contiguous(), weights


class OFAAttention(nn.Module):
    """Multi-head attention with additive position biases and NormFormer per-head gains `c_attn`."""

    def __init__(self, config: OFAConfig, num_heads: int, layer_idx: int | None = None):
        super().__init__()
        embed_dim = config.d_model
        if embed_dim % num_heads:
            raise ValueError(f"d_model {embed_dim} is not divisible by the number of heads {num_heads}")
        self.config = config
        self.num_heads = num_heads
        self.head_dim = embed_dim // num_heads
        self.scaling = (self.head_dim * ATTENTION_SCALE_FACTOR) ** -0.5
        self.dropout = config.attention_dropout
        self.layer_idx = layer_idx
        self.is_causal = False  # every mask is passed explicitly (the decoder's causal one included)
        self.c_attn = nn.Parameter(torch.ones(num_heads)) if config.normformer else None
        self.k_proj = nn.Linear(embed_dim, embed_dim)
        self.v_proj = nn.Linear(embed_dim, embed_dim)
        self.q_proj = nn.Linear(embed_dim, embed_dim)
        self.out_proj = nn.Linear(embed_dim, embed_dim)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, D) -> (B, H, T, head_dim)."""
        return x.view(x.shape[0], x.shape[1], self.num_heads, self.head_dim).transpose(1, 2)

    def forward(
        self,
        hidden_states: torch.Tensor,
        key_value_states: torch.Tensor | None = None,
        position_bias: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        past_key_values: Cache | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """hidden_states (B, T, D); key_value_states (B_kv, S, D) for cross-attention; position_bias (B_kv, H, T, S);
        attention_mask additive, broadcastable to (B_kv, 1, T, S). Returns (B, T, D) and the weights (eager only).

        For cross-attention B may be a multiple g of B_kv: rows [i * g, (i + 1) * g) (the beams or returned
        sequences of sample i, as generate() orders them) all attend to sample i, whose keys/values are projected
        and cached once instead of once per beam."""
        batch, tgt_len, embed_dim = hidden_states.shape
        # OFA (fairseq) scales the queries before the product: the attention function gets scaling 1.
        query = self._heads(self.q_proj(hidden_states) * self.scaling)
        is_cross = key_value_states is not None
        cache = past_key_values
        if isinstance(cache, EncoderDecoderCache):
            cache = past_key_values.cross_attention_cache if is_cross else past_key_values.self_attention_cache
        if is_cross and cache is not None and past_key_values.is_updated.get(self.layer_idx):
            # The encoder output does not change during generation: reuse its projected keys/values.
            key, value = cache.layers[self.layer_idx].keys, cache.layers[self.layer_idx].values
        else:
            source = key_value_states if is_cross else hidden_states
            key, value = self._heads(self.k_proj(source)), self._heads(self.v_proj(source))
            if cache is not None:
                key, value = cache.update(key, value, self.layer_idx)
                if is_cross:
                    past_key_values.is_updated[self.layer_idx] = True
        group = batch // key.shape[0]
        if group > 1:
            query, position_bias = self._stack_groups(query, position_bias, group)

        attention_interface: Callable = ALL_ATTENTION_FUNCTIONS.get_interface(
            self.config._attn_implementation, eager_attention_forward)
        output, weights = attention_interface(
            self, query, key, value, attention_mask,
            dropout=self.dropout if self.training else 0.0, scaling=1.0, position_bias=position_bias)
        # output (B_kv, g * T, H, hd): sample-major, then group row, then position, so it is (B, T, H, hd) in order.
        if self.c_attn is not None:
            output = output * self.c_attn[:, None]
        return self.out_proj(output.reshape(batch, tgt_len, embed_dim)), weights

    @staticmethod
    def _stack_groups(query: torch.Tensor, position_bias: torch.Tensor | None,
                      group: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """g query rows per key/value row: query (B_kv * g, H, T, hd) -> (B_kv, H, g * T, hd), the g rows' queries
        stacked along T, so one product per sample serves them all: no (B_kv * g, H, S, hd) copy of the keys and
        values is made or re-ordered at any step. position_bias (B_kv, H, T, S) -> (B_kv, H, g * T, S)."""
        rows, heads, tgt_len, head_dim = query.shape
        samples = rows // group
        query = query.view(samples, group, heads, tgt_len, head_dim).transpose(1, 2).reshape(
            samples, heads, group * tgt_len, head_dim)
        if position_bias is not None:
            position_bias = position_bias[:, :, None].expand(samples, heads, group, tgt_len, -1).reshape(
                samples, heads, group * tgt_len, -1)
        return query, position_bias


class OFAEncoderLayer(nn.Module):
    """Self-attention, then feed-forward. hidden_states (B, S, D) -> (B, S, D)."""

    def __init__(self, config: OFAConfig, drop_path_rate: float = 0.0):
        super().__init__()
        d = config.d_model
        self.normalize_before = config.encoder_normalize_before
        self.self_attn = OFAAttention(config, config.encoder_attention_heads)
        self.self_attn_layer_norm = nn.LayerNorm(d)
        self.self_attn_mid_layer_norm = nn.LayerNorm(d) if config.normformer else None
        self.dropout = config.dropout
        self.activation_dropout = config.activation_dropout
        self.activation_fn = ACT2FN[config.activation_function]
        self.fc1 = nn.Linear(d, config.encoder_ffn_dim)
        self.fc2 = nn.Linear(config.encoder_ffn_dim, d)
        self.ffn_layer_norm = nn.LayerNorm(config.encoder_ffn_dim) if config.normformer else None
        self.final_layer_norm = nn.LayerNorm(d)
        self.drop_path = DropPath(drop_path_rate)

    def forward(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None,
                position_bias: torch.Tensor | None = None) -> torch.Tensor:
        """hidden_states (B, S, D); attention_mask (B, 1, 1, S) additive (text padding); position_bias (B, H, S, S)."""
        # Self-attention
        residual = hidden_states
        if self.normalize_before:
            hidden_states = self.self_attn_layer_norm(hidden_states)
        hidden_states, _ = self.self_attn(hidden_states, position_bias=position_bias, attention_mask=attention_mask)
        if self.self_attn_mid_layer_norm is not None:
            hidden_states = self.self_attn_mid_layer_norm(hidden_states)
        hidden_states = nn.functional.dropout(hidden_states, p=self.dropout, training=self.training)
        hidden_states = residual + self.drop_path(hidden_states)
        if not self.normalize_before:
            hidden_states = self.self_attn_layer_norm(hidden_states)

        # Feed-forward
        residual = hidden_states
        if self.normalize_before:
            hidden_states = self.final_layer_norm(hidden_states)
        hidden_states = self.activation_fn(self.fc1(hidden_states))
        hidden_states = nn.functional.dropout(hidden_states, p=self.activation_dropout, training=self.training)
        if self.ffn_layer_norm is not None:
            hidden_states = self.ffn_layer_norm(hidden_states)
        hidden_states = nn.functional.dropout(self.fc2(hidden_states), p=self.dropout, training=self.training)
        hidden_states = residual + self.drop_path(hidden_states)
        if not self.normalize_before:
            hidden_states = self.final_layer_norm(hidden_states)
        return hidden_states


class OFADecoderLayer(nn.Module):
    """Self-attention (causal or not), then cross-attention to the encoder, then feed-forward.
    hidden_states (B, T, D) -> (B, T, D)."""

    def __init__(self, config: OFAConfig, layer_idx: int, drop_path_rate: float = 0.0):
        super().__init__()
        d, heads = config.d_model, config.decoder_attention_heads
        self.normalize_before = config.decoder_normalize_before
        self.self_attn = OFAAttention(config, heads, layer_idx)
        self.self_attn_layer_norm = nn.LayerNorm(d)
        self.self_attn_mid_layer_norm = nn.LayerNorm(d) if config.normformer else None
        self.cross_attn = OFAAttention(config, heads, layer_idx)
        self.cross_attn_layer_norm = nn.LayerNorm(d)
        self.cross_attn_mid_layer_norm = nn.LayerNorm(d) if config.normformer else None
        self.dropout = config.dropout
        self.activation_dropout = config.activation_dropout
        self.activation_fn = ACT2FN[config.activation_function]
        self.fc1 = nn.Linear(d, config.decoder_ffn_dim)
        self.fc2 = nn.Linear(config.decoder_ffn_dim, d)
        self.ffn_layer_norm = nn.LayerNorm(config.decoder_ffn_dim) if config.normformer else None
        self.final_layer_norm = nn.LayerNorm(d)
        self.drop_path = DropPath(drop_path_rate)

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_bias: torch.Tensor | None = None,
        encoder_hidden_states: torch.Tensor | None = None,
        encoder_attention_mask: torch.Tensor | None = None,
        encoder_position_bias: torch.Tensor | None = None,
        past_key_values: Cache | None = None,
    ) -> torch.Tensor:
        """hidden_states (B, T, D); attention_mask (1, 1, T, K) additive causal mask or None (NARVL's queries);
        position_bias (1, H, T, K); encoder_hidden_states (B_kv, S, D) with B = g * B_kv (see `OFAAttention`);
        encoder_attention_mask (B_kv, 1, 1, S) additive or None; encoder_position_bias (B_kv, H, T, S)."""
        # Self-attention
        residual = hidden_states
        if self.normalize_before:
            hidden_states = self.self_attn_layer_norm(hidden_states)
        hidden_states, _ = self.self_attn(hidden_states, position_bias=position_bias, attention_mask=attention_mask,
                                          past_key_values=past_key_values)
        if self.self_attn_mid_layer_norm is not None:
            hidden_states = self.self_attn_mid_layer_norm(hidden_states)
        hidden_states = nn.functional.dropout(hidden_states, p=self.dropout, training=self.training)
        hidden_states = residual + self.drop_path(hidden_states)
        if not self.normalize_before:
            hidden_states = self.self_attn_layer_norm(hidden_states)

        # Cross-attention
        if encoder_hidden_states is not None:
            residual = hidden_states
            if self.normalize_before:
                hidden_states = self.cross_attn_layer_norm(hidden_states)
            hidden_states, _ = self.cross_attn(hidden_states, key_value_states=encoder_hidden_states,
                                               position_bias=encoder_position_bias,
                                               attention_mask=encoder_attention_mask, past_key_values=past_key_values)
            if self.cross_attn_mid_layer_norm is not None:
                hidden_states = self.cross_attn_mid_layer_norm(hidden_states)
            hidden_states = nn.functional.dropout(hidden_states, p=self.dropout, training=self.training)
            hidden_states = residual + self.drop_path(hidden_states)
            if not self.normalize_before:
                hidden_states = self.cross_attn_layer_norm(hidden_states)

        # Feed-forward
        residual = hidden_states
        if self.normalize_before:
            hidden_states = self.final_layer_norm(hidden_states)
        hidden_states = self.activation_fn(self.fc1(hidden_states))
        hidden_states = nn.functional.dropout(hidden_states, p=self.activation_dropout, training=self.training)
        if self.ffn_layer_norm is not None:
            hidden_states = self.ffn_layer_norm(hidden_states)
        hidden_states = nn.functional.dropout(self.fc2(hidden_states), p=self.dropout, training=self.training)
        hidden_states = residual + self.drop_path(hidden_states)
        if not self.normalize_before:
            hidden_states = self.final_layer_norm(hidden_states)
        return hidden_states
