"""GPU readiness smoke test: a bf16 GRAIN training step on ViT-B/16 at batch 128, and vLLM generation speed.

    python benchmarks/gpu_smoke.py [--batch 128] [--steps 6] [--vllm-model PATH_OR_NAME] [--out DIR]

On a machine without a CUDA GPU it prints that it needs one and exits 0 (so CI on CPU can run it).

1. Training: `grainclip.train.train` itself (not a stripped-down loop) on a generated PartsWorld set at 224 px,
   backbone ViT-B-16 (random init, open_clip config), the paper's 6-layer decoder, bf16 autocast, one GPU,
   `batch` images per step, metrics every step. Step time is batch / images_per_s of each logged step (data
   loading included), the first step (compilation, cuDNN autotune, allocator warm-up) excluded, median taken.
   MFU is an estimate: analytic training FLOPs per image (3 x forward; forward = 2 x parameters x tokens for
   the image tower at 197 tokens, the text tower per caption and per description at its context length, and
   the decoder per query) over step time, against the GPU's dense bf16 peak (H100/H200 SXM: 989 TFLOP/s).
2. vLLM: offline `vllm.LLM` on `--vllm-model` (default: grainclip's tiny offline test LLM, which measures the
   engine's overhead more than a real model's speed), 256 prompts, 128 output tokens each (ignore_eos);
   reports output tokens/s and total tokens/s.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "L40S": 362.0, "L4": 121.0}


def peak_tflops(name: str) -> float | None:
    return next((v for k, v in PEAK_BF16_TFLOPS.items() if k in name), None)


def count(module) -> int:
    return sum(p.numel() for p in module.parameters())


def train_step(args: argparse.Namespace, work: Path) -> dict:
    import pyarrow.parquet as pq
    import torch

    from grainclip.config.train import TrainConfig
    from grainclip.partsworld import generate
    from grainclip.train import load_model, train
    from grainclip.train.metrics import read_metrics

    data = work / "partsworld"
    n = args.batch * args.steps
    started = time.perf_counter()
    generate(data, n=n, n_test=8, seed=0, image_size=224)
    generate_s = time.perf_counter() - started
    cfg = TrainConfig.model_validate({
        "output_dir": str(work / "train"),
        "backbone": {"model": "ViT-B-16"},
        "data": {"train": str(data / "train" / "truth"), "num_workers": args.workers},
        "batch_size": args.batch, "steps": args.steps, "log_every": 1, "checkpoint_every": 10_000,
        "gpu": True, "precision": "bf16",
    })  # fmt: skip
    result = train(cfg)
    metrics = read_metrics(result.output_dir)
    step_s = [args.batch / m["images_per_s"] for m in metrics[1:] if m.get("images_per_s")]
    median_step = statistics.median(step_s)

    loaded = load_model(result.checkpoint, device="cpu")
    model = loaded.model
    visual, total = count(model.backbone.visual), count(model.backbone)
    text = total - visual
    decoder = count(model) - total
    truth = pq.read_table(data / "train" / "truth", columns=["descriptions"]).column("descriptions").to_pylist()
    descriptions = statistics.mean(len(d) for d in truth)
    context = int(getattr(model.backbone, "context_length", 77))
    queries = cfg.decoder.region_queries
    forward = 2 * visual * 197 + 2 * text * context * (1 + descriptions) + 2 * decoder * queries
    flops_per_step = 3 * forward * args.batch
    gpu = torch.cuda.get_device_name(0)
    peak = peak_tflops(gpu)
    return {
        "gpu": gpu,
        "batch": args.batch,
        "steps": args.steps,
        "generate_s": round(generate_s, 1),
        "step_s_median": round(median_step, 4),
        "step_s_all": [round(s, 4) for s in step_s],
        "images_per_s": round(args.batch / median_step, 1),
        "params_m": {"image": round(visual / 1e6, 1), "text": round(text / 1e6, 1), "decoder": round(decoder / 1e6, 1)},
        "descriptions_per_image": round(descriptions, 2),
        "train_tflops_per_step_est": round(flops_per_step / 1e12, 2),
        "achieved_tflops_est": round(flops_per_step / median_step / 1e12, 1),
        "mfu_est": round(flops_per_step / median_step / 1e12 / peak, 3) if peak else None,
        "peak_bf16_tflops_assumed": peak,
        "max_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 1),
        "final_losses": {k: round(v, 4) for k, v in metrics[-1].items() if k.startswith("loss/")},
    }


def vllm_speed(args: argparse.Namespace) -> dict:
    try:
        from vllm import LLM, SamplingParams
    except ImportError as exc:
        return {"skipped": f"vllm not importable: {exc}"}
    model = args.vllm_model
    if model is None:
        from grainclip.testing import build_tiny_models, default_cache_dir

        model = str(build_tiny_models(default_cache_dir() / "tiny-models")["llm"])
    llm = LLM(model=model, dtype="bfloat16", gpu_memory_utilization=0.5, enforce_eager=False, seed=0)
    prompts = [f"Describe the visual parts of creature number {i}:" for i in range(args.prompts)]
    params = SamplingParams(max_tokens=args.max_tokens, ignore_eos=True, temperature=0.8, seed=0)
    llm.generate(prompts[:8], params)  # warm-up (CUDA graphs, allocator)
    started = time.perf_counter()
    outputs = llm.generate(prompts, params)
    seconds = time.perf_counter() - started
    out_tokens = sum(len(o.outputs[0].token_ids) for o in outputs)
    in_tokens = sum(len(o.prompt_token_ids) for o in outputs)
    return {
        "model": model,
        "prompts": len(prompts),
        "seconds": round(seconds, 2),
        "output_tokens_per_s": round(out_tokens / seconds, 1),
        "total_tokens_per_s": round((out_tokens + in_tokens) / seconds, 1),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--workers", type=int, default=8, help="DataLoader workers for the training step.")
    parser.add_argument("--vllm-model", default=None)
    parser.add_argument("--prompts", type=int, default=256)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--skip-vllm", action="store_true")
    parser.add_argument("--out", type=Path, default=None, help="Write the results JSON here too.")
    args = parser.parse_args()

    import torch

    if not torch.cuda.is_available():
        print("gpu_smoke: needs a CUDA GPU (torch sees none); nothing to measure on this machine.")
        return 0
    with tempfile.TemporaryDirectory(prefix="gpu-smoke-") as work:
        results = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "command": " ".join(sys.argv),
                   "torch": torch.__version__, "train": train_step(args, Path(work))}  # fmt: skip
        if not args.skip_vllm:
            results["vllm"] = vllm_speed(args)
    text = json.dumps(results, indent=2)
    print(text)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "gpu_smoke.json").write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
