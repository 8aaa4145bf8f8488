"""Backward multiply-accumulates of the operations that have forward MACs: the ``backward_macs`` of their entries.

A node's ``grads`` say which of its tensor arguments (then a module operation's parameters) take part in the
backward. Each gradient of a product is another product of the same size: the input gradient of a convolution is a
transposed convolution of the output gradient with the weight, its weight gradient a convolution of the input with
the output gradient (torch.utils.flop_counter's ``conv_backward_flop`` derives both). So an operation's backward
costs its forward MACs once per operand whose gradient is computed. Bias gradients are sums (no MACs).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from resnet_inspect.records import OpNode


def _grad(node: OpNode, position: int) -> bool:
    return len(node.grads) > position and node.grads[position]


def operand_backward(forward: Callable[[OpNode], int], operands: tuple[int, ...]) -> Callable[[OpNode], int]:
    """Forward MACs once per operand (by position in ``grads``) whose gradient is computed: convolutions, linear
    layers (input 0, weight 1), matrix products (0 and 1; addmm's 1 and 2)."""

    def rule(node: OpNode) -> int:
        return forward(node) * sum(_grad(node, position) for position in operands)

    return rule


def every_operand_backward(forward: Callable[[OpNode], int]) -> Callable[[OpNode], int]:
    """einsum: forward MACs once per operand whose gradient is computed."""

    def rule(node: OpNode) -> int:
        return forward(node) * sum(node.grads[:len(node.attrs.get("shapes", ()))])

    return rule


def _attention_products(query: Any, key: Any, value: Any) -> tuple[int, int]:
    """MACs of ``q @ k^T`` and of ``attention @ v`` for (..., L, E) shaped operands."""
    leading = 1
    for size in tuple(query)[:-2]:
        leading *= int(size)
    target, source = int(query[-2]), int(key[-2])
    return leading * target * source * int(query[-1]), leading * target * source * int(value[-1])


def attention_backward(query_grad: bool, key_grad: bool, value_grad: bool, query: Any, key: Any, value: Any) -> int:
    """The gradient products of ``softmax(q @ k^T) @ v``: the attention's gradient (``grad @ v^T``) when q or k
    needs one, v's (``attention^T @ grad``), q's (``grad_attention @ k``) and k's (``grad_attention^T @ q``).

    These are the products of the math backward (four when all three need gradients: twice the forward). The
    fused kernels also recompute ``q @ k^T`` (torch's ``sdpa_backward_flop_count`` counts five).
    """
    scores, mixing = _attention_products(query, key, value)
    return (mixing * (query_grad or key_grad) + mixing * value_grad + scores * query_grad + scores * key_grad)


def sdpa_backward_macs(node: OpNode) -> int:
    """F.scaled_dot_product_attention: grads (q, k, v, mask...)."""
    query, key, value = node.attrs["shapes"]
    return attention_backward(_grad(node, 0), _grad(node, 1), _grad(node, 2), query, key, value)


def mha_backward_macs(node: OpNode) -> int:
    """nn.MultiheadAttention (grads: query, key, value, then its parameters, the output projection's last): the
    output projection's input and weight gradients, the attention's, and the input projections'."""
    attrs = node.attrs
    query, key, _value = attrs["shapes"] if len(attrs["shapes"]) == 3 else (attrs["shapes"][0],) * 3
    inputs_grad = any(node.grads[:3])
    out_weight_grad = _grad(node, len(node.grads) - 2)
    in_weights_grad = any(node.grads[3:-2])
    embed, heads_dims = attrs["embed_dim"], (1 if attrs["batch_first"] and len(query) == 3 else 0)
    batch = query[0] if heads_dims else (query[1] if len(query) == 3 else 1)
    target, source = query[heads_dims], key[heads_dims]
    projected = in_weights_grad or inputs_grad  # q, k, v after their projections need gradients
    output_rows = batch * target * embed * embed
    input_projections = batch * (target * embed * embed + source * attrs["kdim"] * embed
                                 + source * attrs["vdim"] * embed)
    attention = attention_backward(projected, projected, projected, (batch, target, embed), (batch, source, embed),
                                   (batch, source, embed))
    return (output_rows * (projected + out_weight_grad) + attention * projected
            + input_projections * (inputs_grad + in_weights_grad))


__all__ = ["attention_backward", "every_operand_backward", "mha_backward_macs", "operand_backward",
           "sdpa_backward_macs"]
