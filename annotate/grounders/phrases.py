"""Grounding DINO's text side, shared by the transformers and the original (groundingdino-py) backends.

Grounding DINO scores every (query box, text token) pair for ONE prompt of phrases joined as "a. b. c.",
at most `max_text_len` tokens long. So descriptions are packed into as few prompts as fit ("chunks"), each
(image, chunk) pair runs through the model, and every kept box is mapped back to a description through
the tokens: tokens scoring above `text_threshold` form the box's phrase (as in the original `predict`),
and the box belongs to the description holding most of those tokens (ties: the higher peak). The box's
score is the peak token score within that description, and it is kept when that beats `box_threshold`.
Working on token positions instead of decoding the phrase text back means a box always maps to exactly
one of the requested descriptions, even when the phrase is a fragment of it.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from grainclip.annotate.base import chunks
from grainclip.annotate.grounders.common import cxcywh_to_original, select_regions
from grainclip.annotate.grounders.detector import DetectorGrounder
from grainclip.annotate.types import Grounding, GroundRequest


@dataclass(frozen=True)
class PhraseChunk:
    """One prompt: `text` holds descriptions[first : first + count], each at char span `spans[k]`."""

    text: str
    first: int
    spans: tuple[tuple[int, int], ...]


def phrase_text(description: str) -> str:
    """How a description appears in the prompt: lower case, no '.' (it separates phrases)."""
    return " ".join(description.replace(".", " ").lower().split())


def pack_chunks(descriptions: Sequence[str], token_counts: Sequence[int], max_tokens: int) -> list[PhraseChunk]:
    """Greedily pack descriptions, in order, into prompts of at most `max_tokens` tokens.

    `token_counts[i]` is the token count of phrase_text(descriptions[i]) alone; each phrase also costs one
    token for its ".", and every prompt two for the special tokens. A phrase too long for any prompt gets
    a prompt of its own (the tokenizer truncates it).
    """
    chunks: list[PhraseChunk] = []
    text, spans, first, used = "", [], 0, 2
    for index, (description, count) in enumerate(zip(descriptions, token_counts, strict=True)):
        phrase = phrase_text(description)
        if spans and used + count + 1 > max_tokens:
            chunks.append(PhraseChunk(text, first, tuple(spans)))
            text, spans, first, used = "", [], index, 2
        start = len(text) + (1 if text else 0)
        text = f"{text} {phrase}." if text else f"{phrase}."
        spans.append((start, start + len(phrase)))
        used += count + 1
    if spans:
        chunks.append(PhraseChunk(text, first, tuple(spans)))
    return chunks


def token_spans(offsets: np.ndarray, char_spans: Sequence[tuple[int, int]]) -> list[np.ndarray]:
    """Token positions of each char span, from a tokenizer's offset mapping (T, 2); special tokens are (0, 0)."""
    starts, ends = offsets[:, 0], offsets[:, 1]
    real = ends > starts
    return [np.flatnonzero(real & (starts >= lo) & (starts < hi)) for lo, hi in char_spans]


def assign_boxes(
    token_probs: np.ndarray, spans: Sequence[np.ndarray], box_threshold: float, text_threshold: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Map each query box to a description. `token_probs` (Q, T) sigmoid scores; returns (query, label, score)."""
    num_queries = token_probs.shape[0]
    hits = np.zeros((num_queries, len(spans)), dtype=np.float32)
    peaks = np.zeros((num_queries, len(spans)), dtype=np.float32)
    for label, span in enumerate(spans):
        if span.size:
            probs = token_probs[:, span]
            hits[:, label] = (probs > text_threshold).sum(axis=1)
            peaks[:, label] = probs.max(axis=1)
    label = np.argmax(hits + 0.5 * peaks, axis=1)  # most phrase tokens first; peak (< 1 token) breaks ties
    rows = np.arange(num_queries)
    score = peaks[rows, label]
    keep = (hits[rows, label] > 0) & (score > box_threshold)
    return rows[keep], label[keep], score[keep]


class PhraseGrounder(DetectorGrounder):
    """A Grounding DINO backend: subclasses load the model and tokenizer, `_encode` inputs and run `_forward`."""

    #: a fast tokenizer (offset mapping) that tokenizes exactly as the model does; used on the prefetch thread only
    tokenizer: object
    max_text_len: int

    @abstractmethod
    def _encode(self, images: list, texts: list[str]) -> Any:
        """The CPU side of (image, prompt) pairs: what `_forward` takes (pixels, tokens, offsets)."""

    @abstractmethod
    def _forward(self, encoded: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Run the model on encoded (image, prompt) pairs.

        Returns (token_probs (N, Q, T), pred_boxes (N, Q, 4) cxcywh normalised, offsets (N, T, 2)) where
        token position t is the same in token_probs and offsets.
        """

    def chunks_for(self, descriptions: Sequence[str]) -> list[PhraseChunk]:
        counts = [len(self.tokenizer(phrase_text(d), add_special_tokens=False)["input_ids"]) for d in descriptions]
        return pack_chunks(descriptions, counts, self.max_text_len)

    def _prepare(self, requests: Sequence[GroundRequest]) -> list[tuple[list[tuple[int, PhraseChunk]], Any]]:
        """Every (request, prompt) pair, in forward batches of `batch_size` pairs, each with its encoded inputs."""
        pairs = [(i, chunk) for i, r in enumerate(requests) for chunk in self.chunks_for(r.descriptions)]
        return [
            (list(batch), self._encode([requests[i].image for i, _ in batch], [c.text for _, c in batch]))
            for batch in chunks(pairs, self.config.batch_size)
        ]

    def _run(
        self, requests: Sequence[GroundRequest], prepared: list[tuple[list[tuple[int, PhraseChunk]], Any]]
    ) -> list[Grounding]:
        found: list[list[tuple[np.ndarray, np.ndarray, np.ndarray]]] = [[] for _ in requests]
        for batch, encoded in prepared:
            probs, pred_boxes, offsets = self._forward(encoded)
            for k, (i, chunk) in enumerate(batch):
                spans = token_spans(offsets[k], chunk.spans)
                queries, labels, scores = assign_boxes(
                    probs[k], spans, self.config.box_threshold, self.config.text_threshold
                )
                found[i].append((cxcywh_to_original(pred_boxes[k][queries]), scores, labels + chunk.first))
        groundings = []
        for request, parts in zip(requests, found, strict=True):
            boxes, scores, labels = (np.concatenate(column) for column in zip(*parts, strict=True))
            groundings.append(
                Grounding.from_regions(select_regions(request.descriptions, boxes, scores, labels, self.config))
            )
        return groundings
