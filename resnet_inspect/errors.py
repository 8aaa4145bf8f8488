"""User-facing errors: each carries one clear line for the command line (exit code 2)."""

from __future__ import annotations


class InspectError(Exception):
    """Bad input or a model the tool cannot inspect; the message is one line meant for the user."""

    exit_code = 2


class ModelNotFoundError(InspectError, ValueError):
    """An unknown registry name."""


class FactoryError(InspectError):
    """A `file.py:factory` or `module:factory` spec that does not give an nn.Module."""


class UnsupportedModelError(FactoryError, ValueError):
    """A module the tool cannot inspect as it is (TorchScript, quantized, lazy and not initialised yet)."""


class ForwardError(InspectError):
    """The model's forward pass raised; the message names the layer that was running.

    ``needs_values`` is set by a pass on the meta device that stopped where torch needs the tensors' values (a
    value read such as ``.item()``, an operation with no meta kernel or whose output size depends on the data):
    the pass itself says so, and the caller may run it again on real tensors. ``recorded_bytes`` is what the
    pass had produced until then."""

    needs_values: bool = False
    recorded_bytes: int = 0


class InputTooSmallError(ForwardError):
    """A spatial dimension reached zero inside the network."""


class BadInputError(InspectError, ValueError):
    """A malformed or out-of-range option value (input size, batch size, device, dtype...)."""
