"""Language-modelling presets (``configs/lm/<scheme>.py``); shared settings in ``base.py``."""
