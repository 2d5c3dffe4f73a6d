"""Tiny random checkpoint for the original IDEA Grounding DINO (`groundingdino-py`), built in its own env.

groundingdino-py cannot be imported in the main environment (it needs transformers<5), so this module runs
as a script in the layered groundingdino environment (`grainclip.envs.layered_env` with GROUNDINGDINO_PIP,
the pins the groundingdino-py grounder stage uses). The folder holds:

- `config.py`: a groundingdino SLConfig (Swin-T backbone, which is the smallest the package offers; a
  1-layer encoder, 2-layer decoder and 20 queries instead of 6/6/900),
- `checkpoint.pth`: `{"model": state_dict}` as the official checkpoints are stored,
- `bert/`: a tiny local BertModel + tokenizer, named by absolute path in `text_encoder_type` so nothing
  is downloaded. The config therefore names this folder's location: move the folder and it is rebuilt.

Load it with `groundingdino.util.inference.load_model(config, checkpoint, device="cpu")`. With 20 queries,
images of 64 px and up work (the stock 900 queries need >= 256-px inputs or topk fails).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from grainclip.testing.tiny_tokenizers import bert_vocab

CONFIG_FILE = "config.py"
CHECKPOINT_FILE = "checkpoint.pth"
BERT_DIR = "bert"
NUM_QUERIES = 20

# Keys read by groundingdino.models.build_model; values follow GroundingDINO_SwinT_OGC.py except the sizes.
CONFIG = {
    "batch_size": 1,
    "modelname": "groundingdino",
    "backbone": "swin_T_224_1k",
    "position_embedding": "sine",
    "pe_temperatureH": 20,
    "pe_temperatureW": 20,
    "return_interm_indices": [1, 2, 3],
    "backbone_freeze_keywords": None,
    "enc_layers": 1,
    "dec_layers": 2,
    "pre_norm": False,
    "dim_feedforward": 256,
    "hidden_dim": 256,  # fixed: groundingdino hard-codes 256-d text position embeddings
    "dropout": 0.0,
    "nheads": 8,
    "num_queries": NUM_QUERIES,
    "query_dim": 4,
    "num_patterns": 0,
    "num_feature_levels": 4,
    "enc_n_points": 4,
    "dec_n_points": 4,
    "two_stage_type": "standard",
    "two_stage_bbox_embed_share": False,
    "two_stage_class_embed_share": False,
    "transformer_activation": "relu",
    "dec_pred_bbox_embed_share": True,
    "dn_box_noise_scale": 1.0,
    "dn_label_noise_ratio": 0.5,
    "dn_label_coef": 1.0,
    "dn_bbox_coef": 1.0,
    "embed_init_tgt": True,
    "dn_labelbook_size": 2000,
    "max_text_len": 256,
    "use_text_enhancer": True,
    "use_fusion_layer": True,
    "use_checkpoint": False,
    "use_transformer_ckpt": False,
    "use_text_cross_attention": True,
    "text_dropout": 0.0,
    "fusion_dropout": 0.0,
    "fusion_droppath": 0.1,
    "sub_sentence_present": True,
}


def build_groundingdino_py(out: Path, seed: int, final: Path) -> None:
    """Build the folder in `out` (its config naming `final`, where it will live) in the groundingdino env.

    The vocabulary is made here, with the main env's `tokenizers`, so it matches the other tiny BERTs.
    """
    from grainclip.envs import GROUNDINGDINO_PIP, layered_env
    from grainclip.testing.cache import default_cache_dir

    bert_dir = out / BERT_DIR
    bert_dir.mkdir(parents=True)
    (bert_dir / "vocab.txt").write_text("\n".join(bert_vocab()) + "\n")
    python = layered_env(default_cache_dir() / "envs", "groundingdino", GROUNDINGDINO_PIP)
    command = [str(python), "-m", __name__, str(out), str(seed), str(final)]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"building the tiny groundingdino-py model failed:\n{result.stderr[-4000:]}")


def config_text(bert_location: Path) -> str:
    lines = ["# Tiny random groundingdino-py config written by grainclip.testing (not a trained model)."]
    lines += [f"{key} = {value!r}" for key, value in CONFIG.items()]
    lines.append(f"text_encoder_type = {str(bert_location)!r}")
    return "\n".join(lines) + "\n"


def _build_in_groundingdino_env(out: Path, seed: int, final: Path) -> None:
    """Runs in the groundingdino env (transformers 4.57): tiny BERT next to its vocab, config, checkpoint."""
    import torch
    from groundingdino.models import build_model
    from groundingdino.util.slconfig import SLConfig
    from transformers import BertConfig, BertModel, BertTokenizerFast

    bert_dir = out / BERT_DIR
    vocab_file = bert_dir / "vocab.txt"
    tokenizer = BertTokenizerFast(vocab_file=str(vocab_file), model_max_length=CONFIG["max_text_len"])
    tokenizer.save_pretrained(bert_dir)
    torch.manual_seed(seed)
    bert = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=CONFIG["max_text_len"],
    )
    BertModel(bert).save_pretrained(bert_dir)

    # Build against the BERT folder where it is now; the saved config names its final location.
    (out / CONFIG_FILE).write_text(config_text(bert_dir))
    args = SLConfig.fromfile(str(out / CONFIG_FILE))
    args.device = "cpu"
    torch.manual_seed(seed)
    model = build_model(args)
    torch.save({"model": model.state_dict()}, out / CHECKPOINT_FILE)
    (out / CONFIG_FILE).write_text(config_text(final / BERT_DIR))


if __name__ == "__main__":
    _build_in_groundingdino_env(Path(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3]))
