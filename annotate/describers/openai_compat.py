"""`openai` describer: any OpenAI-compatible chat endpoint (a `vllm serve` fleet, a hosted API).

Requests run concurrently on the describer's private asyncio loop (`ConcurrentChatDescriber`), bounded by one
semaphore for all of them: with several batches in flight (`describe_async`) the next batch's requests take the
slots the last one's slowest answers leave free, so the pool stays busy across batches. Timeouts,
HTTP 429 and 5xx are retried with exponential backoff and jitter; a request that still fails becomes a
describe_failed row. The API key is read from the environment variable NAMED in the config; the key itself
never appears in the config, logs, errors or manifest.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import os
import random
from typing import Any, Literal

from pydantic import Field

from grainclip.annotate.describers.chat import ChatPrompt, Completion, ConcurrentChatDescriber
from grainclip.annotate.image_prep import fit_within
from grainclip.config.annotate import DescriberConfig
from grainclip.config.base import ConfigError, ConfigModel, parse_config
from grainclip.images import encode_image

log = logging.getLogger(__name__)

NO_AUTH_KEY = "EMPTY"  # what servers without authentication (vllm serve) accept


class OpenAIOptions(ConfigModel):
    base_url: str = Field(description="Endpoint root, e.g. http://127.0.0.1:8000/v1")
    api_key_env: str | None = Field(
        "OPENAI_API_KEY", description="NAME of the environment variable holding the key; null for no auth."
    )
    max_concurrency: int = Field(16, gt=0, description="Requests in flight at once.")
    timeout_s: float = Field(120.0, gt=0)
    max_retries: int = Field(4, ge=0, description="Retries after the first attempt on timeouts, 429 and 5xx.")
    backoff_s: float = Field(1.0, gt=0, description="First retry delay; doubles each retry (with jitter).")
    max_backoff_s: float = Field(30.0, gt=0)
    image_format: Literal["JPEG", "PNG"] = Field("JPEG", description="How images are encoded into data URLs.")
    max_image_side: int = Field(1536, gt=0, description="Larger images are downscaled (aspect kept) before sending.")


def is_retryable(exc: BaseException) -> bool:
    import openai

    if isinstance(exc, openai.APIConnectionError):  # includes timeouts
        return True
    return isinstance(exc, openai.APIStatusError) and (exc.status_code == 429 or exc.status_code >= 500)


def backoff_delay(attempt: int, base_s: float, max_s: float) -> float:
    """Exponential backoff with jitter in [0.5, 1.5) x, so many clients do not retry in lockstep."""
    return min(max_s, base_s * 2**attempt) * random.uniform(0.5, 1.5)


def image_data_url(image, image_format: str) -> str:
    mime = "jpeg" if image_format == "JPEG" else "png"
    return f"data:image/{mime};base64,{base64.b64encode(encode_image(image, image_format, quality=90)).decode()}"


class OpenAIDescriber(ConcurrentChatDescriber):
    """`multimodal` must be set in the config to send images: an endpoint cannot be asked what it accepts."""

    def __init__(self, config: DescriberConfig) -> None:
        super().__init__(config)
        import openai

        self.options = parse_config(config.options, OpenAIOptions, source="describer.options (openai)")
        api_key = self._api_key()
        # Servers may echo the credential in an error body; every error text is scrubbed of it before it
        # becomes a row's error (Parquet, stats, manifest examples) or a log line.
        self._secret = api_key if api_key != NO_AUTH_KEY else None
        # The client and semaphore are created on the loop they are used on.
        self._client = self.loop.run(self._make_client(openai.AsyncOpenAI, api_key))
        self._semaphore = self.loop.run(self._make_semaphore())

    def _api_key(self) -> str:
        name = self.options.api_key_env
        if name is None:
            return NO_AUTH_KEY
        key = os.environ.get(name)
        if not key:
            raise ConfigError(f"describer.options.api_key_env names {name!r}, but that environment variable is not set")
        return key

    async def _make_client(self, client_class, api_key: str):
        # Retries are ours (below) so every attempt is bounded, logged and ends in a row status.
        return client_class(
            base_url=self.options.base_url, api_key=api_key, timeout=self.options.timeout_s, max_retries=0
        )

    async def _make_semaphore(self) -> asyncio.Semaphore:
        return asyncio.Semaphore(self.options.max_concurrency)

    async def complete_one(self, prompt: ChatPrompt) -> Completion:
        opts = self.options
        request = self._request(prompt)
        attempt = 0
        while True:
            try:
                async with self._semaphore:
                    response = await self._client.chat.completions.create(**request)
            except Exception as exc:
                if not is_retryable(exc):
                    return Completion(None, error=self._describe_error(exc))
                if attempt == opts.max_retries:
                    return Completion(None, error=f"{self._describe_error(exc)} (gave up after {attempt + 1} attempts)")
                delay = backoff_delay(attempt, opts.backoff_s, opts.max_backoff_s)
                log.info("retrying in %.1fs after %s", delay, self._describe_error(exc))
                await asyncio.sleep(delay)
                attempt += 1
                continue
            usage = response.usage
            return Completion(
                text=response.choices[0].message.content if response.choices else None,
                num_prompt_tokens=usage.prompt_tokens if usage else 0,
                num_output_tokens=usage.completion_tokens if usage else 0,
            )

    def _request(self, prompt: ChatPrompt) -> dict[str, Any]:
        content: list[dict[str, Any]] = [{"type": "text", "text": prompt.text}]
        if prompt.image is not None:
            url = image_data_url(fit_within(prompt.image, self.options.max_image_side), self.options.image_format)
            content.insert(0, {"type": "image_url", "image_url": {"url": url}})
        sampling = self.config.sampling
        request: dict[str, Any] = {
            "model": self.config.model,
            "messages": [{"role": "user", "content": content}],
            "temperature": sampling.temperature,
            "top_p": sampling.top_p,
            "max_tokens": sampling.max_tokens,
            "seed": sampling.seed,
        }
        if sampling.repetition_penalty != 1.0:
            request["extra_body"] = {"repetition_penalty": sampling.repetition_penalty}  # vLLM extension
        if self.config.structured_output:
            request["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": "grain_description", "schema": self.json_schema},
            }
        return request

    def _describe_error(self, exc: BaseException) -> str:
        text = _describe_error(exc)
        return text.replace(self._secret, "[api key redacted]") if self._secret else text

    def info(self) -> dict[str, Any]:
        # The key's variable NAME is recorded, never its value.
        return {**super().info(), **self.options.model_dump()}

    def close(self) -> None:
        if self.loop.closed:
            return
        self.loop.run(self._client.close())
        self.loop.close()


def _describe_error(exc: BaseException) -> str:
    status = getattr(exc, "status_code", None)
    return f"{type(exc).__name__}" + (f" (HTTP {status})" if status else "") + f": {exc}"
