"""grainclip: GRAIN (grounded descriptions for zero-shot recognition) at scale.

Core shared by every stage: data contracts (`schema`), box ops (`boxes`), image decoding (`images`),
configuration (`config`), the PartsWorld generator (`partsworld`) and tiny offline models (`testing`).
"""

__version__ = "0.1.0"
