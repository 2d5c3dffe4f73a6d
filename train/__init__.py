"""grainclip.train: the GRAIN model on an open_clip backbone, its three losses, data loading and trainer."""
