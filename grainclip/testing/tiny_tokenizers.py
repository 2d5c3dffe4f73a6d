"""Tokenizers for the tiny models, trained locally on a small corpus so nothing is downloaded.

Each tokenizer imitates the layout its real counterpart has where model code depends on it: the BERT
vocabulary puts [CLS]/[SEP]/"."/"?" at bert-base-uncased's ids (Grounding DINO splits phrases at those
ids), the CLIP vocabulary ends with <|startoftext|>/<|endoftext|> and pads with "!" = id 0 (OWLv2 pools
at the highest id and treats a query starting with id 0 as padding).
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

if TYPE_CHECKING:
    from transformers import BertTokenizer, CLIPTokenizer, PreTrainedTokenizerFast

COLOURS = "red orange yellow green blue purple pink brown black white grey gray gold silver teal"
PARTS = "head crest beak eye eyes wing wings tail body leg legs feet fin fins horn horns ear ears antenna shell"
ATTRIBUTES = "striped spotted dotted plain checkered round pointed square long short curved small large bright dark"
SCENES = "creature bird fish animal background grass sky water sand forest snow photo picture image region box"

CORPUS: tuple[str, ...] = (
    f"colours: {COLOURS}.",
    f"parts: {PARTS}.",
    f"attributes: {ATTRIBUTES}.",
    f"scenes: {SCENES}.",
    "a photo of a creature with a red crest, blue wings and a striped tail.",
    "A small green bird with a round head and a long yellow tail stands on the grass.",
    "The fish has spotted orange fins and a white body in blue water.",
    "Describe the image. Write a caption and a list of short visual descriptions.",
    '{"caption": "a purple creature with a pointed horn", "descriptions": ["purple body", "pointed horn"]}',
    '{"caption": "a bird", "descriptions": ["red crest", "blue wings", "striped tail"]}',
    '[{"text": "red head", "box": [0.1, 0.2, 0.5, 0.6], "score": 0.9}]',
    'Return JSON only: {"caption": string, "descriptions": [string, ...]}.',
    "You are a helpful assistant that describes images. Answer in English.",
    "What is in this picture? Which parts does it have? Where is the tail?",
    "0 1 2 3 4 5 6 7 8 9 10 100 0.5 0.25 - _ ( ) ! ? ; ' / \\ * # @ & % = + < >",
)


def corpus() -> list[str]:
    """The training text; each line repeated in lower and title case so common words become single tokens."""
    lines = list(CORPUS)
    return lines + [line.lower() for line in lines] + [line.title() for line in lines]


# ---------------------------------------------------------------------------------------------- chat LLM

CHAT_SPECIAL_TOKENS = ("<pad>", "<s>", "</s>", "<image>", "<|system|>", "<|user|>", "<|assistant|>")

# Handles both plain-string content and OpenAI-style content parts, so transformers processors and vLLM's
# chat endpoint (which detects the content format from the template) can pass images as `{"type": "image"}`.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "<|{{ message['role'] }}|>\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<image>{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "{{ eos_token }}\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


def train_chat_tokenizer(vocab_size: int = 1024, model_max_length: int = 1024) -> PreTrainedTokenizerFast:
    """Byte-level BPE chat tokenizer (any text encodes, so JSON-constrained decoding can emit anything)."""
    from tokenizers import processors
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(CHAT_SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(corpus(), trainer=trainer)
    bos_id = tokenizer.token_to_id("<s>")
    tokenizer.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", bos_id)])
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token=None,
        extra_special_tokens={"image_token": "<image>"},
        additional_special_tokens=list(CHAT_SPECIAL_TOKENS[3:]),
        chat_template=CHAT_TEMPLATE,
        model_max_length=model_max_length,
        model_input_names=["input_ids", "attention_mask"],
        padding_side="left",
    )


# ---------------------------------------------------------------------------------------------- BERT

# bert-base-uncased ids that detector code hard-codes.
BERT_FIXED_IDS = {"[PAD]": 0, "[UNK]": 100, "[CLS]": 101, "[SEP]": 102, "[MASK]": 103, ".": 1012, "?": 1029}


def bert_vocab(size: int = 1100) -> list[str]:
    """A WordPiece vocabulary of `size` entries with bert-base-uncased's special ids; free slots are [unusedN]."""
    tokenizer = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    learnable = size - len(BERT_FIXED_IDS)
    trainer = trainers.WordPieceTrainer(vocab_size=learnable, special_tokens=[], show_progress=False)
    tokenizer.train_from_iterator(corpus(), trainer=trainer)
    learned = [t for t, _ in sorted(tokenizer.get_vocab().items(), key=lambda kv: kv[1]) if t not in BERT_FIXED_IDS]
    vocab: list[str | None] = [None] * size
    for token, index in BERT_FIXED_IDS.items():
        vocab[index] = token
    free = iter(i for i, token in enumerate(vocab) if token is None)
    for token in learned:
        vocab[next(free)] = token
    return [token if token is not None else f"[unused{i}]" for i, token in enumerate(vocab)]


def build_bert_tokenizer(model_max_length: int = 256) -> BertTokenizer:
    from transformers import BertTokenizer

    vocab = {token: i for i, token in enumerate(bert_vocab())}
    return BertTokenizer(vocab=vocab, model_max_length=model_max_length)


# ---------------------------------------------------------------------------------------------- CLIP

CLIP_SPLIT = r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""


def clip_vocab_and_merges(vocab_size: int = 1024) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """CLIP-style BPE: bytes, bytes + "</w>", merges in order, then <|startoftext|> and <|endoftext|> last."""
    tokenizer = Tokenizer(models.BPE(end_of_word_suffix="</w>"))
    tokenizer.normalizer = normalizers.Sequence(
        [normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Lowercase()]
    )
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(CLIP_SPLIT), behavior="removed", invert=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False),
        ]
    )
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - 2,
        initial_alphabet=alphabet,
        end_of_word_suffix="</w>",
        show_progress=False,
    )
    tokenizer.train_from_iterator(corpus(), trainer=trainer)
    merges = [tuple(pair) for pair in json.loads(tokenizer.to_str())["model"]["merges"]]
    tokens = alphabet + [c + "</w>" for c in alphabet]
    tokens += [a + b for a, b in merges if a + b not in tokens]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    return {token: i for i, token in enumerate(tokens)}, merges


def build_clip_tokenizer(model_max_length: int = 16) -> CLIPTokenizer:
    from transformers import CLIPTokenizer

    vocab, merges = clip_vocab_and_merges()
    return CLIPTokenizer(vocab=vocab, merges=merges, pad_token="!", model_max_length=model_max_length)
