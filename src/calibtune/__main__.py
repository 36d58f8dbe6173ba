"""``python -m calibtune``."""

from calibtune.cli import main

main()
