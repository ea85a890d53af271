"""`python -m dispatchloop.cli`."""

from dispatchloop.cli import main

main()
