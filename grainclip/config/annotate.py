"""Config models for annotate runs (owned by the annotate domain; plain data, no heavy imports)."""

from __future__ import annotations
