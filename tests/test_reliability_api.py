"""The Python API is as safe as the command line: the same limits with the same messages, the same file writing,
and the models people pass it (compiled, scripted, lazy, quantized) analysed or refused in one clear line."""

from __future__ import annotations

import re
import time

import pytest
from typer.testing import CliRunner

import resnet_inspect
from resnet_inspect.cli.app import app
from resnet_inspect.errors import BadInputError
from resnet_inspect.limits import MAX_COUNT, MAX_INPUT_SIZE, MAX_REPEAT, MAX_THREADS, MAX_WARMUP
from resnet_inspect.models import get_model

runner = CliRunner()


def cli_error(*arguments: str) -> str:
    """The one error line of a CLI run that must exit 2, without the `error: ` prefix."""
    result = runner.invoke(app, list(arguments))
    assert result.exit_code == 2, result.output
    assert result.stderr.count("\n") == 1, result.stderr
    return result.stderr.strip().removeprefix("error: ")


# ------------------------------------------------------------------------------------------ limits (item 9)


# (API call, the CLI arguments that break the same limit, the API's spelling -> the CLI's)
SAME_LIMITS = {
    "erf_samples": (lambda: resnet_inspect.receptive_field("resnet20", erf=True, erf_samples=10**6),
                    ["rf", "resnet20", "--erf", "--erf-samples", str(10**6)], ("erf_samples", "--erf-samples")),
    "threads": (lambda: resnet_inspect.time_model("resnet20", threads=0),
                ["time", "resnet20", "--threads", "0"], ("threads", "--threads")),
    "too many threads": (lambda: resnet_inspect.time_model("resnet20", threads=MAX_THREADS + 1),
                         ["time", "resnet20", "--threads", str(MAX_THREADS + 1)], ("threads", "--threads")),
    "warmup": (lambda: resnet_inspect.time_model("resnet20", warmup=MAX_WARMUP + 1),
               ["time", "resnet20", "--warmup", str(MAX_WARMUP + 1)], ("warmup", "--warmup")),
    "negative warmup": (lambda: resnet_inspect.compare(["resnet20"], time=True, warmup=-1),
                        ["compare", "resnet20", "--time", "--warmup", "-1"], ("warmup", "--warmup")),
    "repeat": (lambda: resnet_inspect.compare(["resnet20"], time=True, repeat=MAX_REPEAT + 1),
               ["compare", "resnet20", "--time", "--repeat", str(MAX_REPEAT + 1)], ("repeat", "--repeat")),
    "in_channels": (lambda: resnet_inspect.summary("resnet18", in_channels=0),
                    ["summary", "resnet18", "--in-channels", "0"], ("in_channels", "--in-channels")),
    "num_classes": (lambda: resnet_inspect.verify("resnet18", num_classes=MAX_COUNT + 1),
                    ["verify", "resnet18", "--num-classes", str(MAX_COUNT + 1)], ("num_classes", "--num-classes")),
    "depth": (lambda: resnet_inspect.summary("resnet20", depth=0),
              ["summary", "resnet20", "--depth", "0"], ("depth", "--depth")),
    "batch_size": (lambda: resnet_inspect.summary("resnet20", batch_size=MAX_COUNT + 1),
                   ["summary", "resnet20", "-b", str(MAX_COUNT + 1)], ("batch_size", "batch size")),
    "input_size": (lambda: resnet_inspect.verify("resnet20", MAX_INPUT_SIZE + 1),
                   ["verify", "resnet20", "-i", str(MAX_INPUT_SIZE + 1)], ("input_size", "input size")),
}


@pytest.mark.parametrize("case", SAME_LIMITS)
def test_the_api_refuses_what_the_cli_refuses_with_the_same_message(case):
    call, arguments, (api_name, cli_name) = SAME_LIMITS[case]
    started = time.monotonic()
    with pytest.raises(ValueError) as refused:  # BadInputError is a ValueError, as the API promises
        call()
    assert time.monotonic() - started < 60  # refused before any work, never a run of hours
    assert isinstance(refused.value, BadInputError)
    assert str(refused.value).replace(api_name, cli_name, 1) == cli_error(*arguments)


def test_get_model_refuses_zero_channels_instead_of_building_a_conv2d_with_none():
    with pytest.raises(ValueError, match=r"^in_channels must be positive, got 0$"):
        get_model("resnet18", in_channels=0)
    with pytest.raises(ValueError, match=r"^num_classes must be positive, got -3$"):
        get_model("resnet18", num_classes=-3)


def test_a_full_shape_given_to_the_api_has_the_cli_limits_on_each_axis():
    with pytest.raises(ValueError, match=f"input_size {MAX_INPUT_SIZE + 1} is larger than the maximum"):
        resnet_inspect.summary("resnet20", (1, 3, 32, MAX_INPUT_SIZE + 1))
    with pytest.raises(ValueError, match=f"batch_size {MAX_COUNT + 1} is larger than the maximum"):
        resnet_inspect.summary("resnet20", (MAX_COUNT + 1, 3, 32, 32))


def test_a_count_that_is_not_an_int_is_refused():
    with pytest.raises(ValueError, match=re.escape("erf_samples must be an integer, positive, got 8.5")):
        resnet_inspect.receptive_field("resnet20", erf=True, erf_samples=8.5)
    with pytest.raises(ValueError, match=re.escape("threads must be an integer, positive, got True")):
        resnet_inspect.time_model("resnet20", threads=True)
