"""`vllm` describer: an in-process `vllm.LLM` engine, the throughput path on GPU nodes.

The engine applies the model's chat template (`LLM.chat`). Multimodal models (vLLM's own model config says
so, unless `multimodal` is set) get the image as a PIL image part; text-only models get the alt-text prompt.
With `structured_output` the decoder is constrained to the bounded JSON schema of prompts.py
(`StructuredOutputsParams(json=...)`; vLLM 0.32 removed `guided_json`, which would be silently ignored).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from grainclip.annotate.describers.chat import ChatDescriber, ChatPrompt, Completion
from grainclip.config.annotate import DescriberConfig
from grainclip.config.base import ConfigError


class VLLMDescriber(ChatDescriber):
    def __init__(self, config: DescriberConfig) -> None:
        super().__init__(config)
        from vllm import LLM, SamplingParams
        from vllm.sampling_params import StructuredOutputsParams
        from vllm.v1.engine.exceptions import EngineDeadError

        # A dead engine cannot serve any later row: raise it so the process (a Ray actor) dies and is
        # restarted with a fresh engine, instead of marking every following row as failed (or hanging).
        self.fatal_errors = (*ChatDescriber.fatal_errors, EngineDeadError)
        engine = config.engine
        engine_args = {
            "model": config.model,
            "tensor_parallel_size": engine.tensor_parallel_size,
            "max_model_len": engine.max_model_len,
            "gpu_memory_utilization": engine.gpu_memory_utilization,
            "dtype": engine.dtype,
            "enforce_eager": engine.enforce_eager,
            "trust_remote_code": engine.trust_remote_code,
            "seed": engine.seed,
            "limit_mm_per_prompt": {"image": 1},  # one image per request; also bounds the memory profiling
            # Compact JSON: whitespace between JSON tokens is wasted output (and all a random model emits).
            "structured_outputs_config": {"backend": engine.structured_outputs_backend, "disable_any_whitespace": True},
        }
        if engine.max_num_seqs:
            engine_args["max_num_seqs"] = engine.max_num_seqs
        self.llm = LLM(**{**engine_args, **engine.extra})  # `extra`: any vLLM engine argument, overriding ours
        detected = bool(self.llm.model_config.is_multimodal_model)
        if config.multimodal and not detected:
            self.close()
            raise ConfigError(f"describer.multimodal is true but vLLM reports {config.model} as text-only")
        self.multimodal = detected if config.multimodal is None else config.multimodal
        sampling = config.sampling
        self.sampling_params = SamplingParams(
            temperature=sampling.temperature,
            top_p=sampling.top_p,
            max_tokens=sampling.max_tokens,
            repetition_penalty=sampling.repetition_penalty,
            seed=sampling.seed,
            structured_outputs=(StructuredOutputsParams(json=self.json_schema) if config.structured_output else None),
        )

    def complete(self, prompts: Sequence[ChatPrompt]) -> list[Completion]:
        conversations = [[{"role": "user", "content": self._content(prompt)}] for prompt in prompts]
        outputs = self.llm.chat(conversations, self.sampling_params, use_tqdm=False)
        return [
            Completion(
                text=output.outputs[0].text if output.outputs else None,
                num_prompt_tokens=len(output.prompt_token_ids or ()),
                num_output_tokens=len(output.outputs[0].token_ids) if output.outputs else 0,
            )
            for output in outputs
        ]

    @staticmethod
    def _content(prompt: ChatPrompt) -> list[dict[str, Any]]:
        text = {"type": "text", "text": prompt.text}
        if prompt.image is None:
            return [text]
        return [{"type": "image_pil", "image_pil": prompt.image}, text]

    def info(self) -> dict[str, Any]:
        import vllm

        return {**super().info(), "engine": self.config.engine.model_dump(), "vllm_version": vllm.__version__}

    def close(self) -> None:
        """Shut the engine core down (its worker processes and memory) so a test or notebook can go on."""
        llm = self.__dict__.pop("llm", None)
        if llm is not None:
            llm.llm_engine.engine_core.shutdown()
