"""One way through: the command line and the Python API run the same orchestration with the same defaults and the
same checks, a summary with a training step reads every figure from that one step, and every default a --help
states is the one the code uses."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
import typer
from fixtures.aux_heads import GoogLeNetLike, InceptionV3Like
from oracle_torch import flop_counter_backward_macs
from torch import nn
from typer.testing import CliRunner

import resnet_inspect
from resnet_inspect.analysis.fit import DoesNotFitError
from resnet_inspect.cli.app import app
from resnet_inspect.errors import BadInputError, ForwardError
from resnet_inspect.limits import (
    DEFAULT_DEPTH,
    DEFAULT_OPTIMIZER,
    GPU_RESERVE_FIXED_BYTES,
    MAX_COUNT,
    OPTIMIZERS,
    RESERVE_SHARE,
)

runner = CliRunner()
MIB = 1 << 20


def cli_error(*arguments: str) -> str:
    """The one error line of a CLI run that must exit 2, without the `error: ` prefix."""
    result = runner.invoke(app, list(arguments))
    assert result.exit_code == 2, result.output
    assert result.stderr.count("\n") == 1, result.stderr
    return result.stderr.strip().removeprefix("error: ")


def table_rows(text: str) -> list[str]:
    """The full layer names of a printed summary table: its first column holds each name below its parent's,
    indented two spaces a level (`conv` under `conv1` is `conv1.conv`)."""
    names: list[str] = []
    parents: list[str] = []
    for line in text.splitlines():
        if not line.startswith("│"):
            continue
        cell = line.split("│")[1][1:]  # rich pads each cell with one space
        level = (len(cell) - len(cell.lstrip())) // 2
        del parents[level:]
        relative = cell.strip()
        names.append(f"{parents[-1]}.{relative}" if parents else relative)
        parents.append(names[-1])
    return names


def ran_in_training(model: nn.Module, example: torch.Tensor) -> set[str]:
    """The oracle: the name of every module that runs in a real train-mode forward (forward hooks, CPU)."""
    names = {id(module): name for name, module in model.named_modules() if name}
    seen: set[str] = set()
    handles = [module.register_forward_hook(lambda m, _i, _o: seen.add(names[id(m)]))
               for module in model.modules() if id(module) in names]
    try:
        model.train()(example)
    finally:
        for handle in handles:
            handle.remove()
    return seen


# ------------------------------------------------------------------ one pass per report (auxiliary heads)

AUX_MODELS = {"googlenet": (GoogLeNetLike, 64, "aux1"), "inception_v3": (InceptionV3Like, 75, "AuxLogits")}


@pytest.mark.parametrize("pattern", AUX_MODELS)
def test_a_training_summary_has_a_row_for_every_layer_the_training_step_runs(pattern: str) -> None:
    """The auxiliary heads run only in training: with train=True they have rows, with their backward figures, and
    every layer that a real train-mode forward runs, and every layer the peak names, is in the table."""
    build, size, aux = AUX_MODELS[pattern]
    report = resnet_inspect.summary(build(), size, batch_size=2, train=True, depth=None)
    rows = table_rows(str(report))
    layers = {layer["name"]: layer for layer in report.to_dict()["layers"]}
    assert ran_in_training(build(), torch.randn(2, 3, size, size)) <= set(layers) == set(rows)
    in_backward = {name for name, layer in layers.items() if layer["backward_macs"] or layer["grad_bytes"]}
    assert {name for name in in_backward if name.startswith(aux)} >= {f"{aux}.fc" if aux == "AuxLogits"
                                                                      else f"{aux}.fc2"}
    assert in_backward <= set(rows)
    peak_layer = report.to_dict()["training"]["peak_layer"]
    assert peak_layer in ("", *rows)
    assert not any(layer["name"].startswith(aux) for layer in resnet_inspect.summary(build(), size).to_dict()["layers"])


@pytest.mark.parametrize("pattern", AUX_MODELS)
def test_a_training_summary_counts_the_forward_that_the_training_step_runs(pattern: str) -> None:
    """Forward and backward MACs equal FlopCounterMode's count of a real train-mode forward and backward (the
    auxiliary heads included); the eval-mode summary leaves the heads out, as an eval forward does."""
    build, size, _aux = AUX_MODELS[pattern]
    example = torch.randn(2, 3, size, size)
    forward_macs, backward_macs = flop_counter_backward_macs(build(), example)
    report = resnet_inspect.summary(build(), size, batch_size=2, train=True)
    assert (report.total("macs"), report.total("backward_macs")) == (forward_macs, backward_macs)
    eval_macs = resnet_inspect.summary(build(), size, batch_size=2).total("macs")
    with torch.utils.flop_counter.FlopCounterMode(display=False) as counter:
        build().eval()(example)
    assert eval_macs == counter.get_total_flops() // 2 < forward_macs


def test_the_cli_training_summary_has_the_auxiliary_heads_rows(tmp_path) -> None:
    source = tmp_path / "googlenet_like.py"
    tests = str(Path(__file__).parent)
    source.write_text(f"import sys\nsys.path.insert(0, {tests!r})\nfrom fixtures.aux_heads import GoogLeNetLike\n")
    result = runner.invoke(app, ["summary", f"{source}:GoogLeNetLike", "-i", "64", "--train", "-f", "json"])
    assert result.exit_code == 0, result.output
    names = {layer["name"] for layer in json.loads(result.stdout)["layers"]}
    assert {"aux1.fc2", "aux2.conv.conv"} <= names


# ------------------------------------------------------------------------ the same defaults in both front ends


def test_the_cli_and_the_api_show_the_same_table_by_default() -> None:
    result = runner.invoke(app, ["summary", "resnet50"])
    assert result.exit_code == 0, result.output
    rows = table_rows(result.stdout)
    assert rows == table_rows(str(resnet_inspect.summary("resnet50")))
    depths = {layer["name"]: layer["depth"] for layer in resnet_inspect.summary("resnet50").to_dict()["layers"]}
    shown = [name for name, depth in depths.items() if depth <= DEFAULT_DEPTH]
    assert len(rows) == len(shown) < len(depths)  # the JSON keeps the deeper layers


def test_a_dtype_is_applied_the_same_way_by_both_front_ends() -> None:
    result = runner.invoke(app, ["summary", "resnet20", "--dtype", "bfloat16", "-f", "json"])
    assert result.exit_code == 0, result.output
    api = resnet_inspect.summary("resnet20", dtype=torch.bfloat16).to_dict()
    assert json.loads(result.stdout)["totals"] == api["totals"]
    assert api["totals"]["param_bytes"] == 2 * resnet_inspect.summary("resnet20").to_dict()["totals"]["params"]


# ----------------------------------------------------------------- one check per option, whoever asks (item 11)


def test_shard_is_capped_in_fit_as_in_summary() -> None:
    too_many = str(MAX_COUNT + 1)
    expected = f"--shard {too_many} is larger than the maximum {MAX_COUNT}"
    assert cli_error("summary", "resnet20", "--train", "--shard", too_many) == expected
    assert cli_error("fit", "resnet20", "--memory", "1GiB", "--train", "--shard", too_many) == expected
    for call in (lambda: resnet_inspect.summary("resnet20", train=True, shard=MAX_COUNT + 1),
                 lambda: resnet_inspect.fit("resnet20", "1GiB", train=True, shard=MAX_COUNT + 1)):
        with pytest.raises(BadInputError, match=f"^shard {too_many} is larger than the maximum {MAX_COUNT}$"):
            call()


@pytest.mark.parametrize("arguments", [
    ["summary", "resnet20", "--device", "cdua"],
    ["summary", "resnet20", "--train", "--device", "cdua"],
    ["summary", "resnet20", "--time", "--device", "cdua"],
    ["time", "resnet20", "--device", "cdua"],
    ["compare", "resnet20", "--device", "cdua"],
    ["compare", "resnet20", "--time", "--device", "cdua"],
    ["fit", "resnet20", "--memory", "1GiB", "--device", "cdua"],
], ids=lambda arguments: " ".join(arguments[2:]))
def test_a_device_typo_is_refused_by_every_command(arguments: list[str]) -> None:
    assert cli_error(*arguments).startswith("unknown device 'cdua': use cpu, cuda, cuda:N")


def test_a_device_typo_is_refused_by_every_api_function() -> None:
    for call in (lambda: resnet_inspect.summary("resnet20", device="cdua"),
                 lambda: resnet_inspect.training_memory("resnet20", device="cdua"),
                 lambda: resnet_inspect.time_model("resnet20", device="cdua"),
                 lambda: resnet_inspect.compare(["resnet20"], time=True, device="cdua"),
                 lambda: resnet_inspect.fit("resnet20", "1GiB", device="cdua")):
        with pytest.raises(BadInputError, match=r"^unknown device 'cdua'"):
            call()


def test_fit_takes_a_torch_dtype_as_summary_does() -> None:
    by_dtype = resnet_inspect.fit("resnet20", "64MiB", dtype=torch.float16).to_dict()
    assert by_dtype == resnet_inspect.fit("resnet20", "64MiB", dtype="float16").to_dict()
    assert by_dtype["dtype"] == "float16"
    assert by_dtype["batch_size"] > resnet_inspect.fit("resnet20", "64MiB").to_dict()["batch_size"]


def test_a_training_summary_in_int8_is_one_clear_error() -> None:
    with pytest.raises(BadInputError, match=r"^dtype must be a torch.dtype or its name \(float32, bfloat16, "
                                            r"float16\), got 'int8'$"):
        resnet_inspect.summary("resnet20", train=True, dtype="int8")
    with pytest.raises(BadInputError, match=r"got torch\.int8"):
        resnet_inspect.summary("resnet20", dtype=torch.int8)
    assert cli_error("summary", "resnet20", "--train", "--dtype", "int8") == (
        "unknown dtype 'int8': use one of float32, bfloat16, float16")


API_REFUSALS = {
    "summary optimizer": lambda: resnet_inspect.summary("resnet20", optimizer="sgd"),
    "summary amp": lambda: resnet_inspect.summary("resnet20", amp="bf16"),
    "summary shard": lambda: resnet_inspect.summary("resnet20", shard=2),
    "summary unknown amp": lambda: resnet_inspect.summary("resnet20", train=True, amp="fp8"),
    "summary amp and dtype": lambda: resnet_inspect.summary("resnet20", train=True, amp="fp16", dtype="float16"),
    "training_memory amp": lambda: resnet_inspect.training_memory("resnet20", amp="fp8"),
    "compare optimizer": lambda: resnet_inspect.compare(["resnet20"], optimizer="sgd"),
    "time_model optimizer": lambda: resnet_inspect.time_model("resnet20", optimizer="sgd"),
    "time_model amp": lambda: resnet_inspect.time_model("resnet20", amp="bf16"),
    "time_model per_layer": lambda: resnet_inspect.time_model("resnet20", train=True, per_layer=True),
    "fit optimizer": lambda: resnet_inspect.fit("resnet20", "1GiB", optimizer="sgd"),
    "fit shard": lambda: resnet_inspect.fit("resnet20", "1GiB", shard=2),
    "fit without memory": lambda: resnet_inspect.fit("resnet20"),
    "fit reserve": lambda: resnet_inspect.fit("resnet20", "2MiB", reserve="2MiB"),
    "fit does not fit": lambda: resnet_inspect.fit("resnet20", "1MiB", reserve=0),
    "fit training does not fit": lambda: resnet_inspect.fit("resnet20", "1MiB", train=True, reserve=0),
}


@pytest.mark.parametrize("case", API_REFUSALS)
def test_api_messages_name_the_api_arguments_never_a_cli_flag(case: str) -> None:
    with pytest.raises((BadInputError, DoesNotFitError)) as refused:
        API_REFUSALS[case]()
    message = str(refused.value)
    assert "--" not in message and "add --train" not in message, message


def test_an_option_of_the_training_step_without_train_is_refused_by_name() -> None:
    with pytest.raises(BadInputError, match=r"^optimizer applies to a training step: pass train=True$"):
        resnet_inspect.summary("resnet20", optimizer="sgd")
    with pytest.raises(BadInputError, match=r"^amp applies to a training step: pass train=True$"):
        resnet_inspect.compare(["resnet20"], amp="bf16")
    assert cli_error("summary", "resnet20", "--optimizer", "sgd") == (
        "--optimizer applies to a training step: add --train")
    assert cli_error("compare", "resnet20", "--amp", "bf16") == "--amp applies to a training step: add --train"


def test_a_reserve_that_leaves_nothing_of_a_mib_budget_shows_the_figures() -> None:
    assert cli_error("fit", "resnet20", "--memory", "3MiB", "--reserve", "3.5MiB") == (
        "the reserve (3.5 MiB) leaves nothing of the 3.0 MiB budget (--memory): lower --reserve")
    with pytest.raises(BadInputError, match=re.escape("the reserve (512.0 KiB) leaves nothing of the 512.0 KiB "
                                                      "budget (memory): lower reserve")):
        resnet_inspect.fit("resnet20", 512 << 10, reserve=512 << 10)


def test_when_the_reserve_is_what_leaves_too_little_the_advice_points_at_the_reserve() -> None:
    """Batch 1 of a resnet20 training step needs about 5 MiB: it fits 16 MiB, not 16 MiB less 15 MiB."""
    with pytest.raises(DoesNotFitError) as refused:
        resnet_inspect.fit("resnet20", "16MiB", train=True, reserve="15MiB")
    assert refused.value.peak_bytes <= 16 * MIB
    assert str(refused.value).endswith("lower reserve (batch size 1 fits the 16.0 MiB before the reserve)")
    result = runner.invoke(app, ["fit", "resnet20", "--memory", "16MiB", "--reserve", "15MiB", "--train"])
    assert result.exit_code == 3 and result.stderr.strip().endswith(
        "lower --reserve (batch size 1 fits the 16.0 MiB before the reserve)"), result.output
    result = runner.invoke(app, ["fit", "resnet20", "--memory", "1MiB", "--reserve", "0", "--train"])
    assert result.exit_code == 3 and "lower --input-size, use --amp, --optimizer sgd or --shard" in result.stderr


# ---------------------------------------------------------------- help texts built from the code's constants


def option_help(command: str, option: str) -> str:
    """The help text of one option of one command, as --help prints it (before rich wraps it)."""
    group = typer.main.get_command(app)
    params = group.commands[command].params  # type: ignore[attr-defined]
    return next(param.help for param in params if option in param.opts)


def test_fit_help_states_the_reserve_that_fit_uses() -> None:
    help_text = option_help("fit", "--reserve")
    share = int(re.search(r"default: (\d+)% of --memory", help_text).group(1))
    fixed = int(re.search(r"plus (\d+)MiB on a GPU", help_text).group(1))
    assert (share / 100, fixed * MIB) == (RESERVE_SHARE, GPU_RESERVE_FIXED_BYTES)
    result = runner.invoke(app, ["fit", "resnet20", "--memory", "100MiB", "-f", "json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["reserve_bytes"] == share * 100 * MIB // 100


@pytest.mark.parametrize("command", ["summary", "time", "compare", "fit"])
def test_the_optimizer_help_states_the_optimizer_a_training_step_uses(command: str) -> None:
    stated = re.search(r"default:? (\w+)", option_help(command, "--optimizer")).group(1)
    assert stated == DEFAULT_OPTIMIZER
    result = runner.invoke(app, ["summary", "resnet20", "--train", "-f", "json"])
    assert json.loads(result.stdout)["training"]["optimizer"] == stated
    if command == "summary":
        assert all(name in option_help(command, "--optimizer") for name in OPTIMIZERS)


def test_the_depth_help_states_the_depth_the_table_shows() -> None:
    group = typer.main.get_command(app)
    depth = next(param for param in group.commands["summary"].params if "--depth" in param.opts)  # type: ignore
    assert depth.default == DEFAULT_DEPTH and depth.show_default


# ------------------------------------------------------- a fallback decided by what the pass reports (item 2)

FORWARD_CALLS: list[str] = []


class SaysMetaButIsBroken(nn.Module):
    """A model whose own bug is worded with "meta": the pass did not stop for want of values, so no real pass."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        FORWARD_CALLS.append(x.device.type)
        raise RuntimeError("the metadata of this model is wrong")


class ReadsAValue(nn.Module):
    """A model that reads a value: the meta pass says it needs values, and the real CPU pass runs."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        FORWARD_CALLS.append(x.device.type)
        x = self.conv(x)
        return x * 2 if x.abs().max().item() >= 0 else x


def test_the_real_pass_runs_when_the_meta_pass_needed_values_not_when_an_error_says_meta() -> None:
    FORWARD_CALLS.clear()
    with pytest.raises(ForwardError, match="the metadata of this model is wrong"):
        resnet_inspect.summary(SaysMetaButIsBroken(), 16)
    assert FORWARD_CALLS and set(FORWARD_CALLS) == {"meta"}  # the meta pass (and the channels probe), never CPU
    FORWARD_CALLS.clear()
    report = resnet_inspect.summary(ReadsAValue(), 16)
    assert FORWARD_CALLS == ["meta", "cpu"] and report.total("macs") == 4 * 3 * 9 * 14 * 14
