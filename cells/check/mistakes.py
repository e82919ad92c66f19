"""The classic mistakes in a hand-written cell, each one a variant of torch's step, for `cells.check`.

When a learner's cell differs from `torch.nn`, `cells.check` recomputes torch's step with the
learner's own weights and inputs, changing exactly one thing at a time — the gates in another order,
σ and tanh swapped on a gate, tanh(c') left out of h', a bias added twice or not at all, GRU's update
written the other way round, GRU's reset gate applied before the recurrent matmul, a weight used
transposed, ... — and keeps the variants that reproduce the learner's numbers to 1e-9 in float64.
With random weights and inputs two different formulas essentially never agree to that precision,
so a variant that matches *is* what the learner wrote.

Every variant is written as torch's equations (see cells/lstm.py, cells/gru.py, cells/rnn.py) with
the change spelled out; `change` is a dict of the options below, {} being torch's step itself:

    order          the gates in the order the learner reads the stacked rows, e.g. "ifog"
    acts           {gate: "σ" | "tanh"} overriding torch's nonlinearity of some gates
    ih_bias, hh_bias   how many times b_ih, b_hh are added (torch: 1)
    hh_transposed  each gate's (H, H) block of weight_hh used as W.T (h @ W instead of h @ W.T)
    ih_transposed  the same for weight_ih, which runs only when input_size == hidden_size
    ignore_state   the step starts from zeros instead of hx
    LSTM:  cell_act ("tanh" | "none" | "σ") in h' = o ⊙ cell_act(c'); h_from_old_c; c_update
    GRU:   update_reversed; reset ("after" | "before" | "b_hn_outside" | "unused")
    RNN:   act ("tanh" | "relu" | "σ")
"""
import itertools
from dataclasses import dataclass, field

import torch

GATES = {"rnn": "h", "lstm": "ifgo", "gru": "rzn"}
ACTIVATIONS = {  # torch's nonlinearity of each gate
    "lstm": {"i": "σ", "f": "σ", "g": "tanh", "o": "σ"},
    "gru": {"r": "σ", "z": "σ", "n": "tanh"},
}
FUNCTIONS = {"σ": torch.sigmoid, "tanh": torch.tanh, "relu": torch.relu, "none": lambda t: t}
GATE_ROLES = {
    "i": "the input gate", "f": "the forget gate", "g": "the candidate", "o": "the output gate",
    "r": "the reset gate", "z": "the update gate", "n": "the candidate",
}
MATCH = {"atol": 1e-9, "rtol": 1e-9}  # float64: a different formula is off by far more


@dataclass(frozen=True)
class Mistake:
    """One classic mistake: a short id (for tests), the explanation for the learner, the variant."""

    name: str
    text: str
    change: dict = field(default_factory=dict, compare=False)


# -- the variant steps --------------------------------------------------------------------------


def rows(k, gates):
    """The rows of gate block k in a stacked weight, in H units: '0:H', 'H:2H', '2H:3H', ..."""
    if gates == 1:
        return "0:H"
    start = "0" if k == 0 else ("H" if k == 1 else f"{k}H")
    end = "H" if k == 0 else f"{k + 1}H"
    return f"{start}:{end}"


def _arrange(t, order, torch_order, transposed=False):
    """The learner's gate blocks of `t` put in torch's order (and each block transposed if asked),
    so that torch's equations applied to the result compute what the learner's code computes."""
    if t is None:
        return None
    blocks = t.chunk(len(order), 0)
    blocks = [blocks[order.index(gate)] for gate in torch_order]
    return torch.cat([b.T if transposed else b for b in blocks])


def _projections(x, h, p, change, kind):
    """(W_ih x + b_ih, W_hh h + b_hh), each (B, G·H) in torch's gate order, with `change` applied;
    also W_hh and b_hh as used (GRU's candidate needs their n rows apart)."""
    torch_order = GATES[kind]
    order = change.get("order", torch_order)
    w_ih = _arrange(p["weight_ih"], order, torch_order, change.get("ih_transposed", False))
    w_hh = _arrange(p["weight_hh"], order, torch_order, change.get("hh_transposed", False))
    x_proj, h_proj, b_hh = x @ w_ih.T, h @ w_hh.T, torch.zeros(w_hh.shape[0], dtype=x.dtype)
    if p.get("bias_ih") is not None:
        b_hh = change.get("hh_bias", 1) * _arrange(p["bias_hh"], order, torch_order)
        x_proj = x_proj + change.get("ih_bias", 1) * _arrange(p["bias_ih"], order, torch_order)
        h_proj = h_proj + b_hh
    return x_proj, h_proj, w_hh, b_hh


def _act(kind, gate, change):
    return FUNCTIONS[change.get("acts", {}).get(gate, ACTIVATIONS[kind][gate])]


def lstm_variant(x, state, p, change):
    """torch's LSTM step (cells/lstm.py) with `change` applied; returns (h', c')."""
    h, c = state
    if change.get("ignore_state"):
        h, c = torch.zeros_like(h), torch.zeros_like(c)
    x_proj, h_proj, _, _ = _projections(x, h, p, change, "lstm")
    z_i, z_f, z_g, z_o = (x_proj + h_proj).chunk(4, 1)  # each (B, H)
    i, f = _act("lstm", "i", change)(z_i), _act("lstm", "f", change)(z_f)
    g, o = _act("lstm", "g", change)(z_g), _act("lstm", "o", change)(z_o)
    update = change.get("c_update")
    c_new = (c if update == "no_f" else f * c) + (g if update == "no_i" else i * g)
    h_new = o * FUNCTIONS[change.get("cell_act", "tanh")](c if change.get("h_from_old_c") else c_new)
    return h_new, c_new


def gru_variant(x, state, p, change):
    """torch's GRU step (cells/gru.py) with `change` applied; returns (h',)."""
    (h,) = state
    if change.get("ignore_state"):
        h = torch.zeros_like(h)
    x_proj, h_proj, w_hh, b_hh = _projections(x, h, p, change, "gru")
    x_r, x_z, x_n = x_proj.chunk(3, 1)  # each (B, H)
    h_r, h_z, h_n = h_proj.chunk(3, 1)
    r = _act("gru", "r", change)(x_r + h_r)
    z = _act("gru", "z", change)(x_z + h_z)
    H = h.shape[1]
    w_hn, b_hn = w_hh[2 * H:], b_hh[2 * H:]  # (H, H), (H,)
    reset = change.get("reset", "after")
    if reset == "after":
        recurrent = r * h_n  # torch's: r ⊙ (W_hn h + b_hn)
    elif reset == "before":
        recurrent = (r * h) @ w_hn.T + b_hn  # the 2014 paper's: W_hn (r ⊙ h) + b_hn
    elif reset == "b_hn_outside":
        recurrent = r * (h @ w_hn.T) + b_hn
    else:  # "unused"
        recurrent = h_n
    n = _act("gru", "n", change)(x_n + recurrent)
    h_new = z * n + (1 - z) * h if change.get("update_reversed") else (1 - z) * n + z * h
    return (h_new,)


def rnn_variant(x, state, p, change, nonlinearity="tanh"):
    """torch's Elman step (cells/rnn.py) with `change` applied; returns (h',)."""
    (h,) = state
    if change.get("ignore_state"):
        h = torch.zeros_like(h)
    x_proj, h_proj, _, _ = _projections(x, h, p, change, "rnn")
    return (FUNCTIONS[change.get("act", nonlinearity)](x_proj + h_proj),)


# -- the catalogue, in the learner's terms ------------------------------------------------------


def _order_mistakes(kind):
    torch_order = GATES[kind]
    G = len(torch_order)
    for perm in itertools.permutations(torch_order):
        order = "".join(perm)
        if order == torch_order:
            continue
        moved = "; ".join(f"rows [{rows(k, G)}] are {torch_order[k]}, which your cell uses as {order[k]}"
                          for k in range(G) if order[k] != torch_order[k])
        text = (f"your gates are in the order {', '.join(order)}; torch's order is "
                f"{', '.join(torch_order)}. weight_ih, weight_hh, bias_ih and bias_hh stack the gates "
                f"in torch's order: {moved}. Unpack them as "
                f"`{', '.join(torch_order)} = gates.chunk({G}, 1)`.")
        yield Mistake("gate_order", text, {"order": order})


def _activation_mistakes(kind):
    torch_acts = ACTIVATIONS[kind]
    gates = GATES[kind]
    rule = "; ".join(f"{g} = {torch_acts[g]}(·)" for g in gates)
    for count in range(1, len(gates) + 1):
        for flipped in itertools.combinations(gates, count):
            acts = {g: ("tanh" if torch_acts[g] == "σ" else "σ") for g in flipped}
            wrong = "; ".join(f"gate {g} ({GATE_ROLES[g]}) goes through {acts[g]} where torch uses "
                              f"{torch_acts[g]}" for g in flipped)
            text = (f"σ and tanh are swapped: {wrong}. torch's nonlinearities are {rule} "
                    f"(σ for gates, which scale by a number in (0, 1); tanh for the candidate, in (−1, 1)).")
            yield Mistake("activation", text, {"acts": acts})


def _bias_mistakes(kind):
    equation = "W_ih x + b_ih + W_hh h + b_hh" if kind != "gru" else "W_i* x + b_i* and W_h* h + b_h*"
    for k_ih, k_hh in itertools.product((0, 1, 2), repeat=2):
        if (k_ih, k_hh) == (1, 1):
            continue
        said = []
        for name, k in (("bias_ih", k_ih), ("bias_hh", k_hh)):
            if k != 1:
                said.append(f"{name} is {'added twice' if k == 2 else 'never added'}")
        name = "bias_twice" if 2 in (k_ih, k_hh) and 0 not in (k_ih, k_hh) else (
            "bias_missing" if 0 in (k_ih, k_hh) and 2 not in (k_ih, k_hh) else "bias_twice_and_missing")
        text = (f"{' and '.join(said)}. torch adds each bias exactly once: {equation} "
                f"(F.linear(x, weight_ih, bias_ih) already adds bias_ih).")
        yield Mistake(name, text, {"ih_bias": k_ih, "hh_bias": k_hh})


def _common_mistakes(kind, has_bias):
    blocks = "each gate's (H, H) block W_h* of weight_hh" if kind != "rnn" else "weight_hh (H, H)"
    yield Mistake("transposed", (
        f"weight_hh is used transposed: {blocks} multiplies h as h @ W, i.e. Wᵀh. torch stores weights "
        f"as (out, in) and computes W h = h @ W.T (F.linear(h, weight_hh, bias_hh))."), {"hh_transposed": True})
    blocks = blocks.replace("W_h*", "W_i*").replace("weight_hh", "weight_ih").replace("(H, H)", "(H, I)")
    for which, change in (("weight_ih is", {"ih_transposed": True}),
                          ("weight_ih and weight_hh are", {"ih_transposed": True, "hh_transposed": True})):
        yield Mistake("transposed", (
            f"{which} used transposed: {blocks} multiplies x as x @ W, i.e. Wᵀx, which runs only when "
            f"input_size == hidden_size. torch stores weights as (out, in) and computes W x = x @ W.T "
            f"(F.linear(x, weight_ih, bias_ih))."), change)
    state = "h = c = 0" if kind == "lstm" else "h = 0"
    yield Mistake("ignores_state", (
        f"your cell ignores hx: its numbers are torch's with {state}. Use the h (and c) passed to forward."),
        {"ignore_state": True})
    if has_bias:
        yield from _bias_mistakes(kind)


def _lstm_mistakes():
    yield Mistake("tanh_c_missing", "tanh(c') is missing from h': you compute h' = o ⊙ c'; torch computes "
                  "h' = o ⊙ tanh(c').", {"cell_act": "none"})
    yield Mistake("sigmoid_c", "h' = o ⊙ σ(c'): torch squashes the cell with tanh, h' = o ⊙ tanh(c').",
                  {"cell_act": "σ"})
    yield Mistake("h_from_old_c", "h' is computed from the old cell state c; torch uses the new one, "
                  "h' = o ⊙ tanh(c') with c' = f ⊙ c + i ⊙ g.", {"h_from_old_c": True})
    yield Mistake("forget_gate_unused", "the forget gate is not applied: you compute c' = c + i ⊙ g; torch "
                  "computes c' = f ⊙ c + i ⊙ g.", {"c_update": "no_f"})
    yield Mistake("input_gate_unused", "the input gate is not applied: you compute c' = f ⊙ c + g; torch "
                  "computes c' = f ⊙ c + i ⊙ g.", {"c_update": "no_i"})


def _gru_mistakes():
    yield Mistake("update_reversed", (
        "the update is written the other way round: you compute h' = z ⊙ n + (1 − z) ⊙ h; torch computes "
        "h' = (1 − z) ⊙ n + z ⊙ h (z is how much of the old h to keep)."), {"update_reversed": True})
    yield Mistake("reset_before_matmul", (
        "the reset gate is applied before the recurrent matmul, n = tanh(W_in x + b_in + W_hn (r ⊙ h) + "
        "b_hn): that is the 2014 paper's GRU (cells.GRUCell(reset_after=False)). torch.nn.GRUCell applies "
        "it after: n = tanh(W_in x + b_in + r ⊙ (W_hn h + b_hn))."), {"reset": "before"})
    yield Mistake("b_hn_outside_reset", (
        "b_hn is outside the reset gate: you compute n = tanh(W_in x + b_in + r ⊙ (W_hn h) + b_hn); torch "
        "computes n = tanh(W_in x + b_in + r ⊙ (W_hn h + b_hn)) — the one bias that is not redundant."),
        {"reset": "b_hn_outside"})
    yield Mistake("reset_unused", "the reset gate r is not used: torch's candidate is n = tanh(W_in x + b_in "
                  "+ r ⊙ (W_hn h + b_hn)).", {"reset": "unused"})


def _rnn_mistakes(nonlinearity):
    for act in ("tanh", "relu", "σ"):
        if act != nonlinearity:
            yield Mistake("nonlinearity", f"your cell uses {act} where torch.nn.RNNCell(nonlinearity="
                          f"{nonlinearity!r}) uses {nonlinearity}: h' = {nonlinearity}(W_ih x + b_ih + "
                          f"W_hh h + b_hh).", {"act": act})


def catalogue(kind, has_bias=True, nonlinearity="tanh"):
    """Every single mistake `cells.check` knows for a cell of this kind."""
    if kind == "lstm":
        specific = [*_order_mistakes(kind), *_activation_mistakes(kind), *_lstm_mistakes()]
    elif kind == "gru":
        specific = [*_order_mistakes(kind), *_activation_mistakes(kind), *_gru_mistakes()]
    else:
        specific = list(_rnn_mistakes(nonlinearity))
    return specific + list(_common_mistakes(kind, has_bias))


def variant_step(kind, nonlinearity="tanh"):
    """The function computing torch's step of this kind with a `change`: f(x, state, params, change)."""
    if kind == "lstm":
        return lstm_variant
    if kind == "gru":
        return gru_variant
    return lambda x, state, p, change: rnn_variant(x, state, p, change, nonlinearity)


@torch.no_grad()
def find_mistakes(kind, outputs, x, state, params, nonlinearity="tanh"):
    """The mistakes whose variant reproduces `outputs` (the learner's (h',) or (h', c')) exactly.

    x (B, I) and state ((h,) or (h, c), each (B, H)) are the inputs the learner's cell was given,
    params its weights by torch's names.
    """
    step = variant_step(kind, nonlinearity)
    has_bias = params.get("bias_ih") is not None
    found = []
    for mistake in catalogue(kind, has_bias, nonlinearity):
        try:
            expected = step(x, state, params, mistake.change)
        except RuntimeError:  # e.g. a transposed non-square block: that variant cannot be it
            continue
        if len(expected) == len(outputs) and all(
                e.shape == o.shape and torch.allclose(o, e, **MATCH) for e, o in zip(expected, outputs)):
            found.append(mistake)
    return found
