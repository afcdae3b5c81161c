"""posenc: position encodings for Transformers, and whether they extrapolate."""

__version__ = "0.1.0"
