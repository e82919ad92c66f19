"""The gate math of one time step in torch ops: the reference backend of the fast path's steps.

Each function has the name, arguments and effect of the compiled kernel of the same name in
`models.cpu_kernels` and the Triton kernel of the same name in `models.triton_kernels`, so a Function's loop
calls `kernels.lstm_forward_step(...)` whatever the backend. These run wherever torch runs (half
precision, devices without the kernels); the tests run the fast path with them against torch.nn
(`models.backends.CPU_KERNELS = "never"`). The equations are the Functions' (models/lstm_function.py,
models/gru_function.py), in their names; every tensor is a (b, ·) block of the step's rows. Here `z`
is the LSTM's pre-activation, the kernels' argument name, so the GRU's update gate z is `z_gate`.
"""
import torch


def lstm_forward_step(z, c_prev, c, m, k):
    """z (b, 4H) = x_proj + h_prev W_hhᵀ, in place to the activations; writes c, m = o ⊙ tanh(c)
    and, if k (b, 5H) is given, the backward's factors k_i | k_f | k_g | k_o | k_c (f stays in z)."""
    H = c.shape[1]
    z[:, : 2 * H].sigmoid_()  # i = σ(z_i), f = σ(z_f)
    z[:, 2 * H : 3 * H].tanh_()  # g = tanh(z_g)
    z[:, 3 * H :].sigmoid_()  # o = σ(z_o)
    i, f, g, o = z.split(H, 1)  # each (b, H)
    gi = g * i  # (b, H)
    torch.addcmul(gi, f, c_prev, out=c)  # c = f ⊙ c_prev + i ⊙ g
    tc = torch.tanh(c)  # (b, H)
    torch.mul(o, tc, out=m)  # m = o ⊙ tanh(c)
    if k is None:
        return
    k_i, k_f, k_g, k_o, k_c = k.split(H, 1)
    torch.addcmul(gi, gi, i, value=-1, out=k_i)  # k_i = g i (1 − i)
    torch.mul(f, c_prev, out=k_f).addcmul_(k_f, f, value=-1)  # k_f = c_prev f (1 − f)
    torch.addcmul(i, gi, g, value=-1, out=k_g)  # k_g = i (1 − g²)
    torch.addcmul(m, m, o, value=-1, out=k_o)  # k_o = tanh(c) o (1 − o) = m − m ⊙ o
    torch.addcmul(o, m, tc, value=-1, out=k_c)  # k_c = o (1 − tanh²c) = o − m ⊙ tanh(c)


def lstm_backward_step(dm, d_out, dc, k, acts, dz):
    """dz (b, 4H) from dm (+ d_out, when given) and dc; dc (b, H) in place to dc ⊙ f, what the
    previous step receives. k: the forward's factors (b, 5H); acts: its activations (b, 4H)."""
    H = dc.shape[1]
    b = dc.shape[0]
    if d_out is not None:
        dm = dm + d_out  # dm = dh + d_out
    k_c, k_o, f = k[:, 4 * H :], k[:, 3 * H : 4 * H], acts[:, H : 2 * H]
    dc.addcmul_(dm, k_c)  # dc += dm ⊙ o (1 − tanh²c)
    torch.mul(dc.unsqueeze(1), k[:, : 3 * H].view(b, 3, H), out=dz[:, : 3 * H].view(b, 3, H))  # dz_i|f|g = dc ⊗ k_i|f|g
    torch.mul(dm, k_o, out=dz[:, 3 * H :])  # dz_o = dm ⊙ tanh(c) o (1 − o)
    dc.mul_(f)  # dc_prev = dc ⊙ f


def gru_forward_step(hh, x_t, bias_hh, h_prev, rz, n, h):
    """hh (b, 3H) = h_prev W_hhᵀ gets b_hh added (the backward reads hh_n with b_hn); writes r | z_gate
    (b, 2H), n and h (b, H). x_t (b, 3H) = x_proj = x W_ihᵀ + b_ih."""
    H = h.shape[1]
    if bias_hh is not None:
        hh.add_(bias_hh)  # hh = h_prev W_hhᵀ + b_hh
    torch.add(x_t[:, : 2 * H], hh[:, : 2 * H], out=rz).sigmoid_()  # r = σ(x_r + hh_r), z_gate = σ(x_z + hh_z)
    r, z_gate = rz.split(H, 1)
    torch.mul(r, hh[:, 2 * H :], out=n).add_(x_t[:, 2 * H :]).tanh_()  # n = tanh(x_n + r ⊙ hh_n)
    torch.lerp(n, h_prev, z_gate, out=h)  # h = (1 − z_gate) ⊙ n + z_gate ⊙ h_prev


def gru_backward_step(dh, d_out, rz, n, hh, h_prev, d_hh, d_xn):
    """d_hh (b, 3H) and d_xn = dn_pre (b, H) from dh + d_out; dh in place to dh ⊙ z_gate, the direct part of
    dh_prev (the caller adds d_hh W_hh). rz, n, hh: the forward's; h_prev: the step's previous state."""
    H = dh.shape[1]
    r, z_gate = rz.split(H, 1)
    hh_n = hh[:, 2 * H :]
    d = dh.add_(d_out)  # d = dh + d_out
    dn_pre = torch.mul(d, 1 - z_gate, out=d_xn).mul_(1 - n * n)  # dn_pre = d (1 − z_gate)(1 − n²)
    torch.mul(dn_pre, hh_n, out=d_hh[:, :H]).mul_(r * (1 - r))  # d hh_r = dn_pre hh_n r (1 − r)
    # d hh_z = d (h_prev − n) z_gate (1 − z_gate)
    torch.mul(d, h_prev - n, out=d_hh[:, H : 2 * H]).mul_(z_gate * (1 - z_gate))
    torch.mul(dn_pre, r, out=d_hh[:, 2 * H :])  # d hh_n = dn_pre ⊙ r
    dh.mul_(z_gate)  # dh_prev (direct) = d ⊙ z_gate
