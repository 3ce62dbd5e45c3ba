"""OFA configuration. Field names are those of the OFA-Sys hub `config.json`; defaults are OFA-base."""
from huggingface_hub.dataclasses import strict
from transformers.configuration_utils import PreTrainedConfig

# Bottleneck blocks per ResNet stage for OFA's `resnet_type`; every variant stops after layer3.
RESNET_DEPTHS = {
    "resnet18": (2, 2, 2),
    "resnet50": (3, 4, 6),
    "resnet101": (3, 4, 23),
    "resnet152": (3, 8, 36),
}


@strict
class OFAConfig(PreTrainedConfig):
    """Configuration of an OFA encoder-decoder (OFA-Sys transformers port layout)."""

    model_type = "ofa"
    keys_to_ignore_at_inference = ["past_key_values"]
    attribute_map = {
        "num_attention_heads": "encoder_attention_heads",
        "hidden_size": "d_model",
        "num_hidden_layers": "encoder_layers",
    }

    vocab_size: int = 59457
    """Size of the shared token embedding: BART BPE + `<mask>` + 8192 image codes + 1000 location bins."""
    max_position_embeddings: int = 1024
    """Longest text sequence; the absolute position tables have max_position_embeddings + 2 rows."""
    encoder_layers: int = 6
    """Number of encoder layers."""
    encoder_ffn_dim: int = 3072
    """Feed-forward width of the encoder layers."""
    encoder_attention_heads: int = 12
    """Attention heads of the encoder."""
    decoder_layers: int = 6
    """Number of decoder layers."""
    decoder_ffn_dim: int = 3072
    """Feed-forward width of the decoder layers."""
    decoder_attention_heads: int = 12
    """Attention heads of the decoder."""
    encoder_layerdrop: float = 0.0
    """Probability of skipping a whole encoder layer in training (LayerDrop)."""
    decoder_layerdrop: float = 0.0
    """Probability of skipping a whole decoder layer in training (LayerDrop)."""
    activation_function: str = "gelu"
    """FFN activation (OFA: exact erf GELU)."""
    d_model: int = 768
    """Model width."""
    dropout: float = 0.1
    """Dropout on embeddings and residual branches (training only)."""
    attention_dropout: float = 0.0
    """Dropout on attention probabilities (training only)."""
    activation_dropout: float = 0.0
    """Dropout after the FFN activation (training only)."""
    init_std: float = 0.02
    """Std of the normal initialisation of linear and embedding weights."""
    classifier_dropout: float = 0.0
    """Unused by OFAModel; kept for config compatibility with OFA-Sys."""
    scale_embedding: bool = False
    """Scale token embeddings by sqrt(d_model) (OFA checkpoints: False, i.e. scale 1)."""
    use_cache: bool = False
    """Default of `use_cache` in forward when not given (OFA-Sys configs say False; generate() overrides it)."""
    pad_token_id: int | None = 1
    """`<pad>`: the only text token masked in the encoder."""
    bos_token_id: int | None = 0
    """`<s>`."""
    eos_token_id: int | list[int] | None = 2
    """`</s>`."""
    decoder_start_token_id: int | None = 0
    """The decoder starts from `<s>` (0), unlike BART's `</s>`."""
    forced_eos_token_id: int | list[int] | None = 2
    """Token forced at the last allowed generation step (OFA-Sys default 2); pass None to generate() to disable."""
    is_encoder_decoder: bool = True
    """Always True."""
    tie_word_embeddings: bool = True
    """The token embedding is shared by encoder input, decoder input and the bias-free output projection."""
    encoder_normalize_before: bool = True
    """Pre-LN encoder layers."""
    decoder_normalize_before: bool = True
    """Pre-LN decoder layers."""
    normformer: bool = True
    """NormFormer extras: mid attention layer norms, FFN layer norm and per-head gains `c_attn`."""
    layernorm_embedding: bool = True
    """Layer norm on the token embeddings of encoder and decoder."""
    patch_layernorm_embedding: bool = True
    """Layer norm on the projected image patches."""
    code_layernorm_embedding: bool = True
    """Decoder layer norm for image-code tokens (present in checkpoints; unused for text generation)."""
    add_type_embedding: bool = True
    """Add type embedding 0 to text and 1 to image patches in the encoder."""
    entangle_position_embedding: bool = False
    """Also add the absolute position embedding to the token vectors (OFA checkpoints: False)."""
    share_decoder_input_output_embed: bool = True
    """OFA-Sys field; the projection is always tied here."""
    attn_scale_factor: float = 2.0
    """Scale factor of the absolute-position bias: (head_dim * attn_scale_factor) ** -0.5."""
    resnet_type: str = "resnet101"
    """Image stem depth (Bottleneck blocks per stage): resnet18 [2,2,2], resnet50 [3,4,6], resnet101 [3,4,23],
    resnet152 [3,8,36]."""
    resnet_model_path: str | None = None
    """OFA-Sys field (path to ImageNet ResNet weights for pre-training); ignored."""
    resnet_drop_path_rate: float = 0.0
    """Max drop-path rate of the ResNet blocks (linearly increasing over blocks)."""
    encoder_drop_path_rate: float = 0.0
    """Max drop-path rate of the encoder layers (linearly increasing over layers)."""
    decoder_drop_path_rate: float = 0.0
    """Max drop-path rate of the decoder layers (linearly increasing over layers)."""
    token_bucket_size: int = 256
    """Text relative-position buckets: offsets up to token_bucket_size // 2 are exact, larger ones log-spaced."""
    image_bucket_size: int = 42
    """Side of the image position grid (position tables and 2-D relative-position table)."""
    code_image_size: int = 128
    """Image-code grid size (only sets the length of the decoder's `image_position_idx` buffer)."""

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        if self.resnet_type not in RESNET_DEPTHS:
            raise ValueError(f"resnet_type must be one of {sorted(RESNET_DEPTHS)}, got {self.resnet_type!r}")


__all__ = ["OFAConfig", "RESNET_DEPTHS"]
