"""``python -m tagsmith``: the same command line as the ``tagsmith`` script."""

from tagsmith.cli import main

main()
