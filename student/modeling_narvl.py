"""NARVL (Shi et al., CVPR 2024): OFA's encoder, OFA's decoder fed N learned queries without a causal mask, and a
vocabulary + blank output head trained with Query-CTC. One decoder pass yields the whole sequence.

The encoder and decoder are OFA's own modules (`distill.ofa`), under the same state-dict names as an OFA
checkpoint, so `from_ofa` is a plain `load_state_dict` in which only `query_embed.weight` and `blank_row` are new.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from transformers import initialization as init
from transformers.utils import ModelOutput

from distill.ofa import OFAModel
from distill.ofa.decoder import OFADecoder
from distill.ofa.encoder import OFAEncoder, OFAEncoderOutput
from distill.ofa.modeling_ofa import OFAPreTrainedModel
from distill.tasks import get_task

from .configuration_narvl import NARVLConfig
from .decoding import ctc_decode, narvl_rule
from .loss import query_ctc_loss

__all__ = ["NARVLModel", "NARVLOutput"]

_NEW_WEIGHTS = ("query_embed.weight", "blank_row")


@dataclass
class NARVLOutput(ModelOutput):
    """NARVL forward output.

    loss: Query-CTC loss (scalar), when targets are given.
    n_infeasible: number of samples whose target cannot fit in the N queries (int64 scalar), when targets are given.
    logits: (B, N, V + 1) scores per query over the OFA vocabulary, then the blank (last column, id V).
    encoder_last_hidden_state: (B, S, D) encoder output.
    """

    loss: torch.FloatTensor | None = None
    n_infeasible: torch.LongTensor | None = None
    logits: torch.FloatTensor | None = None
    encoder_last_hidden_state: torch.FloatTensor | None = None


class NARVLModel(OFAPreTrainedModel):
    """Non-autoregressive OFA student: encoder -> N parallel queries -> (V + 1)-way CTC frames."""

    config: NARVLConfig
    config_class = NARVLConfig
    base_model_prefix = "narvl"
    _tied_weights_keys = {
        "decoder.embed_tokens.weight": "encoder.embed_tokens.weight",
        "decoder.output_projection.weight": "encoder.embed_tokens.weight",
    }

    def __init__(self, config: NARVLConfig):
        super().__init__(config)
        shared = nn.Embedding(config.vocab_size, config.d_model, padding_idx=config.pad_token_id)
        self.encoder = OFAEncoder(config, shared)
        self.decoder = OFADecoder(config, shared)
        # The same N queries for every sample; their index 0..N-1 is their decoder position.
        self.query_embed = nn.Embedding(config.num_queries, config.d_model)
        # The blank's output row, appended to the tied vocabulary projection (blank id = vocab_size).
        self.blank_row = nn.Parameter(torch.empty(1, config.d_model))
        self.post_init()

    @torch.no_grad()
    def _init_weights(self, module: nn.Module):
        if module is self.query_embed:
            init.normal_(module.weight, mean=0.0, std=self.config.query_init_std)
        elif module is self:
            std = self.config.blank_init_std
            init.normal_(self.blank_row, mean=0.0, std=self.config.d_model**-0.5 if std is None else std)
        else:
            super()._init_weights(module)

    def get_input_embeddings(self) -> nn.Embedding:
        return self.encoder.embed_tokens

    def set_input_embeddings(self, value: nn.Embedding):
        self.encoder.embed_tokens = value
        self.decoder.embed_tokens = value

    def get_output_embeddings(self) -> nn.Linear:
        return self.decoder.output_projection

    def get_encoder(self, modality: str | None = None) -> OFAEncoder:
        return self.encoder

    @property
    def blank_id(self) -> int:
        return self.config.blank_id

    def forward(
        self,
        input_ids: torch.LongTensor,
        patch_images: torch.FloatTensor | None = None,
        patch_masks: torch.Tensor | None = None,
        targets: torch.LongTensor | None = None,
        target_lengths: torch.LongTensor | None = None,
        weights: torch.FloatTensor | None = None,
        encoder_outputs: OFAEncoderOutput | None = None,
        **kwargs,
    ) -> NARVLOutput:
        """One encoder pass and one parallel decoder pass.

        Args:
            input_ids (torch.LongTensor): prompt ids, right-padded with `<pad>`, shape ``(B, L)``.
            patch_images (torch.FloatTensor | None): normalised images, shape ``(B, 3, H, W)``.
            patch_masks (torch.Tensor | None): accepted and ignored, as in OFA.
            targets (torch.LongTensor | None): padded target ids ending with EOS, shape ``(B, T)``.
            target_lengths (torch.LongTensor | None): shape ``(B,)``; when None, the tokens that are neither
                `<pad>` nor negative (-100) are counted.
            weights (torch.FloatTensor | None): per-sample factors of the log-probs before Query-CTC (VQA: the
                answer confidence, as NARVL's criterion), shape ``(B,)``.
            encoder_outputs (OFAEncoderOutput | None): reuse a previous encoder pass.

        Returns:
            NARVLOutput: ``logits`` ``(B, N, V + 1)``; ``loss`` (with ``config.label_smoothing``) and
            ``n_infeasible`` when ``targets`` are given.
        """
        if encoder_outputs is None:
            encoder_outputs = self.encoder(input_ids, patch_images=patch_images, patch_masks=patch_masks)
        hidden = encoder_outputs.last_hidden_state
        queries = self.query_embed.weight.unsqueeze(0).expand(hidden.size(0), -1, -1)
        states = self.decoder(
            inputs_embeds=queries,
            causal=False,
            encoder_hidden_states=hidden,
            encoder_padding_mask=encoder_outputs.padding_mask,
            encoder_position_embedding=encoder_outputs.position_embedding,
        ).last_hidden_state  # (B, N, D)
        # Two products and a cat of the (B, N, .) scores rather than a cat of the (V, D) weight on every call.
        logits = torch.cat([self.decoder.output_projection(states), F.linear(states, self.blank_row)], dim=-1)
        loss = n_infeasible = None
        if targets is not None:
            if target_lengths is None:
                target_lengths = ((targets != self.config.pad_token_id) & (targets >= 0)).sum(1)
            loss, n_infeasible = query_ctc_loss(
                logits, targets, target_lengths, self.blank_id, self.config.label_smoothing, weights
            )
        return NARVLOutput(
            loss=loss, n_infeasible=n_infeasible, logits=logits, encoder_last_hidden_state=hidden
        )

    @torch.no_grad()
    def decode(
        self,
        input_ids: torch.LongTensor,
        patch_images: torch.FloatTensor | None = None,
        patch_masks: torch.Tensor | None = None,
        num_beams: int = 1,
        bin_ids: list[int] | None = None,
    ) -> list[list[int]]:
        """Token ids per sample (EOS excluded) by NARVL's rule for ``config.task`` (`student.decoding.narvl_rule`):
        greedy (``num_beams=1``, the paper's setting) or the best hypothesis of CTC prefix beam search (tasks whose
        rule merges repeats only). ``bin_ids``: the `<bin_k>` ids, the only tokens grounding keeps."""
        logits = self(input_ids, patch_images=patch_images, patch_masks=patch_masks).logits
        rule = narvl_rule(get_task(self.config.task or "caption"), bin_ids)
        return ctc_decode(logits, self.blank_id, self.config.eos_token_id, self.config.pad_token_id, num_beams,
                          rule)

    @classmethod
    def from_ofa(cls, ofa: OFAModel | str | Path, num_queries: int, **kwargs) -> "NARVLModel":
        """A NARVL student initialised from an OFA model: every weight copied except the queries and the blank row.

        Args:
            ofa (OFAModel | str | Path): an `OFAModel`, or a local folder / Hub id that `OFAModel.from_pretrained`
                loads.
            num_queries (int): N; resolve the task default with `distill.tasks.get_task(task).num_queries`.
            **kwargs: further `NARVLConfig` fields (``task``, ``label_smoothing``, ``query_init_std``, ...).
        """
        if not isinstance(ofa, OFAModel):
            ofa = OFAModel.from_pretrained(ofa)
        config = NARVLConfig.from_ofa_config(ofa.config, num_queries=num_queries, **kwargs)
        model = cls(config).to(device=ofa.device, dtype=ofa.dtype)
        missing, unexpected = model.load_state_dict(ofa.state_dict(), strict=False)
        if sorted(missing) != sorted(_NEW_WEIGHTS) or unexpected:
            raise RuntimeError(f"OFA -> NARVL weight mismatch: missing {missing}, unexpected {unexpected}")
        model.train(ofa.training)
        return model
