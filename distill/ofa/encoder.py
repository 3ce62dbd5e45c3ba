"""OFA encoder: ResNet image patches + text tokens -> contextual states, with position biases for the decoder."""
from dataclasses import dataclass

import torch
from torch import nn
from transformers.utils import ModelOutput

from .configuration_ofa import RESNET_DEPTHS, OFAConfig
from .drop_path import linear_rates
from .layers import OFAEncoderLayer
from .positions import image_bucket_position, image_position_ids, token_bucket_position
from .resnet import RESNET_OUT_CHANNELS, ResNet


@dataclass
class OFAEncoderOutput(ModelOutput):
    """Encoder output. Every tensor has the batch first, so generate() expands them all for beams.

    last_hidden_state: (B, S, D) after the final layer norm, S = image patches + text tokens.
    padding_mask: (B, S) bool, True at text `<pad>` (patches are never masked).
    position_embedding: (B, S, D) layer-normed absolute position embeddings (the cross-attention position keys).
    hidden_states: optional tuple of (B, S, D): the input of each layer, then the last output before the final norm.
    """

    last_hidden_state: torch.FloatTensor | None = None
    padding_mask: torch.BoolTensor | None = None
    position_embedding: torch.FloatTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None


def padding_bias(padding_mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor | None:
    """(B, S) bool -> additive (B, 1, 1, S) mask with finfo(dtype).min at padded keys, or None without padding."""
    # Skipping the mask is a data-dependent branch: an exported graph (torch.export / ONNX) always keeps it.
    if not torch.compiler.is_exporting() and not padding_mask.any():
        return None
    return torch.zeros(padding_mask.shape, dtype=dtype, device=padding_mask.device).masked_fill(
        padding_mask, torch.finfo(dtype).min)[:, None, None, :]


class OFAEncoder(nn.Module):
    """Encodes (B, L) text ids and optional (B, 3, H, W) images into (B, (H/16)*(W/16) + L, D) states."""

    main_input_name = "input_ids"

    def __init__(self, config: OFAConfig, embed_tokens: nn.Embedding):
        super().__init__()
        d, heads = config.d_model, config.encoder_attention_heads
        self.config = config
        self.num_heads = heads
        self.padding_idx = config.pad_token_id
        self.embed_scale = d**0.5 if config.scale_embedding else 1.0
        self.pos_scaling = (d / heads * config.attn_scale_factor) ** -0.5
        self.dropout = nn.Dropout(config.dropout)
        self.layerdrop = config.encoder_layerdrop
        self.register_buffer("token_rp_bucket", token_bucket_position(config.token_bucket_size))
        self.register_buffer("image_rp_bucket", image_bucket_position(config.image_bucket_size))
        self.layernorm_embedding = nn.LayerNorm(d) if config.layernorm_embedding else None
        self.embed_tokens = embed_tokens
        self.type_embedding = nn.Embedding(2, d) if config.add_type_embedding else None
        self.embed_images = ResNet(RESNET_DEPTHS[config.resnet_type], config.resnet_drop_path_rate)
        self.image_proj = nn.Linear(RESNET_OUT_CHANNELS, d)
        self.patch_layernorm_embedding = nn.LayerNorm(d) if config.patch_layernorm_embedding else None
        self.embed_positions = nn.Embedding(config.max_position_embeddings + 2, d)
        self.embed_image_positions = nn.Embedding(config.image_bucket_size**2 + 1, d)
        self.pos_ln = nn.LayerNorm(d)
        self.image_pos_ln = nn.LayerNorm(d)
        self.pos_q_linear = nn.Linear(d, d)
        self.pos_k_linear = nn.Linear(d, d)
        rates = linear_rates(config.encoder_drop_path_rate, config.encoder_layers)
        self.layers = nn.ModuleList([OFAEncoderLayer(config, rate) for rate in rates])
        self.layer_norm = nn.LayerNorm(d) if config.encoder_normalize_before else None
        num_token_rel = 2 * config.token_bucket_size - 1
        num_image_rel = (2 * config.image_bucket_size - 1) ** 2 + 3
        self.token_rel_pos_table_list = nn.ModuleList(
            [nn.Embedding(num_token_rel, heads) for _ in range(config.encoder_layers)])
        self.image_rel_pos_table_list = nn.ModuleList(
            [nn.Embedding(num_image_rel, heads) for _ in range(config.encoder_layers)])

    def _embed_text(self, input_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, L) ids -> token vectors (B, L, D) and raw position embeddings (1, L, D)."""
        positions = self.embed_positions(torch.arange(input_ids.shape[1], device=input_ids.device))[None]
        x = self.embed_scale * self.embed_tokens(input_ids)
        if self.config.entangle_position_embedding:
            x = x + positions
        if self.type_embedding is not None:
            x = x + self.type_embedding(torch.zeros_like(input_ids))
        if self.layernorm_embedding is not None:
            x = self.layernorm_embedding(x)
        return self.dropout(x), positions

    def _embed_images(self, patch_images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(B, 3, H, W) -> patch vectors (B, P, D), raw position embeddings (1, P, D), position ids (P,)."""
        features = self.embed_images(patch_images)  # (B, 1024, h, w)
        height, width = features.shape[-2:]
        if height > self.config.image_bucket_size or width > self.config.image_bucket_size:
            raise ValueError(f"image grid {height}x{width} exceeds image_bucket_size {self.config.image_bucket_size}")
        ids = image_position_ids(height, width, self.config.image_bucket_size, device=patch_images.device)
        positions = self.embed_image_positions(ids)[None]
        x = self.embed_scale * self.image_proj(features.flatten(2).transpose(1, 2))
        if self.config.entangle_position_embedding:
            x = x + positions
        if self.type_embedding is not None:
            x = x + self.type_embedding(torch.ones(x.shape[:2], dtype=torch.long, device=x.device))
        if self.patch_layernorm_embedding is not None:
            x = self.patch_layernorm_embedding(x)
        return self.dropout(x), positions, ids

    def forward(
        self,
        input_ids: torch.LongTensor,
        patch_images: torch.FloatTensor | None = None,
        patch_masks: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        output_attentions: bool = False,
        output_hidden_states: bool = False,
        return_dict: bool = True,
    ) -> OFAEncoderOutput:
        """input_ids (B, L), right-padded with `<pad>`; patch_images (B, 3, H, W) normalised to [-1, 1].

        `patch_masks` and `attention_mask` are accepted and ignored, as in OFA: only text `<pad>` is masked.
        """
        if output_attentions:
            raise ValueError("OFAEncoder does not return attention weights")
        batch, text_len = input_ids.shape
        x, positions = self._embed_text(input_ids)
        padding_mask = input_ids.eq(self.padding_idx)
        position_embedding = self.pos_ln(positions).expand(batch, -1, -1)
        num_patches = 0
        if patch_images is not None:
            image_x, image_positions, image_ids = self._embed_images(patch_images)
            num_patches = image_x.shape[1]
            x = torch.cat([image_x, x], dim=1)
            padding_mask = torch.cat([padding_mask.new_zeros(batch, num_patches), padding_mask], dim=1)
            image_position_embedding = self.image_pos_ln(image_positions).expand(batch, -1, -1)
            position_embedding = torch.cat([image_position_embedding, position_embedding], dim=1)
        x = x * (1 - padding_mask.unsqueeze(-1).type_as(x))  # padded vectors are zeroed, as in OFA
        seq_len = x.shape[1]
        pos_q = self.pos_q_linear(position_embedding).view(batch, seq_len, self.num_heads, -1).transpose(1, 2)
        pos_k = self.pos_k_linear(position_embedding).view(batch, seq_len, self.num_heads, -1).transpose(1, 2)
        abs_pos_bias = torch.matmul(pos_q * self.pos_scaling, pos_k.transpose(2, 3))  # (B, H, S, S)
        mask = padding_bias(padding_mask, x.dtype)
        text_buckets = self.token_rp_bucket[:text_len, :text_len]
        if num_patches:
            image_buckets = self.image_rp_bucket[image_ids][:, image_ids]
        hidden_states = []
        for idx, layer in enumerate(self.layers):
            if output_hidden_states:
                hidden_states.append(x)
            if self.training and self.layerdrop > 0 and torch.rand(()) < self.layerdrop:
                continue
            bias = abs_pos_bias.clone()
            # Relative biases only within text and within the image; image x text blocks get none.
            bias[:, :, num_patches:, num_patches:] += self.token_rel_pos_table_list[idx](text_buckets).permute(2, 0, 1)
            if num_patches:
                bias[:, :, :num_patches, :num_patches] += self.image_rel_pos_table_list[idx](image_buckets).permute(
                    2, 0, 1)
            x = layer(x, attention_mask=mask, position_bias=bias)
        if output_hidden_states:
            hidden_states.append(x)
        if self.layer_norm is not None:
            x = self.layer_norm(x)
        return OFAEncoderOutput(
            last_hidden_state=x,
            padding_mask=padding_mask,
            position_embedding=position_embedding,
            hidden_states=tuple(hidden_states) if output_hidden_states else None,
        )
