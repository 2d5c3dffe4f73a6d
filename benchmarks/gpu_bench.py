"""GPU figures in one command: GRAIN's training step vs CLIP's, the matchers, the ground-stage detectors, the evaluator.

    python benchmarks/gpu_bench.py [--out DIR] [--rehearse] [--batches 128,256] [--steps 10] [--budget-s 480]

On the project's H200 (no ray, vllm, open_clip_torch or pydantic there; see scripts/gpu_wheels.sh for the
wheels that travel and the exact device command):

    python3 -m pip install -q --no-index --no-deps --no-build-isolation --target /tmp/site .whl/*.whl . \
        && PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1 python3 benchmarks/gpu_bench.py --out $OUT

Sections, in priority order; each one is skipped once `--budget-s` seconds have passed, and the JSON is rewritten
after each, so a run cut short still returns what it measured:

1. `step`: a training step (forward + losses + backward + grad clipping + fused AdamW, bf16 autocast, as the
   trainer does it) of GRAIN (ViT-B/16 random init, the paper's decoder: 6 layers, d 512, 8 heads, FFN 2048,
   5 + 1 queries) and of the open_clip CLIP baseline on the same backbone, per batch size. Throughput comes
   from steps on prepared device batches timed with CUDA events and no host sync inside the loop; the
   breakdown (data wait, forward, matching, backward, optimizer) from a loader-fed loop whose phases are
   separated by torch.cuda.synchronize(). FLOPs per step are counted by torch.utils.flop_counter on one
   real step; MFU = those FLOPs / median step time / the GPU's dense bf16 peak (PEAK_BF16_TFLOPS).
2. `matcher`: HungarianMatcher (scipy on the host) vs EnumerationMatcher (on the device) per batch; if
   matching takes more than 5% of the GRAIN step (or --gpu-matcher always), the GRAIN step again with
   `loss.matcher: enumerate`.
3. `detectors`: OWLv2-base (patch 16, 960 px) and Grounding-DINO-tiny (Swin-T, 800 px) at their full-size
   configs with random weights (speed does not depend on the weights): forward images/s in bf16 and fp32 at
   batches 8 and 32 (the ceiling of the ground stage), and the grounder itself (processor + forward +
   post-processing) at batch 8.
4. `evaluate`: the evaluator's images/s for GRAIN and CLIP (ViT-B/16) on a PartsWorld test split.
5. `compile`: section 1's throughput with torch.compile (first step = compilation, reported apart).

Back here, `python benchmarks/gpu_bench.py --record FETCHED/gpu_bench.json` writes gpu_grain_step_images_per_s,
gpu_grain_step_mfu and gpu_grain_vs_clip_step into benchmarks/figures.json.

`--rehearse` runs every section at toy sizes (tiny backbone and detectors, 64 px, 2 steps) on any device,
so a CPU run proves every code path before GPU time is spent.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

from grainclip.devices import autocast

# Dense bf16 tensor-core peaks in TFLOP/s: NVIDIA's datasheet figures "with sparsity" halved (H100/H200 SXM
# 1979 -> 989.5, H100/H200 NVL 1671 -> 835.5, H100 PCIe 1513 -> 756.5), A100 312. Most specific name first.
PEAK_BF16_TFLOPS = {
    "H200 NVL": 835.5,
    "H100 NVL": 835.5,
    "H100 PCIe": 756.5,
    "H200": 989.5,
    "H100": 989.5,
    "A100": 312.0,
}
MATCHING_SHARE_FOR_GPU_MATCHER = 0.05
PHASES = ("data_wait", "forward", "matching", "backward", "optimizer")
TINY_DECODER = {"layers": 2, "d_model": 64, "heads": 4, "ffn_dim": 128}


class Run:
    """Results so far, the deadline, and where they are written (after every section)."""

    def __init__(self, args: argparse.Namespace, work: Path) -> None:
        self.args, self.work = args, work
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.started = time.perf_counter()
        gpu = torch.cuda.get_device_name(0) if self.device.type == "cuda" else None
        peak = args.peak_tflops or next((v for k, v in PEAK_BF16_TFLOPS.items() if gpu and k in gpu), None)
        self.peak_tflops = peak
        self.results: dict[str, Any] = {
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "command": "python " + " ".join(sys.argv),
            "rehearse": args.rehearse,
            "device": gpu or "cpu",
            "torch": torch.__version__,
            "compile_backend": args.compile_backend,
            "peak_bf16_tflops": peak,
            "peak_source": "--peak-tflops"
            if args.peak_tflops
            else "NVIDIA datasheet, dense (sparsity figure / 2)"
            if peak
            else "unknown device: pass --peak-tflops for MFU",
            "skipped": [],
        }

    def left(self) -> bool:
        return time.perf_counter() - self.started < self.args.budget_s

    def section(self, name: str, function: Callable[[Run], Any]) -> None:
        if not self.left():
            self.results["skipped"].append(f"{name}: --budget-s {self.args.budget_s} spent")
            return
        started = time.perf_counter()
        self.results[name] = function(self)
        self.results.setdefault("section_s", {})[name] = round(time.perf_counter() - started, 1)
        self.write()

    def write(self) -> None:
        out = self.args.out
        out.mkdir(parents=True, exist_ok=True)
        (out / "gpu_bench.json").write_text(json.dumps(self.results, indent=2))
        (out / "gpu_bench.md").write_text(markdown(self.results))


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ------------------------------------------------------------------------------------------------ the data
def data(run: Run) -> Path:
    """A PartsWorld set at the backbone's resolution: train split for the steps, test_seen for the evaluator."""
    from grainclip.partsworld import generate

    root = run.work / "partsworld"
    if not root.exists():
        n = 64 if run.args.rehearse else 2 * max(run.args.batches)
        generate(
            root, n=n, n_test=32 if run.args.rehearse else run.args.eval_images, seed=0, image_size=run.args.image_size
        )
    return root


def train_config(run: Run, mode: str, batch: int, matcher: str = "hungarian"):
    from grainclip.config.train import TrainConfig

    backbone = run.args.backbone
    if run.args.rehearse:
        from grainclip.testing.clip import MODEL_CONFIG, TINY_CLIP_NAME

        backbone = run.work / f"{TINY_CLIP_NAME}.json"
        backbone.write_text(json.dumps(MODEL_CONFIG))
    return TrainConfig.model_validate({
        "mode": mode, "output_dir": str(run.work / f"train-{mode}"), "backbone": {"model": str(backbone)},
        "decoder": {**(TINY_DECODER if run.args.rehearse else {}), "dropout": 0.0},
        "loss": {"matcher": matcher},
        "data": {"train": str(data(run) / "train" / "truth"), "image_size": run.args.image_size,
                 "num_workers": run.args.workers, "prefetch_batches": 4},
        "batch_size": batch, "gpu": run.device.type == "cuda", "precision": "bf16",
    })  # fmt: skip


# ------------------------------------------------------------------------------------------ training step
class Stepper:
    """One mode's model, optimizer and criterion on the device; `step` is the trainer's step, optionally timed."""

    def __init__(self, run: Run, cfg, compile: bool = False) -> None:
        from grainclip.train.backbone import build_backbone
        from grainclip.train.losses import GrainCriterion
        from grainclip.train.model import build_model
        from grainclip.train.optim import build_optimizer

        torch.manual_seed(0)
        self.run, self.cfg, self.device = run, cfg, run.device
        self.backbone = build_backbone(cfg.backbone, cfg.data.image_size)
        self.model = build_model(cfg.mode, self.backbone.model, cfg.decoder, int(self.backbone.model_cfg["embed_dim"]))
        self.model.to(self.device).train()
        self.optimizer = build_optimizer(self.model, cfg.optim)
        self.criterion = GrainCriterion(cfg.loss, cfg.mode)
        self.forward = torch.compile(self.model, backend=run.args.compile_backend) if compile else self.model
        self.phases: dict[str, float] | None = None
        if cfg.mode == "grain":
            self.criterion.matcher = TimedMatcher(self.criterion.matcher, self)

    def mark(self, phase: str, since: float) -> float:
        """With a breakdown under way: wait for the device, charge the time since `since` to `phase`."""
        if self.phases is None:
            return since
        sync(self.device)
        now = time.perf_counter()
        self.phases[phase] = self.phases.get(phase, 0.0) + now - since
        return now

    def losses(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        with autocast(self.device, "bf16"):
            out = self.forward(
                batch["images"], batch["caption_tokens"], batch.get("unique_description_tokens"), batch.get("boxes")
            )
            return self.criterion(out, batch)

    def step(self, batch: dict[str, torch.Tensor]) -> None:
        t = time.perf_counter()
        parts = self.losses(batch)
        t = self.mark("forward", t)
        parts["total"].backward()
        t = self.mark("backward", t)
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.optim.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.model.clamp_logit_scales(self.cfg.loss.max_logit_scale)
        self.mark("optimizer", t)

    def batches(self) -> Iterator[dict[str, torch.Tensor]]:
        """The trainer's own loader (Parquet -> decode -> resize -> tokenise in workers), moved to the device."""
        from grainclip.train.trainer import LocalBatches

        pp = self.backbone.preprocess_cfg
        mean = torch.tensor(pp["mean"], device=self.device).view(1, 3, 1, 1)
        std = torch.tensor(pp["std"], device=self.device).view(1, 3, 1, 1)
        loader = LocalBatches(self.cfg, self.backbone, None)
        while True:
            yield next(loader).to_device(self.device, mean, std)

    def flops(self, batch: dict[str, torch.Tensor]) -> int:
        """FLOPs of forward + losses + backward of one step, counted by torch (the optimizer's are negligible)."""
        from torch.utils.flop_counter import FlopCounterMode

        with FlopCounterMode(display=False) as counter:
            self.losses(batch)["total"].backward()
        self.optimizer.zero_grad(set_to_none=True)
        return int(counter.get_total_flops())


class TimedMatcher:
    """Wraps the criterion's matcher so a breakdown charges its time (host sync included) to `matching`."""

    def __init__(self, matcher: Callable, stepper: Stepper) -> None:
        self.matcher, self.stepper = matcher, stepper

    def __call__(self, *args: torch.Tensor) -> Any:
        if self.stepper.phases is None:
            return self.matcher(*args)
        sync(self.stepper.device)
        started = time.perf_counter()
        matches = self.matcher(*args)
        self.stepper.mark("matching", started)
        self.stepper.phases["forward"] -= time.perf_counter() - started  # forward's mark spans the matcher
        return matches


def timed_steps(stepper: Stepper, batches: list[dict[str, torch.Tensor]], warmup: int, steps: int) -> dict[str, Any]:
    """Median step time over `steps` steps on prepared device batches; CUDA events, no host sync in between."""
    first = time.perf_counter()
    for i in range(warmup):
        stepper.step(batches[i % len(batches)])
        if i == 0:
            sync(stepper.device)
            first = time.perf_counter() - first
    cuda = stepper.device.type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    marks: list[Any] = []
    for i in range(steps + 1):
        if cuda:
            marks.append(torch.cuda.Event(enable_timing=True))
            marks[-1].record()
        else:
            marks.append(time.perf_counter())
        if i < steps:
            stepper.step(batches[i % len(batches)])
    sync(stepper.device)
    times = [a.elapsed_time(b) / 1e3 if cuda else b - a for a, b in zip(marks, marks[1:])]
    median = statistics.median(times)
    batch = batches[0]["images"].shape[0]
    return {
        "step_s_median": round(median, 5),
        "step_s": [round(s, 5) for s in times],
        "images_per_s": round(batch / median, 1),
        "first_step_s": round(first, 2),
        "max_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if cuda else None,
    }


def breakdown(stepper: Stepper, source: Iterator[dict[str, torch.Tensor]], steps: int) -> dict[str, Any]:
    """Per-phase median seconds over loader-fed steps, phases separated by device syncs."""
    per_step: list[dict[str, float]] = []
    for _ in range(steps):
        stepper.phases = dict.fromkeys(PHASES, 0.0)
        started = time.perf_counter()
        batch = next(source)
        stepper.mark("data_wait", started)
        stepper.step(batch)
        per_step.append(stepper.phases)
    stepper.phases = None
    medians = {phase: statistics.median(p[phase] for p in per_step) for phase in per_step[0]}
    total = sum(medians.values())
    return {
        "phase_s_median": {k: round(v, 5) for k, v in medians.items()},
        "phase_share": {k: round(v / total, 3) for k, v in medians.items()},
        "loop_images_per_s": round(stepper.cfg.batch_size / total, 1),
    }


def step_section(
    run: Run,
    compile: bool = False,
    matcher: str = "hungarian",
    modes: tuple[str, ...] = ("grain", "clip"),
    batches: list[int] | None = None,
) -> dict:
    args = run.args
    results: dict[str, Any] = {}
    for batch in batches or args.batches:
        row: dict[str, Any] = {}
        for mode in modes:
            if not run.left():
                run.results["skipped"].append(
                    f"step {mode} batch {batch} (compile {compile}, matcher {matcher}): budget spent"
                )
                continue
            stepper = Stepper(run, train_config(run, mode, batch, matcher), compile=compile)
            source = stepper.batches()
            prepared = [next(source) for _ in range(2)]
            row[mode] = timed_steps(stepper, prepared, args.warmup, args.steps)
            if not compile:
                row[mode]["flops_per_step"] = stepper.flops(prepared[0])
                achieved = row[mode]["flops_per_step"] / row[mode]["step_s_median"] / 1e12
                row[mode]["achieved_tflops"] = round(achieved, 1)
                row[mode]["mfu"] = round(achieved / run.peak_tflops, 4) if run.peak_tflops else None
                row[mode].update(breakdown(stepper, source, args.steps))
            del stepper, source, prepared
            if run.device.type == "cuda":
                torch.cuda.empty_cache()
        if "clip" in row and "grain" in row:
            row["grain_vs_clip_step"] = round(row["grain"]["step_s_median"] / row["clip"]["step_s_median"], 3)
        results[str(batch)] = row
    return results


# -------------------------------------------------------------------------------------------- the matcher
def matcher_section(run: Run) -> dict:
    from grainclip.config.train import DecoderConfig
    from grainclip.train.matcher import EnumerationMatcher, HungarianMatcher

    queries = DecoderConfig().region_queries
    out: dict[str, Any] = {"region_queries": queries}
    g = torch.Generator().manual_seed(0)
    for batch in run.args.batches:
        pred = (torch.rand(batch, queries, 4, generator=g) * 0.4 + 0.3).to(run.device)
        corner = torch.rand(batch, queries, 2, generator=g) * 0.5
        target = torch.cat([corner, corner + 0.05 + torch.rand(batch, queries, 2, generator=g) * 0.4], -1).to(
            run.device
        )
        mask = (torch.rand(batch, queries, generator=g) < 0.8).to(run.device)
        row = {}
        for name, matcher in (("hungarian", HungarianMatcher()), ("enumerate", EnumerationMatcher())):
            matcher(pred, target, mask)  # warm-up
            times = []
            for _ in range(max(run.args.steps, 3)):
                sync(run.device)
                started = time.perf_counter()
                matcher(pred, target, mask)
                sync(run.device)
                times.append(time.perf_counter() - started)
            row[f"{name}_s_median"] = round(statistics.median(times), 6)
        out[str(batch)] = row
    steps = run.results.get("step", {})
    shares = {b: r["grain"]["phase_share"]["matching"] for b, r in steps.items() if "grain" in r}
    out["matching_share_of_grain_step"] = shares
    wanted = run.args.gpu_matcher == "always" or (
        run.args.gpu_matcher == "auto" and any(s > MATCHING_SHARE_FOR_GPU_MATCHER for s in shares.values())
    )
    if wanted:
        out["grain_step_enumerate"] = step_section(run, matcher="enumerate", modes=("grain",))
    return out


# ------------------------------------------------------------------------------------------ the detectors
def detector_models(rehearse: bool) -> dict[str, tuple[Any, Any, int, int]]:
    """name -> (model config, processor, input side in px, text tokens per image): full-size unless rehearsing.

    OWLv2-base: owlv2-base-patch16(-ensemble), 960 px input, text context 16. Grounding-DINO-tiny: Swin-T
    backbone, BERT-base text encoder, d_model 256, 900 queries (transformers' config defaults are that model),
    800 px shortest side. Tokenizers are grainclip's tiny offline ones: token ids fit either vocabulary.
    """
    from transformers import (
        GroundingDinoConfig,
        GroundingDinoImageProcessor,
        GroundingDinoProcessor,
        Owlv2Config,
        Owlv2ImageProcessor,
        Owlv2Processor,
    )

    from grainclip.testing.detectors import IMAGE_SIZE, OWLV2_TEXT_LENGTH, grounding_dino_config, owlv2_config
    from grainclip.testing.tiny_tokenizers import build_bert_tokenizer, build_clip_tokenizer

    owl_side, dino_side = (IMAGE_SIZE, IMAGE_SIZE) if rehearse else (960, 800)
    clip_tokenizer, bert_tokenizer = build_clip_tokenizer(model_max_length=OWLV2_TEXT_LENGTH), build_bert_tokenizer()
    if rehearse:
        owl, dino = owlv2_config(clip_tokenizer), grounding_dino_config(bert_tokenizer)
    else:
        owl = Owlv2Config(vision_config={"image_size": owl_side, "patch_size": 16})
        dino = GroundingDinoConfig()
    owl_processor = Owlv2Processor(Owlv2ImageProcessor(size={"height": owl_side, "width": owl_side}), clip_tokenizer)
    dino_image = GroundingDinoImageProcessor(size={"shortest_edge": dino_side, "longest_edge": 2 * dino_side})
    dino_processor = GroundingDinoProcessor(image_processor=dino_image, tokenizer=bert_tokenizer)
    return {
        "owlv2": (owl, owl_processor, owl_side, OWLV2_TEXT_LENGTH),
        "grounding-dino": (dino, dino_processor, dino_side, 64),
    }


def detector_inputs(name: str, batch: int, side: int, tokens: int, queries: int, device: torch.device) -> dict:
    g = torch.Generator().manual_seed(0)
    pixels = torch.randn(batch, 3, side, side, generator=g).to(device)
    if name == "owlv2":  # one tokenised query per description, `queries` descriptions per image
        ids = torch.randint(1, 100, (batch * queries, tokens), generator=g).to(device)
        return {"pixel_values": pixels, "input_ids": ids, "attention_mask": torch.ones_like(ids)}
    ids = torch.randint(1, 100, (batch, tokens), generator=g).to(device)  # descriptions joined into one prompt
    return {"pixel_values": pixels, "pixel_mask": torch.ones(batch, side, side, dtype=torch.int64, device=device),
            "input_ids": ids, "attention_mask": torch.ones_like(ids), "token_type_ids": torch.zeros_like(ids)}  # fmt: skip


def detectors_section(run: Run) -> dict:
    from transformers import GroundingDinoForObjectDetection, Owlv2ForObjectDetection

    classes = {"owlv2": Owlv2ForObjectDetection, "grounding-dino": GroundingDinoForObjectDetection}
    batches = [2, 4] if run.args.rehearse else [8, 32]
    iters = 2 if run.args.rehearse else 5
    queries = 8  # descriptions per image, as the describe stage writes them (5-10)
    out: dict[str, Any] = {"descriptions_per_image": queries}
    for name, (config, processor, side, tokens) in detector_models(run.args.rehearse).items():
        torch.manual_seed(0)
        model = classes[name](config).eval()
        row: dict[str, Any] = {"input_px": side, "params_m": round(sum(p.numel() for p in model.parameters()) / 1e6, 1)}
        for dtype_name, dtype in (("bf16", torch.bfloat16), ("fp32", torch.float32)):
            model.to(run.device, dtype)
            for batch in batches:
                inputs = detector_inputs(name, batch, side, tokens, queries, run.device)
                inputs["pixel_values"] = inputs["pixel_values"].to(dtype)
                with torch.inference_mode():
                    model(**inputs)  # warm-up
                    sync(run.device)
                    started = time.perf_counter()
                    for _ in range(iters):
                        model(**inputs)
                    sync(run.device)
                row[f"forward_{dtype_name}_b{batch}_images_per_s"] = round(
                    batch * iters / (time.perf_counter() - started), 1
                )
        row["grounder_batch"] = batches[0]
        row["grounder_fp32_images_per_s"] = grounder_speed(run, name, model.float(), processor, batches[0], queries)
        out[name] = row
        del model
        if run.device.type == "cuda":
            torch.cuda.empty_cache()
    return out


def grounder_speed(run: Run, name: str, model: Any, processor: Any, batch: int, queries: int) -> float:
    """images/s of the project's grounder (processor + forward + post-processing) on this random model."""
    from PIL import Image

    from grainclip.annotate.grounders.grounding_dino import GroundingDinoGrounder
    from grainclip.annotate.grounders.owlv2 import Owlv2Grounder
    from grainclip.annotate.types import GroundRequest
    from grainclip.config.annotate import GrounderConfig

    folder = run.work / f"detector-{name}"
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    grounder_class = Owlv2Grounder if name == "owlv2" else GroundingDinoGrounder
    grounder = grounder_class(GrounderConfig(name=name, model=str(folder), device=run.device.type, batch_size=batch))
    rng = torch.Generator().manual_seed(0)
    images = [
        Image.fromarray(torch.randint(0, 255, (480, 640, 3), generator=rng, dtype=torch.uint8).numpy())
        for _ in range(batch)
    ]
    descriptions = [f"part number {i} of the creature" for i in range(queries)]
    requests = [
        GroundRequest(image_id=str(i), image=image, descriptions=descriptions) for i, image in enumerate(images)
    ]
    grounder.ground(requests)  # warm-up
    sync(run.device)
    started = time.perf_counter()
    grounder.ground(requests)
    sync(run.device)
    return round(batch / (time.perf_counter() - started), 1)


# ------------------------------------------------------------------------------------------ the evaluator
def evaluate_section(run: Run) -> dict:
    """Random-init GRAIN and CLIP models exported as the trainer does, evaluated as `grainclip evaluate` does."""
    from grainclip.config.evaluate import EvaluateConfig
    from grainclip.evaluate import evaluate
    from grainclip.train.export import export_model

    models = {}
    for mode in ("grain", "clip"):
        stepper = Stepper(run, train_config(run, mode, run.args.batches[0]))
        models[mode] = run.work / f"model-{mode}"
        export_model(stepper.model, stepper.backbone, stepper.cfg.decoder, models[mode], name=mode)
        del stepper
    config = EvaluateConfig.model_validate({
        "out": str(run.work / "evaluate"),
        "models": [{"type": "checkpoint", "label": mode, "path": str(path)} for mode, path in models.items()],
        "datasets": [{"name": "test_seen", "source": {"kind": "partsworld", "path": str(data(run)), "split": "test_seen"},
                      "tasks": ["classification", "grounding"]}],
        "batch_size": run.args.eval_batch, "num_workers": run.args.workers, "grid_images": 0, "progress": False,
    })  # fmt: skip
    results = evaluate(config)
    return {
        "images": results["runs"][0]["n_rows"],
        "batch_size": run.args.eval_batch,
        "images_per_s": {r["model"]: round(r["images_per_second"], 1) for r in results["runs"]},
    }


# ------------------------------------------------------------------------------------------------ report
def markdown(results: dict[str, Any]) -> str:
    lines = [f"# GPU benchmark ({results['device']}, torch {results['torch']}, {results['date']})", "",
             f"Command: `{results['command']}`; dense bf16 peak {results['peak_bf16_tflops']} TFLOP/s "
             f"({results['peak_source']}).", ""]  # fmt: skip
    for section, compiled in (("step", False), ("compile", True)):
        if section not in results:
            continue
        lines += [f"## Training step, bf16{', torch.compile' if compiled else ''}", "",
                  "| batch | mode | step (median) | images/s | GRAIN / CLIP | MFU | share: " + " / ".join(PHASES) + " |",
                  "| --- | --- | --- | --- | --- | --- | --- |"]  # fmt: skip
        for batch, row in results[section].items():
            for mode in ("grain", "clip"):
                if mode not in row:
                    continue
                r = row[mode]
                shares = " / ".join(f"{v:.0%}" for v in r.get("phase_share", {}).values()) or "-"
                ratio = row.get("grain_vs_clip_step", "-") if mode == "grain" else ""
                lines.append(f"| {batch} | {mode} | {r['step_s_median'] * 1e3:.1f} ms | {r['images_per_s']} | {ratio} | "
                             f"{r.get('mfu') or '-'} | {shares} |")  # fmt: skip
        lines.append("")
    for section in ("matcher", "detectors", "evaluate"):
        if section in results:
            lines += [f"## {section}", "", "```json", json.dumps(results[section], indent=2), "```", ""]
    if results["skipped"]:
        lines += ["Skipped: " + "; ".join(results["skipped"]), ""]
    return "\n".join(lines)


def record_figures(results_file: Path) -> int:
    """Put a device run's headline figures into benchmarks/figures.json (run here, on the fetched gpu_bench.json:
    files written on the device machine do not come back, only $OUT does)."""
    sys.path.insert(0, str(Path(__file__).parent))
    from figures import record

    results = json.loads(results_file.read_text())
    step = next(iter(results.get("step", {}).values()), None)  # the first batch size: 128, the paper's
    if results.get("rehearse") or not step or "grain_vs_clip_step" not in step:
        print(f"gpu_bench: {results_file} holds no full-size GRAIN and CLIP step; nothing recorded", file=sys.stderr)
        return 2
    command = results["command"]
    record("gpu_grain_step_images_per_s", step["grain"]["images_per_s"], "images/s", command)
    if step["grain"].get("mfu") is not None:
        record("gpu_grain_step_mfu", step["grain"]["mfu"], "fraction", command)
    record("gpu_grain_vs_clip_step", step["grain_vs_clip_step"], "x", command)
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=None, help="Folder for gpu_bench.json/.md (default: $OUT or .)")
    parser.add_argument("--rehearse", action="store_true", help="Toy sizes on any device: proves every code path.")
    parser.add_argument("--batches", default=None, help="Comma-separated batch sizes (default 128,256; rehearse 4,8).")
    parser.add_argument("--steps", type=int, default=None, help="Timed steps per measurement (default 10; rehearse 2).")
    parser.add_argument("--warmup", type=int, default=None, help="Untimed steps first (default 3; rehearse 1).")
    parser.add_argument("--workers", type=int, default=None, help="DataLoader workers (default 8; rehearse 1).")
    parser.add_argument("--backbone", default="ViT-B-16")
    parser.add_argument("--eval-images", type=int, default=512, help="PartsWorld images per test split.")
    parser.add_argument("--eval-batch", type=int, default=128)
    parser.add_argument(
        "--gpu-matcher",
        choices=["auto", "always", "never"],
        default=None,
        help="GRAIN step with the enumeration matcher: auto = if matching > 5%% of the step.",
    )
    parser.add_argument(
        "--peak-tflops", type=float, default=None, help="Dense bf16 peak for MFU (default: by GPU name)."
    )
    parser.add_argument(
        "--compile-backend",
        default=None,
        help="torch.compile backend (default inductor; rehearse "
        "aot_eager: traces forward and backward like inductor without generating kernels).",
    )
    parser.add_argument("--budget-s", type=float, default=480.0, help="Start no section after this many seconds.")
    parser.add_argument("--skip", default="", help="Comma-separated sections to leave out.")
    parser.add_argument(
        "--record",
        type=Path,
        default=None,
        metavar="GPU_BENCH_JSON",
        help="Measure nothing: record a fetched device run's figures in benchmarks/figures.json.",
    )
    args = parser.parse_args()
    if args.record:
        return record_figures(args.record)
    import os

    r = args.rehearse
    args.out = args.out or Path(os.environ.get("OUT") or ".")
    args.batches = [int(b) for b in (args.batches or ("4,8" if r else "128,256")).split(",")]
    args.steps = args.steps or (2 if r else 10)
    args.warmup = args.warmup or (1 if r else 3)
    args.workers = args.workers if args.workers is not None else (1 if r else 8)
    args.gpu_matcher = args.gpu_matcher or ("always" if r else "auto")
    args.compile_backend = args.compile_backend or ("aot_eager" if r else "inductor")
    args.image_size = 64 if r else 224
    if not r and not torch.cuda.is_available():
        print("gpu_bench: torch sees no CUDA GPU; run with --rehearse for the toy-size CPU rehearsal.", file=sys.stderr)
        return 2
    skip = set(filter(None, args.skip.split(",")))
    with tempfile.TemporaryDirectory(prefix="gpu-bench-") as work:
        run = Run(args, Path(work))
        sections = {
            "step": step_section, "matcher": matcher_section, "detectors": detectors_section,
            "evaluate": evaluate_section,
            # rehearsing, one batch size: compiling is slow on a CPU and a second size adds no code path
            "compile": lambda run: step_section(run, compile=True, batches=args.batches[:1] if r else None),
        }  # fmt: skip
        for name, function in sections.items():
            if name not in skip:
                run.section(name, function)
        run.results["total_s"] = round(time.perf_counter() - run.started, 1)
        run.write()
    print(json.dumps(run.results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
