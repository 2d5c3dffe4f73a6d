"""grainclip.evaluate: zero-shot classification (global / descriptors / region-aware), retrieval, grounding."""
