"""Entry point of the PyInstaller bundle: the same `bandmate` command as the pip install."""

import sys

from bandmate.cli import main

if __name__ == "__main__":
    sys.exit(main())
