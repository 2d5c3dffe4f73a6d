"""Config models for train runs (owned by the train domain; plain data, no heavy imports)."""

from __future__ import annotations
