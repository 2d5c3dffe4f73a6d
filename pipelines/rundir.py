"""The run directory, and how a rerun learns what is already done (exactly-once resume).

Layout of OUT:
    annotations/part-<sha1 of the shard's image_ids>.parquet   committed shards
    manifest.json            what ran: config, resume hash, versions, annotators, counts, timings (atomic rewrite)
    stats/part-<...>.json    each committed shard's stats (rows per status, busy seconds, tokens, annotators)
    report/*.png             the run report's plots
    _superseded/<run_id>/    an older run moved aside by --force-new-run (nothing is deleted)

Exactly-once, in three rules:
1. A shard is committed by `schema.write_shard` (temp file + rename locally, one PUT on object storage): it
   exists whole or not at all.
2. A rerun reads the image_ids of every committed shard and filters them out of the input before the model
   stages (`committed_ids` + `grainclip.id_arrays.contains_sorted`), so finished rows are never redone and
   unfinished ones are.
3. A shard's name is a hash of its image_ids, so a retried commit task (worker died after the rename)
   rewrites the same file instead of adding a second copy. Whatever duplicates remain possible -- the same
   image_id twice in the input, or an orphaned task racing a rerun -- are removed whenever an attempt ends
   (complete, stopped or failed) and when the next one starts after a kill, by `drop_duplicate_ids`, which
   keeps the first occurrence (shard name order) and rewrites the affected shards atomically. The number
   dropped is recorded in the manifest, never silent.

OUT may be a local folder or an `s3://bucket/prefix` (`grainclip.storage`): everything here is reads, whole-file
writes and listings, so both behave the same.

The identity of a run is the hash of the config parts that decide the output rows (`RESUME_FIELDS`);
resources, shard size and steps may change between attempts.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
from pydantic import ValidationError

from grainclip import storage
from grainclip.config.base import ConfigError
from grainclip.config.pipeline import RESUME_FIELDS, RESUME_IGNORED, PipelineConfig
from grainclip.id_arrays import fixed_width_bytes
from grainclip.pipelines.manifest import RunManifest
from grainclip.schema import parquet_dataset, parquet_file, write_shard

log = logging.getLogger(__name__)

#: What a run id may look like when it becomes a folder name (new ids: 20250101T000000Z-0123abcd).
SAFE_RUN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


class RunConfigChanged(ConfigError):
    """The run directory holds a run made with a different config; the message lists what changed."""


class ManifestUnreadable(ConfigError):
    """OUT/manifest.json is not JSON or not a run manifest (hand-edited, or written by something else)."""


MOVE_ASIDE = "move it aside or use --force-new-run"


def new_run_id() -> str:
    return f"{datetime.now(UTC):%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:8]}"


def resume_view(config: PipelineConfig) -> dict[str, Any]:
    """The config parts that decide the output rows, as plain JSON data keyed by dotted path."""
    data = config.model_dump(mode="json")
    for dotted in RESUME_IGNORED:
        *parents, leaf = dotted.split(".")
        _lookup(data, parents).pop(leaf, None)
    return {dotted: _lookup(data, dotted.split(".")) for dotted in RESUME_FIELDS}


def _lookup(data: dict[str, Any], keys: list[str]) -> Any:
    for key in keys:
        data = data[key]
    return data


def config_hash(view: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(view, sort_keys=True).encode()).hexdigest()[:16]


def config_changes(old: Any, new: Any, path: str = "") -> list[str]:
    """Human-readable differences between two JSON values: `dotted.path: old -> new`."""
    if isinstance(old, dict) and isinstance(new, dict):
        changes = []
        for key in sorted(set(old) | set(new), key=str):
            where = f"{path}.{key}" if path else str(key)
            if key not in old:
                changes.append(f"{where}: (unset) -> {new[key]!r}")
            elif key not in new:
                changes.append(f"{where}: {old[key]!r} -> (unset)")
            else:
                changes.extend(config_changes(old[key], new[key], where))
        return changes
    return [] if old == new else [f"{path}: {old!r} -> {new!r}"]


@dataclass(frozen=True)
class RunDir:
    root: Path | str  # a local folder or an object-storage URI (`storage.location`)
    # The layout under root, derived from it: committed shards, the manifest, per-shard stats, the report.
    annotations: Path | str = field(init=False)
    manifest_path: Path | str = field(init=False)
    stats_dir: Path | str = field(init=False)
    report_dir: Path | str = field(init=False)
    ray_processes_path: Path | str = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", storage.location(self.root))
        layout = {
            "annotations": "annotations",
            "manifest_path": "manifest.json",
            "stats_dir": "stats",
            "report_dir": "report",
            "ray_processes_path": "ray-processes.json",  # an embedded Ray's PIDs while its driver runs
        }
        for name, leaf in layout.items():
            object.__setattr__(self, name, storage.join(self.root, leaf))  # frozen: set once, here

    # --- manifest -------------------------------------------------------------------------------------------

    def read_manifest(self) -> RunManifest | None:
        """The manifest on disk, or None; ManifestUnreadable (one line) if it is not JSON or not a manifest."""
        if not storage.exists(self.manifest_path):
            return None
        try:
            return RunManifest.model_validate(json.loads(storage.read_text(self.manifest_path)))
        except json.JSONDecodeError as exc:
            raise ManifestUnreadable(f"{self.manifest_path} is not valid JSON ({exc}); {MOVE_ASIDE}") from None
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or '(top level)'}: {e['msg']}" for e in exc.errors())
            raise ManifestUnreadable(f"{self.manifest_path} is not a run manifest ({problems}); {MOVE_ASIDE}") from None

    def write_manifest(self, manifest: RunManifest) -> None:
        """Atomic rewrite, so a kill mid-write leaves the previous manifest, never half of one."""
        storage.write_text(self.manifest_path, json.dumps(manifest.model_dump(mode="json"), indent=2))

    # --- committed shards -----------------------------------------------------------------------------------

    def shard_path(self, image_ids: Iterable[str]) -> Path | str:
        """Deterministic name from the shard's content: a retried commit overwrites instead of duplicating."""
        digest = hashlib.sha1("\n".join(sorted(image_ids)).encode()).hexdigest()[:24]
        return storage.join(self.annotations, f"part-{digest}.parquet")

    def committed_files(self) -> list[Path | str]:
        """The committed shards, from one listing (a prefix listing on object storage)."""
        files = storage.list_files(self.annotations, ".parquet", recursive=False)
        return [f for f in files if storage.name(f).startswith("part-")]

    def committed_ids(self) -> np.ndarray:
        """Sorted bytes array of every committed image_id (input for `contains_sorted`).

        Built batch by batch straight from the Arrow buffers, never as Python strings: at a million committed
        rows that is the array itself (~16 bytes an id) and one batch in flight, not ~10x that in objects.
        """
        files = self.committed_files()
        if not files:
            return np.array([], dtype="S1")
        batches = parquet_dataset(files).to_batches(columns=["image_id"])
        return np.sort(np.concatenate([fixed_width_bytes(batch.column(0)) for batch in batches]))

    def status_counts(self) -> dict[str, int]:
        files = self.committed_files()
        if not files:
            return {}
        table = parquet_dataset(files).to_table(columns=["status"])
        counts = table.group_by("status").aggregate([("status", "count")])
        return dict(sorted(zip(counts.column("status").to_pylist(), counts.column("status_count").to_pylist())))

    def remove_stale_temp_files(self) -> int:
        """Temp files of commits a killed attempt never finished (only call while no writer is running).

        Only local commits leave any: an object-storage commit is a single PUT.
        """
        if storage.is_uri(self.root):
            return 0
        stale = [p for folder in (self.annotations, self.stats_dir) if folder.is_dir() for p in folder.glob(".*.tmp")]
        for path in stale:
            path.unlink(missing_ok=True)
        return len(stale)

    def drop_duplicate_ids(self, compression: str) -> int:
        """Keep the first committed row of every image_id (shard name order); returns how many were dropped."""
        files = self.committed_files()
        if not files:
            return 0
        # As bytes arrays (see committed_ids): a million ids are ~16 MB here, not a string table and its hash groups.
        per_file = [fixed_width_bytes(parquet_file(f).read(columns=["image_id"]).column("image_id")) for f in files]
        offsets = np.cumsum([0] + [len(file_ids) for file_ids in per_file])
        ids = np.concatenate(per_file)
        del per_file
        ordered = np.sort(ids)
        if not (ordered[1:] == ordered[:-1]).any():  # the usual case, at a sort's cost
            return 0
        del ordered
        _, first = np.unique(ids, return_index=True)  # each id's first row, in shard name order
        keep = np.zeros(len(ids), dtype=bool)
        keep[first] = True
        dropped = 0
        for index, path in enumerate(files):
            mask = keep[offsets[index] : offsets[index + 1]]
            if mask.all():
                continue
            dropped += int((~mask).sum())
            kept = parquet_file(path).read().filter(pa.array(mask))
            if kept.num_rows:
                write_shard(kept, path, "annotations", compression=compression)
            else:
                storage.delete(path)
            self._recount_shard_stats(storage.name(path), kept)
        log.warning("dropped %d duplicate image_id row(s); the first occurrence of each id was kept", dropped)
        return dropped

    # --- per-shard stats ------------------------------------------------------------------------------------

    def write_shard_stats(self, shard_name: str, stats: dict[str, Any]) -> None:
        """Stats of one committed shard, beside it in stats/ (whole, like the shard itself)."""
        storage.write_text(storage.join(self.stats_dir, f"{shard_name}.json"), json.dumps(stats))

    def _recount_shard_stats(self, shard_name: str, kept: pa.Table) -> None:
        """A shard lost duplicate rows: its stats count what it holds now, so every count agrees with the shards."""
        path = storage.join(self.stats_dir, f"{shard_name}.json")
        if not storage.exists(path):
            return
        if not kept.num_rows:
            storage.delete(path)
            return
        stats = json.loads(storage.read_text(path))
        statuses = kept.column("status").to_pylist()
        stats["rows"], stats["statuses"] = kept.num_rows, {s: statuses.count(s) for s in sorted(set(statuses))}
        self.write_shard_stats(shard_name, stats)

    def read_shard_stats(self) -> list[dict[str, Any]]:
        """Stats of the shards that are committed now, oldest first."""
        written = set(map(str, storage.list_files(self.stats_dir, ".json", recursive=False)))  # one listing
        stats = []
        for shard in self.committed_files():
            path = str(storage.join(self.stats_dir, f"{storage.name(shard)}.json"))
            if path in written:  # absent only if a kill fell between the shard's commit and its stats'
                stats.append(json.loads(storage.read_text(path)))
        return sorted(stats, key=lambda s: s["committed_at"])

    # --- starting or resuming a run ---------------------------------------------------------------------------

    def supersede(self, run_id: str) -> Path | str:
        """Move the current run's files to _superseded/<run_id>/ (kept, not deleted).

        The run id comes from the manifest on disk, which anyone may have edited: one that is not a plain name
        (a path like `../../x`) is replaced, so the move can never leave the run directory.
        """
        if not SAFE_RUN_ID.fullmatch(str(run_id)):
            log.warning("previous run id %r is not a plain name; superseding it as unknown", run_id)
            run_id = f"unknown-{new_run_id()}"
        target = storage.join(self.root, "_superseded", run_id)
        for path in (self.annotations, self.stats_dir, self.manifest_path, self.report_dir):
            if storage.exists(path):
                storage.move(path, storage.join(target, storage.name(path)))
        log.warning("moved the previous run %s to %s", run_id, target)
        return target

    def open(self, config: PipelineConfig, force_new_run: bool) -> tuple[str, RunManifest | None]:
        """The run id to write under and the previous manifest when resuming (None for a new run).

        Raises RunConfigChanged when OUT holds a different run and `force_new_run` is not set.
        """
        try:
            previous = self.read_manifest()
        except ManifestUnreadable:
            if not force_new_run:
                raise
            self.supersede(f"unknown-{new_run_id()}")
            return new_run_id(), None
        has_shards = bool(self.committed_files())
        view = resume_view(config)
        if previous is None and not has_shards:
            return new_run_id(), None
        if previous is None:
            if not force_new_run:
                raise RunConfigChanged(
                    f"{self.annotations} holds shards but {self.manifest_path} is missing, so they cannot be "
                    "matched to this config; pass --force-new-run to move them aside and start over"
                )
            self.supersede(f"unknown-{new_run_id()}")
            return new_run_id(), None
        if previous.config_hash == config_hash(view):
            return previous.run_id, previous
        if not has_shards:
            # The previous run committed nothing (it failed before its first shard): there is nothing to
            # protect, so the corrected config starts here instead of needing --force-new-run.
            log.info("run %s in %s committed nothing; starting a new run in its place", previous.run_id, self.root)
            return new_run_id(), None
        if not force_new_run:
            changes = config_changes(previous.resume_config, view)
            listed = "\n".join(f"  {c}" for c in changes) or "  (the stored config could not be compared)"
            raise RunConfigChanged(
                f"{self.root} holds run {previous.run_id} made with a different config; refusing to "
                f"resume into it. Changed:\n{listed}\nRerun with the old config to resume, use another output "
                "directory, or pass --force-new-run to move the old run to _superseded/ and start over."
            )
        self.supersede(previous.run_id)
        return new_run_id(), None


def existing_run(path: str | Path) -> tuple[RunDir, RunManifest]:
    """A run to read back (compare, stage reuse); ConfigError (one line) unless it is one with committed rows."""
    run = RunDir(path)
    try:
        manifest = run.read_manifest()
    except ManifestUnreadable:
        manifest = None
    if manifest is None:
        raise ConfigError(f"{path} is not a pipeline run directory (no run manifest at {run.manifest_path})")
    if not run.committed_files():
        raise ConfigError(f"run {manifest.run_id} at {path} has no committed annotation shards")
    return run, manifest
