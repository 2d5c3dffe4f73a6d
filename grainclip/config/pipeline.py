"""Config models for pipeline runs (owned by the pipeline domain; plain data, no heavy imports)."""

from __future__ import annotations
