"""One instrumented forward pass: layer records, dataflow, meta device, and the caller's model left alone."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import torch
from torch import nn

from resnet_inspect import get_model
from resnet_inspect.capture.loader import load_model
from resnet_inspect.capture.trace import capture
from resnet_inspect.errors import FactoryError, ForwardError, InputTooSmallError, ModelNotFoundError
from resnet_inspect.records import OpKind

ZOO = "tests/fixtures/cnn_zoo.py"


@pytest.fixture(scope="module")
def resnet50_capture():
    with torch.device("meta"):
        model = get_model("resnet50")
    return capture(model, 224, 1, 3, "resnet50")


def test_every_module_call_is_recorded_in_tree_order(resnet50_capture):
    names = [layer.name for layer in resnet50_capture.layers]
    assert names[:6] == ["encoder", "encoder.gate", "encoder.gate.conv", "encoder.gate.bn", "encoder.gate.act",
                         "encoder.gate.pool"]
    assert names[-3:] == ["decoder", "decoder.avg", "decoder.fc"]


def test_records_carry_shapes_depth_and_geometry(resnet50_capture):
    stem = next(layer for layer in resnet50_capture.layers if layer.name == "encoder.gate.conv")
    assert stem.input_shape == (1, 3, 224, 224)
    assert stem.output_shape == (1, 64, 112, 112)
    assert stem.depth == 3
    assert stem.geometry.kind is OpKind.CONV
    assert (stem.geometry.kernel, stem.geometry.stride, stem.geometry.padding) == ((7, 7), (2, 2), (3, 3))
    assert stem.params == 64 * 3 * 7 * 7


def test_resnet50_has_53_convolutions(resnet50_capture):
    assert sum(node.geometry.kind is OpKind.CONV for node in resnet50_capture.nodes) == 53


def test_the_residual_addition_is_a_node_fed_by_both_branches(resnet50_capture):
    additions = [node for node in resnet50_capture.nodes if node.type == "add"]
    assert len(additions) == 16  # one per bottleneck block: 3 + 4 + 6 + 3
    first = additions[0]
    producers = {resnet50_capture.nodes[i].name for i in first.inputs}
    assert producers == {"encoder.layers.0.blocks.0.blocks.4.bn", "encoder.layers.0.blocks.0.shortcut.bn"}


def test_dataflow_reaches_the_output_from_the_input(resnet50_capture):
    nodes = resnet50_capture.nodes
    reached, frontier = set(), [resnet50_capture.output_node]
    while frontier:
        node = frontier.pop()
        if node not in reached:
            reached.add(node)
            frontier += list(nodes[node].inputs)
    assert 0 in reached
    assert nodes[resnet50_capture.output_node].name == "decoder.fc"


def test_totals_count_each_parameter_once(resnet50_capture):
    assert resnet50_capture.params == 25_557_032
    assert resnet50_capture.param_bytes == 4 * 25_557_032


def test_option_a_shortcut_is_a_strided_subsample():
    with torch.device("meta"):
        model = get_model("resnet20")
    result = capture(model, 32, 1, 3, "resnet20")
    subsamples = [node for node in result.nodes if node.op == "getitem"]
    assert [node.attrs["index"][2:] for node in subsamples] == [((None, None, 2), (None, None, 2))] * 2


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.bn(self.conv(x)).mean((2, 3)))


def test_the_callers_model_is_left_as_it_was():
    model = Tiny().train()
    before = {key: value.clone() for key, value in model.state_dict().items()}
    capture(model, 16)
    assert model.training
    assert all(torch.equal(before[key], value) for key, value in model.state_dict().items())
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())
    assert next(model.parameters()).device.type == "cpu"


def test_a_failing_forward_names_the_layer_and_the_shape_it_got():
    model, _ = load_model(f"{ZOO}:exploding", device=None)
    with pytest.raises(ForwardError, match=r"head \(Linear\) with input 1x256"):
        capture(model, 10)
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


def test_an_input_too_small_names_the_layer_where_the_size_reaches_zero():
    model, _ = load_model(f"{ZOO}:plain_cnn", device=None)
    with pytest.raises(InputTooSmallError, match=r"3 \(Conv2d\) with input 1x16x3x3"):
        capture(model, 10)


def test_factories_load_from_files_and_modules(monkeypatch):
    model, name = load_model(f"{ZOO}:liar_cnn")
    assert isinstance(model, nn.Module) and name.endswith(":liar_cnn")
    monkeypatch.syspath_prepend(".")
    model, _ = load_model("tests.fixtures.cnn_zoo:odd_cnn")
    assert isinstance(model[0], nn.Conv2d)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("resnet5", "did you mean resnet56, resnet50"),
        ("tests/fixtures/missing.py:model", "factory file not found"),
        ("tests/fixtures/broken_import.py:model", "cannot import"),
        (f"{ZOO}:not_a_module", "returned int, not a torch.nn.Module"),
        (f"{ZOO}:raising_factory", "raised RuntimeError"),
        (f"{ZOO}:nothing_here", "has no attribute 'nothing_here'"),
        ("tests/fixtures/cnn_zoo.py", "names a file but no factory"),
    ],
)
def test_bad_model_specs_give_one_clear_message(spec, message):
    with pytest.raises((FactoryError, ModelNotFoundError), match=message):
        load_model(spec)


@pytest.mark.slow
def test_a_huge_input_is_captured_quickly_without_allocating_activations():
    script = textwrap.dedent(
        """
        import resource, time, torch
        from resnet_inspect import get_model
        from resnet_inspect.capture.trace import capture
        with torch.device("meta"):
            model = get_model("resnet152")
        start = time.perf_counter()
        result = capture(model, 2048, 8)
        seconds = time.perf_counter() - start
        peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(result.output_shape, round(seconds, 2), round(peak_mib))
        """
    )
    output = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
    shape, _seconds, peak_mib = output.rsplit(" ", 2)
    assert shape.strip() == "(8, 1000)"
    assert float(peak_mib) < 1024  # resnet152's activations at 8x3x2048x2048 alone would take tens of GiB


@pytest.mark.parametrize("spec", ["resnet18", "resnet50", "resnet20", f"{ZOO}:odd_cnn", f"{ZOO}:liar_cnn"])
def test_the_meta_pass_records_exactly_what_a_real_pass_records(spec):
    from resnet_inspect.capture.trace import run_capture, zeros_inputs

    model, _ = load_model(spec, device=None)
    inputs = zeros_inputs([(2, 3, 45, 61)], "float32")
    on_meta = run_capture(model, inputs, device="meta")
    on_cpu = run_capture(model, inputs, device="cpu")
    assert on_meta.layers == on_cpu.layers
    assert on_meta.nodes == on_cpu.nodes


def test_the_meta_pass_imports_neither_torch_dynamo_nor_sympy():
    # PyTorch's meta kernels for element-wise ops import torch._dynamo, those of convolution import sympy:
    # together over a second of start-up that the capture's shape rules avoid.
    script = textwrap.dedent(
        """
        import sys, torch
        from resnet_inspect import get_model
        from resnet_inspect.capture.trace import capture
        with torch.device("meta"):
            model = get_model("resnet50")
        capture(model, 224)
        print(sorted(name for name in ("torch._dynamo", "sympy") if name in sys.modules))
        """
    )
    output = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
    assert output.strip() == "[]"


def test_nor_does_a_pass_over_layer_norm_gates_and_attention():
    script = textwrap.dedent(
        """
        import sys, torch
        import torch.nn.functional as F
        from torch import nn
        from resnet_inspect.capture.trace import capture

        class Modern(nn.Module):
            def __init__(self):
                super().__init__()
                self.conv = nn.Conv2d(3, 16, 4, stride=4)
                self.norm, self.group = nn.LayerNorm(16), nn.GroupNorm(4, 16)
                self.attention = nn.MultiheadAttention(16, 2, batch_first=True)

            def forward(self, x):
                x = self.group(self.conv(x))
                x = x * torch.sigmoid(x.mean((2, 3), keepdim=True))
                tokens = self.norm(x.flatten(2).transpose(1, 2))
                tokens = tokens + self.attention(tokens, tokens, tokens, need_weights=False)[0]
                q = k = v = tokens.unsqueeze(1)
                mixed = F.scaled_dot_product_attention(q, k, v) + torch.softmax(q @ k.transpose(-2, -1), -1) @ v
                return mixed.mean(2)

        with torch.device("meta"):
            model = Modern()
        capture(model, 64)
        print(sorted(name for name in ("torch._dynamo", "sympy") if name in sys.modules))
        """
    )
    output = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
    assert output.strip() == "[]"


def test_a_data_dependent_forward_of_a_meta_built_model_falls_back_to_real_tensors(tmp_path):
    factory = tmp_path / "data_dependent.py"
    factory.write_text(textwrap.dedent(
        """
        from torch import nn

        class DataDependent(nn.Module):
            def __init__(self):
                super().__init__()
                self.conv = nn.Conv2d(3, 4, 3, padding=1)

            def forward(self, x):
                y = self.conv(x)
                return y * 2 if float(y.abs().sum()) >= 0 else y

        def model():
            return DataDependent()
        """
    ))
    model, _ = load_model(f"{factory}:model")  # a factory: built once, for real
    result = capture(model, 16)
    assert result.output_shape == (1, 4, 16, 16)


def test_the_input_takes_the_models_dtype():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU()).half()
    result = capture(model, 16)
    assert result.dtype == "float16"
    assert result.output_shape == (1, 4, 14, 14)
