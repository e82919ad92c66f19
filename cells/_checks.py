"""Argument checks shared by the cells and the layers.

Every check raises an error whose message names the argument, what was expected and what came, so a
user never has to decode a shape error from deep inside a matmul. The error classes subclass both
ValueError and RuntimeError (torch raises either for the same mistakes), so code written against
`torch.nn` that catches one of them keeps working, and where torch.nn has a message for the same
mistake ours contains its wording, so code that matches that text keeps working too.

Under autocast the dtype checks step aside, as torch.nn's do: there an activation may arrive in the
autocast dtype while the weights stay float32, and the matmuls cast both.
"""
import torch


class ShapeError(ValueError, RuntimeError):
    """A tensor argument has the wrong rank or size."""


class DtypeError(TypeError, ValueError, RuntimeError):
    """A tensor argument has the wrong dtype."""


def autocast_enabled(device_type):
    """Whether autocast is on for `device_type` ("cpu", "cuda", …)."""
    try:
        return torch.is_autocast_enabled(device_type)  # torch >= 2.4
    except TypeError:
        if device_type == "cpu":
            return torch.is_autocast_cpu_enabled()
        return device_type == "cuda" and torch.is_autocast_enabled()


def any_autocast_enabled():
    """Whether autocast is on for any device (torch.nn's layers then accept any input dtype)."""
    check = getattr(torch._C, "_is_any_autocast_enabled", None)
    if check is not None:
        return check()
    return autocast_enabled("cpu") or autocast_enabled("cuda")


def check_bool(name, value):
    """A flag must be a real bool: `batch_first='False'` would otherwise count as True."""
    if not isinstance(value, bool):
        raise TypeError(f"{name} should be of type bool, got: {type(value).__name__} ({value!r})")


def check_size(name, value, minimum=1):
    """Constructor sizes are integers (bool excluded), at least `minimum`."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} should be of type int, got: {type(value).__name__} ({value!r})")
    if value < minimum:
        relation = "greater than zero" if minimum == 1 else f"at least {minimum}"  # torch's words
        raise ValueError(f"{name} must be {relation}, got {value}")


def shape_str(t):
    return str(tuple(t.shape))


def check_floating(name, tensor, like, match_dtype=True):
    """`tensor` must be a floating-point tensor (of the same dtype as the parameter `like`, unless
    `match_dtype` is False: callers that check shapes first, as torch.nn does, check the dtype last
    with `check_dtype`)."""
    if not isinstance(tensor, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(tensor).__name__}")
    if not tensor.is_floating_point():
        raise DtypeError(
            f"{name} must be a floating-point tensor of dtype {like.dtype}, got dtype {tensor.dtype}; "
            f"convert it with {name}.to({like.dtype})"
        )
    if match_dtype:
        check_dtype(name, tensor, like)


def check_dtype(name, tensor, like, message=None):
    """A floating `tensor` must have the dtype of the parameter `like` (any dtype under autocast).

    `message`, if given, replaces ours (the layers use torch.nn's wording for their input)."""
    if tensor.dtype != like.dtype and not any_autocast_enabled():
        raise DtypeError(message or (
            f"{name} has dtype {tensor.dtype} but the weights are {like.dtype}; convert the input with "
            f"{name}.to({like.dtype}) or the module with .to({tensor.dtype})"
        ))
