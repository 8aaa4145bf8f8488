"""`python -m resnet_inspect` runs the command-line interface."""

from resnet_inspect.cli.app import main

main()
