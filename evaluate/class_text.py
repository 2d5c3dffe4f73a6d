"""Class text: prompt templates, descriptor sentences, and per-class text embeddings with a cache.

Zero-shot classification compares an image with one embedding per class. `global` averages the class name
over prompt templates (CLIP). `global+descriptors` averages sentences that add one visual descriptor each
(Menon & Vondrick, "Visual Classification via Description from Large Language Models", ICLR 2023). The
region score of `grain` compares region embeddings with the bare descriptors, the form GRAIN's region loss
is trained on.
"""

from __future__ import annotations

import hashlib
import re
import weakref
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from grainclip.articles import indefinite_article
from grainclip.config.base import ConfigError

if TYPE_CHECKING:
    import torch

    from grainclip.model_api import LoadedModel

# Our own small CLIP-style set: the bare prompt plus a few image styles a zero-shot set commonly holds.
DEFAULT_TEMPLATES: tuple[str, ...] = (
    "a photo of a {}.",
    "a picture of a {}.",
    "an image showing a {}.",
    "a close-up photo of a {}.",
    "a cropped photo of a {}.",
    "a low-resolution photo of a {}.",
    "a drawing of a {}.",
)

# Menon & Vondrick's rule, as their published code applies it (classify_by_descriptions,
# descriptor_strings.make_descriptor_sentence): a case-sensitive PREFIX test on the raw string, checked in this
# order. It is a character prefix, not a word test ("antennae" -> "which is antennae", "cane" -> "which cane");
# we keep it exact so descriptor results stay comparable with theirs.
_WHICH_IS_PREFIXES = ("a", "an")
_WHICH_PREFIXES = ("has", "often", "typically", "may", "can")
_WHICH_IS_LATE_PREFIXES = ("used",)


def descriptor_sentence(descriptor: str) -> str:
    """'which is/which/which has {descriptor}' by Menon & Vondrick's prefix rule."""
    if descriptor.startswith(_WHICH_IS_PREFIXES):
        return f"which is {descriptor}"
    if descriptor.startswith(_WHICH_PREFIXES):
        return f"which {descriptor}"
    if descriptor.startswith(_WHICH_IS_LATE_PREFIXES):
        return f"which is {descriptor}"
    return f"which has {descriptor}"


_ARTICLE_BEFORE_CLASS = re.compile(r"\b([Aa])n? (?=\{\})")


def class_prompt(template: str, classname: str) -> str:
    """`template` with `classname` for its `{}`; an "a"/"an" just before `{}` is made to fit the class name."""
    article = indefinite_article(classname)
    return _ARTICLE_BEFORE_CLASS.sub(lambda m: f"{m.group(1)}{article[1:]} ", template).format(classname)


def class_prompts(classname: str, templates: Sequence[str]) -> list[str]:
    return [class_prompt(template, classname) for template in templates]


def descriptor_prompts(classname: str, descriptors: Sequence[str], templates: Sequence[str]) -> list[str]:
    """'{template(class)}, which is/has {descriptor}' for every template x descriptor (template's final '.' dropped)."""
    return [
        f"{prompt.rstrip(' .')}, {descriptor_sentence(descriptor)}"
        for prompt in class_prompts(classname, templates)
        for descriptor in descriptors
    ]


def load_templates(path: str | Path | None) -> list[str]:
    """Templates from a text file (one per line, `{}` marks the class name; blank and # lines skipped)."""
    if path is None:
        return list(DEFAULT_TEMPLATES)
    path = Path(path)
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        raise ConfigError(f"template file not found: {path}") from None
    templates = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
    if not templates:
        raise ConfigError(f"template file {path} holds no templates")
    for number, template in enumerate(templates, 1):
        if template.count("{}") != 1:
            raise ConfigError(f"template file {path}: template {number} {template!r} must contain `{{}}` exactly once")
        try:
            template.format("x")
        except (IndexError, KeyError, ValueError) as exc:
            raise ConfigError(
                f"template file {path}: template {number} {template!r} is not a format string ({exc})"
            ) from None
    return templates


def _state_key(model: object) -> tuple | None:
    """Changes whenever the weights do: optimizer steps and load_state_dict bump a tensor's version counter."""
    parameters = getattr(model, "parameters", None)
    if parameters is None:
        return None
    return tuple((p.data_ptr(), p._version) for p in parameters())


def _texts_digest(texts: Sequence[str]) -> str:
    return hashlib.sha256("\x00".join(texts).encode()).hexdigest()


class TextEmbeddingCache:
    """Normalised text embeddings keyed by (model, its current weights, texts).

    Repeated evaluation of the same model (several splits sharing class names, the alpha sweep, a trainer's
    periodic hook between optimizer steps) encodes each text list once. Only the newest weights of each model
    are kept, so a training run does not accumulate stale entries; models that cannot be weak-referenced or
    have no parameters are simply not cached.
    """

    def __init__(self) -> None:
        self._entries: weakref.WeakKeyDictionary[object, tuple[tuple, dict[str, torch.Tensor]]] = (
            weakref.WeakKeyDictionary()
        )
        self.encoded_texts = 0  # texts actually run through a text tower (for tests and benchmarks)

    def encode(
        self, loaded: LoadedModel, texts: Sequence[str], device: str | torch.device, batch_size: int = 256
    ) -> torch.Tensor:
        state = _state_key(loaded.model)
        digest = _texts_digest(texts) + f"@{device}"
        entry = None
        if state is not None:
            try:
                entry = self._entries.get(loaded.model)
            except TypeError:  # not weak-referenceable
                state = None
        if entry is not None and entry[0] == state and digest in entry[1]:
            return entry[1][digest]
        embeddings = encode_texts(loaded, texts, device, batch_size)
        self.encoded_texts += len(texts)
        if state is not None:
            if entry is None or entry[0] != state:
                entry = (state, {})
                self._entries[loaded.model] = entry
            entry[1][digest] = embeddings
        return embeddings


TEXT_CACHE = TextEmbeddingCache()


def encode_texts(
    loaded: LoadedModel, texts: Sequence[str], device: str | torch.device, batch_size: int = 256
) -> torch.Tensor:
    """(len(texts), D) float32 L2-normalised embeddings from the model's text tower."""
    import torch
    import torch.nn.functional as F

    chunks = []
    with torch.no_grad():
        for start in range(0, len(texts), batch_size):
            tokens = loaded.tokenizer(list(texts[start : start + batch_size])).to(device)
            chunks.append(F.normalize(loaded.model.encode_text(tokens).float(), dim=-1))
    if not chunks:
        raise ValueError("no texts to encode")
    return torch.cat(chunks)


def averaged_embeddings(
    loaded: LoadedModel,
    texts_per_class: Sequence[Sequence[str]],
    device: str | torch.device,
    cache: TextEmbeddingCache = TEXT_CACHE,
) -> torch.Tensor:
    """(C, D): each class's text embeddings averaged, then re-normalised (one classifier row per class)."""
    import torch
    import torch.nn.functional as F

    flat = [text for texts in texts_per_class for text in texts]
    counts = torch.tensor([len(texts) for texts in texts_per_class], device=device)
    if (counts == 0).any():
        raise ValueError("every class needs at least one text")
    embeddings = cache.encode(loaded, flat, device)
    owner = torch.repeat_interleave(torch.arange(len(texts_per_class), device=device), counts)
    sums = torch.zeros(len(texts_per_class), embeddings.shape[1], device=device).index_add_(0, owner, embeddings)
    return F.normalize(sums / counts[:, None], dim=-1)


def class_embeddings(
    loaded: LoadedModel,
    classnames: Sequence[str],
    templates: Sequence[str],
    device: str | torch.device,
    descriptors: dict[str, list[str]] | None = None,
    cache: TextEmbeddingCache = TEXT_CACHE,
) -> torch.Tensor:
    """(C, D) classifier: template prompts per class, or template x descriptor sentences when given."""
    if descriptors is None:
        texts = [class_prompts(name, templates) for name in classnames]
    else:
        texts = [descriptor_prompts(name, descriptors[name], templates) for name in classnames]
    return averaged_embeddings(loaded, texts, device, cache)
