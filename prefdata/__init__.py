"""prefdata: prompts to preference datasets and aligned models."""

__version__ = "0.1.0"
