"""Benchmark: the pipeline's describe stage, with batches in flight and without, vs one `LLM.generate` over all prompts.

One process, the tiny offline chat model, the same engine arguments everywhere (`engine_args` of the describer
config). Output lengths are long-tailed like real captions: each prompt gets its own `max_tokens`, drawn from a
lognormal with median 40 and p99 400 (seeded), capped so prompt + answer fit max_model_len; the JSON schema may end
an answer earlier. `--lengths fixed` gives every prompt `--max-tokens` instead (the old, uniform workload).

Sides, run in rotating order, every one on the same prompts with the same per-prompt sampling:
- `LLM.generate` once over all prompts (chat template applied, as the describer renders it): the engine sees every
  request at once, the best continuous batching can do -- the reference;
- `DescribeStage` (today's synchronous stage): one Arrow batch of `--batch` rows at a time, so the engine waits for
  each batch's longest answer before the next batch arrives;
- `InflightDescribeStage` with N batches in flight (each N of `--in-flight`), driven as Ray Data drives an async
  actor with `max_concurrency` N.
Both stages share one `vllm` describer (its AsyncLLM engine); the reference is a `vllm.LLM`. Prompt and output
token totals are printed per side, so unequal work would show, and so are the CPU seconds of the front end (this
process) and of the engine processes, which show where a slower side spent more. Ratios are the stage's images/s
over generate's (goal for in flight: >= 0.9); the median pass is the headline, the best beside it.

    python benchmarks/pipeline_describe.py [--images 1024] [--batch 32] [--in-flight 8 16 32] [--repeats 5]

Needs the `llm` tiny model (built into the grainclip cache on first use). A run with the defaults records
`describe_inflight_vs_generate` (at the vllm describer's default N) and `describe_sync_vs_generate`; one with
`--lengths fixed` and the other defaults records `describe_vs_generate`: the pipeline's default describe stage on
the uniform workload.
"""

from __future__ import annotations

import argparse
import math
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
from figures import alternate, is_recorded_configuration, record  # noqa: E402

from grainclip.annotate.describers.vllm_engine import VLLMDescriber  # noqa: E402

MEDIAN_TOKENS, P99_TOKENS = 40, 400


class PerPromptLengths(VLLMDescriber):
    """The vllm describer with the workload's max_tokens for each prompt text (`lengths`, set by the benchmark)."""

    lengths: dict[str, object] = {}

    def request_sampling(self, prompt):
        return self.lengths[prompt.text]


def long_tailed_max_tokens(n: int, caps: list[int], seed: int = 0) -> list[int]:
    """Lognormal lengths with median MEDIAN_TOKENS and 99th percentile P99_TOKENS, each capped by its prompt's room."""
    import numpy as np

    sigma = math.log(P99_TOKENS / MEDIAN_TOKENS) / 2.3263  # z of the 99th percentile
    draws = np.random.default_rng(seed).lognormal(math.log(MEDIAN_TOKENS), sigma, n)
    return [int(max(1, min(round(d), cap))) for d, cap in zip(draws, caps, strict=True)]


def cpu_seconds() -> tuple[float, float]:
    """CPU seconds so far of this process (the front ends: stage or LLM) and of its live child processes (the
    engines' cores and workers; the idle engine adds ~0)."""
    import psutil

    me = psutil.Process()
    own = me.cpu_times()
    children = 0.0
    for child in me.children(recursive=True):
        try:
            times = child.cpu_times()
        except psutil.NoSuchProcess:
            continue
        children += times.user + times.system
    return own.user + own.system, children


def counting_cpu(run):
    """`run` (-> (seconds, result)) that also returns the CPU seconds it cost, split as `cpu_seconds`."""

    def counted():
        before = cpu_seconds()
        elapsed, result = run()
        return elapsed, result, tuple(a - b for a, b in zip(cpu_seconds(), before, strict=True))

    return counted


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=1024)
    parser.add_argument("--batch", type=int, default=32, help="Rows per stage call (the pipeline's default).")
    parser.add_argument("--in-flight", type=int, nargs="+", default=[8, 16, 32], help="Batches in flight to measure.")
    # 5, not 3: on a 2-core machine one side's passes spread by 15-25 % (the engine and the front end share both
    # cores), so the median of 3 moves with a single slow pass.
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--lengths", choices=["longtail", "fixed"], default="longtail")
    parser.add_argument("--max-tokens", type=int, default=64, help="Every prompt's max_tokens with --lengths fixed.")
    parser.add_argument("--max-model-len", type=int, default=1024)
    args = parser.parse_args()

    import pyarrow as pa
    import pyarrow.compute as pc
    from vllm import LLM

    from grainclip.annotate.describers.vllm_engine import engine_args
    from grainclip.annotate.types import DescribeRequest
    from grainclip.config.annotate import DescriberConfig
    from grainclip.images import decode_image
    from grainclip.partsworld import generate
    from grainclip.pipelines.prepare import prepare_images
    from grainclip.pipelines.stages import OUTPUT_TOKENS, PROMPT_TOKENS, DescribeStage, InflightDescribeStage
    from grainclip.schema import read_table
    from grainclip.testing import build_tiny_models, default_cache_dir
    from grainclip.testing.actors import run_as_async_actor

    model = build_tiny_models(default_cache_dir() / "tiny-models", names=["llm"])["llm"]
    with tempfile.TemporaryDirectory() as tmp:
        generate(Path(tmp), n=args.images, seed=0, n_test=1, image_size=64)
        images = read_table(Path(tmp) / "train" / "images", "images")
    batches = [prepare_images(images.slice(start, args.batch)) for start in range(0, images.num_rows, args.batch)]

    config = DescriberConfig(
        name="vllm",
        model=str(model),
        sampling={"max_tokens": P99_TOKENS},  # replaced per prompt below
        engine={"dtype": "float32", "enforce_eager": True, "max_model_len": args.max_model_len},
    )
    started = time.perf_counter()
    describer = PerPromptLengths(config)
    startup = time.perf_counter() - started
    llm = LLM(**engine_args(config)[0])
    tokenizer = llm.get_tokenizer()

    # The prompts the describer sends, chat template applied (it holds the BOS: the tokenizer must not add another).
    rows = images.to_pylist()
    prompts = [
        describer.to_prompt(DescribeRequest(r["image_id"], decode_image(r["image"]), r["caption"])) for r in rows
    ]
    texts = [
        tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt.text}], tokenize=False, add_generation_prompt=True
        )
        for prompt in prompts
    ]
    room = [args.max_model_len - len(tokenizer.encode(text, add_special_tokens=False)) for text in texts]
    if args.lengths == "fixed":
        max_tokens = [min(args.max_tokens, cap) for cap in room]
    else:
        max_tokens = long_tailed_max_tokens(len(texts), room)
    by_text = {prompt.text: n for prompt, n in zip(prompts, max_tokens, strict=True)}  # equal texts, equal length
    params = {n: describer.sampling_params.clone() for n in set(by_text.values())}
    for n, sampling in params.items():
        sampling.max_tokens = n
    PerPromptLengths.lengths = {text: params[n] for text, n in by_text.items()}
    per_prompt = [PerPromptLengths.lengths[prompt.text] for prompt in prompts]

    def run_sync() -> tuple[float, pa.Table]:
        stage = DescribeStage(config, annotator=describer)
        started = time.perf_counter()
        outputs = [stage(batch) for batch in batches]
        return time.perf_counter() - started, pa.concat_tables(outputs)

    def run_inflight(n: int) -> tuple[float, pa.Table]:
        stage = InflightDescribeStage(config, batches_in_flight=n, annotator=describer)
        started = time.perf_counter()
        outputs = run_as_async_actor(stage, batches, max_concurrency=n)
        return time.perf_counter() - started, pa.concat_tables(outputs)

    def run_generate() -> tuple[float, list]:
        started = time.perf_counter()
        outputs = llm.generate(texts, per_prompt, use_tqdm=False, tokenization_kwargs={"add_special_tokens": False})
        return time.perf_counter() - started, outputs

    def tokens(result) -> tuple[int, int]:
        if isinstance(result, pa.Table):
            return pc.sum(result[PROMPT_TOKENS]).as_py(), pc.sum(result[OUTPUT_TOKENS]).as_py()
        return sum(len(o.prompt_token_ids) for o in result), sum(len(o.outputs[0].token_ids) for o in result)

    measure = {"generate": run_generate, "sync": run_sync}
    measure.update({f"inflight{n}": (lambda n=n: run_inflight(n)) for n in args.in_flight})
    DescribeStage(config, annotator=describer)(
        batches[0].slice(0, 8)
    )  # warm-up: first-call allocations are start-up, not throughput
    run_generate()

    runs = alternate({name: counting_cpu(run) for name, run in measure.items()}, args.repeats)
    seconds = {name: [elapsed for elapsed, _, _ in done] for name, done in runs.items()}
    work = {name: {tokens(result) for _, result, _ in done} for name, done in runs.items()}
    last = {name: done[-1][1] for name, done in runs.items()}
    cpu = {name: [statistics.median(c[i] for _, _, c in done) for i in (0, 1)] for name, done in runs.items()}

    n = images.num_rows
    lengths = sorted(len(o.outputs[0].token_ids) for o in last["generate"])
    print(
        f"model: {model} (tiny random chat LLM, text-only), images: {n} (64 px), batch: {args.batch}, "
        f"repeats: {args.repeats}, engine start-up: {startup:.1f} s, load average: {os.getloadavg()[0]:.1f}"
    )
    print(
        f"output tokens per answer ({args.lengths}): median {statistics.median(lengths)}, "
        f"p99 {lengths[int(0.99 * (len(lengths) - 1))]}, max {lengths[-1]}, total {sum(lengths)}"
    )
    median = {name: statistics.median(times) for name, times in seconds.items()}
    best = {name: min(times) for name, times in seconds.items()}
    for name, times in seconds.items():
        print(
            f"{name:11s}: median {median[name]:6.2f} s = {n / median[name]:6.1f} images/s, best {best[name]:6.2f} s  "
            f"(runs: {', '.join(f'{t:.2f}' for t in times)}; prompt/output tokens {sorted(work[name])}; "
            f"CPU s, median: this process {cpu[name][0]:.1f}, engine processes {cpu[name][1]:.1f})"
        )
    answers = {
        name: sorted(zip(t["image_id"].to_pylist(), t["llm_caption"].to_pylist(), t["descriptions"].to_pylist()))
        for name, t in last.items()
        if isinstance(t, pa.Table)
    }
    same = [name for name in answers if answers[name] == answers["sync"]]
    print(f"sides whose rows equal the sync stage's: {', '.join(same)}")
    for name in measure:
        if name != "generate":
            print(
                f"ratio {name:11s} / generate: median {median['generate'] / median[name]:.3f}, "
                f"best {best['generate'] / best[name]:.3f}"
            )
    inflight = f"inflight{VLLMDescriber.default_batches_in_flight}"  # the pipeline's default describe stage
    if is_recorded_configuration(parser, args, ignore=("lengths",)) and inflight in median:
        if args.lengths == "longtail":
            record("describe_inflight_vs_generate", median["generate"] / median[inflight], "ratio")
            record("describe_sync_vs_generate", median["generate"] / median["sync"], "ratio")
        else:
            record("describe_vs_generate", median["generate"] / median[inflight], "ratio (uniform max_tokens 64)")
    describer.close()
    llm.llm_engine.engine_core.shutdown()


if __name__ == "__main__":
    main()
