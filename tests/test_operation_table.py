"""The operation table: one entry per operation, its shape rules against torch's kernels, its field rules
against the input-gradient support of the one-channel replay, and the public register_op hook."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from hypothesis import example, given, settings
from hypothesis import strategies as st
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from resnet_inspect.analysis.counting import count
from resnet_inspect.analysis.empirical import support_check
from resnet_inspect.analysis.receptive_field import analyze_receptive_field
from resnet_inspect.capture.trace import meta_result
from resnet_inspect.ops import OpSpec, get_op, op_for_module, ops, register_op, unregister_op
from resnet_inspect.ops.conv_pool import describe_conv
from resnet_inspect.pipeline.build import capture_model, verify
from resnet_inspect.records import OpKind

ROOT = Path(__file__).resolve().parents[1]


def analysed(model: nn.Module, size: int | tuple[int, ...]):
    captured = capture_model(model, size)
    return captured, analyze_receptive_field(captured)


def flop_counter_macs(model: nn.Module, shape: tuple[int, ...]) -> int:
    with FlopCounterMode(display=False) as counter:
        model.eval()(torch.zeros(shape))
    return counter.get_total_flops() // 2


# ------------------------------------------------------------------------------------------------ the table


def test_every_entry_is_one_operation_with_a_field_rule():
    names = [spec.name for spec in ops()]
    assert len(names) == len(set(names))
    assert all(callable(spec.field) for spec in ops())
    assert {"conv", "conv_transpose", "max_pool", "linear", "attention", "matmul", "upsample", "reshape"} <= set(names)


@pytest.mark.parametrize("module, entry", [
    (nn.Conv1d(1, 1, 3), "conv"), (nn.Conv3d(1, 1, 3), "conv"), (nn.ConvTranspose2d(1, 1, 2), "conv_transpose"),
    (nn.MaxPool3d(2), "max_pool"), (nn.AvgPool1d(2), "avg_pool"), (nn.AdaptiveAvgPool3d(1), "adaptive_pool"),
    (nn.MultiheadAttention(8, 2), "multihead_attention"), (nn.Upsample(scale_factor=2), "upsample"),
    (nn.LayerNorm(4), "norm"), (nn.ReflectionPad2d(1), "pad"), (nn.Flatten(), "reshape"),
])
def test_modules_are_matched_by_their_base_class(module, entry):
    assert op_for_module(module).name == entry


class Conv2dSame(nn.Conv2d):
    """timm's Conv2dSame: declares padding 0 and pads in its forward, TensorFlow's 'SAME' (extra on the right)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pads = []
        for size, k, s in zip(reversed(x.shape[2:]), reversed(self.kernel_size), reversed(self.stride), strict=True):
            total = max((-(-size // s) - 1) * s + k - size, 0)
            pads += [total // 2, total - total // 2]
        return F.conv2d(F.pad(x, pads), self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


def test_a_module_that_overrides_its_base_forward_is_checked_on_what_it_runs():
    model = nn.Sequential(Conv2dSame(3, 4, 3, stride=2), nn.ReLU())
    assert op_for_module(model[0]) is None  # not the stock Conv2d.forward: looked into
    report = verify(model, 15)
    assert [(item.node.name, item.node.op) for item in report.checks] == [("0.conv2d", "conv")]
    assert report.failed == 0 and report.checks[0].check.observed == (8, 8)
    captured, result = analysed(model, 16)
    assert support_check(captured, result).agrees is True


def test_verify_observes_torchs_kernels_not_the_tables_rules():
    # An entry whose geometry lies about the module: the arithmetic expects what the lie says, torch's kernel
    # does what the module does, and verify says so.
    class Lying(nn.Conv2d):
        pass

    def lying_geometry(call):
        geometry, attrs = describe_conv(call)
        return geometry.__class__(**{**geometry.__dict__, "padding": (0, 0), "padding_end": (0, 0)}), attrs

    conv = get_op("conv")
    register_op(OpSpec("lying_conv", OpKind.CONV, conv.field, modules=(Lying,), describe=lying_geometry,
                       shape=conv.shape, macs=conv.macs, replay=conv.replay))
    try:
        report = verify(nn.Sequential(Lying(3, 4, 3, padding=1)), 10)
    finally:
        unregister_op("lying_conv")
    (item,) = report.checks
    assert (item.check.expected, item.check.observed, item.check.ok) == ((8, 8), (10, 10), False)


def test_register_op_refuses_a_duplicate_unless_asked_to_replace():
    spec = OpSpec("my_rot90", OpKind.ELEMENTWISE, get_op("elementwise").field, functions=("rot90",))
    register_op(spec)
    try:
        with pytest.raises(ValueError, match="already registered"):
            register_op(spec)
        with pytest.raises(ValueError, match="already matched"):
            register_op(OpSpec("other", OpKind.ELEMENTWISE, spec.field, functions=("rot90",)))
        register_op(spec, replace=True)
    finally:
        unregister_op("my_rot90")
    assert get_op("my_rot90").name == "unknown"


def _run_and_compare(text: str, where: str, capsys: pytest.CaptureFixture[str]) -> None:
    """Run the python blocks of ``text`` in one namespace; what they print must be its text blocks."""
    namespace: dict[str, object] = {"__name__": "docs"}
    for block in re.findall(r"```python\n(.*?)```", text, re.S):
        exec(compile(block, where, "exec"), namespace)
    printed = capsys.readouterr().out.splitlines()
    shown = [line for block in re.findall(r"```text\n(.*?)```", text, re.S) for line in block.splitlines()]
    assert printed == shown


def test_the_worked_register_op_example_in_the_docs_runs_and_prints_what_it_shows(capsys):
    _run_and_compare((ROOT / "docs" / "operations.md").read_text(), "docs/operations.md", capsys)
    assert get_op("space_to_depth").name == "unknown"  # the example cleans up after itself


def test_the_gates_attention_and_unions_example_prints_what_the_docs_show(capsys):
    text = (ROOT / "docs" / "receptive-fields.md").read_text()
    _run_and_compare(text[text.index("## Gates, attention and unions"):], "docs/receptive-fields.md", capsys)


# ------------------------------------------------------------------------------- shape rules against torch


def _outcome(call):
    try:
        return tuple(call().shape)
    except RuntimeError:
        return "rejected"


def _by_rule(function, *args, **kwargs):
    def run():
        meta = [a.to("meta") if isinstance(a, torch.Tensor) else a for a in args]
        result = meta_result(function, meta, kwargs)
        if result is NotImplemented:
            raise RuntimeError("the rule steps aside: torch's kernel decides")
        return result

    return run


conv_configs = st.fixed_dictionaries({
    "size": st.tuples(st.integers(1, 40), st.integers(1, 40)),
    "kernel": st.tuples(st.integers(1, 7), st.integers(1, 7)),
    "stride": st.tuples(st.integers(1, 4), st.integers(1, 4)),
    "padding": st.tuples(st.integers(0, 4), st.integers(0, 4)),
    "dilation": st.tuples(st.integers(1, 3), st.integers(1, 3)),
    "groups": st.sampled_from([1, 2]),
    "ceil_mode": st.booleans(),
})


@settings(max_examples=300, deadline=None, database=None)
@given(conv_configs)
def test_meta_shape_rules_for_convolution_match_torch(config):
    channels = 2 * config["groups"]
    weight = torch.zeros(4, channels // config["groups"], *config["kernel"])
    arguments = (config["stride"], config["padding"], config["dilation"], config["groups"])

    def real():
        return F.conv2d(torch.zeros(1, channels, *config["size"]), weight, None, *arguments)

    def by_rule():
        result = meta_result(F.conv2d, (torch.empty(1, channels, *config["size"], device="meta"),
                                        weight.to("meta"), None, *arguments), {})
        if result is NotImplemented:
            raise RuntimeError("the rule steps aside: the real kernel decides")
        return result

    assert _outcome(by_rule) in (_outcome(real), "rejected")
    if _outcome(real) != "rejected":
        assert _outcome(by_rule) == _outcome(real)


@settings(max_examples=300, deadline=None, database=None)
@given(conv_configs)
def test_meta_shape_rules_for_max_pooling_match_torch(config):
    arguments = (config["kernel"], config["stride"], config["padding"], config["dilation"], config["ceil_mode"])

    def real():
        return F.max_pool2d(torch.zeros(1, 2, *config["size"]), *arguments)

    def by_rule():
        result = meta_result(F.max_pool2d, (torch.empty(1, 2, *config["size"], device="meta"), *arguments), {})
        if result is NotImplemented:
            raise RuntimeError("the rule steps aside: the real kernel decides")
        return result

    if _outcome(real) == "rejected":
        assert _outcome(by_rule) == "rejected"
    else:
        assert _outcome(by_rule) == _outcome(real)


@settings(max_examples=150, deadline=None, database=None)
@given(st.integers(1, 3), st.integers(1, 12), st.integers(1, 4), st.integers(1, 3), st.integers(0, 3),
       st.integers(1, 2))
def test_the_convolution_shape_rule_matches_torch_in_one_two_and_three_dimensions(rank, size, kernel, stride,
                                                                                   padding, dilation):
    function = (F.conv1d, F.conv2d, F.conv3d)[rank - 1]
    x, weight = torch.zeros(1, 2, *(size,) * rank), torch.zeros(3, 2, *(kernel,) * rank)
    real = _outcome(lambda: function(x, weight, None, stride, padding, dilation))
    rule = _outcome(_by_rule(function, x, weight, None, stride, padding, dilation))
    assert rule == real or rule == "rejected"


@pytest.mark.parametrize("function, args", [
    (torch.add, (torch.zeros(2, 3, 4, 5), torch.zeros(3, 1, 5))),
    (torch.mul, (torch.zeros(2, 3, 4, 5), torch.zeros(2, 3, 1, 1))),
    (F.relu, (torch.zeros(2, 3, 4),)),
    (F.gelu, (torch.zeros(2, 3, 4),)),
    (F.linear, (torch.zeros(2, 7, 5), torch.zeros(3, 5))),
    (F.adaptive_avg_pool2d, (torch.zeros(2, 3, 9, 7), (3, None))),
    (F.adaptive_avg_pool1d, (torch.zeros(2, 3, 9), 1)),
    (F.adaptive_avg_pool3d, (torch.zeros(2, 3, 4, 9, 7), 2)),
    (torch.mean, (torch.zeros(2, 3, 9, 7), (2, 3), True)),
    (F.batch_norm, (torch.zeros(2, 3, 4, 4), torch.zeros(3), torch.ones(3))),
    (F.layer_norm, (torch.zeros(2, 5, 8), (8,), torch.ones(8))),
    (F.group_norm, (torch.zeros(2, 8, 3, 3), 4)),
    (torch.softmax, (torch.zeros(2, 3, 5), -1)),
    (torch.matmul, (torch.zeros(2, 1, 4, 5), torch.zeros(3, 5, 6))),
    (torch.bmm, (torch.zeros(2, 4, 5), torch.zeros(2, 5, 6))),
    (F.scaled_dot_product_attention, (torch.zeros(2, 3, 7, 8), torch.zeros(2, 3, 9, 8), torch.zeros(2, 3, 9, 4))),
])
def test_the_fast_shape_rules_match_torchs_kernels(function, args):
    rule = _outcome(_by_rule(function, *args))
    assert rule != "rejected", "the rule should answer here"
    assert rule == _outcome(lambda: function(*args))


@pytest.mark.parametrize("need_weights, average", [(True, True), (True, False), (False, True)])
def test_the_multi_head_attention_shape_rule_matches_torch(need_weights, average):
    module = nn.MultiheadAttention(16, 2).eval()
    query, key = torch.zeros(5, 2, 16), torch.zeros(7, 2, 16)
    args = (query, key, key, 16, 2, module.in_proj_weight, module.in_proj_bias, None, None, False, 0.0,
            module.out_proj.weight, module.out_proj.bias)
    options = {"training": False, "need_weights": need_weights, "average_attn_weights": average}
    with torch.no_grad():
        real = F.multi_head_attention_forward(*args, **options)
    rule = meta_result(F.multi_head_attention_forward,
                       [a.to("meta") if isinstance(a, torch.Tensor) else a for a in args], options)
    assert [None if t is None else tuple(t.shape) for t in rule] == [None if t is None else tuple(t.shape)
                                                                      for t in real]


# ------------------------------------------------------------------------------------ semantics, per pattern


class SqueezeExcitation(nn.Module):
    """torchvision's SqueezeExcitation after a strided conv: avg pool, 1x1, ReLU, 1x1, sigmoid, x * scale."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.fc1, self.fc2 = nn.Conv2d(8, 4, 1), nn.Conv2d(4, 8, 1)
        self.out = nn.Conv2d(8, 8, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        scale = torch.sigmoid(self.fc2(F.relu(self.fc1(F.adaptive_avg_pool2d(x, 1)))))
        return self.out(x * scale).mean((2, 3))


def test_a_gate_keeps_the_main_path_field_and_marks_global_context():
    captured, result = analysed(SqueezeExcitation(), 32)
    # conv 3x3/2 p1: r = 3, S = 2, P = 1; the 3x3 after the gate adds (3 - 1) x 2 = 4.
    assert (result.output.size, result.output.stride, result.output.padding) == ((7, 7), (2, 2), (3, 3))
    assert result.output.global_context and not result.output.reduced
    assert result.to_json()["global_context"] is True
    assert support_check(captured, result).agrees is True


class Tokens(nn.Module):
    """A ViT in miniature: patches, a class token, one attention block in one of three spellings."""

    def __init__(self, spelling: str) -> None:
        super().__init__()
        self.spelling = spelling
        self.embed = nn.Conv2d(3, 16, 8, stride=8)
        self.cls = nn.Parameter(torch.zeros(1, 1, 16))
        self.qkv = nn.Linear(16, 48)
        self.attention = nn.MultiheadAttention(16, 2, batch_first=True)
        self.head = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.embed(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls.expand(x.shape[0], -1, -1), x], dim=1)
        if self.spelling == "module":
            x = x + self.attention(x, x, x, need_weights=False)[0]
        else:
            n, length, width = x.shape
            q, k, v = self.qkv(x).reshape(n, length, 3, 2, width // 2).permute(2, 0, 3, 1, 4).unbind(0)
            if self.spelling == "sdpa":
                mixed = F.scaled_dot_product_attention(q, k, v)
            else:
                mixed = torch.softmax(q @ k.transpose(-2, -1) * 0.25, dim=-1) @ v
            x = x + mixed.transpose(1, 2).reshape(n, length, width)
        return self.head(x[:, 0])


@pytest.mark.parametrize("spelling", ["sdpa", "module", "by hand"])
def test_attention_makes_the_field_the_whole_input_and_counts_its_products(spelling):
    model = Tokens(spelling)
    captured, result = analysed(model, 32)
    assert result.output.size == (32, 32) and result.output.whole and result.output.global_context
    assert result.output.covers_input((32, 32), (4, 4))
    assert support_check(captured, result).agrees is True
    attention_products = 2 * 2 * 17 * 17 * 8  # q k^T and (softmax) v, 2 heads of 8, 16 patches + the class token
    macs = count(captured).macs
    if spelling == "by hand":
        assert macs == flop_counter_macs(model, (1, 3, 32, 32))
    else:  # FlopCounterMode counts nothing for the CPU scaled_dot_product_attention kernel
        assert macs == flop_counter_macs(model, (1, 3, 32, 32)) + attention_products


class ConvNeXtBlock(nn.Module):
    """Depthwise 7x7, then permute -> LayerNorm -> Linear -> GELU -> Linear -> permute back, plus a residual."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 4, stride=4)
        self.depthwise = nn.Conv2d(8, 8, 7, padding=3, groups=8)
        self.norm, self.up, self.down = nn.LayerNorm(8), nn.Linear(8, 32), nn.Linear(32, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        y = self.depthwise(x).permute(0, 2, 3, 1)
        return x + self.down(F.gelu(self.up(self.norm(y)))).permute(0, 3, 1, 2)


def test_layout_only_operations_are_position_wise():
    model = ConvNeXtBlock()
    captured, result = analysed(model, 64)
    assert (result.output.size, result.output.stride) == ((28, 28), (4, 4))  # 4 + (7 - 1) x 4
    assert not result.output.global_context
    assert support_check(captured, result).agrees is True
    assert count(captured).macs == flop_counter_macs(model, (1, 3, 64, 64))


def test_a_channel_shuffle_is_not_a_flatten():
    class Shuffle(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 3, padding=1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = self.conv(x)
            n, c, h, w = x.shape
            x = x.view(n, 2, c // 2, h, w).transpose(1, 2).contiguous().view(n, c, h, w)
            left, right = x.chunk(2, dim=1)
            return torch.cat([left, right], dim=1)

    captured, result = analysed(Shuffle(), 16)
    assert result.output.size == (3, 3)
    assert support_check(captured, result).agrees is True


def test_an_nhwc_map_is_followed_on_its_own_axes():
    class Nhwc(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed, self.norm = nn.Conv2d(3, 8, 4, stride=4), nn.LayerNorm(8)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = self.embed(x).permute(0, 2, 3, 1)
            return x + self.norm(x)

    captured, result = analysed(Nhwc(), 32)
    assert captured.output_shape == (1, 8, 8, 8)
    assert result.output.size == (4, 4) and result.stages[-1].output_size == (8, 8)


def test_a_resnet_d_shortcut_is_the_union_of_the_two_intervals():
    class ResNetD(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv1 = nn.Conv2d(3, 8, 3, stride=2, padding=1)
            self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
            self.pool = nn.AvgPool2d(2, 2, ceil_mode=True, count_include_pad=False)
            self.project = nn.Conv2d(3, 8, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.conv2(self.conv1(x)) + self.project(self.pool(x))

    captured, result = analysed(ResNetD(), 16)
    # main: 3x3/2 p1 then 3x3 p1: [-3 + 2u, 3 + 2u]; shortcut: 2x2/2: [2u, 2u + 1]. Same stride, other centres.
    assert (result.output.size, result.output.padding, result.output.union) == ((7, 7), (3, 3), True)
    assert not result.aligned and result.union and not result.reasons
    assert support_check(captured, result).agrees is True


def test_upsampling_has_a_rational_stride_and_says_the_field_varies_per_pixel():
    class UNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.encode = nn.Conv2d(3, 8, 3, padding=1)
            self.down = nn.Conv2d(8, 8, 3, stride=2, padding=1)
            self.head = nn.Conv2d(16, 2, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            skip = self.encode(x)
            up = F.interpolate(self.down(skip), scale_factor=2, mode="nearest")
            return self.head(torch.cat([skip, up], dim=1))

    captured, result = analysed(UNet(), 16)
    interpolate = next(node for node in captured.nodes if node.type == "interpolate")
    field = result.fields[interpolate.id]
    # down: r = 5, S = 2, P = 2. Output u reads unit floor(u / 2): the interval holding every pixel's field
    # widens by (f - 1) / f x S = 1: r = 6, S = 1, P = 3, one wider than each pixel's own 5.
    assert (field.size, field.stride, field.padding, field.exact) == ((6, 6), (1, 1), (3, 3), False)
    assert "varies from pixel to pixel" in result.stages[-1].reason
    check = support_check(captured, result)
    assert check.stages[-1].agrees is None  # compared nowhere rather than wrongly


@pytest.mark.parametrize("model, size, expected", [
    (nn.Sequential(nn.Conv1d(3, 8, 5, stride=2, padding=2), nn.MaxPool1d(3, 2, 1), nn.Conv1d(8, 8, 3, padding=1),
                   nn.AdaptiveAvgPool1d(1), nn.Flatten(), nn.Linear(8, 4)), 64, (17,)),
    (nn.Sequential(nn.Conv3d(3, 8, 3, stride=(1, 2, 2), padding=1), nn.MaxPool3d(2), nn.Conv3d(8, 8, 3, padding=1),
                   nn.AdaptiveAvgPool3d(1), nn.Flatten(), nn.Linear(8, 4)), (16, 32, 32), (8, 13, 13)),
])
def test_one_and_three_dimensional_networks_get_every_axis(model, size, expected):
    captured, result = analysed(model, size)
    assert result.output.size == expected
    assert support_check(captured, result).agrees is True
    shape = (1, 3, *((size,) if isinstance(size, int) else size))
    assert count(captured).macs == flop_counter_macs(model, shape)
    report = verify(model, size)
    assert report.failed == 0 and len(report.checks) == 4  # two convolutions, a pool, the adaptive pool


def test_the_number_of_spatial_axes_comes_from_the_first_convolution():
    assert capture_model(nn.Sequential(nn.Conv1d(3, 4, 3)), 50).input_shape == (1, 3, 50)
    assert capture_model(nn.Sequential(nn.Conv3d(3, 4, 3)), 9).input_shape == (1, 3, 9, 9, 9)


@settings(max_examples=120, deadline=None, database=None)
@given(st.integers(1, 12), st.integers(0, 30), st.sampled_from(["nearest", "nearest-exact", "linear", "cubic"]),
       st.booleans())
@example(12, 25, "nearest-exact", False)  # x = 18.5 x 12 / 37 = 6 exactly, computed in floating point just below
@example(2, 80, "nearest", False)  # x = 41 x 2 / 82 = 1 likewise
def test_an_upsampled_interval_holds_every_input_unit_the_output_reads(before, extra, mode, align):
    """Against F.interpolate itself: one-hot inputs show which input units each output unit reads."""
    from resnet_inspect.ops.rules import _source_span, _source_step

    after, reach = before + extra, {"nearest": 0, "nearest-exact": 0, "linear": 1, "cubic": 3}[mode]
    align = align and reach > 0
    options = {} if reach == 0 else {"align_corners": align}
    one_hot = torch.eye(before, dtype=torch.float64).reshape(before, 1, 1, before)
    torch_mode = {"linear": "bilinear", "cubic": "bicubic"}.get(mode, mode)
    output = F.interpolate(one_hot, size=(1, after), mode=torch_mode, **options)[:, 0, 0, :]
    low, high = _source_span(before, after, mode if mode != "cubic" else "bicubic", reach, align)
    step = _source_step(before, after, align)
    for unit in range(after):
        read = [source for source in range(before) if output[source, unit] != 0]
        assert all(unit * step + low <= source <= unit * step + high for source in read), (unit, read)
