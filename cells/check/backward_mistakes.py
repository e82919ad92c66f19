"""The classic mistakes in a hand-written backward, each one a variant of the right one, for `cells.check`.

When a learner's `step_backward` differs from autograd, the check recomputes the right backward of
the step (the derivation in cells/lstm.py, cells/gru.py, cells/rnn.py) with the learner's weights
and inputs, changing exactly one thing at a time, and keeps the variants that reproduce every
gradient the learner returned to 1e-9 in float64; the same for `backward_through_time`, with the
learner's (already right) step_backward inside a loop that changes one thing. As in mistakes.py, two
different formulas essentially never agree to that precision, so a variant that matches is what the
learner wrote.

A step variant's `change` is a dict of:

    sigma_prime    {gate: form} the derivative used for a σ gate: "tanh" (1 − s²), "missing" (1),
                   "again" (σ(s)(1 − σ(s)), σ′ applied to the gate's value s instead of its input),
                   "one_minus" (1 − s), "value" (s), "pre" (a(1 − a) of the pre-activation a)
    tanh_prime     {gate: form} the same for a tanh: "sigma" (t(1 − t)), "missing", "again",
                   "one_minus" (1 − t), "value" (t), "pre" (1 − a²)
    order          the order in which the learner stacked the gates' gradients, e.g. "ifog"
    dW_hh_from_next    dW_hh = dzᵀ h' instead of dzᵀ h
    transposed     {"weight_ih", "weight_hh"} given as xᵀ dz / hᵀ dz, (in, out) instead of (out, in)
    bias_reduce    {bias name: "none" (db = dz, not summed over the batch), "mean" or "rows" (summed over
                   the gate units instead)}
    LSTM:  dc_no_f; dc_from_arriving (dc made from the dc' that arrived, not the whole gradient at c');
           c_tanh_prime (a form for tanh′(c')); no_h_path (dc' gets nothing through h');
           old_c (tanh(c) of the old c in h's path); df_from_next_c (df = dc' ⊙ c')
    GRU:   direct ("1-z": h's direct gradient dh' ⊙ (1 − z)); dn ("z": dn = dh' ⊙ z);
           dz_sign (dz = dh' ⊙ (n − h)); dr ("no_b_hn": W_hn h without b_hn, "h": h itself, "nothing");
           dh_n_without_r
    RNN:   act_prime: "missing", "of_z" (1 − z² from the pre-activation), "of_h" (1 − h² from the old h)

A loop variant's `change` holds one of the names in LOOP_MISTAKES.
"""
import itertools

import torch

from .mistakes import GATES, Mistake

MATCH = {"atol": 1e-9, "rtol": 1e-9}
SIGMA_PRIME = {"right": lambda s: s * (1 - s), "tanh": lambda s: 1 - s**2, "missing": lambda s: torch.ones_like(s),
               "again": lambda s: torch.sigmoid(s) * (1 - torch.sigmoid(s)), "one_minus": lambda s: 1 - s,
               "value": lambda s: s}
TANH_PRIME = {"right": lambda t: 1 - t**2, "sigma": lambda t: t * (1 - t), "missing": lambda t: torch.ones_like(t),
              "again": lambda t: 1 - torch.tanh(t) ** 2, "one_minus": lambda t: 1 - t, "value": lambda t: t}
SIGMA_WRONG = {"tanh": "1 − σ², tanh's derivative", "missing": "nothing (the derivative left out)",
               "again": "σ(s)(1 − σ(s)) of the gate's value s, i.e. σ′ applied to σ's output",
               "one_minus": "(1 − s) alone, without the factor s", "value": "s alone, without the factor (1 − s)",
               "pre": "a (1 − a) of the pre-activation a instead of the gate's value s = σ(a)"}
TANH_WRONG = {"sigma": "t(1 − t), σ's derivative", "missing": "nothing (the derivative left out)",
              "again": "1 − tanh²(t) of the value t = tanh(·), i.e. tanh′ applied to tanh's output",
              "one_minus": "1 − t, without the square", "value": "t = tanh(·) itself instead of its derivative",
              "pre": "1 − a² of the pre-activation a instead of the value t = tanh(a)"}


# -- the right backward of a step, with one change -------------------------------------------------


def _sigma_prime(gate, change, value, pre):
    """σ′ of the gate `value` = σ(`pre`) as the learner wrote it: from the value, or ("pre") the same
    formula applied to the pre-activation."""
    form = change.get("sigma_prime", {}).get(gate, "right")
    return SIGMA_PRIME["right"](pre) if form == "pre" else SIGMA_PRIME[form](value)


def _tanh_prime(gate, change, value, pre):
    form = change.get("tanh_prime", {}).get(gate, "right")
    return TANH_PRIME["right"](pre) if form == "pre" else TANH_PRIME[form](value)


def _through_matmuls(kind, x, h, h_next, d_xproj, d_hproj, dh_direct, p, change):
    """From the gradients of W_ih x + b_ih and of W_hh h + b_hh (each (B, G·H), torch's gate order)
    to those of x, h and the parameters, as the learner's stacking and weight gradients do."""
    if "order" in change:  # the learner stacked the gates' gradients in another order
        restack = lambda t: torch.cat([t.chunk(len(GATES[kind]), 1)[GATES[kind].index(g)] for g in change["order"]], 1)
        d_xproj, d_hproj = restack(d_xproj), restack(d_hproj)
    grads = {"grad input": d_xproj @ p["weight_ih"], "grad h": d_hproj @ p["weight_hh"] + dh_direct}
    h_used = h_next if change.get("dW_hh_from_next") else h
    for name, d, a in (("weight_ih", d_xproj, x), ("weight_hh", d_hproj, h_used)):
        grads[f"grad {name}"] = a.T @ d if name in change.get("transposed", ()) else d.T @ a
    if p.get("bias_ih") is not None:
        for name, d in (("bias_ih", d_xproj), ("bias_hh", d_hproj)):
            how = change.get("bias_reduce", {}).get(name, "sum")
            grads[f"grad {name}"] = {"sum": d.sum(0), "none": d, "mean": d.mean(0), "rows": d.sum(1)}[how]
    return grads


def _linear(a, w, b):
    return a @ w.T + (0 if b is None else b)


def lstm_backward_variant(x, states, grad_out, p, change, nonlinearity=None):
    """cells.lstm.lstm_step_backward with `change`; returns the gradients by the check's names."""
    h, c = states
    dh_next, dc_next = grad_out
    z = _linear(x, p["weight_ih"], p.get("bias_ih")) + _linear(h, p["weight_hh"], p.get("bias_hh"))
    z_i, z_f, z_g, z_o = z.chunk(4, 1)
    i, f, g, o = torch.sigmoid(z_i), torch.sigmoid(z_f), torch.tanh(z_g), torch.sigmoid(z_o)
    c_next = f * c + i * g
    tanh_c = torch.tanh(c if change.get("old_c") else c_next)
    dc_arriving = dc_next
    do = dh_next * tanh_c
    if not change.get("no_h_path"):
        form = change.get("c_tanh_prime", "right")
        c_used = c if change.get("old_c") else c_next
        dc_next = dc_next + dh_next * o * (1 - c_used**2 if form == "pre" else TANH_PRIME[form](tanh_c))
    df = dc_next * (c_next if change.get("df_from_next_c") else c)
    di, dg = dc_next * g, dc_next * i
    dc_sent = dc_arriving if change.get("dc_from_arriving") else dc_next
    dc = dc_sent if change.get("dc_no_f") else dc_sent * f
    d_z = torch.cat([di * _sigma_prime("i", change, i, z_i), df * _sigma_prime("f", change, f, z_f),
                     dg * _tanh_prime("g", change, g, z_g), do * _sigma_prime("o", change, o, z_o)], 1)
    h_next = o * torch.tanh(c_next)
    grads = _through_matmuls("lstm", x, h, h_next, d_z, d_z, 0, p, change)
    grads["grad c"] = dc
    return grads


def gru_backward_variant(x, states, grad_out, p, change, nonlinearity=None):
    """cells.gru.gru_step_backward with `change`; returns the gradients by the check's names."""
    (h,), dh_next = states, grad_out[0]
    H = h.shape[1]
    x_proj, h_proj = _linear(x, p["weight_ih"], p.get("bias_ih")), _linear(h, p["weight_hh"], p.get("bias_hh"))
    x_r, x_z, x_n = x_proj.chunk(3, 1)
    h_r, h_z, h_n = h_proj.chunk(3, 1)
    r, z = torch.sigmoid(x_r + h_r), torch.sigmoid(x_z + h_z)
    n = torch.tanh(x_n + r * h_n)
    dn = dh_next * (z if change.get("dn") == "z" else 1 - z)
    dz = dh_next * ((n - h) if change.get("dz_sign") else (h - n))
    dh_direct = dh_next * ((1 - z) if change.get("direct") == "1-z" else z)
    dx_n = dn * _tanh_prime("n", change, n, x_n + r * h_n)
    b_hn = 0 if p.get("bias_hh") is None else p["bias_hh"][2 * H:]
    reset_sees = {"no_b_hn": h_n - b_hn, "h": h, "nothing": 1}.get(change.get("dr"), h_n)
    dr = dx_n * reset_sees
    dh_n = dx_n if change.get("dh_n_without_r") else dx_n * r
    dx_r, dx_z = dr * _sigma_prime("r", change, r, x_r + h_r), dz * _sigma_prime("z", change, z, x_z + h_z)
    h_next = (1 - z) * n + z * h
    return _through_matmuls("gru", x, h, h_next, torch.cat([dx_r, dx_z, dx_n], 1), torch.cat([dx_r, dx_z, dh_n], 1),
                            dh_direct, p, change)


def rnn_backward_variant(x, states, grad_out, p, change, nonlinearity="tanh"):
    """cells.rnn.rnn_step_backward with `change`; returns the gradients by the check's names."""
    (h,), dh_next = states, grad_out[0]
    z = _linear(x, p["weight_ih"], p.get("bias_ih")) + _linear(h, p["weight_hh"], p.get("bias_hh"))
    h_next = torch.tanh(z) if nonlinearity == "tanh" else torch.relu(z)
    prime = change.get("act_prime", "right")
    if prime == "missing":
        d_z = dh_next
    elif nonlinearity == "relu":
        d_z = dh_next * (h_next > 0)
    else:
        d_z = dh_next * (1 - {"right": h_next, "of_z": z, "of_h": h}[prime] ** 2)
    return _through_matmuls("rnn", x, h, h_next, d_z, d_z, 0, p, change)


STEP_VARIANTS = {"lstm": lstm_backward_variant, "gru": gru_backward_variant, "rnn": rnn_backward_variant}


# -- the step's catalogue, in the learner's terms ------------------------------------------------


def _derivative_mistakes(kind):
    sigma_gates = [g for g in GATES[kind] if not (kind == "lstm" and g == "g") and not (kind == "gru" and g == "n")]
    tanh_gate = {"lstm": "g", "gru": "n"}[kind]
    role = {"i": "i = σ(z_i)", "f": "f = σ(z_f)", "o": "o = σ(z_o)", "r": "r = σ(x_r + h_r)", "z": "z = σ(x_z + h_z)"}
    for form, said in SIGMA_WRONG.items():
        subsets = [gates for k in range(len(sigma_gates), 0, -1) for gates in itertools.combinations(sigma_gates, k)]
        for gates in subsets:
            which = (f"every σ gate ({', '.join(gates)})" if len(gates) == len(sigma_gates) else
                     f"the gates {' and '.join(gates)}" if len(gates) > 1 else f"the gate {gates[0]}")
            yield Mistake("sigma_prime", (
                f"σ′ is written wrong for {which}: you multiply by {said}. The derivative of a gate s = σ(a) "
                f"with respect to a is s ⊙ (1 − s), from the gate's own value: e.g. for {role[gates[0]]}, "
                f"dz_{gates[0]} = d{gates[0]} ⊙ {gates[0]} ⊙ (1 − {gates[0]}).".replace(
                    "dz_z = dz ⊙", "dx_z = dz ⊙").replace("dz_r = dr ⊙", "dx_r = dr ⊙")),
                {"sigma_prime": {g: form for g in gates}})
    for form, said in TANH_WRONG.items():
        line = "dz_g = dg ⊙ (1 − g²)" if kind == "lstm" else "dx_n = dn ⊙ (1 − n²)"
        yield Mistake("tanh_prime", (
            f"tanh′ is written wrong for the candidate {tanh_gate}: you multiply by {said}. The derivative of "
            f"t = tanh(a) with respect to a is 1 − t², from t's own value: {line}."),
            {"tanh_prime": {tanh_gate: form}})


def _stacking_mistakes(kind):
    torch_order = GATES[kind]
    name = "dz" if kind == "lstm" else "dx_proj and dh_proj"
    for perm in itertools.permutations(torch_order):
        order = "".join(perm)
        if order != torch_order:
            yield Mistake("gradient_order", (
                f"the gates' gradients are stacked in the order {', '.join(order)}; {name} must stack them in "
                f"the weights' order {', '.join(torch_order)} (rows [0:H] of weight_ih and weight_hh are "
                f"{torch_order[0]}, rows [H:2H] {torch_order[1]}, ...), so that dx = dz W_ih and dW = dzᵀ x "
                f"pair each gate with its own rows."), {"order": order})


def _matmul_mistakes(kind, has_bias):
    d = "dz" if kind != "gru" else "dh_proj"
    yield Mistake("dW_hh_from_h_next", (
        f"weight_hh's gradient is taken from the step's new state h' ({d}ᵀ h'); W_hh multiplied the state "
        f"the step started from, so dW_hh = {d}ᵀ h with the h passed in hx."), {"dW_hh_from_next": True})
    d_ih = "dz" if kind != "gru" else "dx_proj"
    for names in (("weight_ih",), ("weight_hh",), ("weight_ih", "weight_hh")):
        said = " and ".join(names)
        yield Mistake("transposed_weight_gradient", (
            f"the gradient of {said} is transposed: you compute xᵀ {d_ih} (in, out); torch stores a weight as "
            f"(out, in), (G·H, I) for weight_ih, and its gradient has the same shape: dW_ih = {d_ih}ᵀ x, "
            f"dW_hh = {d}ᵀ h ({d_ih}.T @ x, {d}.T @ h)."), {"transposed": set(names)})
    if not has_bias:
        return
    both = ("bias_ih", "bias_hh")
    for names in (both, ("bias_ih",), ("bias_hh",)):
        said = "the bias gradients are" if len(names) == 2 else f"the gradient of {names[0]} is"
        yield Mistake("bias_not_summed", (
            f"{said} not summed over the batch: you return the rows' gradients, (B, G·H); every row of the "
            f"batch used the same bias, so its gradient is the sum over the rows, db = {d_ih}.sum(0), (G·H,)."),
            {"bias_reduce": dict.fromkeys(names, "none")})
    yield Mistake("bias_not_summed", (
        f"the bias gradients are summed over the wrong axis ({d_ih}.sum(1), one number per row of the batch); "
        f"db = {d_ih}.sum(0) sums over the batch, one number per gate unit."), {"bias_reduce": dict.fromkeys(both, "rows")})
    yield Mistake("bias_mean", (
        f"the bias gradients are averaged over the batch ({d_ih}.mean(0)); the loss adds the rows' "
        f"contributions, so db = {d_ih}.sum(0)."), {"bias_reduce": dict.fromkeys(both, "mean")})


def _lstm_step_mistakes():
    yield Mistake("dc_missing_forget_gate", (
        "the gradient sent back to c is missing ⊙ f (the forget gate): c' = f ⊙ c + i ⊙ g, so "
        "dc = dc' ⊙ f, not dc'. Without it the cell state's gradient never fades or grows as f says."),
        {"dc_no_f": True})
    yield Mistake("dc_from_arriving", (
        "the gradient sent back to c is made from the dc' that arrived, without what reached c' through h': "
        "dc = (dc' + dh' ⊙ o ⊙ (1 − tanh²(c'))) ⊙ f, the whole gradient at c' times the forget gate."),
        {"dc_from_arriving": True})
    yield Mistake("dc_missing_forget_gate", (
        "the gradient sent back to c is just the dc' that arrived: it needs what reached c' through h' too, "
        "and ⊙ f (the forget gate): dc = (dc' + dh' ⊙ o ⊙ (1 − tanh²(c'))) ⊙ f."),
        {"dc_from_arriving": True, "dc_no_f": True})
    for form, said in TANH_WRONG.items():
        yield Mistake("tanh_prime_c_missing" if form == "missing" else "tanh_prime_c", (
            f"h's path into c' has tanh′(c') wrong: you multiply by {said}. h' = o ⊙ tanh(c'), so c' gets "
            f"dc' + dh' ⊙ o ⊙ (1 − tanh²(c'))."), {"c_tanh_prime": form})
    yield Mistake("no_h_path", (
        "c' gets no gradient through h': h' = o ⊙ tanh(c') uses c', so the gradient at c' is what arrives "
        "(dc') plus dh' ⊙ o ⊙ (1 − tanh²(c'))."), {"no_h_path": True})
    yield Mistake("old_c", (
        "tanh of the old cell state c is used where h' uses the new one: do = dh' ⊙ tanh(c') and "
        "dc' += dh' ⊙ o ⊙ (1 − tanh²(c')), with c' = f ⊙ c + i ⊙ g recomputed."), {"old_c": True})
    yield Mistake("df_from_new_c", (
        "df uses the new cell state c': the forget gate multiplies the old one (c' = f ⊙ c + i ⊙ g), so "
        "df = dc' ⊙ c with the c passed in hx."), {"df_from_next_c": True})


def _gru_step_mistakes():
    yield Mistake("direct_term_swapped", (
        "h's direct gradient uses (1 − z) where it is z: h' = (1 − z) ⊙ n + z ⊙ h, so h gets dh' ⊙ z "
        "directly (and n gets dh' ⊙ (1 − z))."), {"direct": "1-z"})
    yield Mistake("dn_swapped", (
        "the candidate's gradient uses z where it is (1 − z): h' = (1 − z) ⊙ n + z ⊙ h, so dn = dh' ⊙ (1 − z) "
        "(and h gets dh' ⊙ z directly)."), {"dn": "z"})
    yield Mistake("update_terms_swapped", (
        "z and (1 − z) are swapped in both terms: you differentiate h' = z ⊙ n + (1 − z) ⊙ h; torch's is "
        "h' = (1 − z) ⊙ n + z ⊙ h, so dn = dh' ⊙ (1 − z) and h gets dh' ⊙ z."), {"direct": "1-z", "dn": "z"})
    yield Mistake("dz_sign", (
        "dz has the wrong sign: h' = (1 − z) ⊙ n + z ⊙ h, so dz = dh' ⊙ (h − n), not dh' ⊙ (n − h)."),
        {"dz_sign": True})
    yield Mistake("reset_gradient_without_b_hn", (
        "the reset gate's gradient leaves out b_hn: r multiplies W_hn h + b_hn, so dr = dx_n ⊙ (W_hn h + b_hn) "
        "— the same h_n the forward computed, bias included."), {"dr": "no_b_hn"})
    yield Mistake("reset_gradient_from_h", (
        "the reset gate's gradient is taken from h: in torch's GRU r multiplies W_hn h + b_hn (after the "
        "matmul), so dr = dx_n ⊙ (W_hn h + b_hn); dx_n ⊙ h would be right only for a reset before it."),
        {"dr": "h"})
    yield Mistake("reset_gradient_without_h_n", (
        "the reset gate's gradient lacks ⊙ (W_hn h + b_hn): n = tanh(x_n + r ⊙ h_n), so dr = dx_n ⊙ h_n, with "
        "h_n = W_hn h + b_hn as the forward computed it."), {"dr": "nothing"})
    yield Mistake("dh_n_without_r", (
        "the gradient of W_hn h + b_hn is missing ⊙ r: n = tanh(x_n + r ⊙ h_n), so dh_n = dx_n ⊙ r (which "
        "is also what b_hn gets, and why it differs from b_in's dx_n)."), {"dh_n_without_r": True})


def _rnn_step_mistakes(nonlinearity):
    if nonlinearity == "tanh":
        yield Mistake("act_prime_missing", "tanh′ is missing: h' = tanh(z), so dz = dh' ⊙ (1 − h'²).",
                      {"act_prime": "missing"})
        yield Mistake("act_prime_of_z", (
            "tanh′ is computed from the pre-activation z as 1 − z²; it is 1 − tanh²(z) = 1 − h'², from the "
            "step's output h'."), {"act_prime": "of_z"})
        yield Mistake("act_prime_of_h", (
            "tanh′ is computed from the old state h as 1 − h²; it is 1 − h'², from the new state the step "
            "produced."), {"act_prime": "of_h"})
    else:
        yield Mistake("act_prime_missing", "relu′ is missing: h' = relu(z), so dz = dh' ⊙ [z > 0] (1 where "
                      "h' > 0, else 0).", {"act_prime": "missing"})


def step_catalogue(kind, has_bias=True, nonlinearity="tanh"):
    """Every single backward mistake `cells.check` knows for a step of this kind."""
    specific = {"lstm": lambda: [*_lstm_step_mistakes(), *_derivative_mistakes("lstm"), *_stacking_mistakes("lstm")],
                "gru": lambda: [*_gru_step_mistakes(), *_derivative_mistakes("gru"), *_stacking_mistakes("gru")],
                "rnn": lambda: list(_rnn_step_mistakes(nonlinearity))}[kind]()
    return specific + list(_matmul_mistakes(kind, has_bias))


def _matches(expected, got):
    return expected.keys() == got.keys() and all(
        e.shape == got[k].shape and torch.allclose(got[k], e, **MATCH) for k, e in expected.items())


@torch.no_grad()
def find_step_mistakes(kind, got, x, states, grad_out, params, nonlinearity="tanh"):
    """The mistakes whose variant reproduces every gradient in `got` (the learner's step_backward,
    by the check's names), given the step's x, states, grad_out and torch's parameters by name."""
    variant = STEP_VARIANTS[kind]
    has_bias = params.get("bias_ih") is not None
    return [m for m in step_catalogue(kind, has_bias, nonlinearity)
            if _matches(variant(x, states, grad_out, params, m.change, nonlinearity), got)]


# -- backward_through_time: the loop, with one change ----------------------------------------------

LOOP_MISTAKES = [
    Mistake("no_carry", (
        "the gradient from the next step is not carried back: each step's backward gets only its output's "
        "gradient (grad_outputs[t]). h_t also feeds step t+1, so the gradient at h_t is grad_outputs[t] "
        "plus what step t+1's backward returned for its h (and c)."), {"loop": "no_carry", "initial_states_unchecked": True}),
    Mistake("no_carry", (
        "the gradient from the next step is not carried back: each step's backward gets its output's gradient "
        "plus grad_last, the same at every step. Only the last step gets grad_last; every step gets what "
        "step t+1's backward returned for its h (and c), plus grad_outputs[t]."),
        {"loop": "grad_last_everywhere", "initial_states_unchecked": True}),
    Mistake("no_carry_h", (
        "h's gradient from the next step is not carried back (c's is): the gradient at h_t is "
        "grad_outputs[t] plus the dh that step t+1's backward returned."), {"loop": "no_carry_h", "initial_states_unchecked": True}),
    Mistake("no_carry_c", (
        "c's gradient from the next step is not carried back (h's is): step t's backward must get, as "
        "dc', the dc that step t+1's backward returned (grad_last's c at the last step)."), {"loop": "no_carry_c", "initial_states_unchecked": True}),
    Mistake("no_output_gradient", (
        "the output's gradient at each step is not added: the gradient at h_t is grad_outputs[t] plus "
        "what step t+1 sent back; you pass on only the latter."), {"loop": "no_output"}),
    Mistake("parameter_gradients_not_summed", (
        "the parameters' gradients are not summed over the steps: you keep only the gradient of step 0 "
        "(the last one the loop computes). Every step used the same weights, so dW = Σ_t dW_t."),
        {"loop": "keep_first_step"}),
    Mistake("parameter_gradients_not_summed", (
        "the parameters' gradients are not summed over the steps: you keep only the last step's. Every "
        "step used the same weights, so dW = Σ_t dW_t."), {"loop": "keep_last_step"}),
    Mistake("parameter_gradients_averaged", (
        "the parameters' gradients are averaged over the steps: the loss adds every step's contribution, "
        "so dW = Σ_t dW_t, not its mean."), {"loop": "mean_over_steps"}),
    Mistake("no_output_gradient", (
        "the output's gradient is added at the last step only: every step's h_t is an output, so the "
        "gradient at h_t is grad_outputs[t] plus what step t+1 sent back, at every t."), {"loop": "output_at_last_only"}),
    Mistake("grad_last_unused", (
        "grad_last is not used: the gradient at the final states starts the loop (added to the last "
        "step's h and, for an LSTM, its c)."), {"loop": "no_grad_last"}),
    Mistake("steps_forwards", (
        "the loop walks forwards in time: the gradient flows from the last step to the first, "
        "`for t in reversed(range(T))`."), {"loop": "forwards"}),
    Mistake("state_after_the_step", (
        "each step's backward is given the state the step produced, not the one it started from: "
        "step t's backward needs h_{t−1} (hx for t = 0)."), {"loop": "state_after"}),
    Mistake("input_gradients_reversed", (
        "the input gradients are stored in reverse order: the loop runs from the last step to the first, "
        "so a list appended in the loop must be reversed (or write grad_inputs[t])."), {"loop": "reversed_store"}),
]


LSTM_ONLY = {"no_carry_h", "no_carry_c"}  # the other cells carry h alone


@torch.no_grad()
def find_loop_mistakes(kind, bptt_result, cell, inputs, hx, grad_outputs, grad_last):
    """The loop mistakes whose variant reproduces `bptt_result` (the learner's backward_through_time:
    {"grad inputs", "grad h", ("grad c"), "grad <parameter>"...} by the check's names)."""
    found = []
    for mistake in LOOP_MISTAKES:
        if mistake.change["loop"] in LSTM_ONLY and kind != "lstm":
            continue
        grad_inputs, grad_hx, grads = loop_variant(cell, inputs, hx, grad_outputs, grad_last, mistake.change)
        expected, got = named_bptt_result(grad_inputs, grad_hx, grads), bptt_result
        if mistake.change.get("initial_states_unchecked"):
            # A loop that drops what is carried back returns, as the initial states' gradient, whatever
            # its own variable last held (step 0's, grad_last, zeros): the signature is in the rest.
            expected, got = ({k: v for k, v in named.items() if k not in ("grad h", "grad c")} for named in (expected, got))
        if _matches(expected, got):
            found.append(mistake)
    return found


def named_bptt_result(grad_inputs, grad_hx, grads):
    """backward_through_time's result by the check's names (grad_hx a tensor or a tuple (h, c))."""
    states = grad_hx if isinstance(grad_hx, (tuple, list)) else (grad_hx,)
    named = {"grad inputs": grad_inputs}
    named.update({f"grad {s}": t for s, t in zip(("h", "c"), states)})
    named.update({f"grad {name}": g for name, g in grads.items()})
    return named


def _add_h(state, grad, multiple):
    return (state[0] + grad, *state[1:]) if multiple else state + grad


def _zero(state, part, multiple):
    """state with its h part (0) or c part (1) zeroed."""
    if not multiple:
        return torch.zeros_like(state) if part == 0 else state
    return tuple(torch.zeros_like(s) if k == part else s for k, s in enumerate(state))


@torch.no_grad()
def loop_variant(cell, inputs, hx, grad_outputs, grad_last, change):
    """cells.bptt.backward_through_time with the loop changed as `change["loop"]` says."""
    loop, T = change["loop"], len(inputs)
    multiple = isinstance(hx, (tuple, list))
    starts = [hx]
    for x in inputs:
        starts.append(cell(x, starts[-1]))
    grad_inputs, per_step = torch.zeros_like(inputs), {}
    grad_state = _zero(_zero(grad_last, 0, multiple), 1, multiple) if loop == "no_grad_last" else grad_last
    for t in (range(T) if loop == "forwards" else reversed(range(T))):
        if loop == "grad_last_everywhere":
            grad_state = grad_last
        if t != T - 1 and loop in ("no_carry", "no_carry_h"):
            grad_state = _zero(grad_state, 0, multiple)
        if t != T - 1 and loop in ("no_carry", "no_carry_c"):
            grad_state = _zero(grad_state, 1, multiple)
        skip_output = loop == "no_output" or (loop == "output_at_last_only" and t != T - 1)
        grad_out = grad_state if skip_output else _add_h(grad_state, grad_outputs[t], multiple)
        start = starts[t + 1] if loop == "state_after" else starts[t]
        grad_input, grad_state, per_step[t] = cell.step_backward(inputs[t], start, grad_out)
        grad_inputs[T - 1 - t if loop == "reversed_store" else t] = grad_input
    if loop in ("keep_first_step", "keep_last_step"):
        grads = per_step[0 if loop == "keep_first_step" else T - 1]
    else:
        grads = {name: sum(step[name] for step in per_step.values()) for name in per_step[0]}
        if loop == "mean_over_steps":
            grads = {name: grad / T for name, grad in grads.items()}
    return grad_inputs, grad_state, grads
