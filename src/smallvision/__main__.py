"""`python -m smallvision ARGS` is the `smallvision ARGS` command (torchrun's `-m smallvision` too)."""

import sys

from smallvision.cli import main

if __name__ == "__main__":
    sys.exit(main())
