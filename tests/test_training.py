"""summary --train and training_memory: backward MACs, bytes saved for backward, gradients and the step's memory.

Every figure is checked against torch itself on real CPU tensors: FlopCounterMode's backward total, the storages
``saved_tensors_hooks`` sees, and the measured peak of a step (tests/oracle_memory.py). Where our count and
FlopCounterMode's differ by design, the difference is computed independently and asserted exactly.
"""

from __future__ import annotations

import json

import oracle_memory
import pytest
import torch
from fixtures import attention_models, real_models, tv_resnet
from oracle_torch import flop_counter_backward_macs, saved_for_backward
from test_real_models import CASES
from torch import nn
from typer.testing import CliRunner

import resnet_inspect
from resnet_inspect.analysis.training import step_memory, training_counts
from resnet_inspect.api import _training_capture
from resnet_inspect.cli.app import app
from resnet_inspect.models import get_model, list_models

runner = CliRunner()
REGISTERED = list_models()
CIFAR = {"resnet20", "resnet32", "resnet44", "resnet56", "resnet110"}
BATCH = 2


def zoo(name: str) -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    case = CASES[name]
    return getattr(real_models, name)(), torch.randn(BATCH, case.in_channels, *case.input_size)


def registered(name: str) -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    return get_model(name), torch.randn(BATCH, 3, 32 if name in CIFAR else 64, 32 if name in CIFAR else 64)


def training(model: nn.Module, example: torch.Tensor, optimizer: str = "adamw", amp: str | None = None,
             device: str = "cpu"):  # -> TrainingCapture
    return _training_capture(model, tuple(example.shape), None, example.shape[0], optimizer, None, amp, 1, device,
                             None, None, None)


def grouped_weight_excess(model: nn.Module, example: torch.Tensor) -> int:
    """What FlopCounterMode adds to the weight gradient of a grouped convolution: its formula for it ignores the
    groups, so it counts (groups - 1) times the convolution's forward MACs more than the products computed."""
    excess = 0

    def hook(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        nonlocal excess
        if module.groups > 1 and module.weight.requires_grad:
            if isinstance(module, nn.modules.conv._ConvTransposeNd):
                forward = inputs[0].numel() * module.weight.shape[1] * module.weight[0, 0].numel()
            else:
                forward = output.numel() * module.weight[0].numel()
            excess += (module.groups - 1) * forward

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, nn.modules.conv._ConvNd)]
    try:
        model.train()(example)
    finally:
        for handle in handles:
            handle.remove()
    return excess


def check_backward_macs(model: nn.Module, example: torch.Tensor) -> None:
    counts = training_counts(training(model, example))
    _forward, backward = flop_counter_backward_macs(model, example)
    assert counts.backward_macs == backward - grouped_weight_excess(model, example)


def check_saved_bytes(model: nn.Module, example: torch.Tensor, amp: str | None = None) -> None:
    captured = training(model, example, amp=amp)
    real = saved_for_backward(model, example, None if amp is None else torch.bfloat16)
    assert (captured.saved_bytes, captured.saved_weight_bytes, captured.saved_input_bytes) == (
        real.activation_bytes, real.weight_bytes, real.input_bytes)


# ------------------------------------------------------------------------------------------- backward MACs


@pytest.mark.parametrize("name", list(CASES))
def test_backward_macs_equal_flop_counter_on_the_zoo(name: str) -> None:
    check_backward_macs(*zoo(name))


@pytest.mark.slow
@pytest.mark.parametrize("name", REGISTERED)
def test_backward_macs_equal_flop_counter_on_registered_models(name: str) -> None:
    check_backward_macs(*registered(name))


def test_first_convolution_computes_only_its_weight_gradient() -> None:
    """The reference figures for resnet20 at 32 px, batch 2: 81,102,080 forward, 161,319,424 backward MACs; the
    first convolution's input gradient (its forward MACs, 884,736) is the difference from twice the forward."""
    report = resnet_inspect.summary("resnet20", batch_size=2, train=True)
    assert report.total("macs") == 81_102_080
    assert report.total("backward_macs") == 161_319_424 == 2 * 81_102_080 - 884_736
    assert report.layer("encoder.gate.conv")["backward_macs"] == 884_736


def test_attention_on_the_cpu_default_kernel_is_not_counted_by_flop_counter() -> None:
    """FlopCounterMode has no formula for the CPU's fused attention kernel: with torch's default backend it counts
    no attention at all, forward or backward; our table counts the products of the math backward."""
    from torch.utils.flop_counter import FlopCounterMode

    model, example = zoo("vit")
    captured = training(model, example)
    counts = training_counts(captured)
    attention = sum(macs for node_id, macs in counts.node_backward_macs.items()
                    if captured.capture.nodes[node_id].op == "attention")
    with FlopCounterMode(display=False) as counter:
        output = model.train()(example)
        forward = counter.get_total_flops()
        output.sum().backward()
    default_backward = (counter.get_total_flops() - forward) // 2
    _, math_backward = flop_counter_backward_macs(model, example)
    assert attention > 0
    assert math_backward - default_backward == attention + mha_attention_backward(model, example)


def mha_attention_backward(model: nn.Module, example: torch.Tensor) -> int:
    """The attention products inside nn.MultiheadAttention's backward: 4 x batch x L x S x E (all need gradients)."""
    total = 0

    def hook(module: nn.MultiheadAttention, inputs: tuple[torch.Tensor, ...], _output: object) -> None:
        nonlocal total
        query, key = inputs[0], inputs[1]
        total += 4 * query.shape[0] * query.shape[1] * key.shape[1] * module.embed_dim

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, nn.MultiheadAttention)]
    try:
        model.train()(example)
    finally:
        for handle in handles:
            handle.remove()
    return total


# --------------------------------------------------------------------------------------------- saved bytes


@pytest.mark.parametrize("name", list(CASES))
def test_saved_bytes_equal_saved_tensors_hooks_on_the_zoo(name: str) -> None:
    check_saved_bytes(*zoo(name))


@pytest.mark.slow
@pytest.mark.parametrize("name", REGISTERED)
def test_saved_bytes_equal_saved_tensors_hooks_on_registered_models(name: str) -> None:
    check_saved_bytes(*registered(name))


@pytest.mark.parametrize("name", ["vit", "se_net"])
def test_saved_bytes_under_bf16_autocast_equal_torch_autocast(name: str) -> None:
    check_saved_bytes(*zoo(name), amp="bf16")


def test_resnet50_saves_each_storage_torch_saves_weights_and_input_included() -> None:
    """The bytes and the number of storages ``saved_tensors_hooks`` sees in a real CPU forward of resnet50."""
    torch.manual_seed(0)
    model, example = get_model("resnet50"), torch.randn(BATCH, 3, 64, 64)
    captured = training(model, example, "none")
    real = saved_for_backward(model, example)
    assert (captured.saved_bytes, captured.saved_weight_bytes, captured.saved_input_bytes) == (
        real.activation_bytes, real.weight_bytes, real.input_bytes)
    assert captured.saved_tensors == real.storages


# ------------------------------------------------------------------------------------- the special cases


class NoGradStem(nn.Module):
    """A stem run under torch.no_grad() inside forward: it computes no gradient and saves nothing."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.body = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(inplace=True))
        self.head = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            x = self.stem(x)
        return self.head(self.body(x).mean((2, 3)))


def frozen_backbone() -> nn.Module:
    model = get_model("resnet18", num_classes=10)
    for name, parameter in model.named_parameters():
        parameter.requires_grad = name.startswith("decoder.fc")
    return model


@pytest.mark.parametrize("build", [frozen_backbone, NoGradStem, tv_resnet.resnet18],
                         ids=["frozen_backbone", "no_grad_in_forward", "in_place_relu_and_add"])
def test_special_models_match_torch(build: type[nn.Module]) -> None:
    torch.manual_seed(0)
    model, example = build(), torch.randn(BATCH, 3, 64, 64)
    check_backward_macs(model, example)
    check_saved_bytes(model, example)


class ParameterProduct(nn.Module):
    """A bias made as the product of two parameters, as timm's MaxViT makes its relative-position bias."""

    def __init__(self) -> None:
        super().__init__()
        self.left, self.right = nn.Parameter(torch.randn(16, 8)), nn.Parameter(torch.randn(8, 16))
        self.fc = nn.Linear(16, 16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x) + self.left @ self.right


def test_a_product_of_two_parameters_gets_its_backward() -> None:
    torch.manual_seed(0)
    model, example = ParameterProduct(), torch.randn(16, 16)
    captured = _training_capture(model, None, example, 1, "adamw", None, None, 1, "cpu", None, None, None)
    _forward, backward = flop_counter_backward_macs(model, example)
    fc_weight, both_factors = 16 * 16 * 16, 2 * 16 * 8 * 16
    assert training_counts(captured).backward_macs == backward == fc_weight + both_factors


def test_frozen_backbone_trains_only_its_head() -> None:
    model, example = frozen_backbone(), torch.randn(BATCH, 3, 64, 64)
    head_bytes = sum(p.numel() * 4 for p in model.decoder.fc.parameters())
    counts = training_counts(training(model, example, "adamw"))
    real = oracle_memory.measure_model(model, example, "adamw").state_bytes
    assert counts.backward_macs == 512 * 10 * BATCH  # the head's weight gradient only
    assert counts.grad_bytes == head_bytes
    assert counts.memory.optimizer_state_bytes == real


def test_model_without_trainable_parameters_has_no_backward() -> None:
    model = get_model("resnet18").requires_grad_(False)
    counts = training_counts(training(model, torch.zeros(BATCH, 3, 64, 64)))
    assert (counts.backward_macs, counts.saved_bytes, counts.grad_bytes, counts.memory.optimizer_state_bytes) == (
        0, 0, 0, 0)
    assert counts.memory.peak_bytes is not None and counts.memory.peak_phase == "forward"


class ValueInBackward(torch.autograd.Function):
    """An operation whose backward reads a value (it cannot run on the meta device)."""

    @staticmethod
    def forward(ctx: object, x: torch.Tensor) -> torch.Tensor:
        return x * 2

    @staticmethod
    def backward(ctx: object, grad: torch.Tensor) -> torch.Tensor:
        return grad * float(grad.abs().max().item() > 0)


class ValueReadingBackward(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return ValueInBackward.apply(self.conv(x))


def test_backward_that_cannot_run_on_meta_is_stated_not_estimated() -> None:
    step = resnet_inspect.training_memory(ValueReadingBackward(), (2, 3, 16, 16))
    assert step.peak_bytes is None
    assert "cannot run on the meta device" in step.note
    report = resnet_inspect.summary(ValueReadingBackward(), (2, 3, 16, 16), train=True)
    assert report.total("train_peak_bytes") is None
    assert "cannot run on the meta device" in str(report)


# ------------------------------------------------------------------------------------------- step memory


PEAK_CASES = [
    ("resnet18", (8, 3, 224, 224), "momentum"),
    ("resnet18", (8, 3, 224, 224), "adamw"),
    ("resnet50", (8, 3, 224, 224), "adamw"),
    ("tests/fixtures/real_models.py:vit", (512, 3, 64, 64), "adamw"),
    ("tests/fixtures/real_models.py:cbam_net", (512, 3, 64, 64), "adamw"),
    ("tests/fixtures/attention_models.py:swin_windows", (64, 3, 64, 64), "adamw"),
]


@pytest.mark.slow
@pytest.mark.parametrize(("spec", "shape", "optimizer"), PEAK_CASES, ids=[f"{c[0].split(':')[-1]}-{c[2]}"
                                                                          for c in PEAK_CASES])
def test_estimated_peak_is_within_three_percent_of_the_measured_peak(spec: str, shape: tuple[int, ...],
                                                                    optimizer: str) -> None:
    measured = oracle_memory.measure_step(spec, shape, optimizer)
    estimate = resnet_inspect.training_memory(spec, shape, optimizer=optimizer)
    assert estimate.peak_bytes == pytest.approx(measured.peak_bytes, rel=0.03)
    assert estimate.optimizer_state_bytes == measured.state_bytes


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("optimizer", ["momentum", "adamw"])
def test_estimated_peak_matches_cuda_max_memory_allocated(optimizer: str) -> None:
    measured = oracle_memory.measure_here("resnet18", (8, 3, 224, 224), optimizer, device="cuda")
    estimate = resnet_inspect.training_memory("resnet18", (8, 3, 224, 224), optimizer=optimizer, device="cuda")
    assert estimate.peak_bytes == pytest.approx(measured.peak_bytes, rel=0.10)


def test_sharding_divides_model_states_and_holds_fsdp_units_at_the_peak() -> None:
    captured = training(get_model("resnet18"), torch.zeros(BATCH, 3, 64, 64))
    one, eight = step_memory(captured), step_memory(captured, shard=8)
    assert eight.weights_bytes >= -(-captured.weight_bytes // 8)  # padded shards (tests/test_sharding.py)
    assert eight.largest_unit_bytes >= 8 * 512 * 512 * 9 * 4 // 8  # a block holds its 3x3 512-channel convs
    assert eight.gathered_bytes >= eight.largest_unit_bytes // 2
    assert one.gathered_bytes == 0 and one.shard_units == ""
    resident_one = one.weights_bytes + one.optimizer_state_bytes + one.buffer_bytes + one.input_bytes
    resident_eight = eight.weights_bytes + eight.optimizer_state_bytes + eight.buffer_bytes + eight.input_bytes
    assert eight.peak_bytes - eight.gathered_bytes - resident_eight <= one.peak_bytes - resident_one


def test_dtype_and_amp_change_the_bytes_as_the_pass_does() -> None:
    full = resnet_inspect.training_memory("resnet18", 64, batch_size=2)
    half = resnet_inspect.training_memory("resnet18", 64, batch_size=2, dtype="bfloat16")
    mixed = resnet_inspect.training_memory("resnet18", 64, batch_size=2, amp="bf16")
    assert half.weights_bytes * 2 == full.weights_bytes and half.optimizer_state_bytes < full.optimizer_state_bytes
    assert mixed.weights_bytes == full.weights_bytes and mixed.optimizer_state_bytes == full.optimizer_state_bytes
    assert mixed.dtype == "float32" and mixed.amp == "bf16"


# ------------------------------------------------------------------------------------------- CLI and JSON


@pytest.mark.parametrize(("options", "message"), [
    (["--optimizer", "lion"], "unknown optimizer 'lion'"),
    (["--amp", "fp16", "--dtype", "float16"], "cannot be combined with --dtype float16"),
    (["--shard", "0"], "--shard must be positive"),
    (["--shard", "two"], "--shard must be a positive integer"),
])
def test_bad_training_options_exit_2_with_one_line(options: list[str], message: str) -> None:
    result = runner.invoke(app, ["summary", "resnet20", "--train", *options])
    assert result.exit_code == 2
    assert result.stderr.strip().count("\n") == 0 and message in result.stderr


def test_training_json_adds_keys_and_validates_against_the_schema() -> None:
    import jsonschema

    from resnet_inspect.schemas import load_schema

    result = runner.invoke(app, ["summary", "resnet20", "-b", "2", "--train", "--optimizer", "momentum", "--format",
                                 "json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    jsonschema.validate(data, load_schema("summary"))
    assert data["totals"]["backward_macs"] == 161_319_424
    assert data["training"]["optimizer"] == "momentum" and data["training"]["peak_bytes"] > 0
    fc = next(layer for layer in data["layers"] if layer["name"] == "decoder.fc")
    assert fc["grad_bytes"] == 650 * 4 and fc["backward_macs"] == 2 * 2 * 64 * 10
    plain = json.loads(runner.invoke(app, ["summary", "resnet20", "--format", "json"]).stdout)
    assert plain["training"] is None and plain["totals"]["backward_macs"] is None
    assert plain["layers"][0]["saved_bytes"] is None


def test_table_shows_training_columns_at_the_requested_depth() -> None:
    result = runner.invoke(app, ["summary", "resnet20", "--train", "--depth", "1"])
    assert result.exit_code == 0, result.output
    assert "bwd MACs" in result.stdout and "saved" in result.stdout and "estimated peak of a training step" in (
        result.stdout)
    assert "layers.0" not in result.stdout


# ------------------------------------------------------------------------- the training pass's fast meta results


def _metadata(result: object) -> list:
    tensors = result if isinstance(result, (tuple, list)) else [result]
    return [None if t is None else (tuple(t.shape), t.stride(), t.dtype) for t in tensors]


@pytest.mark.parametrize("case", [
    ("native_batch_norm", lambda x, w: (x, w, w, w.clone(), w.clone(), True, 0.1, 1e-5)),
    ("native_batch_norm", lambda x, w: (x, w, w, w.clone(), w.clone(), False, 0.1, 1e-5)),
    ("native_batch_norm_backward", lambda x, w: (x, x, w, w, w, w, w, True, 1e-5, [True, True, True])),
    ("native_batch_norm_backward", lambda x, w: (x, x, w, w, w, w, w, True, 1e-5, [False, True, False])),
    ("threshold_backward", lambda x, w: (x, x, 0.0)),
    ("mean.dim", lambda x, w: (x, [2, 3], True)),
    ("sum.dim_IntList", lambda x, w: (x, [0, 2, 3])),
    ("sum.default", lambda x, w: (x,)),
    ("addmm", lambda x, w: (w[:3], x.flatten(1)[:, :5], torch.zeros(5, 3, device="meta"))),
    ("relu", lambda x, w: (x,)),
    ("add.Tensor", lambda x, w: (x, x)),
    ("mul.Tensor", lambda x, w: (x, 2.0)),
    ("sqrt", lambda x, w: (x,)),
    ("lerp_.Scalar", lambda x, w: (x, x, 0.1)),
    ("div.Tensor", lambda x, w: (x.sum((2, 3), keepdim=True).expand(x.shape), 30.0)),
    ("convolution", lambda x, w: (x, torch.empty(8, 2, 3, 3, device="meta"), None, [2, 1], [1, 0], [1, 2], False,
                                  [0, 0], 2)),
    ("convolution", lambda x, w: (x, torch.empty(4, 3, 2, 2, device="meta"), None, [2, 2], [0, 1], [1, 1], True,
                                  [1, 0], 1)),
    ("ones_like", lambda x, w: (x.sum(),)),
    ("mm", lambda x, w: (x.flatten(1)[:, :5].t(), torch.empty(2, 3, device="meta"))),
    ("max_pool2d_with_indices", lambda x, w: (x, [3, 3], [2, 2], [1, 1], [1, 1], False)),
    ("max_pool2d_with_indices", lambda x, w: (x, [2, 2], [], [0, 0], [1, 1], True)),
    ("max_pool2d_with_indices_backward", lambda x, w: (torch.empty(2, 4, 3, 3, device="meta"), x, [3, 3],
                                                       [2, 2], [1, 1], [1, 1], False,
                                                       torch.zeros(2, 4, 3, 3, dtype=torch.int64,
                                                                   device="meta"))),
    ("convolution_backward", lambda x, w: (torch.empty(2, 8, 5, 6, device="meta"), x,
                                           torch.empty(8, 4, 1, 1, device="meta"), [8], [1, 1], [0, 0], [1, 1],
                                           False, [0, 0], 1, [True, True, True])),
    ("convolution_backward", lambda x, w: (torch.empty(2, 8, 5, 6, device="meta"), x,
                                           torch.empty(8, 4, 1, 1, device="meta"), None, [1, 1], [0, 0], [1, 1],
                                           False, [0, 0], 1, [False, True, False])),
    ("mul.Tensor", lambda x, w: (x[:, :, :2], 2.0)),
], ids=lambda case: case[0] if isinstance(case, tuple) else str(case))
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_fast_meta_results_match_torch_cpu_kernels(case: tuple, layout: str) -> None:
    """The training pass answers a few aten operations itself (their meta kernels import torch._dynamo): shapes,
    strides and dtypes as torch's CPU kernels give them for the same arguments."""
    from torch.utils._pytree import tree_leaves, tree_map

    from resnet_inspect.capture.training.meta_kernels import fast_meta, pointwise

    x = torch.empty(2, 4, 5, 6, device="meta")
    if layout == "channels_last":
        x = x.to(memory_format=torch.channels_last)
    args = case[1](x, torch.empty(4, device="meta"))
    name, _, overload = case[0].partition(".")
    func = getattr(getattr(torch.ops.aten, name), overload or "default")
    rule = fast_meta("cpu").get(func)
    ours = rule(*args) if rule is not None else pointwise(func, args, {})
    if ours is NotImplemented:  # a layout the rule leaves to torch: it must say so, never guess
        assert not all(a.is_contiguous() for a in args if isinstance(a, torch.Tensor))
        return

    def real(value: object) -> object:
        if not isinstance(value, torch.Tensor):
            return value
        extent = 1 + sum((size - 1) * stride for size, stride in zip(value.shape, value.stride(), strict=True))
        fill = 0.5 if value.is_floating_point() else 0
        return torch.full((extent,), fill, dtype=value.dtype).as_strided(value.shape, value.stride())

    cpu_args = tree_map(real, args)
    theirs = func(*cpu_args)
    assert _metadata(ours) == _metadata(theirs)
    if name.endswith("_"):
        assert tree_leaves(ours)[0] is args[0]


# ------------------------------------------------------- windowed, local and reduced attention (the family models)

WINDOW_MODELS = ["swin_windows", "halo_net", "mobile_vit", "pvt_like", "botnet_like", "space_to_depth_net",
                 "pixel_unshuffle_net"]


def window_model(name: str) -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    return getattr(attention_models, name)(), torch.randn(BATCH, 3, 64, 64)


@pytest.mark.parametrize("name", WINDOW_MODELS)
def test_window_attention_models_train_with_exact_backward_macs_and_saved_bytes(name: str) -> None:
    """Windows, halos, patches, spatial reduction and space-to-depth (views of permuted maps, clones into a
    contiguous layout) run through the training pass as through torch."""
    check_backward_macs(*window_model(name))
    check_saved_bytes(*window_model(name))
