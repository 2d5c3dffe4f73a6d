"""Tiny random transformers open-vocabulary detectors: Grounding DINO and OWLv2, each with its processor.

Both load with `AutoProcessor` + `AutoModelForZeroShotObjectDetection` like the real checkpoints, and run
the real post-processing. Image processors resize to 64 px so a forward pass takes milliseconds.
"""

from __future__ import annotations

from pathlib import Path

from grainclip.testing.tiny_tokenizers import build_bert_tokenizer, build_clip_tokenizer

IMAGE_SIZE = 64
GROUNDING_DINO_QUERIES = 20
OWLV2_TEXT_LENGTH = 16


def grounding_dino_config(tokenizer):
    """Swin (embed 16, one block per stage) + 1-layer BERT (hidden 32) + d_model 64, 20 queries.

    d_model 32 fails in GroupNorm and a single decoder layer fails at init (transformers 5.19), hence 64 and 2.
    """
    from transformers import BertConfig, GroundingDinoConfig, SwinConfig

    backbone = SwinConfig(
        image_size=IMAGE_SIZE,
        embed_dim=16,
        depths=[1, 1, 1, 1],
        num_heads=[1, 2, 4, 8],
        window_size=4,
        out_features=["stage2", "stage3", "stage4"],
    )
    text = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=tokenizer.model_max_length,
    )
    return GroundingDinoConfig(
        backbone_config=backbone,
        text_config=text,
        d_model=64,
        encoder_layers=1,
        decoder_layers=2,
        encoder_ffn_dim=128,
        decoder_ffn_dim=128,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        num_queries=GROUNDING_DINO_QUERIES,
        max_text_len=tokenizer.model_max_length,
    )


def build_grounding_dino(out: Path, seed: int, final: Path) -> None:
    import torch
    from transformers import GroundingDinoForObjectDetection, GroundingDinoImageProcessor, GroundingDinoProcessor

    tokenizer = build_bert_tokenizer()
    torch.manual_seed(seed)
    model = GroundingDinoForObjectDetection(grounding_dino_config(tokenizer)).eval()
    model.save_pretrained(out)
    image_processor = GroundingDinoImageProcessor(size={"shortest_edge": IMAGE_SIZE, "longest_edge": 2 * IMAGE_SIZE})
    GroundingDinoProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(out)


def owlv2_config(tokenizer):
    """2-layer CLIP-like text and vision towers (width 32, 64-px images, patch 16 -> 16 boxes per image)."""
    from transformers import Owlv2Config

    text = {
        "vocab_size": len(tokenizer),
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "max_position_embeddings": OWLV2_TEXT_LENGTH,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }
    vision = {
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "image_size": IMAGE_SIZE,
        "patch_size": 16,
    }
    return Owlv2Config(text_config=text, vision_config=vision, projection_dim=32)


def build_owlv2(out: Path, seed: int, final: Path) -> None:
    import torch
    from transformers import Owlv2ForObjectDetection, Owlv2ImageProcessor, Owlv2Processor

    tokenizer = build_clip_tokenizer(model_max_length=OWLV2_TEXT_LENGTH)
    torch.manual_seed(seed)
    model = Owlv2ForObjectDetection(owlv2_config(tokenizer)).eval()
    model.save_pretrained(out)
    image_processor = Owlv2ImageProcessor(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE})
    Owlv2Processor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(out)
