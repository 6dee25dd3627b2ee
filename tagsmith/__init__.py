"""tagsmith: tokenizer-aware tag design for Stable Diffusion 1.5 LoRA training and prompting."""

__version__ = "0.1.0"
