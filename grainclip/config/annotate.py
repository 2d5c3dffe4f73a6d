"""Config models for the annotators: which describer (LLM) and grounder (detector) run, and how.

`name` selects a plugin from the `grainclip.describers` / `grainclip.grounders` entry-point groups, so swapping
the LLM is a change of `name`/`model` in YAML. Knobs every backend shares are typed fields here; knobs only one
backend understands go in `options`, which that backend validates with its own model (see e.g.
`grainclip.annotate.describers.openai_compat.OpenAIOptions`) so a typo there is an error too.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from grainclip.config.base import ConfigModel


class SamplingConfig(ConfigModel):
    """LLM sampling. Greedy by default: annotations should be reproducible run to run."""

    temperature: float = Field(0.0, ge=0.0, le=2.0, description="Sampling temperature; 0 is greedy.")
    top_p: float = Field(
        1.0, gt=0.0, le=1.0, description="Nucleus sampling: keep the likeliest tokens up to this total probability."
    )
    max_tokens: int = Field(512, gt=0, description="Room for a caption plus max_descriptions items as JSON.")
    repetition_penalty: float = Field(1.0, gt=0.0, description="Above 1 discourages repeating tokens.")
    seed: int | None = Field(0, description="Sampling seed; None: a different draw each run.")


#: The context an engine gets by default: GRAIN's prompts and answers are far shorter, and a longer context only
#: costs KV-cache memory.
DEFAULT_MAX_MODEL_LEN = 4096


class EngineConfig(ConfigModel):
    """vLLM engine arguments (the `vllm` describer only). `extra` is passed through to `vllm.LLM` verbatim.

    The defaults start on a GPU node and on a CPU-only machine alike: the context is capped at the model's own
    limit and, on CPU, the KV cache is sized from the machine (see `kv_cache_memory_bytes`).
    """

    tensor_parallel_size: int = Field(1, gt=0, description="GPUs one engine spans (vLLM tensor parallelism).")
    max_model_len: int | None = Field(
        None,
        gt=0,
        description=f"Context length in tokens. None: the model's own limit, at most {DEFAULT_MAX_MODEL_LEN}. A value "
        "above the model's limit (max_position_embeddings in its config.json) is refused before the run starts.",
    )
    gpu_memory_utilization: float = Field(
        0.9, gt=0.0, le=1.0, description="Fraction of the GPU's memory for weights and KV cache (GPU only)."
    )
    kv_cache_memory_bytes: int | None = Field(
        None,
        gt=0,
        description="KV-cache size in bytes. None: on a GPU, what gpu_memory_utilization leaves; on a CPU-only "
        "machine, room for max_num_seqs (vLLM's default 256) sequences of max_model_len tokens, at most a quarter of "
        "the memory available when the engine starts (vLLM on CPU would otherwise ask for 0.9 of all RAM). The "
        "choice is recorded in the run manifest. The VLLM_CPU_KVCACHE_SPACE variable (GiB) still overrides it.",
    )
    dtype: Literal["auto", "half", "float16", "bfloat16", "float", "float32"] = Field(
        "auto", description="Weight and activation dtype; auto: the model's own."
    )
    enforce_eager: bool | None = Field(
        None,
        description="Skip torch.compile / CUDA graphs. None: eager on a CPU-only machine (compiling takes many "
        "minutes on a few cores and gains little there), compiled on a GPU.",
    )
    max_num_seqs: int | None = Field(
        None, gt=0, description="Most sequences the engine schedules at once; None: vLLM's default."
    )
    trust_remote_code: bool = Field(
        False, description="Run model code shipped with the checkpoint (only for models you trust)."
    )
    seed: int = Field(0, description="Engine seed.")
    structured_outputs_backend: Literal["xgrammar", "guidance"] = Field(
        "xgrammar", description="vLLM backend that constrains decoding to the JSON schema."
    )
    extra: dict[str, Any] = Field(
        default_factory=dict, description="Other vLLM engine arguments (AsyncEngineArgs fields), passed verbatim."
    )


class DescriberConfig(ConfigModel):
    """Which LLM writes the improved caption and the short visual descriptions of an image."""

    name: str = Field("partsworld", description="Plugin name in the grainclip.describers entry-point group.")
    model: str | None = Field(None, description="Model id or local folder (None for the simulated describer).")
    batch_size: int | None = Field(
        None,
        gt=0,
        description="Requests per model call; callers may pass any number. None: the backend's choice (vllm and "
        "openai take the whole batch, their scheduler / concurrency limit does the rest; hf 8).",
    )
    prompt: str = Field("grain-v1", description="Name of a versioned prompt template (grainclip.annotate.prompts).")
    max_descriptions: int = Field(5, gt=0, le=64, description="Most visual descriptions kept per image.")
    max_description_chars: int = Field(100, gt=0, description="Longer items are dropped (see parsing.py).")
    max_caption_chars: int = Field(400, gt=0, description="Longer LLM captions are cut at a word boundary.")
    max_alt_text_chars: int = Field(1000, gt=0, description="Alt-text is cut to this before it enters the prompt.")
    structured_output: bool = Field(True, description="Constrain decoding to the JSON schema where supported.")
    multimodal: bool | None = Field(
        None, description="Send the image to the model. None: detect from the model (vllm, hf); openai needs it set."
    )
    sampling: SamplingConfig = Field(default_factory=SamplingConfig)
    engine: EngineConfig = Field(default_factory=EngineConfig)
    options: dict[str, Any] = Field(default_factory=dict, description="Backend-specific knobs.")

    @model_validator(mode="after")
    def _model_required_for_real_backends(self) -> DescriberConfig:
        if self.model is None and self.name in ("vllm", "openai", "hf"):
            raise ValueError(f"describer {self.name!r} needs `model` (a model id or a local folder)")
        return self


class GrounderConfig(ConfigModel):
    """Which open-vocabulary detector localises each description, and which boxes are kept.

    Paper defaults: keep boxes scoring above 0.3, NMS per description, at most 5 regions per image.
    """

    name: str = Field("partsworld", description="Plugin name in the grainclip.grounders entry-point group.")
    model: str | None = Field(None, description="Checkpoint id or local folder; None: the backend's default.")
    box_threshold: float = Field(0.3, ge=0.0, le=1.0, description="Keep boxes with score strictly above this.")
    text_threshold: float = Field(
        0.25, ge=0.0, le=1.0, description="Grounding DINO: tokens above this form the phrase a box is assigned by."
    )
    nms_iou: float = Field(0.5, ge=0.0, le=1.0, description="Per-description NMS IoU threshold.")
    max_regions: int = Field(5, gt=0, description="Top-k regions per image by score.")
    batch_size: int = Field(8, gt=0, description="Images per detector forward.")
    device: str = Field("auto", description="'auto' (cuda if available), 'cpu', 'cuda', 'cuda:1', ...")
    max_image_side: int = Field(
        1600, gt=0, description="Larger images are downscaled (aspect kept) before the detector's processor."
    )
    prefetch_batches: int = Field(
        1,
        ge=0,
        description="Detector batches resized and preprocessed on a CPU thread while the model runs the current "
        "one; 0: one after the other. The rows are the same either way.",
    )
    options: dict[str, Any] = Field(default_factory=dict, description="Backend-specific knobs.")
