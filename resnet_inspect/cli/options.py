"""Arguments and options that several commands share (module-level singletons, as typer recommends)."""

from __future__ import annotations

import typer

from resnet_inspect.cli.common import OutputFormat, SummaryFormat
from resnet_inspect.limits import OPTIMIZERS

OPTIMIZER_CHOICES = ", ".join(OPTIMIZERS[:-1]) + f" or {OPTIMIZERS[-1]}"  # "none, sgd, momentum, adam or adamw"

MODEL_HELP = ("A registry name (see `resnet-inspect list`), torchvision:NAME, timm:NAME, path/to/file.py:factory or "
              "package.module:factory. A spec imports and runs that code, like `python file.py`: never take one "
              "from untrusted input.")
INPUT_HELP = ("Input size: 224 (every spatial axis), 224x320 (height x width), 16x112x112 for 3-D nets "
              "(default: the model's own, 224 or 32 for CIFAR).")

ModelArgument = typer.Argument(..., help=MODEL_HELP, show_default=False)
InputSizeOption = typer.Option(None, "--input-size", "-i", help=INPUT_HELP, show_default=False)
BatchOption = typer.Option("1", "--batch-size", "-b", help="Batch size.")
ChannelsOption = typer.Option(None, "--in-channels", help="Input channels (default 3).", show_default=False)
ClassesOption = typer.Option(None, "--num-classes", help="Classes of the final layer (given to the factory).",
                             show_default=False)
FormatOption = typer.Option(OutputFormat.table, "--format", "-f", help="Output format.")
SummaryFormatOption = typer.Option(SummaryFormat.table, "--format", "-f", help="Output format (html: one "
                                   "self-contained page with the layer tree, totals and pictures; use -o FILE).")
OutputOption = typer.Option(None, "--output", "-o", help="Write to FILE instead of stdout (all or nothing; - is "
                            "stdout).",
                            show_default=False)
