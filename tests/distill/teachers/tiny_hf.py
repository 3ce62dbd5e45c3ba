"""Tiny REAL transformers teachers built offline (random weights, `save_pretrained`, reloaded by the Auto classes):
Florence-2 (BART BPE + `<loc_k>`), PaliGemma (Gemma + `<locYYYY>`), GIT (BERT WordPiece, plain prompts) and
LLaVA (a chat template).

Qwen2-VL and SmolVLM are not built: their processors in transformers 5.24 hold a video processor that needs
torchvision, which the project does not install; their box formats are tested on text (test_locations.py).

Tokenizers are byte-level BPEs trained with `tokenizers` on a small corpus, with each family's special and location
tokens added as its processor expects. `force_sequence` makes a teacher write a given token sequence whatever the
input, through `generate()` itself: a `sequence_bias` (a logits bias on each token given the previous one) saved in
the folder's generation_config.json.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

CORPUS = [
    "a red circle and a blue square", "a small green triangle", "a large yellow circle above a red square",
    "what does the image describe", "what color is the circle", "how many shapes are there", "yes", "no", "maybe",
    "is there a green square", "the red circle", "the blue triangle", "locate the phrases in the caption",
    "describe the image in one short sentence", "answer the question using a single word or phrase",
    "premise hypothesis does the image together with the premise imply the hypothesis answer yes no or maybe",
    "caption en answer en detect given is it true that", "output the bounding box of in the image",
    "left right top bottom center of below one two three zero heavy soft warm old there",
]


def _bpe(specials: Sequence[str], vocab_size: int = 420) -> Tokenizer:
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(specials), show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    bpe.train_from_iterator(CORPUS * 4, trainer=trainer)
    return bpe


def _save(model, processor, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(folder))
    processor.save_pretrained(str(folder))
    return folder


# ------------------------------------------------------------------------------------------------ Florence-2
def build_florence2(folder: Path, seed: int = 0) -> Path:
    """Florence-2: BART tokenizer (`<s>`0 `<pad>`1 `</s>`2 `<unk>`3) + `<image>` + `<loc_0..999>`; DaViT with one
    stage (stride 4 on 32 px: 8x8 patches + 1 pooled token = 65 image tokens); 1+1 BART layers, d_model 32."""
    from transformers import (AddedToken, BartTokenizer, CLIPImageProcessorPil, Florence2Config,
                              Florence2ForConditionalGeneration, Florence2Processor)

    bpe = _bpe(["<s>", "<pad>", "</s>", "<unk>"])
    spec = json.loads(bpe.to_str())["model"]
    tok = BartTokenizer(vocab=dict(spec["vocab"]), merges=[tuple(m) for m in spec["merges"]], image_token="<image>")
    tok.add_tokens([AddedToken("<image>", special=True, normalized=False)], special_tokens=True)
    tok.add_tokens([f"<loc_{k}>" for k in range(1000)])
    tok.image_token_id = tok.convert_tokens_to_ids("<image>")
    images = CLIPImageProcessorPil(size={"height": 32, "width": 32}, do_center_crop=False,
                                   crop_size={"height": 32, "width": 32})
    images.image_seq_length = 65
    processor = Florence2Processor(image_processor=images, tokenizer=tok,
                                   post_processor_config={"pure_text": {}, "phrase_grounding": {}})
    config = Florence2Config(
        text_config=dict(model_type="bart", vocab_size=len(tok), max_position_embeddings=128, d_model=32,
                         encoder_layers=1, decoder_layers=1, encoder_ffn_dim=32, decoder_ffn_dim=32,
                         encoder_attention_heads=2, decoder_attention_heads=2, bos_token_id=0, pad_token_id=1,
                         eos_token_id=2, decoder_start_token_id=2),
        vision_config=dict(depths=[1], patch_size=[7], patch_stride=[4], patch_padding=[3], patch_prenorm=[False],
                           embed_dim=[32], num_heads=[1], num_groups=[1], window_size=4, projection_dim=32,
                           drop_path_rate=0.0),
        image_token_id=tok.image_token_id)
    torch.manual_seed(seed)
    return _save(Florence2ForConditionalGeneration(config).eval(), processor, folder)


# ------------------------------------------------------------------------------------------------ PaliGemma
def build_paligemma(folder: Path, seed: int = 0) -> Path:
    """PaliGemma: a Gemma-style tokenizer (`<pad>`0 `<eos>`1 `<bos>`2 `<unk>`3), the processor adds `<image>`,
    `<loc0000..1023>` and `<seg000..127>`; SigLIP 32 px / patch 8 (16 image tokens); 1 Gemma layer, hidden 32."""
    from transformers import (PaliGemmaConfig, PaliGemmaForConditionalGeneration, PaliGemmaProcessor,
                              PreTrainedTokenizerFast, SiglipImageProcessorPil)

    tok = PreTrainedTokenizerFast(tokenizer_object=_bpe(["<pad>", "<eos>", "<bos>", "<unk>"]), pad_token="<pad>",
                                  eos_token="<eos>", bos_token="<bos>", unk_token="<unk>")
    images = SiglipImageProcessorPil(size={"height": 32, "width": 32})
    images.image_seq_length = 16
    processor = PaliGemmaProcessor(image_processor=images, tokenizer=tok)
    tok = processor.tokenizer
    config = PaliGemmaConfig(
        vision_config=dict(model_type="siglip_vision_model", hidden_size=32, intermediate_size=32,
                           num_hidden_layers=1, num_attention_heads=2, image_size=32, patch_size=8),
        text_config=dict(model_type="gemma", vocab_size=len(tok), hidden_size=32, intermediate_size=32,
                         num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1, head_dim=16,
                         pad_token_id=0, eos_token_id=1, bos_token_id=2, max_position_embeddings=256),
        image_token_index=tok.convert_tokens_to_ids("<image>"), projection_dim=32, hidden_size=32,
        vocab_size=len(tok), pad_token_id=0, eos_token_id=1, bos_token_id=2)
    torch.manual_seed(seed)
    return _save(PaliGemmaForConditionalGeneration(config).eval(), processor, folder)


# ------------------------------------------------------------------------------------------------ GIT
def build_git(folder: Path, seed: int = 0) -> Path:
    """GIT: a BERT WordPiece tokenizer (`[PAD]`0 `[UNK]`1 `[CLS]`2 `[SEP]`3: GIT starts from [CLS], ends at [SEP]);
    CLIP vision 32 px / patch 8 (16 + 1 image tokens); 1 text layer, hidden 32."""
    from transformers import BertTokenizer, CLIPImageProcessorPil, GitConfig, GitForCausalLM, GitProcessor

    words = sorted({w for line in CORPUS for w in line.split()} | set("abcdefghijklmnopqrstuvwxyz?\".,"))
    vocab = {t: i for i, t in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words])}
    tok = BertTokenizer(vocab=vocab)
    images = CLIPImageProcessorPil(size={"height": 32, "width": 32}, do_center_crop=False,
                                   crop_size={"height": 32, "width": 32})
    processor = GitProcessor(image_processor=images, tokenizer=tok)
    config = GitConfig(
        vision_config=dict(hidden_size=32, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                           image_size=32, patch_size=8),
        vocab_size=len(tok), hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
        max_position_embeddings=128, bos_token_id=vocab["[CLS]"], eos_token_id=vocab["[SEP]"], pad_token_id=0)
    torch.manual_seed(seed)
    return _save(GitForCausalLM(config).eval(), processor, folder)


# ------------------------------------------------------------------------------------------------ LLaVA
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}{% for c in message['content'] %}"
    "{% if c['type'] == 'image' %}<image>\n{% elif c['type'] == 'text' %}{{ c['text'] }}{% endif %}{% endfor %}"
    "{% endif %}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
"""A ChatML-style template (an image placeholder, then the text; the assistant turn opened)."""


def build_llava(folder: Path, seed: int = 0) -> Path:
    """LLaVA: a ChatML tokenizer (`<|im_end|>` EOS, `<|endoftext|>` pad) + `<image>`, the chat template above; CLIP
    vision 32 px / patch 8 (16 patch tokens, CLS dropped); 1 Llama layer, hidden 32."""
    from transformers import (CLIPImageProcessorPil, LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor,
                              PreTrainedTokenizerFast)

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<image>"]
    tok = PreTrainedTokenizerFast(tokenizer_object=_bpe(specials), eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                  bos_token="<|im_start|>", image_token="<image>")
    images = CLIPImageProcessorPil(size={"height": 32, "width": 32}, do_center_crop=False,
                                   crop_size={"height": 32, "width": 32})
    processor = LlavaProcessor(image_processor=images, tokenizer=tok, patch_size=8, num_additional_image_tokens=1,
                               vision_feature_select_strategy="default", chat_template=CHAT_TEMPLATE)
    ids = {t: tok.convert_tokens_to_ids(t) for t in specials}
    config = LlavaConfig(
        vision_config=dict(model_type="clip_vision_model", hidden_size=32, intermediate_size=32, num_hidden_layers=1,
                           num_attention_heads=2, image_size=32, patch_size=8, projection_dim=32),
        text_config=dict(model_type="llama", vocab_size=len(tok), hidden_size=32, intermediate_size=32,
                         num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
                         max_position_embeddings=256, bos_token_id=ids["<|im_start|>"],
                         eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"]),
        image_token_index=ids["<image>"], vision_feature_select_strategy="default", vision_feature_layer=-1,
        projector_hidden_act="gelu")
    torch.manual_seed(seed)
    return _save(LlavaForConditionalGeneration(config).eval(), processor, folder)


BUILDERS = {"florence2": build_florence2, "paligemma": build_paligemma, "git": build_git, "llava": build_llava}


def force_sequence(folder: Path, tokens: Sequence[str], after: str | int | None = None, bias: float = 100.0) -> None:
    """Make the teacher in `folder` write `tokens` (then its EOS) through `generate()`: a `sequence_bias` of `bias`
    on each token given the previous one, the first given `after` (the last prompt token for decoder-only models,
    the decoder start token for encoder-decoders; default: the EOS for encoder-decoders)."""
    from transformers import AutoConfig, AutoProcessor, GenerationConfig

    tok = AutoProcessor.from_pretrained(str(folder)).tokenizer
    gen = GenerationConfig.from_pretrained(str(folder))
    config = AutoConfig.from_pretrained(str(folder))
    eos = gen.eos_token_id if isinstance(gen.eos_token_id, int) else gen.eos_token_id[0]
    if after is None:
        after = gen.decoder_start_token_id if config.is_encoder_decoder else tok.eos_token_id
    first = after if isinstance(after, int) else tok.convert_tokens_to_ids(after)
    ids = [first] + [tok.convert_tokens_to_ids(t) for t in tokens] + [eos]
    gen.sequence_bias = [[[a, b], bias] for a, b in zip(ids, ids[1:])]
    gen.save_pretrained(str(folder))
