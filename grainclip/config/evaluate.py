"""Config models for evaluate runs (owned by the evaluate domain; plain data, no heavy imports)."""

from __future__ import annotations
