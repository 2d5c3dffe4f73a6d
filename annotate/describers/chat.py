"""What the LLM describers (vllm, openai, hf) share: prompt in, parsed Description out.

A backend only implements `complete`: turn a batch of (prompt text, image or None) into completions. This
class decides what each request sends (the image for multimodal models, otherwise the alt-text), renders
the versioned prompt, isolates failures to their rows, and parses the answers.

Backends whose requests are independent coroutines (vllm's async engine, openai's HTTP client) implement
`ConcurrentChatDescriber.complete_one` instead: every request runs on the describer's own event loop, a failed
request fails its row alone, and `describe_async` lets a caller keep several batches in flight, so the engine
(or the endpoint's connection pool) never waits for the slowest answer of one batch before the next arrives.
"""

from __future__ import annotations

import asyncio
import threading
from abc import abstractmethod
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

from grainclip.annotate.base import Describer, chunks, map_isolating_failures
from grainclip.annotate.parsing import ParseError, clean_caption, parse_answer
from grainclip.annotate.prompts import description_json_schema, get_prompt
from grainclip.annotate.types import DescribeRequest, Description
from grainclip.config.annotate import DescriberConfig
from grainclip.schema import Status

if TYPE_CHECKING:
    from PIL import Image

T = TypeVar("T")


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
        results, runnable = self.prompts_for(requests)
        size = self.config.batch_size or self.default_batch_size or max(len(runnable), 1)
        for batch in chunks(runnable, size):
            completions = map_isolating_failures(
                [prompt for _, prompt in batch],
                self.complete,
                lambda _prompt, exc: Completion(None, error=f"{type(exc).__name__}: {exc}"),
                fatal=self.fatal_errors,
            )
            self.fill(results, batch, completions)
        return results  # type: ignore[return-value]

    def prompts_for(
        self, requests: Sequence[DescribeRequest]
    ) -> tuple[list[Description | None], list[tuple[int, ChatPrompt]]]:
        """Each request's prompt with its position; requests without one are failed in the results already."""
        results: list[Description | None] = [None] * len(requests)
        runnable: list[tuple[int, ChatPrompt]] = []
        for index, request in enumerate(requests):
            try:
                runnable.append((index, self.to_prompt(request)))
            except ValueError as exc:
                results[index] = Description.failed(str(exc))
        return results, runnable

    def fill(
        self,
        results: list[Description | None],
        prompts: Sequence[tuple[int, ChatPrompt]],
        completions: Sequence[Completion],
    ) -> None:
        for (index, _), completion in zip(prompts, completions, strict=True):
            results[index] = self.to_description(completion)

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


class EventLoopThread:
    """A private asyncio loop in a daemon thread.

    A describer's client (AsyncLLM, AsyncOpenAI) is bound to the loop it was made on. Owning that loop makes the
    describer work the same from scripts, notebooks that run their own loop, synchronous Ray actors and async
    ones (whose loop Ray owns): callers block on `run` or await `submit` from any other loop.
    """

    def __init__(self, name: str) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name=name, daemon=True)
        self._thread.start()

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        """Run `coroutine` on this loop and wait for its result (not from this loop's own thread)."""
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result()

    def submit(self, coroutine: Coroutine[Any, Any, T]) -> Awaitable[T]:
        """Run `coroutine` on this loop; the result is awaitable from the caller's (running) loop."""
        return asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coroutine, self._loop))

    def call(self, function: Callable[[], T]) -> T:
        """Call a plain function on this loop's thread (for APIs that must not be used from another thread)."""

        async def call() -> T:
            return function()

        return self.run(call())

    @property
    def closed(self) -> bool:
        return self._loop.is_closed()

    def close(self) -> None:
        if self.closed:
            return
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()


class ConcurrentChatDescriber(ChatDescriber):
    """A chat describer whose requests are independent coroutines on its own loop (`self.loop`).

    `complete` runs one batch's requests concurrently; `describe_async` is the same for a caller that keeps several
    batches in flight (the pipeline's describe stage with `batches_in_flight` > 1). Per-request failures are the
    Completion's error, so a bad prompt never costs its neighbours a retry; only `fatal_errors` raise.
    """

    #: Measured (benchmarks/RESULTS.md, "Describe stage with batches in flight"): on 1,024 long-tailed prompts in
    #: batches of 32, 8 / 16 / 32 in flight gave 0.78-0.84 / 0.88-0.94 / 0.91-0.92 of one LLM.generate (medians of 5;
    #: 1 at a time: 0.30-0.32). 32 x 32 rows = 1,024 requests, vLLM's max_num_seqs on an H100/H200 (256 elsewhere,
    #: so the engine always has a queue); Ray Data LLM's max_concurrent_batches default is 8.
    default_batches_in_flight = 32

    def __init__(self, config: DescriberConfig) -> None:
        super().__init__(config)
        self.loop = EventLoopThread(f"{type(self).__name__}-loop")

    @abstractmethod
    async def complete_one(self, prompt: ChatPrompt) -> Completion:
        """The answer to one prompt, on `self.loop`; a failed request returns a Completion with `error` set."""

    async def complete_all(self, prompts: Sequence[ChatPrompt]) -> list[Completion]:
        return list(await asyncio.gather(*(self.complete_one(prompt) for prompt in prompts)))

    def complete(self, prompts: Sequence[ChatPrompt]) -> list[Completion]:
        return self.loop.run(self.complete_all(prompts))

    async def describe_async(self, requests: Sequence[DescribeRequest]) -> list[Description]:
        results, runnable = self.prompts_for(requests)
        completions = await self.loop.submit(self.complete_all([prompt for _, prompt in runnable]))
        self.fill(results, runnable, completions)
        return results  # type: ignore[return-value]
