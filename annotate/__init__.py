"""grainclip.annotate: describers (LLMs) and grounders (open-vocabulary detectors) that make GRAIN's labels.

Importable without torchvision/open_clip: annotation nodes need no training stack.
"""
