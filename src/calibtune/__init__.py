"""calibtune: teach language models to know what they don't know."""

__version__ = "0.1.0"
