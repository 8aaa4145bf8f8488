"""Issue 24, items 9, 10, 13, 14 and 15: one clear line instead of a traceback, and outputs that do only what they
say: the effective field of broken or detached models, TorchScript in the timing API, control and bidirectional
characters in every format, exact bytes and empty cells in CSV, and the caller's hooks kept off the tool's copies.
"""

from __future__ import annotations

import csv
import functools
import io
import json
import re
from collections import OrderedDict

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

import resnet_inspect
from resnet_inspect.capture.tensors import is_callers_hook, structural_copy
from resnet_inspect.cli.app import app
from resnet_inspect.names import strip_controls
from resnet_inspect.render import render_csv, render_json, render_markdown, render_table

runner = CliRunner()

# Unicode's bidirectional formatting characters: embeddings and overrides, isolates, and the three marks.
BIDI_CONTROLS = [chr(code) for code in (*range(0x202A, 0x202F), *range(0x2066, 0x206A), 0x200E, 0x200F, 0x061C)]
# What no output may carry: C0 controls but tab and newline, DEL, C1 controls, and the bidirectional controls.
FORBIDDEN = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f" + "".join(BIDI_CONTROLS) + "]")


# ------------------------------------------------------------------ item 9: the effective field, one clear line


class TwoConvolutions(nn.Module):
    """conv -> conv; ``poison`` puts one non-finite value into the first convolution's weight."""

    def __init__(self, poison: float | None = None) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1)
        if poison is not None:
            with torch.no_grad():
                self.conv.weight[0, 0, 1, 1] = poison

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(self.conv(x))


class DetachedFeatures(TwoConvolutions):
    """The features are detached between the convolutions: no gradient reaches the input."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(self.conv(x).detach())


class NoGradForward(TwoConvolutions):
    """The whole forward runs without gradients: the output does not require one at all."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.conv2(self.conv(x))


MODEL_FILE = '''
import torch
from tests.test_reliability_round4_lines import TwoConvolutions, DetachedFeatures


def nan():
    return TwoConvolutions(float("nan"))


def inf():
    return TwoConvolutions(float("inf"))


def detached():
    return DetachedFeatures()
'''


@pytest.fixture
def model_file(tmp_path, monkeypatch):
    import pathlib

    monkeypatch.syspath_prepend(str(pathlib.Path(__file__).resolve().parent.parent))
    path = tmp_path / "models.py"
    path.write_text(MODEL_FILE)
    return path


@pytest.mark.parametrize("factory", ["nan", "inf"])
def test_the_effective_field_of_non_finite_weights_is_one_line_naming_the_parameter(model_file, factory):
    result = runner.invoke(app, ["rf", f"{model_file}:{factory}", "-i", "16", "--erf", "--erf-samples", "1"])
    assert result.exit_code == 2, result.output
    assert result.stdout == ""
    assert result.stderr == ("error: the effective receptive field cannot be measured: the model's parameter "
                             "conv.weight holds NaN or inf, so the input gradient does too\n")


def test_the_api_refuses_non_finite_weights_with_the_same_line_as_a_value_error():
    with pytest.raises(ValueError, match=r"^the effective receptive field cannot be measured: the model's "
                                         r"parameter conv\.weight holds NaN or inf"):
        resnet_inspect.receptive_field(TwoConvolutions(float("nan")), 16, erf=True, erf_samples=1)


@pytest.mark.parametrize("model_class", [DetachedFeatures, NoGradForward])
def test_the_effective_field_of_a_model_whose_gradient_never_reaches_the_input_is_undefined(model_class):
    model = model_class()
    image = torch.randn(1, 3, 16, 16, requires_grad=True)
    output = model(image)
    # torch's own autograd: the output has no gradient path back to the input
    assert not output.requires_grad or torch.autograd.grad(output.sum(), image, allow_unused=True)[0] is None

    report = resnet_inspect.receptive_field(model, 16, erf=True, erf_samples=2)
    assert (report.erf.r50, report.erf.r90, report.erf.r99, report.erf.ratio) == (None, None, None, None)
    assert report.to_dict()["erf"]["r50"] is None
    table = render_table(report)
    assert "undefined: the input gradient of the centre unit is zero everywhere" in table
    assert all(row.count("undefined") == 1 for row in table.splitlines() if row.startswith(("│ r50", "│ r99")))


def test_the_command_line_shows_a_detached_models_effective_field_as_undefined(model_file):
    result = runner.invoke(app, ["rf", f"{model_file}:detached", "-i", "16", "--erf", "--erf-samples", "1",
                                 "-f", "json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["erf"]["r99"] is None


# ------------------------------------------------------------------ item 10: TorchScript in the timing API


def torchscript_modules() -> list[torch.jit.ScriptModule]:
    plain = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU())
    return [torch.jit.script(plain), torch.jit.trace(plain, torch.randn(1, 3, 8, 8))]


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch.jit's own notice
@pytest.mark.parametrize("input_size", [16, (16, 20), None])
def test_time_model_refuses_a_torchscript_module_with_the_line_summary_gives(input_size):
    for scripted in torchscript_modules():
        with pytest.raises(ValueError) as expected:
            resnet_inspect.summary(scripted, 16)
        with pytest.raises(ValueError) as refused:
            resnet_inspect.time_model(scripted, 1, input_size, warmup=1, repeat=1)
        assert str(refused.value) == str(expected.value)
        assert "is a TorchScript module" in str(refused.value) and "\n" not in str(refused.value)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_receptive_field_refuses_a_torchscript_module_given_an_input_size():
    for scripted in torchscript_modules():
        with pytest.raises(ValueError, match="is a TorchScript module"):
            resnet_inspect.receptive_field(scripted, 16)


# ------------------------------------------------------------------ item 13: control and bidi characters


def test_strip_controls_removes_every_bidirectional_control_and_keeps_right_to_left_letters():
    for control in BIDI_CONTROLS:
        assert strip_controls(f"layer{control}.1") == "layer.1", hex(ord(control))
    hebrew_and_arabic = "שכבה.طبقة"
    assert strip_controls(hebrew_and_arabic) == hebrew_and_arabic


HOSTILE = OrderedDict([
    ("\x1b]0;owned\x07title", nn.Conv2d(3, 4, 3)),
    ("cdc\u202egnp", nn.ReLU()),  # shows "cdcpng": the override reverses what follows it
    ("".join(BIDI_CONTROLS) + "marks", nn.Conv2d(4, 4, 1)),
    ("\x1b[31mred\x1b[0m", nn.Identity()),
])


@pytest.fixture(scope="module")
def hostile_summary():
    return resnet_inspect.summary(nn.Sequential(HOSTILE), 8)


def test_no_format_carries_control_or_bidi_characters_from_a_name(hostile_summary):
    outputs = {
        "table": render_table(hostile_summary), "csv": render_csv(hostile_summary),
        "markdown": render_markdown(hostile_summary), "html": hostile_summary.to_html(),
        "notebook html": hostile_summary._repr_html_(), "json": render_json(hostile_summary),
    }
    for fmt, text in outputs.items():
        assert not FORBIDDEN.search(text), (fmt, FORBIDDEN.findall(text))
        assert "owned" not in text or fmt == "json", fmt  # an OSC's body is a command, not a name
    for fmt in ("table", "csv", "markdown", "html"):
        assert "cdcgnp" in outputs[fmt] and "marks" in outputs[fmt], fmt  # the visible text stays
    names = [layer["name"] for layer in json.loads(outputs["json"])["layers"]]
    assert names == list(HOSTILE)  # JSON escapes them (\u202e), so it keeps the names exactly


def test_each_row_of_the_table_is_as_wide_as_the_header_whatever_the_names(hostile_summary):
    rows = [line for line in render_table(hostile_summary).splitlines() if line.startswith(("┃", "│"))]
    assert len({len(row) for row in rows}) == 1, rows


def test_csv_and_markdown_printed_to_a_terminal_carry_no_control_or_bidi_characters(tmp_path):
    path = tmp_path / "hostile.py"
    path.write_text(
        "from collections import OrderedDict\nfrom torch import nn\n\n\ndef model():\n"
        "    return nn.Sequential(OrderedDict([('\\x1b]0;owned\\x07a\\u202eb', nn.Conv2d(3, 4, 3)), "
        "('\\x1b[2Jc\\u2067d', nn.ReLU())]))\n")
    for fmt in ("csv", "markdown", "table"):
        result = runner.invoke(app, ["summary", f"{path}:model", "-i", "8", "-f", fmt])
        assert result.exit_code == 0, result.output
        assert not FORBIDDEN.search(result.stdout), (fmt, result.stdout)
        assert "ab" in result.stdout and "cd" in result.stdout, fmt


def test_a_compare_label_is_neutralised_in_csv_and_markdown():
    label = "\x1b]2;x\x07net\u202e1"
    report = resnet_inspect.compare({label: nn.Sequential(nn.Conv2d(3, 4, 3))}, 8)
    for text in (report.to_csv(), report.to_markdown(), render_table(report)):
        assert not FORBIDDEN.search(text) and "net1" in text, text


def test_the_progress_bar_shows_a_models_name_without_control_or_bidi_characters():
    from resnet_inspect.cli.common import progress_bar

    progress, _task = progress_bar("timing \x1b]0;owned\x07net\u202e.py:model", 3)
    try:
        assert progress.tasks[0].description == "timing net.py:model"
    finally:
        progress.stop()


# ------------------------------------------------------------------ item 14: CSV holds exact bytes, no placeholders


def test_summary_csv_with_train_writes_saved_and_gradient_bytes_exactly():
    result = runner.invoke(app, ["summary", "resnet20", "--train", "-f", "csv", "--depth", "99"])
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    layers = {layer["name"]: layer for layer in resnet_inspect.summary("resnet20", train=True).to_dict()["layers"]}
    network = resnet_inspect.get_model("resnet20")
    assert "saved (bytes)" in rows[0] and "grads (bytes)" in rows[0]
    for row in rows:
        layer = layers[row["layer"]]
        assert row["saved (bytes)"] == (str(layer["saved_bytes"]) if layer["saved_bytes"] else "")
        assert row["grads (bytes)"] == (str(layer["grad_bytes"]) if layer["grad_bytes"] else "")
    convolutions = {name: module for name, module in network.named_modules() if isinstance(module, nn.Conv2d)}
    grads = {row["layer"]: row["grads (bytes)"] for row in rows}
    for name, module in convolutions.items():  # a float32 weight's gradient: 4 bytes per parameter, as torch counts
        assert grads[name] == str(4 * sum(parameter.numel() for parameter in module.parameters())), name
    assert len(convolutions) == 19  # the gate and 18 in the blocks (He et al.'s option A shortcuts: no weights)


def test_compare_csv_leaves_a_missing_value_empty_and_the_table_keeps_its_dash():
    plain = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU())  # no residual stages: no blocks
    report = resnet_inspect.compare({"plain": plain, "resnet20": "resnet20"}, 16)
    rows = list(csv.DictReader(io.StringIO(report.to_csv())))
    assert rows[0]["blocks"] == "" and rows[1]["blocks"] == "3-3-3"
    assert not any(cell.startswith("'") for row in rows for cell in row.values())
    assert re.search(r"│ plain .*│\s+-\s+│", render_table(report))


# ------------------------------------------------------------------ item 15: the caller's hooks stay off the copies


def hooked_model() -> tuple[nn.Module, list[object]]:
    """A model with the caller's hooks of every kind, each keeping what it receives in ``kept``."""
    kept: list[object] = []
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3))

    def keep(name: str, module: nn.Module, args: object, output: object) -> None:
        kept.append(output)

    model[0].register_forward_hook(lambda module, args, output: kept.append(output))
    model[1].register_forward_pre_hook(lambda module, args: kept.append(args[0]))
    model[2].register_forward_hook(functools.partial(keep, "conv"))
    model[2].register_forward_pre_hook(lambda module, args, kwargs: kept.append(args[0]), with_kwargs=True)
    model[0].register_full_backward_hook(lambda module, grad_input, grad_output: kept.append(grad_output))
    model[2].register_full_backward_pre_hook(lambda module, grad_output: kept.append(grad_output))
    return model, kept


@pytest.mark.slow  # seven analyses, two of them timed
def test_the_callers_hooks_never_run_on_the_tools_copies():
    model, kept = hooked_model()
    hooks_before = [dict(module._forward_hooks) | dict(module._forward_pre_hooks) | dict(module._backward_hooks)
                    for module in model]
    resnet_inspect.summary(model, 16)
    resnet_inspect.summary(model, 16, train=True)
    resnet_inspect.receptive_field(model, 16, check=True)
    resnet_inspect.fit(model, "1GiB", 16)
    resnet_inspect.compare([model], 16)
    resnet_inspect.time_model(model, 1, 16, warmup=1, repeat=1)
    resnet_inspect.time_model(model, 1, 16, warmup=1, repeat=1, train=True)
    assert kept == []
    assert [dict(module._forward_hooks) | dict(module._forward_pre_hooks) | dict(module._backward_hooks)
            for module in model] == hooks_before  # the caller's model keeps every hook

    model(torch.randn(1, 3, 16, 16, requires_grad=True)).sum().backward()
    assert len(kept) == 6 and all(not tensor.is_meta for tensor in torch.utils._pytree.tree_leaves(kept)
                                  if isinstance(tensor, torch.Tensor))


class FeatureHooks:
    """timm's FeatureHooks (timm/models/_features.py): each hook is ``partial(self._collect_output_hook, name)``."""

    def __init__(self, modules: list[tuple[str, nn.Module]]) -> None:
        self.outputs: dict[str, torch.Tensor] = {}
        for name, module in modules:
            module.register_forward_hook(functools.partial(self._collect_output_hook, name))

    def _collect_output_hook(self, name: str, module: nn.Module, args: object, output: torch.Tensor) -> None:
        self.outputs[name] = output

    def get_output(self) -> list[torch.Tensor]:
        outputs, self.outputs = list(self.outputs.values()), {}
        return outputs


class FeatureHookNet(nn.Module):
    """timm's FeatureHookNet: the forward returns what the model's own hooks collected."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 4, 3, stride=2, padding=1), nn.ReLU(),
                                  nn.Conv2d(4, 8, 3, stride=2, padding=1))
        self.hooks = FeatureHooks([("stride2", self.body[0]), ("stride4", self.body[2])])

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        self.body(x)
        return self.hooks.get_output()


def test_hooks_that_are_part_of_the_model_run_on_its_copies():
    model = FeatureHookNet()
    hook = next(iter(model.body[0]._forward_hooks.values()))
    assert not is_callers_hook(hook) and is_callers_hook(functools.partial(print, "x"))
    copied = structural_copy(model)
    assert [len(module._forward_hooks) for module in copied.body] == [1, 0, 1]
    real_outputs = [tuple(tensor.shape) for tensor in model(torch.randn(1, 3, 32, 32))]
    assert real_outputs == [(1, 4, 16, 16), (1, 8, 8, 8)]
    assert [tuple(shape) for shape in resnet_inspect.summary(model, 32).to_dict()["output_shapes"]] == real_outputs
    assert model.hooks.outputs == {}  # the copy collected into its own FeatureHooks, not the caller's
