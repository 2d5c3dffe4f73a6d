"""Benchmark: images/s of the pipeline's describe stage vs plain `vllm.LLM.generate` on the same prompts.

One process, one engine: the pipeline's `DescribeStage` (the class Ray Data runs in each describe actor) is
built with the `vllm` describer on the tiny offline chat model; the reference then calls `generate` on that
same engine with the very prompts the describer renders (chat template applied) and the same sampling and
structured-output settings. The stage's extra work -- reading the Arrow batch, decoding every image, rendering
prompts, parsing the JSON answers, building the output columns -- is what the ratio measures. The two are
run alternately and the median of the repeats is reported; prompt and output token totals are checked to be
equal, so both sides did the same generation work.

    python benchmarks/pipeline_describe.py [--images 512] [--batch 256] [--repeats 3] [--max-tokens 64]

Needs the `llm` tiny model (built into the grainclip cache on first use). Target: ratio >= 0.9.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--batch", type=int, default=256, help="Rows per stage call = requests per engine call.")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--max-tokens", type=int, default=64)
    args = parser.parse_args()

    import pyarrow as pa
    import pyarrow.compute as pc

    from grainclip.annotate.types import DescribeRequest
    from grainclip.config.annotate import DescriberConfig
    from grainclip.images import decode_image
    from grainclip.partsworld import generate
    from grainclip.pipelines.sources import prepare_images
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

    # The exact prompts the describer sends, as token ids (the chat template already adds BOS; a text prompt
    # would get a second one from generate's tokenizer).
    rows = images.to_pylist()
    requests = [DescribeRequest(r["image_id"], decode_image(r["image"]), r["caption"]) for r in rows]
    prompts = [
        {"prompt_token_ids": list(tokenizer.apply_chat_template(
            [{"role": "user", "content": describer.to_prompt(r).text}],
            tokenize=True, add_generation_prompt=True, return_dict=False))}
        for r in requests
    ]
    prompt_batches = [prompts[start:start + args.batch] for start in range(0, len(prompts), args.batch)]

    stage(batches[0].slice(0, 16))  # warm-up: first-call allocations are start-up, not throughput

    def run_stage() -> tuple[float, int, int]:
        started = time.perf_counter()
        outputs = [stage(batch) for batch in batches]
        seconds = time.perf_counter() - started
        table = pa.concat_tables(outputs)
        return seconds, pc.sum(table[PROMPT_TOKENS]).as_py(), pc.sum(table[OUTPUT_TOKENS]).as_py()

    def run_generate() -> tuple[float, int, int]:
        started = time.perf_counter()
        outputs = [o for chunk in prompt_batches for o in llm.generate(chunk, describer.sampling_params, use_tqdm=False)]
        seconds = time.perf_counter() - started
        return seconds, sum(len(o.prompt_token_ids) for o in outputs), sum(len(o.outputs[0].token_ids) for o in outputs)

    stage_runs, reference_runs = [], []
    for _ in range(args.repeats):
        reference_runs.append(run_generate())
        stage_runs.append(run_stage())
    stage_s = statistics.median(r[0] for r in stage_runs)
    reference_s = statistics.median(r[0] for r in reference_runs)
    same_work = {r[1:] for r in stage_runs} == {r[1:] for r in reference_runs}
    n = images.num_rows
    print(f"model: {model} (tiny random chat LLM, text-only), images: {n}, batch: {args.batch}, "
          f"max_tokens: {args.max_tokens}, repeats: {args.repeats}, engine start-up: {startup:.1f} s")
    print(f"prompt/output tokens per pass: stage {stage_runs[0][1]}/{stage_runs[0][2]}, "
          f"generate {reference_runs[0][1]}/{reference_runs[0][2]} (identical: {same_work})")
    print(f"plain LLM.generate : {reference_s:7.2f} s  {n / reference_s:8.1f} images/s  "
          f"(runs: {', '.join(f'{r[0]:.2f}' for r in reference_runs)})")
    print(f"DescribeStage      : {stage_s:7.2f} s  {n / stage_s:8.1f} images/s  "
          f"(runs: {', '.join(f'{r[0]:.2f}' for r in stage_runs)})")
    print(f"ratio stage/generate: {reference_s / stage_s:.3f} (target >= 0.9)")
    describer.close()


if __name__ == "__main__":
    main()
