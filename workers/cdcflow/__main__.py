"""``python -m cdcflow``: the same CLI as the ``cdcflow`` command."""

from cdcflow.cli import main

main()
