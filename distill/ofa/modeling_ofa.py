"""OFA encoder-decoder as a transformers `PreTrainedModel` usable with `generate()`.

State-dict names follow OFA-Sys's transformers port, so its `pytorch_model.bin` files load unchanged.
"""
import torch
from torch import nn
from transformers import GenerationConfig, GenerationMixin, PreTrainedModel
from transformers import initialization as init
from transformers.cache_utils import Cache, EncoderDecoderCache
from transformers.modeling_outputs import Seq2SeqLMOutput

from .cache import OFACache
from .configuration_ofa import OFAConfig
from .decoder import OFADecoder
from .encoder import OFAEncoder, OFAEncoderOutput
from .layers import OFAAttention
from .positions import code_position_ids, image_bucket_position, token_bucket_position

# transformers 5.24 renamed the cache argument and output field `past_key_values` -> `cache`; accept both.
_CACHE_FIELD = "cache" if "cache" in Seq2SeqLMOutput.__dataclass_fields__ else "past_key_values"


def shift_tokens_right(labels: torch.Tensor, pad_token_id: int, decoder_start_token_id: int) -> torch.Tensor:
    """(B, T) labels -> decoder inputs: start token, then labels[:, :-1] (-100 replaced by pad)."""
    shifted = labels.new_full(labels.shape, pad_token_id)
    shifted[:, 1:] = labels[:, :-1]
    shifted[:, 0] = decoder_start_token_id
    return shifted.masked_fill(shifted == -100, pad_token_id)


class OFAPreTrainedModel(PreTrainedModel):
    config: OFAConfig
    base_model_prefix = "ofa"
    main_input_name = "input_ids"
    _no_split_modules = ["OFAEncoderLayer", "OFADecoderLayer"]
    _skip_keys_device_placement = ["past_key_values"]
    _supports_sdpa = True  # opt-in only: see get_correct_attn_implementation

    def get_correct_attn_implementation(self, requested_attention: str | None, is_init_check: bool = False) -> str:
        """Eager unless `attn_implementation="sdpa"` is asked for: OFA's own maths stays the default."""
        return super().get_correct_attn_implementation(requested_attention or "eager", is_init_check)

    @torch.no_grad()
    def _init_weights(self, module: nn.Module):
        std = self.config.init_std
        if isinstance(module, (OFAEncoder, OFADecoder)):
            # Buffers are functions of the config: recompute them when a checkpoint lacks them.
            init.copy_(module.token_rp_bucket, token_bucket_position(self.config.token_bucket_size))
            init.copy_(module.image_rp_bucket, image_bucket_position(self.config.image_bucket_size))
            if isinstance(module, OFADecoder):
                init.copy_(module.image_position_idx,
                           code_position_ids(self.config.code_image_size, self.config.image_bucket_size))
            for table in [*module.token_rel_pos_table_list, *module.image_rel_pos_table_list]:
                init.zeros_(table.weight)  # OFA starts the relative-position tables at zero
        elif isinstance(module, OFAAttention):
            if module.c_attn is not None:
                init.ones_(module.c_attn)
        elif isinstance(module, nn.Linear) and module.weight is self.get_input_embeddings().weight:
            return  # the tied output projection is initialised as the embedding (whose <pad> row stays zero)
        elif isinstance(module, nn.Conv2d):
            init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(module, nn.Embedding):
            if getattr(module.weight, "_is_hf_initialized", False):
                return  # relative tables, already zeroed by their encoder/decoder
            init.normal_(module.weight, mean=0.0, std=std)
            if module.padding_idx is not None:
                init.zeros_(module.weight[module.padding_idx])
        else:
            super()._init_weights(module)


class OFAModel(OFAPreTrainedModel, GenerationMixin):
    """OFA: `encoder` (ResNet patches + text) and `decoder` sharing one token embedding with the output projection."""

    _tied_weights_keys = {
        "decoder.embed_tokens.weight": "encoder.embed_tokens.weight",
        "decoder.output_projection.weight": "encoder.embed_tokens.weight",
    }

    def __init__(self, config: OFAConfig):
        super().__init__(config)
        shared = nn.Embedding(config.vocab_size, config.d_model, padding_idx=config.pad_token_id)
        self.encoder = OFAEncoder(config, shared)
        self.decoder = OFADecoder(config, shared)
        self.post_init()
        self._default_generation_config()

    def _default_generation_config(self):
        """Generation defaults from the model config (incl. OFA's forced `</s>`), with the KV cache on: OFA-Sys
        configs say `use_cache: false`, but the cache yields the same tokens much faster."""
        self.generation_config = GenerationConfig.from_model_config(self.config)
        self.generation_config.use_cache = True

    def adjust_generation_fn(self, *args, **kwargs):
        super().adjust_generation_fn(*args, **kwargs)
        # Without a generation_config.json (OFA-Sys folders), transformers reads only the keys present in
        # config.json; use the full config with its OFA defaults instead.
        if getattr(self.generation_config, "_from_model_config", False):
            self._default_generation_config()

    def _expand_inputs_for_generation(self, expand_size: int = 1, is_encoder_decoder: bool = False,
                                      input_ids: torch.LongTensor | None = None, **model_kwargs):
        """As generate() does, except for the encoder output: it stays one row per sample, which the decoder's
        cross-attention shares between that sample's `expand_size` beams (or returned sequences)."""
        encoder_outputs = model_kwargs.pop("encoder_outputs", None)
        input_ids, model_kwargs = super()._expand_inputs_for_generation(expand_size, False, input_ids, **model_kwargs)
        model_kwargs["encoder_outputs"] = encoder_outputs
        return input_ids, model_kwargs

    def _prepare_cache_for_generation(self, generation_config, model_kwargs, *args, **kwargs):
        """generate()'s cache (dynamic or static, or the caller's), as an `OFACache`: beam search then leaves the
        per-sample cross-attention half alone."""
        super()._prepare_cache_for_generation(generation_config, model_kwargs, *args, **kwargs)
        cache = model_kwargs.get("cache")
        if isinstance(cache, EncoderDecoderCache) and not isinstance(cache, OFACache):
            wrapped = OFACache.wrap(cache)
            if getattr(cache, "_is_user_defined", False):
                wrapped._is_user_defined = True
            model_kwargs["cache"] = wrapped

    def get_input_embeddings(self) -> nn.Embedding:
        return self.encoder.embed_tokens

    def set_input_embeddings(self, value: nn.Embedding):
        self.encoder.embed_tokens = value
        self.decoder.embed_tokens = value

    def get_output_embeddings(self) -> nn.Linear:
        return self.decoder.output_projection

    def set_output_embeddings(self, value: nn.Linear):
        self.decoder.output_projection = value

    def get_encoder(self, modality: str | None = None) -> OFAEncoder:
        return self.encoder

    def get_decoder(self) -> OFADecoder:
        return self.decoder

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        patch_images: torch.FloatTensor | None = None,
        patch_masks: torch.Tensor | None = None,
        decoder_input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        encoder_outputs: OFAEncoderOutput | None = None,
        past_key_values: Cache | None = None,
        use_cache: bool | None = None,
        labels: torch.LongTensor | None = None,
        cache: Cache | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> Seq2SeqLMOutput:
        """input_ids (B, L) text ids; patch_images (B, 3, H, W); decoder_input_ids (B, T) starting with `<s>`.

        `attention_mask` and `patch_masks` are accepted and ignored (OFA masks text by `input_ids == pad`), as are
        other bookkeeping kwargs of generate(); the result is always a `Seq2SeqLMOutput` (`return_dict` is ignored).
        `labels` (B, T) with -100 ignored give a token-level cross-entropy `loss`; when `decoder_input_ids` is
        missing it is built from the labels (start token + labels shifted right).
        Returns `Seq2SeqLMOutput` with `logits` (B, T, V) = decoder states @ embedding^T (no bias).
        """
        if output_attentions:
            raise ValueError("OFAModel does not return attention weights")
        use_cache = use_cache if use_cache is not None else self.config.use_cache
        past_key_values = cache if cache is not None else past_key_values
        output_hidden_states = bool(output_hidden_states)
        if labels is not None and decoder_input_ids is None:
            decoder_input_ids = shift_tokens_right(labels, self.config.pad_token_id,
                                                   self.config.decoder_start_token_id)
        if encoder_outputs is None:
            encoder_outputs = self.encoder(input_ids, patch_images=patch_images, patch_masks=patch_masks,
                                           output_hidden_states=output_hidden_states)
        decoder_outputs = self.decoder(
            input_ids=decoder_input_ids,
            encoder_hidden_states=encoder_outputs.last_hidden_state,
            encoder_padding_mask=encoder_outputs.padding_mask,
            encoder_position_embedding=encoder_outputs.position_embedding,
            past_key_values=past_key_values,
            use_cache=use_cache,
            output_hidden_states=output_hidden_states,
        )
        logits = self.decoder.output_projection(decoder_outputs.last_hidden_state)
        loss = None
        if labels is not None:
            loss = nn.functional.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(), ignore_index=-100)
        return Seq2SeqLMOutput(
            loss=loss,
            logits=logits,
            **{_CACHE_FIELD: decoder_outputs.cache},
            decoder_hidden_states=decoder_outputs.hidden_states,
            encoder_last_hidden_state=encoder_outputs.last_hidden_state,
            encoder_hidden_states=encoder_outputs.hidden_states,
        )


__all__ = ["OFAModel", "OFAPreTrainedModel", "shift_tokens_right"]
