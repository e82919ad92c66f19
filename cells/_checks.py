"""Argument checks shared by the cells and the layers.

Every check raises an error whose message names the argument, what was expected and what came, so a
user never has to decode a shape error from deep inside a matmul. The error classes subclass both
ValueError and RuntimeError (torch raises either for the same mistakes), so code written against
`torch.nn` that catches one of them keeps working.
"""
import torch


class ShapeError(ValueError, RuntimeError):
    """A tensor argument has the wrong rank or size."""


class DtypeError(TypeError, ValueError, RuntimeError):
    """A tensor argument has the wrong dtype."""


def check_size(name, value, minimum=1):
    """Constructor sizes are integers (bool excluded), at least `minimum`."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} should be of type int, got: {type(value).__name__} ({value!r})")
    if value < minimum:
        relation = "greater than zero" if minimum == 1 else f"at least {minimum}"
        raise ValueError(f"{name} must be {relation}, got {value}")


def shape_str(t):
    return str(tuple(t.shape))


def check_floating(name, tensor, like):
    """`tensor` must be a floating-point tensor of the same dtype as the parameter `like`."""
    if not isinstance(tensor, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(tensor).__name__}")
    if not tensor.is_floating_point():
        raise DtypeError(
            f"{name} must be a floating-point tensor of dtype {like.dtype}, got dtype {tensor.dtype}; "
            f"convert it with {name}.to({like.dtype})"
        )
    if tensor.dtype != like.dtype:
        raise DtypeError(
            f"{name} has dtype {tensor.dtype} but the weights are {like.dtype}; convert the input with "
            f"{name}.to({like.dtype}) or the module with .to({tensor.dtype})"
        )


def check_state(name, tensor, expected, like):
    """A state tensor (h0, c0, hx) must have exactly the shape `expected` and the weights' dtype."""
    check_floating(name, tensor, like)
    if tuple(tensor.shape) != tuple(expected):
        raise ShapeError(
            f"{name} must have shape {tuple(expected)}, got {shape_str(tensor)}"
        )
