"""Per-layer records produced by one instrumented forward pass.

Plain frozen dataclasses: no torch, no formatting. Every analysis reads these.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

Shape = tuple[int, ...]
Pair = tuple[int, int]
Sizes = tuple[int, ...]  # one value per spatial axis: (length,), (height, width) or (depth, height, width)


class OpKind(StrEnum):
    """What a layer does to the spatial axes, for arithmetic and receptive fields."""

    CONV = "conv"
    CONV_TRANSPOSE = "conv_transpose"
    MAX_POOL = "max_pool"
    AVG_POOL = "avg_pool"
    ADAPTIVE_POOL = "adaptive_pool"
    LINEAR = "linear"
    ELEMENTWISE = "elementwise"  # acts per position: k = 1, s = 1 (BN, ReLU, add, channel cat/pad)
    SUBSAMPLE = "subsample"  # strided slicing x[..., ::s, ::s]: k = 1, stride s, offset as padding
    PAD = "pad"  # explicit padding of the spatial axes (F.pad): k = 1, s = 1, padding p
    GLOBAL = "global"  # reduces the spatial axes away (mean over H, W)
    RESHAPE = "reshape"  # layout only: view, permute, transpose, flatten, chunk (positions kept or moved back)
    NORM = "norm"  # normalisation over some axes (LayerNorm, GroupNorm, softmax): global context when spatial
    MATMUL = "matmul"  # matmul, bmm, einsum: mixes the positions it contracts
    ATTENTION = "attention"  # token mixing: every output position sees every input position
    UPSAMPLE = "upsample"  # interpolate, Upsample, pixel (un)shuffle: rational strides
    UNKNOWN = "unknown"  # an operation the tool has no rule for

    @property
    def is_pool(self) -> bool:
        return self in (OpKind.MAX_POOL, OpKind.AVG_POOL)

    @property
    def has_window(self) -> bool:
        """Layers whose output size follows a convolution-arithmetic relation."""
        return self in (OpKind.CONV, OpKind.CONV_TRANSPOSE, OpKind.MAX_POOL, OpKind.AVG_POOL, OpKind.ADAPTIVE_POOL)

    @property
    def is_weighted(self) -> bool:
        """Operations with a weight tensor that mixes features: one layer of depth each."""
        return self in (OpKind.CONV, OpKind.CONV_TRANSPOSE, OpKind.LINEAR)


@dataclass(frozen=True)
class Geometry:
    """A layer's declared spatial geometry, one value per spatial axis (height, width for 2-D layers).

    ``padding`` is the padding before the first row/column; ``padding_end`` the padding after the
    last one (equal to ``padding`` except for asymmetric cases such as ``padding='same'`` or ``F.pad``).
    ``output_size`` is the target of adaptive pooling (None on an axis means "keep"). Windowless kinds keep
    the 2-D defaults; their rules read only ``kind``.
    """

    kind: OpKind
    kernel: Sizes = (1, 1)
    stride: Sizes = (1, 1)
    padding: Sizes = (0, 0)
    padding_end: Sizes = (0, 0)
    dilation: Sizes = (1, 1)
    groups: int = 1
    ceil_mode: bool = False
    output_padding: Sizes = (0, 0)
    output_size: tuple[int | None, ...] | None = None
    padding_mode: str = "zeros"

    @property
    def rank(self) -> int:
        """How many spatial axes the geometry describes."""
        return len(self.kernel)

    @property
    def effective_kernel(self) -> Sizes:
        """k' = d(k - 1) + 1 per axis."""
        return tuple(d * (k - 1) + 1 for k, d in zip(self.kernel, self.dilation, strict=True))


@dataclass(frozen=True)
class LayerRecord:
    """One module call, in the order the calls started (pre-hook order, i.e. tree order)."""

    index: int
    name: str  # qualified module name, e.g. "encoder.layers.0.blocks.0.shortcut.conv"
    type: str  # class name, e.g. "Conv2d"
    depth: int  # 1 for the model's direct children
    parent: int | None  # index of the enclosing module's record; None for depth 1
    is_leaf: bool  # a module the capture treats as one operation (no children, or a known layer type)
    input_shapes: tuple[Shape, ...]
    output_shapes: tuple[Shape, ...]
    params: int  # parameters of this module and its children (each tensor counted once)
    trainable_params: int
    geometry: Geometry | None  # None for containers and layers without spatial geometry
    in_features: int | None = None  # channels / features in (conv, linear)
    out_features: int | None = None
    has_bias: bool = False
    node: int | None = None  # this call's node in the dataflow graph (modules recorded as one operation)
    input_nodes: tuple[int, ...] = ()  # nodes that produced this call's input tensors
    output_node: int | None = None  # node that produced this call's (first) output tensor
    declared: Geometry | None = None  # a windowed module the capture looked inside: the geometry it declares

    @property
    def input_shape(self) -> Shape:
        return self.input_shapes[0] if self.input_shapes else ()

    @property
    def output_shape(self) -> Shape:
        return self.output_shapes[0] if self.output_shapes else ()


@dataclass(frozen=True)
class OpNode:
    """One operation in the dataflow graph: a leaf module call or a functional op such as ``x + residual``.

    The model inputs are nodes without inputs. ``inputs`` are the nodes whose outputs this operation consumed,
    in argument order; tensors that no tracked operation produced (constants, fresh zeros) are left out, and
    ``input_shapes`` are those of ``inputs``. A ``constant`` node does work on such tensors alone (Swin V2's
    position-bias MLP on a coordinate table): it has no inputs, its ``input_shapes`` are those of its tensor
    arguments, and its output is not tracked, so it joins no receptive field. ``op`` names the entry of the
    operation table that describes it, and ``attrs`` holds the call's arguments that its rules need (dims of a
    permute, the scale of an upsample).
    """

    id: int
    name: str  # module name for module calls; "<enclosing>.<op>" for functional ops
    type: str  # module class name or function name ("add", "flatten", ...)
    geometry: Geometry
    inputs: tuple[int, ...]
    input_shapes: tuple[Shape, ...]
    output_shape: Shape
    record: int | None = None  # the LayerRecord index for leaf module calls
    scope: str = ""  # qualified name of the innermost module that made the call ("" for the model itself)
    inplace: bool = False  # the output is one of the inputs, written in place (ReLU(inplace=True), `x += y`)
    op: str = "unknown"  # the operation-table entry
    attrs: dict[str, Any] = field(default_factory=dict, compare=False)
    output_shapes: tuple[Shape, ...] = ()  # every output tensor (chunk, split); output_shape is the first
    constant: bool = False  # depends on no model input: it runs on buffers, parameters or constants
    # Training pass only: whether each tensor argument, then a module operation's parameters, takes part in the
    # backward (requires grad with grad mode on); empty when the pass ran without autograd.
    grads: tuple[bool, ...] = ()


@dataclass(frozen=True)
class Capture:
    """Everything one instrumented forward pass saw."""

    model_name: str
    model_type: str
    input_shape: Shape
    output_shape: Shape
    layers: tuple[LayerRecord, ...]
    nodes: tuple[OpNode, ...]
    output_node: int
    params: int
    trainable_params: int
    param_bytes: int
    param_bytes_by_dtype: dict[str, int] = field(default_factory=dict)
    buffer_bytes: int = 0
    dtype: str = "float32"
    input_shapes: tuple[Shape, ...] = ()  # every input tensor (input_shape is the first)
    output_shapes: tuple[Shape, ...] = ()  # every output tensor, in the order the output structure holds them
    output_names: tuple[str, ...] = ()  # where each output sits in that structure: "", "0", "logits", "aux.1"
    output_nodes: tuple[int | None, ...] = ()  # the node that produced each output (None: not from the input)
    feature_modules: tuple[str, ...] = ()  # the stages the model declares (timm's feature_info), if any
    warnings: tuple[str, ...] = ()  # what the pass could not see: data-dependent branches, values read back
    device: str = "meta"  # where the pass ran: "meta", or "cpu" when the forward needed real values

    @property
    def leaves(self) -> tuple[LayerRecord, ...]:
        return tuple(layer for layer in self.layers if layer.is_leaf)


class MemoryKind(StrEnum):
    """What a storage allocated during a training step is (a string, so JSON and old comparisons keep working)."""

    ACTIVATION = "activation"  # anything the step makes and drops: outputs, saved tensors, temporaries
    GRADIENT = "gradient"  # a parameter's gradient
    STATE = "state"  # the optimizer's state (resident from the second step on)
    GATHERED = "gathered"  # sharded (FSDP2): a unit's parameters gathered whole, or an all-gather buffer
    REDUCE_SCATTER = "reduce-scatter"  # sharded (FSDP2): a unit's gradients copied in to be reduce-scattered


class StepPhase(StrEnum):
    """The part of a training step that runs."""

    FORWARD = "forward"
    BACKWARD = "backward"
    OPTIMIZER = "optimizer"


@dataclass(frozen=True)
class MemoryEvent:
    """One allocation (``bytes`` > 0) or release (< 0) during a training step, in the order they happened."""

    bytes: int
    kind: MemoryKind
    phase: StepPhase
    layer: str  # the innermost layer running (its backward, in the backward phase)
    allocation: int = 0  # the storage's allocation number, shared by its allocation and its release (0: unknown)


@dataclass(frozen=True)
class ParameterRecord:
    """One parameter of the trained model, as the step holds it (after any dtype conversion)."""

    module: str  # the module that owns it directly ("" for the model itself)
    shape: tuple[int, ...]
    itemsize: int  # bytes per element
    trainable: bool


@dataclass(frozen=True)
class TrainingCapture:
    """What one training step on the meta device saw (see capture/training.py). Byte counts are per storage."""

    capture: Capture  # the train-mode forward; its nodes carry the requires-grad flags (OpNode.grads)
    optimizer: str
    amp: str | None
    device: str  # the device whose kernels were modelled
    dtype: str  # the parameters' dtype during the step
    layer_saved_bytes: dict[int, int]  # LayerRecord index -> activations it saved for backward (innermost call)
    layer_grad_bytes: dict[int, int]  # LayerRecord index -> gradients of its trainable parameters (inclusive)
    saved_bytes: int  # activations kept for the backward at the end of the forward, each storage once
    saved_tensors: int  # storages saved, weights and input included
    saved_weight_bytes: int  # parameters and buffers that are saved too (held as weights anyway)
    saved_input_bytes: int  # the model's input, when saved (held by the caller anyway)
    weight_bytes: int  # parameters
    buffer_bytes: int
    input_bytes: int
    gradient_bytes: int  # the parameters' gradients after the backward
    state_bytes: int  # the optimizer's state after its step
    largest_layer: str  # the leaf layer with the most parameters (what a sharded run gathers at once)
    largest_layer_bytes: int
    events: tuple[MemoryEvent, ...]  # the step's allocations and releases
    backward_error: str | None = None  # why the backward could not run on meta (then no step memory)
    parameters: tuple[ParameterRecord, ...] = ()  # each parameter once, with the module that owns it
    recomputed_nodes: tuple[int, ...] = ()  # capture node ids activation checkpointing ran again in the backward
    loss: str | None = "sum"  # what the built-in step backpropagated (None: the user's own step ran)
    accumulate: int = 1  # the built-in step's micro-batches per optimizer step
