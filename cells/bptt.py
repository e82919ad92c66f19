"""Backpropagation through time, by hand: a cell's `step_backward` applied from the last step to the first.

A sequence run through a cell is the same step T times, each starting from the state the step before
left, h_t = step(x_t, h_{t-1}) (for the LSTM the state is the pair (h, c)). The loss reaches h_t on two
paths: directly, through what the model does with the output h_t, and through h_{t+1}, h_{t+2}, ...,
which h_t feeds. So, walking backwards from the last step:

    dh_t   = grad_outputs[t] + (what step t+1 sent back to its h)     (at t = T-1: grad_last's h)
    dc_t   = (what step t+1 sent back to its c)                        (LSTM; at t = T-1: grad_last's c)
    dx_t, (what step t sends back to h_{t-1}, c_{t-1}), dW_t = step_backward(x_t, h_{t-1}, dh_t)
    dW     = Σ_t dW_t                                                  every step used the same weights

The backward of each step needs the state it started from, so the forward is run once more first
and keeps those states. References: P. J. Werbos,
"Backpropagation through time: what it does and how to do it", Proc. IEEE 78 (1990).
"""
import torch


@torch.no_grad()  # all by hand: nothing for autograd to record
def backward_through_time(cell, inputs, hx, grad_outputs, grad_last):
    """The gradients of a loss through T steps of `cell`, from `cell.step_backward` alone.

    inputs (T, B, I); hx the initial states (h (B, H), or (h, c) for an LSTM); grad_outputs (T, B, H)
    the loss's gradient at each step's output h_t; grad_last the gradient at the final states, shaped
    like hx. Returns (grad_inputs (T, B, I), the gradient of hx, {parameter name: gradient summed over
    the steps}). Equal to autograd through the unrolled cell (tests/test_backward.py).
    """
    starts = [hx]  # starts[t]: the state step t started from
    for x in inputs[:-1]:
        starts.append(cell(x, starts[-1]))

    grads = {name: torch.zeros_like(p) for name, p in cell.named_parameters()}
    grad_inputs = torch.zeros_like(inputs)  # (T, B, I)
    grad_state = grad_last  # what reaches the state the last step left: only grad_last
    for t in reversed(range(len(inputs))):
        # The gradient at h_t is the output's plus what step t+1 sent back (in grad_state).
        grad_out = _add_to_h(grad_state, grad_outputs[t])
        grad_inputs[t], grad_state, step_grads = cell.step_backward(inputs[t], starts[t], grad_out)
        for name, grad in step_grads.items():
            grads[name] = grads[name] + grad  # the parameters' gradients are summed over the steps
    return grad_inputs, grad_state, grads


def _add_to_h(grad_state, grad_output):
    """grad_state with grad_output added to its h part: (dh + dout, dc) for an LSTM, dh + dout else."""
    if isinstance(grad_state, (tuple, list)):
        dh, dc = grad_state
        return dh + grad_output, dc
    return grad_state + grad_output
