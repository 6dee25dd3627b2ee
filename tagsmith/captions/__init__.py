"""A LoRA dataset's caption files: reading them as kohya does, parsing caption syntax,
co-occurrence statistics, the shuffled token budget, the dataset report, and safe retagging.

The modules, each importing only those above it:

* ``parse``: caption syntax, tags and their analysed form;
* ``files``: finding caption files beside images, repeat folders, decoding;
* ``budget``: token counts and the odds that shuffling cuts a tag past 75 tokens;
* ``cooccurrence``: pair statistics, clusters, and a tag's strong partners;
* ``report``: everything ``tagsmith dataset`` reports;
* ``retag``: renaming tags in caption files, with backup and undo.
"""
