"""The interactive explorer (``tagsmith explore``), built on Textual.

Importing this package costs nothing: Textual is imported by ``tagsmith.tui.app`` only, which
the CLI loads inside the explore command. ``table`` and ``loaders`` are plain Python.
"""
