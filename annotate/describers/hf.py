"""`hf` describer: transformers `generate` in batches, for small CPU runs and machines without vLLM.

Prompts are left-padded so a batch generates together. Vision-language checkpoints (their config has a
`vision_config`) load with AutoModelForImageTextToText + AutoProcessor and see the image; others load with
AutoModelForCausalLM and get the alt-text prompt. transformers has no JSON-constrained decoding, so output
goes through the tolerant parser alone (`structured_output` is reported as false in the manifest).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pydantic import Field

from grainclip.annotate.describers.chat import ChatDescriber, ChatPrompt, Completion
from grainclip.config.annotate import DescriberConfig
from grainclip.config.base import ConfigError, ConfigModel, parse_config
from grainclip.devices import resolve_device


class HFOptions(ConfigModel):
    device: str = Field("auto", description="'auto' (cuda if available), 'cpu', 'cuda', ...")
    dtype: str = Field("auto", description="torch dtype name, or 'auto' (the checkpoint's own).")
    trust_remote_code: bool = False


class HFDescriber(ChatDescriber):
    default_batch_size = 8  # padded generate: memory grows with the batch

    def __init__(self, config: DescriberConfig) -> None:
        super().__init__(config)
        import torch
        from transformers import (
            AutoConfig,
            AutoModelForCausalLM,
            AutoModelForImageTextToText,
            AutoProcessor,
            AutoTokenizer,
        )

        self.fatal_errors = (*ChatDescriber.fatal_errors, torch.OutOfMemoryError)
        self.options = parse_config(config.options, HFOptions, source="describer.options (hf)")
        remote = self.options.trust_remote_code
        detected = hasattr(AutoConfig.from_pretrained(config.model, trust_remote_code=remote), "vision_config")
        if config.multimodal and not detected:
            raise ConfigError(f"describer.multimodal is true but {config.model} has no vision_config (text-only)")
        self.multimodal = detected if config.multimodal is None else config.multimodal
        self.device = resolve_device(self.options.device)
        dtype = self.options.dtype if self.options.dtype == "auto" else getattr(torch, self.options.dtype)
        model_class = AutoModelForImageTextToText if detected else AutoModelForCausalLM
        self.model = model_class.from_pretrained(config.model, dtype=dtype, trust_remote_code=remote).to(self.device)
        self.model.eval()
        if detected:
            self.processor = AutoProcessor.from_pretrained(config.model, trust_remote_code=remote)
            self.tokenizer = self.processor.tokenizer
        else:
            self.tokenizer = AutoTokenizer.from_pretrained(config.model, trust_remote_code=remote)
        self.tokenizer.padding_side = "left"  # decoder-only batches must end where generation starts
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token

    @property
    def uses_structured_output(self) -> bool:
        return False

    def complete(self, prompts: Sequence[ChatPrompt]) -> list[Completion]:
        """Image and text-only prompts are generated as separate batches (their inputs differ in kind)."""
        results: list[Completion | None] = [None] * len(prompts)
        for with_image in (True, False):
            indices = [i for i, p in enumerate(prompts) if (p.image is not None) == with_image]
            if indices:
                for index, completion in zip(indices, self._generate([prompts[i] for i in indices]), strict=True):
                    results[index] = completion
        return results  # type: ignore[return-value]

    def _generate(self, prompts: Sequence[ChatPrompt]) -> list[Completion]:
        import torch

        conversations = [[{"role": "user", "content": self._content(p)}] for p in prompts]
        template_args = {"add_generation_prompt": True, "tokenize": True, "return_dict": True, "return_tensors": "pt"}
        if self.multimodal:  # processors take tokenizer settings in processor_kwargs, tokenizers directly
            inputs = self.processor.apply_chat_template(
                conversations, **template_args, processor_kwargs={"padding": True}
            )
        else:
            inputs = self.tokenizer.apply_chat_template(conversations, **template_args, padding=True)
        inputs = inputs.to(self.device)
        sampling = self.config.sampling
        if sampling.seed is not None:
            torch.manual_seed(sampling.seed)
        sample = sampling.temperature > 0
        with torch.inference_mode():
            generated = self.model.generate(
                **inputs,
                max_new_tokens=sampling.max_tokens,
                do_sample=sample,
                **({"temperature": sampling.temperature, "top_p": sampling.top_p} if sample else {}),
                repetition_penalty=sampling.repetition_penalty,
                pad_token_id=self.tokenizer.pad_token_id,
            )
        new_tokens = generated[:, inputs["input_ids"].shape[1] :]
        texts = self.tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
        prompt_lengths = inputs["attention_mask"].sum(dim=1).tolist()
        output_lengths = (new_tokens != self.tokenizer.pad_token_id).sum(dim=1).tolist()
        return [Completion(t, int(p), int(o)) for t, p, o in zip(texts, prompt_lengths, output_lengths, strict=True)]

    def _content(self, prompt: ChatPrompt) -> str | list[dict[str, Any]]:
        if not self.multimodal:
            return prompt.text  # text-only chat templates expect plain string content
        parts: list[dict[str, Any]] = [{"type": "text", "text": prompt.text}]
        if prompt.image is not None:
            parts.insert(0, {"type": "image", "image": prompt.image})
        return parts

    def info(self) -> dict[str, Any]:
        import transformers

        return {**super().info(), **self.options.model_dump(), "transformers_version": transformers.__version__}

    def close(self) -> None:
        self.__dict__.pop("model", None)
