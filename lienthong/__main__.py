"""`python -m lienthong` is the `lienthong` command."""

from lienthong.cli import main

main()
