"""Text before any model: the CLIP BPE tokenizer, A1111 prompt syntax, the forms a tag can take,
and tag vocabularies (readers and the token index built from them). Nothing here needs torch or
imports ``tagsmith.model``."""
