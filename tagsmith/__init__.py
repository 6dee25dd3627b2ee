"""tagsmith: tokenizer-aware tag design for Stable Diffusion (SD1.5 and SDXL: Pony, Illustrious,
NoobAI) LoRA training and prompting."""

__version__ = "0.1.0"
