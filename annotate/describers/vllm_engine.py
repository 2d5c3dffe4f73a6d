"""`vllm` describer: an in-process vLLM async engine (`AsyncLLM`), the throughput path on GPU nodes.

Every prompt is its own engine request on the describer's loop (`ConcurrentChatDescriber`): the engine's
continuous batching schedules the requests of every batch a caller keeps in flight (`describe_async`), so it never
idles on the longest answer of one batch while the next waits. A request the engine rejects (a prompt longer than
max_model_len) fails its row alone. The model's chat template is applied as `LLM.chat` applies it: by vLLM's own
renderer, or for text-only prompts by the tokenizer in one call per batch where a probe at start-up shows that gives
the renderer's tokens (it is faster). Multimodal models (vLLM's own model config says so, unless `multimodal` is
set) get the image as a PIL image part; text-only models get the alt-text prompt. With `structured_output` the
decoder is constrained to the bounded JSON schema of prompts.py (`StructuredOutputsParams(json=...)`; vLLM 0.32
removed `guided_json`, which would be silently ignored).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import os
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from grainclip.annotate.describers.chat import ChatDescriber, ChatPrompt, Completion, ConcurrentChatDescriber
from grainclip.config.annotate import DEFAULT_MAX_MODEL_LEN, DescriberConfig, EngineConfig
from grainclip.config.base import ConfigError

log = logging.getLogger(__name__)

#: Keys of a Hugging Face config.json that bound the context (the ones vLLM reads), and the vision-tower keys
#: that make a model multimodal.
CONTEXT_KEYS = ("max_position_embeddings", "n_positions", "max_seq_len", "seq_length", "max_sequence_length")
VISION_KEYS = ("vision_config", "vision_tower", "mm_vision_tower", "visual")
#: vLLM's default sequences per engine step on CPU (EngineArgs, LLM class), and the share of the available RAM a
#: CPU engine's KV cache may take by default.
CPU_DEFAULT_MAX_NUM_SEQS = 256
CPU_KV_CACHE_SHARE = 0.25
#: vLLM's own CPU setting (GiB); when set it wins over the engine arguments.
KV_CACHE_ENV = "VLLM_CPU_KVCACHE_SPACE"
DTYPE_BYTES = {"float32": 4, "float": 4, "float64": 8}


@dataclass(frozen=True)
class ModelFacts:
    """What a model's local config.json says about its limits, read without vLLM or the hub."""

    path: Path
    context: int | None  # None: unbounded or scaled (rope_scaling) -- left to vLLM
    context_key: str | None
    multimodal: bool
    model_type: str | None
    kv_bytes_per_token: int | None

    @classmethod
    def read(cls, model: str, dtype: str) -> ModelFacts | None:
        """The facts of a local folder or an already downloaded hub model; None when neither is here."""
        path = Path(model) / "config.json"
        if not path.is_file():
            try:
                from huggingface_hub import try_to_load_from_cache

                cached = try_to_load_from_cache(model, "config.json")
            except Exception:  # noqa: BLE001 -- not a hub id either: vLLM will say what it is
                return None
            if not isinstance(cached, str):
                return None
            path = Path(cached)
        config = json.loads(path.read_text())
        text = config.get("text_config") or config.get("llm_config") or config
        context_key = next((k for k in CONTEXT_KEYS if isinstance(text.get(k), int)), None)
        scaled = bool(text.get("rope_scaling") or config.get("rope_scaling"))
        layers, heads = text.get("num_hidden_layers"), text.get("num_attention_heads")
        hidden = text.get("hidden_size")
        head_dim = text.get("head_dim") or (hidden // heads if hidden and heads else None)
        kv_heads = text.get("num_key_value_heads") or heads
        torch_dtype = str(config.get("torch_dtype") or config.get("dtype") or text.get("dtype") or "bfloat16")
        width = DTYPE_BYTES.get(torch_dtype if dtype == "auto" else dtype, 2)
        return cls(
            path=path,
            context=None if scaled or context_key is None else int(text[context_key]),
            context_key=context_key,
            multimodal=any(key in config for key in VISION_KEYS),
            model_type=config.get("model_type"),
            kv_bytes_per_token=2 * layers * kv_heads * head_dim * width if layers and kv_heads and head_dim else None,
        )


def max_model_len(engine: EngineConfig, facts: ModelFacts | None) -> int | None:
    """The context to ask vLLM for: the configured one, else the model's own limit capped at the default."""
    if engine.max_model_len is not None:
        return engine.max_model_len
    if facts is None or facts.context is None:
        return None if facts is not None else DEFAULT_MAX_MODEL_LEN
    return min(facts.context, DEFAULT_MAX_MODEL_LEN)


def cpu_kv_cache_bytes(engine: EngineConfig, facts: ModelFacts | None, available: int) -> tuple[int, str]:
    """KV-cache bytes of an engine on CPU and how they were chosen ("config" or "machine").

    vLLM on CPU otherwise reserves `gpu_memory_utilization` (0.9) of ALL the RAM, which fails on any machine
    that runs something else, and buries the reason in hundreds of lines.
    """
    if engine.kv_cache_memory_bytes is not None:
        return engine.kv_cache_memory_bytes, "config"
    cap = int(available * CPU_KV_CACHE_SHARE)
    context = max_model_len(engine, facts)
    if facts is None or facts.kv_bytes_per_token is None or context is None:
        return cap, "machine"
    wanted = (engine.max_num_seqs or CPU_DEFAULT_MAX_NUM_SEQS) * context * facts.kv_bytes_per_token
    return min(wanted, cap), "machine"


def available_memory() -> int:
    import psutil

    return int(psutil.virtual_memory().available)


def engine_args(config: DescriberConfig) -> tuple[dict[str, Any], dict[str, Any]]:
    """The vLLM engine arguments of a describer config, and how its KV cache size was chosen (for the manifest).

    One owner for the describer and for benchmarks that give a reference `vllm.LLM` the same arguments.
    """
    from vllm.platforms import current_platform

    engine = config.engine
    facts = ModelFacts.read(str(config.model), engine.dtype)
    args: dict[str, Any] = {
        "model": config.model,
        "tensor_parallel_size": engine.tensor_parallel_size,
        "max_model_len": max_model_len(engine, facts),
        "gpu_memory_utilization": engine.gpu_memory_utilization,
        "dtype": engine.dtype,
        "enforce_eager": current_platform.is_cpu() if engine.enforce_eager is None else engine.enforce_eager,
        "trust_remote_code": engine.trust_remote_code,
        "seed": engine.seed,
        "limit_mm_per_prompt": {"image": 1},  # one image per request; also bounds the memory profiling
        # Compact JSON: whitespace between JSON tokens is wasted output (and all a random model emits).
        "structured_outputs_config": {"backend": engine.structured_outputs_backend, "disable_any_whitespace": True},
        "disable_log_stats": True,  # as vllm.LLM: no periodic throughput lines in every actor's log
    }
    if engine.max_num_seqs:
        args["max_num_seqs"] = engine.max_num_seqs
    kv_cache: dict[str, Any] = {"bytes": engine.kv_cache_memory_bytes, "chosen_by": "config"}
    if current_platform.is_cpu() and os.environ.get(KV_CACHE_ENV):
        kv_cache = {"bytes": int(os.environ[KV_CACHE_ENV]) * 2**30, "chosen_by": KV_CACHE_ENV}
    elif current_platform.is_cpu():
        size, chosen_by = cpu_kv_cache_bytes(engine, facts, available_memory())
        kv_cache = {"bytes": size, "chosen_by": chosen_by}
    elif engine.kv_cache_memory_bytes is None:
        kv_cache = {"bytes": None, "chosen_by": f"gpu_memory_utilization {engine.gpu_memory_utilization}"}
    if kv_cache["bytes"] is not None:
        args["kv_cache_memory_bytes"] = kv_cache["bytes"]
    return {**args, **engine.extra}, kv_cache  # `extra`: any vLLM engine argument, overriding ours


class VLLMDescriber(ConcurrentChatDescriber):
    def __init__(self, config: DescriberConfig) -> None:
        super().__init__(config)
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind, StructuredOutputsParams
        from vllm.v1.engine.exceptions import EngineDeadError

        # A dead engine cannot serve any later row: raise it so the process (a Ray actor) dies and is
        # restarted with a fresh engine, instead of marking every following row as failed (or hanging).
        self.fatal_errors = (*ChatDescriber.fatal_errors, EngineDeadError)
        args, self.kv_cache = engine_args(config)  # kv_cache: recorded by info() in the manifest
        log.info("vLLM KV cache: %s bytes (chosen by %s)", self.kv_cache["bytes"], self.kv_cache["chosen_by"])
        self.engine = self.loop.run(self._start_engine(args))
        self._request_ids = itertools.count()
        detected = bool(self.engine.model_config.is_multimodal_model)
        if config.multimodal and not detected:
            self.close()
            raise ConfigError(f"describer.multimodal is true but vLLM reports {config.model} as text-only")
        self.multimodal = detected if config.multimodal is None else config.multimodal
        #: text-only prompts skip vLLM's chat renderer (`template_tokens`), where that gives the same tokens
        self.templates_text_itself = not self.multimodal and self.loop.run(self._renders_like_chat())
        log.info("vLLM prompts rendered by %s", "the tokenizer" if self.templates_text_itself else "vLLM's renderer")
        sampling = config.sampling
        self.sampling_params = SamplingParams(
            temperature=sampling.temperature,
            top_p=sampling.top_p,
            max_tokens=sampling.max_tokens,
            repetition_penalty=sampling.repetition_penalty,
            seed=sampling.seed,
            structured_outputs=(StructuredOutputsParams(json=self.json_schema) if config.structured_output else None),
            # Only the finished answer is read. AsyncLLM's default (CUMULATIVE) builds a RequestOutput with the whole
            # text so far at every step of every request, work that grows with the square of the answer's length;
            # LLM.generate asks for FINAL_ONLY too.
            output_kind=RequestOutputKind.FINAL_ONLY,
        )

    async def _start_engine(self, args: dict[str, Any]):
        """The engine, made on the describer's loop: its output handler runs there."""
        from vllm.config import StructuredOutputsConfig
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.renderers import ChatParams
        from vllm.utils.mistral import is_mistral_tokenizer
        from vllm.v1.engine.async_llm import AsyncLLM

        args = {**args, "structured_outputs_config": StructuredOutputsConfig(**args["structured_outputs_config"])}
        engine = AsyncLLM.from_engine_args(AsyncEngineArgs(**args))
        # What LLM.chat renders with: the model's own template, a generation prompt, and no second BOS (the
        # template holds it).
        template_kwargs = {"add_generation_prompt": True, "continue_final_message": False}
        template_kwargs["tokenize"] = is_mistral_tokenizer(engine.renderer.tokenizer)
        self._chat_params = ChatParams(chat_template_kwargs=template_kwargs)
        self._tok_params = engine.renderer.default_chat_tok_params.with_kwargs(add_special_tokens=False)
        return engine

    async def complete_all(self, prompts: Sequence[ChatPrompt]) -> list[Completion]:
        if not self.templates_text_itself:
            return await super().complete_all(prompts)
        ids = self.template_tokens([prompt.text for prompt in prompts])
        return list(await asyncio.gather(*(self._complete(p, self._tokens_input, i) for p, i in zip(prompts, ids))))

    async def complete_one(self, prompt: ChatPrompt) -> Completion:
        return await self._complete(prompt, self.chat_input, prompt)

    def template_tokens(self, texts: Sequence[str]) -> list[list[int]]:
        """Text-only prompts through the chat template and the tokenizer, one call for the whole batch.

        vLLM's chat renderer parses every conversation as a multimodal one and tokenizes it in a thread pool, one
        prompt at a time: on a busy CPU that is most of what the describe stage costs beyond `LLM.generate` on
        ready prompts (benchmarks/RESULTS.md). Used only where `templates_text_itself` checked it gives the
        renderer's tokens.
        """
        tokenizer = self.engine.renderer.get_tokenizer()
        rendered = [
            tokenizer.apply_chat_template(
                [{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True
            )
            for text in texts
        ]
        return tokenizer(rendered, add_special_tokens=False)["input_ids"]

    async def chat_input(self, prompt: ChatPrompt) -> Any:
        conversation = [{"role": "user", "content": self._content(prompt)}]
        _, (engine_input,) = await self.engine.renderer.render_chat_async(
            [conversation], self._chat_params, self._tok_params
        )
        return engine_input

    async def _tokens_input(self, token_ids: list[int]) -> Any:
        from vllm.renderers.inputs.preprocess import parse_model_prompt

        prompt = parse_model_prompt(self.engine.model_config, {"prompt_token_ids": token_ids})
        (engine_input,) = self.engine.renderer.render_cmpl([prompt], self._tok_params)
        return engine_input

    async def _complete(self, prompt: ChatPrompt, render: Callable[[Any], Awaitable[Any]], what: Any) -> Completion:
        """One request: `render(what)` makes the engine input, then the engine answers `prompt`."""
        final = None
        try:
            engine_input = await render(what)
            params, request_id = self.request_sampling(prompt), str(next(self._request_ids))
            async for output in self.engine.generate(engine_input, params, request_id):
                final = output
        except self.fatal_errors:
            raise
        except Exception as exc:  # noqa: BLE001 -- the engine rejected this request alone (e.g. too long)
            return Completion(None, error=f"{type(exc).__name__}: {exc}")
        if final is None or not final.outputs:
            return Completion(None, error="the engine returned no output")
        return Completion(
            text=final.outputs[0].text,
            num_prompt_tokens=len(final.prompt_token_ids or ()),
            num_output_tokens=len(final.outputs[0].token_ids),
        )

    async def _renders_like_chat(self) -> bool:
        """Whether `template_tokens` gives the chat renderer's tokens here (a probe prompt through both)."""
        probe = ChatPrompt(self.prompt.render("a probe caption", self.config.max_descriptions, sees_image=False), None)
        try:
            chat = await self.chat_input(probe)
            (tokens,) = self.template_tokens([probe.text])
        except Exception:  # noqa: BLE001 -- a tokenizer without a usable template (mistral): the renderer's path
            return False
        return list(chat["prompt_token_ids"]) == list(tokens)

    def request_sampling(self, prompt: ChatPrompt):
        """One request's SamplingParams: the config's for every prompt (a benchmark varies them per prompt)."""
        return self.sampling_params

    @staticmethod
    def _content(prompt: ChatPrompt) -> list[dict[str, Any]]:
        text = {"type": "text", "text": prompt.text}
        if prompt.image is None:
            return [text]
        return [{"type": "image_pil", "image_pil": prompt.image}, text]

    def info(self) -> dict[str, Any]:
        import vllm

        return {
            **super().info(),
            "engine": self.config.engine.model_dump(),
            "max_model_len": self.engine.model_config.max_model_len,
            "kv_cache": self.kv_cache,
            "vllm_version": vllm.__version__,
        }

    @classmethod
    def problems(cls, config: DescriberConfig, workers_on_cpu: bool) -> list[str]:
        """Engine arguments against the model's local config.json, and the CPU KV cache against this machine."""
        engine = config.engine
        facts = ModelFacts.read(str(config.model), engine.dtype)
        if facts is None:
            log.info(
                "no local config.json for %s: its engine arguments are checked by vLLM when it starts", config.model
            )
            return []
        found = []
        if engine.max_model_len is not None and facts.context is not None and engine.max_model_len > facts.context:
            found.append(
                f"describe.describer.engine.max_model_len {engine.max_model_len} is above the model's limit of "
                f"{facts.context} ({facts.context_key} in {facts.path}); set it to at most {facts.context}, or "
                f"leave it unset for the model's own limit (at most {DEFAULT_MAX_MODEL_LEN})"
            )
        if config.multimodal and not facts.multimodal:
            found.append(
                f"describe.describer.multimodal is true but {config.model} is a text-only model (model_type "
                f"{facts.model_type!r}, no vision config in {facts.path}); unset it, or pick a vision-language model"
            )
        if workers_on_cpu:
            found += _cpu_memory_problems(engine, facts)
        return found

    def close(self) -> None:
        """Shut the engine core down (its worker processes and memory) so a test or notebook can go on."""
        engine = self.__dict__.pop("engine", None)
        if engine is not None and not self.loop.closed:
            self.loop.call(engine.shutdown)
        self.loop.close()


def _cpu_memory_problems(engine: EngineConfig, facts: ModelFacts) -> list[str]:
    """The KV cache a CPU engine will reserve: does it fit this machine, does it hold one full-length sequence."""
    available = available_memory()
    size, chosen_by = cpu_kv_cache_bytes(engine, facts, available)
    gib = 2**30
    found = []
    if size > available:
        found.append(
            f"describe.describer.engine.kv_cache_memory_bytes {size} ({size / gib:.1f} GiB) is more than the "
            f"{available / gib:.1f} GiB of memory available on this machine; lower it or leave it unset "
            "(sized from the machine)"
        )
    context = max_model_len(engine, facts)
    if facts.kv_bytes_per_token and context and size < context * facts.kv_bytes_per_token:
        where = (
            "set by describe.describer.engine.kv_cache_memory_bytes"
            if chosen_by == "config"
            else (f"a quarter of the {available / gib:.1f} GiB available")
        )
        found.append(
            f"the vLLM KV cache ({size / gib:.2f} GiB, {where}) holds {size // facts.kv_bytes_per_token} tokens, "
            f"fewer than one sequence of max_model_len {context}; lower describe.describer.engine.max_model_len "
            "or raise kv_cache_memory_bytes"
        )
    return found
