"""What the LLM describers (vllm, openai, hf) share: prompt in, parsed Description out.

A backend only implements `complete`: turn a batch of (prompt text, image or None) into completions. This
class decides what each request sends (the image for multimodal models, otherwise the alt-text), renders
the versioned prompt, isolates failures to their rows, and parses the answers.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from grainclip.annotate.base import Describer, chunks, map_isolating_failures
from grainclip.annotate.parsing import ParseError, clean_caption, parse_answer
from grainclip.annotate.prompts import description_json_schema, get_prompt
from grainclip.annotate.types import DescribeRequest, Description
from grainclip.config.annotate import DescriberConfig
from grainclip.schema import Status

if TYPE_CHECKING:
    from PIL import Image


@dataclass
class Completion:
    """One answer from the model; `error` set when this request failed (after the backend's retries)."""

    text: str | None
    num_prompt_tokens: int = 0
    num_output_tokens: int = 0
    error: str | None = None


@dataclass
class ChatPrompt:
    """One request as the model receives it: the user message text and the image it sees (if any)."""

    text: str
    image: Image.Image | None


class ChatDescriber(Describer):
    """Base of the LLM-backed describers. Subclasses set `self.multimodal` while loading their model."""

    #: exceptions meaning the backend itself is broken (raised, not recorded per row)
    fatal_errors: ClassVar[tuple[type[BaseException], ...]] = (MemoryError,)
    #: requests per `complete` call when the config sets no batch_size (None: the whole batch at once)
    default_batch_size: ClassVar[int | None] = None

    def __init__(self, config: DescriberConfig) -> None:
        super().__init__(config)
        self.prompt = get_prompt(config.prompt)
        self.json_schema = description_json_schema(
            config.max_descriptions, config.max_description_chars, config.max_caption_chars
        )
        self.multimodal = bool(config.multimodal)

    @abstractmethod
    def complete(self, prompts: Sequence[ChatPrompt]) -> list[Completion]:
        """The model's raw answer to each prompt (same order); raises only if the whole call failed."""

    @property
    def uses_structured_output(self) -> bool:
        """Whether this backend constrains decoding to `json_schema` (overridden where unsupported)."""
        return self.config.structured_output

    def to_prompt(self, request: DescribeRequest) -> ChatPrompt:
        """What the model receives: the image if it can see it, else the alt-text alone (error if none)."""
        caption = clean_caption(request.caption, self.config.max_alt_text_chars)  # crawls hold 10 kB alt-texts
        if self.multimodal and request.image is not None:
            return ChatPrompt(self.prompt.render(caption, self.config.max_descriptions, sees_image=True), request.image)
        if not caption:
            why = "the request has no image" if self.multimodal else "the model is text-only"
            raise ValueError(f"nothing to describe: {why} and the caption is empty")
        return ChatPrompt(self.prompt.render(caption, self.config.max_descriptions, sees_image=False), None)

    def describe(self, requests: Sequence[DescribeRequest]) -> list[Description]:
        results: list[Description | None] = [None] * len(requests)
        runnable: list[tuple[int, ChatPrompt]] = []
        for index, request in enumerate(requests):
            try:
                runnable.append((index, self.to_prompt(request)))
            except ValueError as exc:
                results[index] = Description.failed(str(exc))
        size = self.config.batch_size or self.default_batch_size or max(len(runnable), 1)
        for batch in chunks(runnable, size):
            completions = map_isolating_failures(
                [prompt for _, prompt in batch],
                self.complete,
                lambda _prompt, exc: Completion(None, error=f"{type(exc).__name__}: {exc}"),
                fatal=self.fatal_errors,
            )
            for (index, _), completion in zip(batch, completions, strict=True):
                results[index] = self.to_description(completion)
        return results  # type: ignore[return-value]

    def to_description(self, completion: Completion) -> Description:
        tokens = {"num_prompt_tokens": completion.num_prompt_tokens, "num_output_tokens": completion.num_output_tokens}
        if completion.error is not None:
            return Description.failed(f"LLM request failed: {completion.error}", **tokens)
        cfg = self.config
        try:
            answer = parse_answer(
                completion.text, cfg.max_descriptions, cfg.max_description_chars, cfg.max_caption_chars
            )
        except ParseError as exc:
            snippet = (completion.text or "")[:160]
            return Description.failed(f"unusable LLM output: {exc}; output starts {snippet!r}", **tokens)
        return Description(answer.caption, answer.descriptions, Status.OK.value, None, **tokens)

    def info(self) -> dict[str, Any]:
        return {
            **super().info(),
            "prompt": self.prompt.name,
            "prompt_sha256": self.prompt.sha256,
            "multimodal": self.multimodal,
            "structured_output": self.uses_structured_output,
            "max_descriptions": self.config.max_descriptions,
            "sampling": self.config.sampling.model_dump(),
        }
