"""`python -m plait.cli`: the command line."""

from .main import main

main()
