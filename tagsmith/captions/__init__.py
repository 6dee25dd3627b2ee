"""A LoRA dataset's caption files: reading them as kohya does, parsing caption syntax,
co-occurrence statistics, the shuffled token budget, the dataset report, and safe retagging."""
