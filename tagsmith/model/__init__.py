"""The text encoder: where it lives (hub id, diffusers folder, single-file checkpoint), its
configuration, the torch and numpy forward passes over prefix trees, the embedder facade every
command uses, and the on-disk embedding cache."""
