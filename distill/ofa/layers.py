"""OFA transformer building blocks: biased multi-head attention with per-head gains, NormFormer pre-LN layers."""
import torch
from torch import nn
from transformers.activations import ACT2FN
from transformers.cache_utils import Cache, EncoderDecoderCache

from .configuration_ofa import OFAConfig
from .drop_path import DropPath

# OFA scales queries by (head_dim * 2) ** -0.5 in every attention, independently of `attn_scale_factor`.
ATTENTION_SCALE_FACTOR = 2.0


class OFAAttention(nn.Module):
    """Multi-head attention with an additive per-head bias (position biases) and NormFormer head gains `c_attn`."""

    def __init__(self, embed_dim: int, num_heads: int, dropout: float, scale_heads: bool, layer_idx: int | None = None,
                 config: OFAConfig | None = None):
        super().__init__()
        self.config = config  # read at call time: `_attn_implementation` "sdpa" selects `_sdpa`
        if embed_dim % num_heads:
            raise ValueError(f"d_model {embed_dim} is not divisible by the number of heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = embed_dim // num_heads
        self.scaling = (self.head_dim * ATTENTION_SCALE_FACTOR) ** -0.5
        self.dropout = dropout
        self.layer_idx = layer_idx
        self.c_attn = nn.Parameter(torch.ones(num_heads)) if scale_heads else None
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
        attn_bias: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        past_key_values: Cache | None = None,
    ) -> torch.Tensor:
        """hidden_states (B, T, D); key_value_states (B_kv, S, D) for cross-attention; attn_bias (B_kv, H, T, S);
        attention_mask additive, broadcastable to (B_kv, 1, T, S). Returns (B, T, D).

        For cross-attention B may be a multiple g of B_kv: rows [i * g, (i + 1) * g) (the beams or returned
        sequences of sample i, as generate() orders them) all attend to sample i, whose keys/values are projected
        and cached once instead of once per beam."""
        batch, tgt_len, embed_dim = hidden_states.shape
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
        if self.config is not None and self.config._attn_implementation == "sdpa":
            return self._sdpa(query, key, value, attn_bias, attention_mask, group)
        if group > 1:
            return self._grouped(query, key, value, attn_bias, attention_mask, group)
        weights = torch.matmul(query, key.transpose(2, 3))
        if attn_bias is not None:
            weights = weights + attn_bias
        if attention_mask is not None:
            weights = weights + attention_mask
        weights = nn.functional.dropout(weights.softmax(dim=-1), p=self.dropout, training=self.training)
        output = torch.matmul(weights, value)  # (B, H, T, head_dim)
        if self.c_attn is not None:
            output = output * self.c_attn[None, :, None, None]
        output = output.transpose(1, 2).reshape(batch, tgt_len, embed_dim)
        return self.out_proj(output)

    def _grouped(self, query, key, value, attn_bias, attention_mask, group: int) -> torch.Tensor:
        """Attention of g query rows per key/value row: query (B_kv * g, H, T, hd), key/value (B_kv, H, S, hd).

        The g rows' queries are stacked along T, (B_kv, H, g * T, hd), so one product per sample serves them all:
        no (B_kv * g, H, S, hd) copy of the keys/values is made or re-ordered at any step."""
        rows, heads, tgt_len, head_dim = query.shape
        samples = key.shape[0]
        query = query.view(samples, group, heads, tgt_len, head_dim).transpose(1, 2)  # (B_kv, H, g, T, hd)
        weights = torch.matmul(query.reshape(samples, heads, group * tgt_len, head_dim), key.transpose(2, 3))
        weights = weights.view(samples, heads, group, tgt_len, -1)
        if attn_bias is not None:
            weights = weights + attn_bias[:, :, None]
        if attention_mask is not None:
            weights = weights + attention_mask[:, :, None]
        weights = nn.functional.dropout(weights.softmax(dim=-1), p=self.dropout, training=self.training)
        output = torch.matmul(weights.view(samples, heads, group * tgt_len, -1), value)  # (B_kv, H, g * T, hd)
        if self.c_attn is not None:
            output = output * self.c_attn[None, :, None, None]
        output = output.view(samples, heads, group, tgt_len, head_dim).permute(0, 2, 3, 1, 4)  # (B_kv, g, T, H, hd)
        return self.out_proj(output.reshape(rows, tgt_len, heads * head_dim))


    def _sdpa(self, query, key, value, attn_bias, attention_mask, group: int) -> torch.Tensor:
        """The same attention through `scaled_dot_product_attention` (fused kernels on GPU): query (B_kv * g, H, T,
        hd) already scaled, key/value (B_kv, H, S, hd); bias and mask are summed into one additive mask (exact: the
        mask holds only 0 and finfo.min)."""
        rows, heads, tgt_len, head_dim = query.shape
        samples = key.shape[0]
        mask = attn_bias if attention_mask is None else (
            attention_mask if attn_bias is None else attn_bias + attention_mask)
        if group > 1:
            query = query.view(samples, group, heads, tgt_len, head_dim).transpose(1, 2).reshape(
                samples, heads, group * tgt_len, head_dim)
            if mask is not None:
                mask = mask[:, :, None].expand(samples, heads, group, tgt_len, mask.shape[-1]).reshape(
                    samples, heads, group * tgt_len, mask.shape[-1])
        if mask is not None:
            mask = mask.to(query.dtype)
        output = nn.functional.scaled_dot_product_attention(
            query, key, value, attn_mask=mask, dropout_p=self.dropout if self.training else 0.0, scale=1.0)
        if self.c_attn is not None:
            output = output * self.c_attn[None, :, None, None]
        output = output.view(samples, heads, group, tgt_len, head_dim).permute(0, 2, 3, 1, 4)  # (B_kv, g, T, H, hd)
        return self.out_proj(output.reshape(rows, tgt_len, heads * head_dim))


class _FeedForward(nn.Module):
    """Mixin holding the NormFormer FFN sub-block: x + drop_path(fc2(ffn_LN(act(fc1(LN(x))))))."""

    def _init_ffn(self, config: OFAConfig, ffn_dim: int):
        d = config.d_model
        self.dropout = config.dropout
        self.activation_dropout = config.activation_dropout
        self.activation_fn = ACT2FN[config.activation_function]
        self.fc1 = nn.Linear(d, ffn_dim)
        self.fc2 = nn.Linear(ffn_dim, d)
        self.ffn_layer_norm = nn.LayerNorm(ffn_dim) if config.normformer else None
        self.final_layer_norm = nn.LayerNorm(d)

    def _residual(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        x = nn.functional.dropout(x, p=self.dropout, training=self.training)
        return residual + self.drop_path(x)

    def _ffn(self, x: torch.Tensor) -> torch.Tensor:
        residual = x
        if self.normalize_before:
            x = self.final_layer_norm(x)
        x = self.activation_fn(self.fc1(x))
        x = nn.functional.dropout(x, p=self.activation_dropout, training=self.training)
        if self.ffn_layer_norm is not None:
            x = self.ffn_layer_norm(x)
        x = self._residual(self.fc2(x), residual)
        return x if self.normalize_before else self.final_layer_norm(x)

    def _attend(self, name: str, x: torch.Tensor, **kwargs) -> torch.Tensor:
        """Residual attention sub-block `name` ("self_attn" or "cross_attn") with its pre/mid/post layer norms."""
        residual = x
        norm = getattr(self, f"{name}_layer_norm")
        if self.normalize_before:
            x = norm(x)
        x = getattr(self, name)(x, **kwargs)
        mid_norm = getattr(self, f"{name}_mid_layer_norm")
        if mid_norm is not None:
            x = mid_norm(x)
        x = self._residual(x, residual)
        return x if self.normalize_before else norm(x)


class OFAEncoderLayer(_FeedForward):
    """Self-attention + FFN. hidden_states (B, S, D) -> (B, S, D)."""

    def __init__(self, config: OFAConfig, drop_path_rate: float = 0.0):
        super().__init__()
        d = config.d_model
        self.normalize_before = config.encoder_normalize_before
        self.self_attn = OFAAttention(d, config.encoder_attention_heads, config.attention_dropout, config.normformer,
                                      config=config)
        self.self_attn_layer_norm = nn.LayerNorm(d)
        self.self_attn_mid_layer_norm = nn.LayerNorm(d) if config.normformer else None
        self._init_ffn(config, config.encoder_ffn_dim)
        self.drop_path = DropPath(drop_path_rate)

    def forward(self, hidden_states, attention_mask=None, attn_bias=None):
        x = self._attend("self_attn", hidden_states, attn_bias=attn_bias, attention_mask=attention_mask)
        return self._ffn(x)


class OFADecoderLayer(_FeedForward):
    """Self-attention (causal or not) + cross-attention to the encoder + FFN. hidden_states (B, T, D) -> (B, T, D)."""

    def __init__(self, config: OFAConfig, layer_idx: int, drop_path_rate: float = 0.0):
        super().__init__()
        d, heads = config.d_model, config.decoder_attention_heads
        self.normalize_before = config.decoder_normalize_before
        self.self_attn = OFAAttention(d, heads, config.attention_dropout, config.normformer, layer_idx, config)
        self.self_attn_layer_norm = nn.LayerNorm(d)
        self.self_attn_mid_layer_norm = nn.LayerNorm(d) if config.normformer else None
        self.cross_attn = OFAAttention(d, heads, config.attention_dropout, config.normformer, layer_idx, config)
        self.cross_attn_layer_norm = nn.LayerNorm(d)
        self.cross_attn_mid_layer_norm = nn.LayerNorm(d) if config.normformer else None
        self._init_ffn(config, config.decoder_ffn_dim)
        self.drop_path = DropPath(drop_path_rate)

    def forward(self, hidden_states, attention_mask=None, self_attn_bias=None, encoder_hidden_states=None,
                encoder_attention_mask=None, cross_attn_bias=None, past_key_values=None):
        x = self._attend("self_attn", hidden_states, attn_bias=self_attn_bias, attention_mask=attention_mask,
                         past_key_values=past_key_values)
        if encoder_hidden_states is not None:
            x = self._attend("cross_attn", x, key_value_states=encoder_hidden_states, attn_bias=cross_attn_bias,
                             attention_mask=encoder_attention_mask, past_key_values=past_key_values)
        return self._ffn(x)
