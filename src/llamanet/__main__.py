"""`python -m llamanet`: the same command line as `llamanet`."""

from llamanet.cli import main

main()
