"""Benchmark: images/s of the pipeline's describe stage vs plain `vllm.LLM.generate` on the same prompts.

One process, one engine: the pipeline's `DescribeStage` (the class Ray Data runs in each describe actor) is
built with the `vllm` describer on the tiny offline chat model; the reference then calls `generate` on that
same engine with the very prompts the describer renders (chat template applied) and the same sampling and
structured-output settings. The stage's extra work -- reading the Arrow batch, decoding every image, rendering
prompts, parsing the JSON answers, building the output columns -- is what the ratio measures. They are run in
rotating order; the fastest pass of each is the headline (other jobs on a shared machine only add time), the
median is printed beside it; prompt and output token totals are checked to be
equal, so every side did the same generation work. Three references: `generate` on the prompt texts (what a
plain vLLM user runs; tokenization included), on their token ids (the engine alone), and `chat` on the
conversations the describer builds (chat-template rendering included, as the describer calls it). The stage's time is
split into the describer's (`describer.describe`, which renders chat prompts through `LLM.chat`) and the
stage's own (Arrow columns, image decoding).

    python benchmarks/pipeline_describe.py [--images 512] [--batch 256] [--repeats 5] [--max-tokens 64]

Needs the `llm` tiny model (built into the grainclip cache on first use). Target: ratio >= 0.9.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

sys.path.insert(0, str(Path(__file__).parent))
from figures import is_recorded_configuration, record  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--batch", type=int, default=256, help="Rows per stage call = requests per engine call.")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--max-tokens", type=int, default=64)
    args = parser.parse_args()

    import pyarrow as pa
    import pyarrow.compute as pc

    from grainclip.annotate.types import DescribeRequest
    from grainclip.config.annotate import DescriberConfig
    from grainclip.images import decode_image
    from grainclip.partsworld import generate
    from grainclip.pipelines.prepare import prepare_images
    from grainclip.pipelines.stages import OUTPUT_TOKENS, PROMPT_TOKENS, DescribeStage
    from grainclip.schema import read_table
    from grainclip.testing import build_tiny_models, default_cache_dir

    model = build_tiny_models(default_cache_dir() / "tiny-models", names=["llm"])["llm"]
    with tempfile.TemporaryDirectory() as tmp:
        generate(Path(tmp), n=args.images, seed=0, n_test=1, image_size=64)
        images = read_table(Path(tmp) / "train" / "images", "images")
    batches = [prepare_images(images.slice(start, args.batch)) for start in range(0, images.num_rows, args.batch)]

    config = DescriberConfig(
        name="vllm",
        model=str(model),
        batch_size=args.batch,
        max_descriptions=3,
        max_description_chars=24,
        max_caption_chars=40,
        sampling={"max_tokens": args.max_tokens},
        engine={"dtype": "float32", "enforce_eager": True, "max_model_len": 1024},
    )
    started = time.perf_counter()
    stage = DescribeStage(config)
    startup = time.perf_counter() - started
    describer = stage.describer
    llm = describer.llm
    tokenizer = llm.get_tokenizer()

    # The exact prompts the describer sends, with the model's chat template applied: as text (what a plain
    # generate() user passes; the template already holds BOS, so the tokenizer must not add another) and as
    # token ids (the engine alone, without tokenization).
    rows = images.to_pylist()
    requests = [DescribeRequest(r["image_id"], decode_image(r["image"]), r["caption"]) for r in rows]
    texts = [
        tokenizer.apply_chat_template(
            [{"role": "user", "content": describer.to_prompt(r).text}], tokenize=False, add_generation_prompt=True
        )
        for r in requests
    ]
    token_ids = [{"prompt_token_ids": tokenizer.encode(text, add_special_tokens=False)} for text in texts]
    conversations = [
        [{"role": "user", "content": [{"type": "text", "text": describer.to_prompt(r).text}]}] for r in requests
    ]  # what the describer hands to LLM.chat for a text-only model

    stage(batches[0].slice(0, 16))  # warm-up: first-call allocations are start-up, not throughput

    describe_seconds = []  # time inside describer.describe, to split the stage's own overhead from it
    describe = describer.describe

    def timed_describe(requests):
        started = time.perf_counter()
        try:
            return describe(requests)
        finally:
            describe_seconds.append(time.perf_counter() - started)

    describer.describe = timed_describe

    def run_stage() -> tuple[float, int, int]:
        started = time.perf_counter()
        outputs = [stage(batch) for batch in batches]
        seconds = time.perf_counter() - started
        table = pa.concat_tables(outputs)
        return seconds, pc.sum(table[PROMPT_TOKENS]).as_py(), pc.sum(table[OUTPUT_TOKENS]).as_py()

    def run_engine(method, prompts: list, **kwargs) -> tuple[float, int, int]:
        started = time.perf_counter()
        outputs = [
            output
            for start in range(0, len(prompts), args.batch)
            for output in method(
                prompts[start : start + args.batch], describer.sampling_params, use_tqdm=False, **kwargs
            )
        ]
        seconds = time.perf_counter() - started
        return seconds, sum(len(o.prompt_token_ids) for o in outputs), sum(len(o.outputs[0].token_ids) for o in outputs)

    measure = {
        "text": lambda: run_engine(llm.generate, texts, tokenization_kwargs={"add_special_tokens": False}),
        "ids": lambda: run_engine(llm.generate, token_ids),
        "chat": lambda: run_engine(llm.chat, conversations),
        "stage": run_stage,
    }
    runs: dict[str, list[tuple[float, int, int]]] = {name: [] for name in measure}
    for repeat in range(args.repeats):
        order = list(measure)[repeat % len(measure) :] + list(measure)[: repeat % len(measure)]  # no side always first
        for name in order:
            if name == "stage":
                describe_seconds.clear()
            runs[name].append(measure[name]())
    # On a shared machine other jobs only ever add time: the fastest pass is the best estimate of each side's
    # own cost; the median is printed beside it.
    best = {name: min(r[0] for r in results) for name, results in runs.items()}
    median = {name: statistics.median(r[0] for r in results) for name, results in runs.items()}
    same_work = len({r[1:] for results in runs.values() for r in results}) == 1
    n = images.num_rows
    print(
        f"model: {model} (tiny random chat LLM, text-only), images: {n} ({64} px), batch: {args.batch}, "
        f"max_tokens: {args.max_tokens}, repeats: {args.repeats}, engine start-up: {startup:.1f} s"
    )
    print(
        f"prompt/output tokens per pass: {runs['stage'][0][1]}/{runs['stage'][0][2]} "
        f"(identical in every pass: {same_work})"
    )
    labels = {
        "text": "LLM.generate(prompt text)",
        "ids": "LLM.generate(token ids)",
        "chat": "LLM.chat(conversations)",
        "stage": "DescribeStage",
    }
    for name, label in labels.items():
        print(
            f"{label:27s}: best {best[name]:6.2f} s = {n / best[name]:6.1f} images/s, median {median[name]:6.2f} s  "
            f"(runs: {', '.join(f'{r[0]:.2f}' for r in runs[name])})"
        )
    inside = sum(describe_seconds)
    print(
        f"last stage pass: {runs['stage'][-1][0]:.2f} s = describer.describe {inside:.2f} s "
        f"+ stage's own work (Arrow, image decoding, columns) {runs['stage'][-1][0] - inside:.2f} s"
    )
    for name in ("text", "ids", "chat"):
        print(
            f"ratio stage / {labels[name]:25s}: best {best[name] / best['stage']:.3f}, "
            f"median {median[name] / median['stage']:.3f}" + ("  (target >= 0.9)" if name == "text" else "")
        )
    if is_recorded_configuration(parser, args):
        record("describe_vs_generate", best["text"] / best["stage"], "ratio")  # stage img/s over generate(text)'s, best
    describer.close()


if __name__ == "__main__":
    main()
