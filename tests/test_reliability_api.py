"""The Python API is as safe as the command line: the same limits with the same messages, the same file writing,
and the models people pass it (compiled, scripted, lazy, quantized) analysed or refused in one clear line."""

from __future__ import annotations

import os
import re
import stat
import threading
import time

import pytest
import torch
from torch import nn
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


# ----------------------------------------------------------------------------- API writers (item 7)


def small_report():
    return resnet_inspect.summary(nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU()), 8)


WRITERS = {
    "to_json": lambda report, path: report.to_json(path),
    "to_csv": lambda report, path: report.to_csv(path),
    "to_markdown": lambda report, path: report.to_markdown(path),
    "to_html": lambda report, path: report.to_html(path),
}


@pytest.mark.parametrize("writer", WRITERS)
def test_an_api_writer_follows_a_symlink_and_keeps_it(writer, tmp_path):
    target, link = tmp_path / "target.txt", tmp_path / "link.txt"
    target.write_text("old")
    link.symlink_to(target)
    text = WRITERS[writer](small_report(), link)
    assert link.is_symlink() and target.read_text() == text != "old"


@pytest.mark.parametrize("writer", WRITERS)
def test_an_api_writer_keeps_a_hard_link_and_the_files_mode(writer, tmp_path):
    first, second = tmp_path / "first.txt", tmp_path / "second.txt"
    first.write_text("old")
    first.chmod(0o640)
    os.link(first, second)
    text = WRITERS[writer](small_report(), first)
    assert first.stat().st_ino == second.stat().st_ino and second.read_text() == text
    assert stat.S_IMODE(first.stat().st_mode) == 0o640


@pytest.mark.parametrize("writer", WRITERS)
def test_an_api_writer_gives_a_new_file_the_umasks_mode(writer, tmp_path):
    previous = os.umask(0o022)
    try:
        WRITERS[writer](small_report(), tmp_path / "new.txt")
    finally:
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / "new.txt").stat().st_mode) == 0o644


@pytest.mark.parametrize("writer", WRITERS)
def test_an_api_writer_refuses_a_directory_with_the_clis_line(writer, tmp_path):
    with pytest.raises(BadInputError) as refused:
        WRITERS[writer](small_report(), tmp_path)
    assert str(refused.value) == f"cannot write {tmp_path}: it is a directory"
    assert str(refused.value) == cli_error("summary", "resnet20", "-i", "8", "-o", str(tmp_path))


@pytest.mark.parametrize("writer", WRITERS)
def test_an_api_writer_writes_into_a_fifo_without_replacing_it(writer, tmp_path):
    """A FIFO stands in for a character device such as /dev/null: written to, never replaced by a file."""
    fifo = tmp_path / "device"
    os.mkfifo(fifo)
    received: list[bytes] = []
    reader = threading.Thread(target=lambda: received.append(fifo.read_bytes()), daemon=True)
    reader.start()
    text = WRITERS[writer](small_report(), fifo)
    reader.join(timeout=60)
    assert stat.S_ISFIFO(fifo.stat().st_mode)
    assert received == [text.encode()]


def test_the_writers_write_what_the_renderers_give(tmp_path):
    from resnet_inspect.render import render_csv, render_json, render_markdown

    report = small_report()
    for name, render in (("to_json", render_json), ("to_csv", render_csv), ("to_markdown", render_markdown),
                         ("to_html", lambda report: report.to_html())):
        path = tmp_path / f"{name}.txt"
        assert WRITERS[name](report, path) == path.read_text() == render(report)
        assert getattr(report, name)() == render(report)  # without a path: the text only


def test_an_erf_picture_to_a_directory_is_refused_before_any_work(tmp_path, monkeypatch):
    from resnet_inspect.pipeline import rf

    monkeypatch.setattr(rf, "rf_report", lambda *args, **kwargs: pytest.fail("the ERF ran"))
    with pytest.raises(BadInputError, match=re.escape(f"cannot write {tmp_path}: it is a directory")):
        resnet_inspect.receptive_field("resnet20", png=tmp_path)


# ---------------------------------------------------------------------- the models people pass (item 11)


def conv_net() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 4, 3, stride=2))


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # loading torch._dynamo uses torch.jit's deprecated parts
def test_a_compiled_module_is_inspected_through_the_module_it_wraps():
    model = conv_net()
    compiled = torch.compile(model)
    assert resnet_inspect.summary(compiled, 16).to_dict()["totals"] == resnet_inspect.summary(model, 16).to_dict()[
        "totals"]
    assert resnet_inspect.verify(compiled, 16).failed == 0


@pytest.mark.parametrize("make", [lambda model: torch.jit.script(model),
                                  lambda model: torch.jit.trace(model, torch.zeros(1, 3, 16, 16))],
                         ids=["script", "trace"])
@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch.jit's own notice, made here on purpose
def test_a_torchscript_module_is_refused_in_one_line(make):
    with pytest.raises(ValueError) as refused:
        resnet_inspect.summary(make(conv_net()), 16)
    message = str(refused.value)
    assert "\n" not in message and "TorchScript" in message and "before tracing or scripting" in message


def test_an_uninitialised_lazy_module_is_refused_with_what_to_do():
    with pytest.raises(ValueError) as refused:
        resnet_inspect.summary(nn.Sequential(nn.LazyConv2d(8, 3), nn.ReLU()), 16)
    assert str(refused.value) == ("Sequential: 0 (LazyConv2d) is a lazy module whose parameters are not initialised "
                                  "yet: run one forward pass on the model before passing it")


def test_a_torch_device_is_accepted_wherever_a_device_name_is():
    model = conv_net()
    assert (resnet_inspect.summary(model, 16, device=torch.device("cpu")).to_dict()["totals"]
            == resnet_inspect.summary(model, 16, device="cpu").to_dict()["totals"])
    timed = resnet_inspect.time_model(model, 1, 16, device=torch.device("cpu"), warmup=0, repeat=1)
    assert timed.to_dict()["device"] == "cpu"
    compared = resnet_inspect.compare([model], 16, time=True, device=torch.device("cpu"), warmup=0, repeat=1)
    assert compared.records()[0]["device"] == "cpu"


QUANTIZED = {
    "static": lambda: nn.Sequential(torch.ao.nn.quantized.Quantize(1.0, 0, torch.quint8),
                                    torch.ao.nn.quantized.Conv2d(3, 4, 3)),
    "dynamic": lambda: nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), torch.ao.nn.quantized.dynamic.Linear(144, 2)),
}


@pytest.mark.parametrize("kind", QUANTIZED)
@pytest.mark.filterwarnings("ignore:torch.quantize_per_tensor")  # torch's own notice, made here on purpose
def test_a_quantized_module_is_refused_in_one_line_that_names_no_torch_internals(kind):
    with pytest.raises(ValueError) as refused:
        resnet_inspect.summary(QUANTIZED[kind](), 8)
    message = str(refused.value)
    assert "\n" not in message and "quantized" in message and "float model" in message
    assert not re.search(r"torch\.|_packed|ScriptObject|fake impl|aten|::", message), message
