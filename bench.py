#!/usr/bin/env python3
"""Entry point: ``python bench.py <command>``; the same CLI as the ``attnbench`` script."""
import sys

from attnbench.cli import main

if __name__ == "__main__":
    sys.exit(main())
