// The gate math of one time step as one pass over the step's rows, for the fused path on the CPU.
//
// Built and loaded by models/cpu_kernels.py (which says why it exists and how it is checked). Each
// function does the arithmetic of the eager step it replaces in models/fused.py and of the Triton
// kernel of the same name in models/triton_kernels.py: same equations, same saved factors, same
// buffers. Rows are contiguous with the widths the comments give (4H for an LSTM's z, 5H for its k, …).
//
// float: σ and tanh come from exp_f below, a branch-free e^x that gcc vectorises (a call to libm's
// expf would keep the loop scalar). Its polynomial is the Taylor series of e^r to r⁷ on
// |r| ≤ ln2/2, whose truncation error (≤ 0.35⁸/8! ≈ 5e-9) is under float's half-ulp (6e-8).
// double: libm's exp and tanh, scalar; double is for the equivalence tests, not for speed.
// tanh(x) = 2σ(2x) − 1 in float, exact in real arithmetic; its absolute error is that of σ.
// NaN passes through every function (the clamps are comparisons, false for NaN).
#include <cmath>
#include <cstdint>
#include <cstring>

namespace {

inline float exp_f(float x) {
    x = x > 88.0f ? 88.0f : x;    // e^88 < FLT_MAX, and 2^n below stays a normal float
    x = x < -87.0f ? -87.0f : x;
    const float n = __builtin_floorf(x * 1.44269504f + 0.5f);  // x = n ln2 + r, |r| ≤ ln2/2
    const float r = (x - n * 0.693145752f) - n * 1.42860677e-6f;  // ln2 in two parts: n·ln2_hi is exact
    float p = 1.0f / 5040.0f;
    p = p * r + 1.0f / 720.0f;
    p = p * r + 1.0f / 120.0f;
    p = p * r + 1.0f / 24.0f;
    p = p * r + 1.0f / 6.0f;
    p = p * r + 0.5f;
    p = p * r + 1.0f;
    p = p * r + 1.0f;
    const uint32_t bits = static_cast<uint32_t>(static_cast<int32_t>(n) + 127) << 23;  // 2^n
    float scale;
    std::memcpy(&scale, &bits, sizeof scale);
    return p * scale;
}

inline float sigmoid(float x) { return 1.0f / (1.0f + exp_f(-x)); }
inline float tanh_(float x) { return 2.0f / (1.0f + exp_f(-2.0f * x)) - 1.0f; }
inline double sigmoid(double x) { return 1.0 / (1.0 + std::exp(-x)); }
inline double tanh_(double x) { return std::tanh(x); }

// Each kernel loops over rows and hands one row to a function whose every gate slice is its own
// __restrict__ pointer: then gcc can prove that a store into one gate's columns never feeds a load
// from another's, and vectorises the row (with one pointer per row and symbolic H it does not).

// LSTM, LSTMFunction.forward's step: z = x_proj + b_hh + h_prev W_hhᵀ (b, 4H) = [z_i | z_f | z_g | z_o]
// → c (b, H), m = o ⊙ tanh(c) (b, H); training: f back into z's f column and
// k = [k_i | k_f | k_g | k_o | k_c] (b, 5H), the backward's factors.
template <typename T, bool TRAINING>
void lstm_forward_row(const T* __restrict__ z_i, T* __restrict__ z_f, const T* __restrict__ z_g,
                      const T* __restrict__ z_o, const T* __restrict__ c_prev, T* __restrict__ c,
                      T* __restrict__ m, T* __restrict__ k_i, T* __restrict__ k_f, T* __restrict__ k_g,
                      T* __restrict__ k_o, T* __restrict__ k_c, int64_t H) {
    for (int64_t j = 0; j < H; ++j) {
        const T i = sigmoid(z_i[j]), f = sigmoid(z_f[j]), g = tanh_(z_g[j]), o = sigmoid(z_o[j]);
        const T cc = f * c_prev[j] + i * g;
        const T tc = tanh_(cc);
        const T mm = o * tc;
        c[j] = cc;
        m[j] = mm;
        if (TRAINING) {
            z_f[j] = f;
            k_i[j] = g * i * (T(1) - i);
            k_f[j] = c_prev[j] * f * (T(1) - f);
            k_g[j] = i * (T(1) - g * g);
            k_o[j] = mm - mm * o;
            k_c[j] = o - mm * tc;
        }
    }
}

template <typename T, bool TRAINING>
void lstm_forward(T* z, const T* c_prev, T* c, T* m, T* k, int64_t b, int64_t H) {
    for (int64_t row = 0; row < b; ++row) {
        T* zr = z + row * 4 * H;
        T* kr = TRAINING ? k + row * 5 * H : nullptr;
        lstm_forward_row<T, TRAINING>(zr, zr + H, zr + 2 * H, zr + 3 * H, c_prev + row * H, c + row * H,
                                      m + row * H, kr, TRAINING ? kr + H : nullptr, TRAINING ? kr + 2 * H : nullptr,
                                      TRAINING ? kr + 3 * H : nullptr, TRAINING ? kr + 4 * H : nullptr, H);
    }
}

// LSTM, LSTMFunction.backward's step before its matmul: dm (+ d_out) → dz (b, 4H); dc (b, H) becomes
// dc ⊙ f, what the previous step receives. f is read from the (b, 4H) activations.
template <typename T, bool ADD_DOUT>
void lstm_backward_row(const T* __restrict__ dm, const T* __restrict__ d_out, T* __restrict__ dc,
                       const T* __restrict__ k_i, const T* __restrict__ k_f, const T* __restrict__ k_g,
                       const T* __restrict__ k_o, const T* __restrict__ k_c, const T* __restrict__ f,
                       T* __restrict__ dz_i, T* __restrict__ dz_f, T* __restrict__ dz_g, T* __restrict__ dz_o,
                       int64_t H) {
    for (int64_t j = 0; j < H; ++j) {
        const T d = ADD_DOUT ? dm[j] + d_out[j] : dm[j];
        const T dcc = dc[j] + d * k_c[j];
        dz_i[j] = dcc * k_i[j];
        dz_f[j] = dcc * k_f[j];
        dz_g[j] = dcc * k_g[j];
        dz_o[j] = d * k_o[j];
        dc[j] = dcc * f[j];
    }
}

template <typename T>
void lstm_backward(const T* dm, const T* d_out, T* dc, const T* k, const T* acts, T* dz, int64_t b, int64_t H) {
    for (int64_t row = 0; row < b; ++row) {
        const T* kr = k + row * 5 * H;
        T* dzr = dz + row * 4 * H;
        const T* f = acts + row * 4 * H + H;
        if (d_out)
            lstm_backward_row<T, true>(dm + row * H, d_out + row * H, dc + row * H, kr, kr + H, kr + 2 * H,
                                       kr + 3 * H, kr + 4 * H, f, dzr, dzr + H, dzr + 2 * H, dzr + 3 * H, H);
        else
            lstm_backward_row<T, false>(dm + row * H, nullptr, dc + row * H, kr, kr + H, kr + 2 * H,
                                        kr + 3 * H, kr + 4 * H, f, dzr, dzr + H, dzr + 2 * H, dzr + 3 * H, H);
    }
}

// GRU, GRUFunction.forward's step after its matmul: hh = h_prev W_hhᵀ (b, 3H) gets b_hh added (its n
// column is stored back: the backward reads hh_n with b_hn); writes r | z (b, 2H), n (b, H), h (b, H).
template <typename T, bool HAS_BIAS>
void gru_forward_row(const T* __restrict__ hh_r, const T* __restrict__ hh_z, T* __restrict__ hh_n,
                     const T* __restrict__ x_r, const T* __restrict__ x_z, const T* __restrict__ x_n,
                     const T* __restrict__ b_r, const T* __restrict__ b_z, const T* __restrict__ b_n,
                     const T* __restrict__ h_prev, T* __restrict__ r_out, T* __restrict__ z_out,
                     T* __restrict__ n, T* __restrict__ h, int64_t H) {
    for (int64_t j = 0; j < H; ++j) {
        const T hn = HAS_BIAS ? hh_n[j] + b_n[j] : hh_n[j];
        if (HAS_BIAS) hh_n[j] = hn;
        const T r = sigmoid(x_r[j] + (HAS_BIAS ? hh_r[j] + b_r[j] : hh_r[j]));
        const T zg = sigmoid(x_z[j] + (HAS_BIAS ? hh_z[j] + b_z[j] : hh_z[j]));
        const T cand = tanh_(x_n[j] + r * hn);
        r_out[j] = r;
        z_out[j] = zg;
        n[j] = cand;
        h[j] = cand + zg * (h_prev[j] - cand);
    }
}

template <typename T>
void gru_forward(T* hh, const T* x, const T* bias, const T* h_prev, T* rz, T* n, T* h, int64_t b, int64_t H) {
    for (int64_t row = 0; row < b; ++row) {
        T* hr = hh + row * 3 * H;
        const T* xr = x + row * 3 * H;
        T* rzr = rz + row * 2 * H;
        if (bias)
            gru_forward_row<T, true>(hr, hr + H, hr + 2 * H, xr, xr + H, xr + 2 * H, bias, bias + H, bias + 2 * H,
                                     h_prev + row * H, rzr, rzr + H, n + row * H, h + row * H, H);
        else
            gru_forward_row<T, false>(hr, hr + H, hr + 2 * H, xr, xr + H, xr + 2 * H, nullptr, nullptr, nullptr,
                                      h_prev + row * H, rzr, rzr + H, n + row * H, h + row * H, H);
    }
}

// GRU, GRUFunction.backward's step before its matmul. Unlike the Triton kernel, which reads the
// factors k precomputed for all steps, it computes them from the saved activations in the step itself
// (so no (N, 3H) buffer of them is built before the loop):
// d = dh + d_out; dn_pre = d (1 − z)(1 − n²); d hh = [dn_pre hh_n r(1 − r) | d (h_prev − n) z(1 − z) |
// dn_pre r]; d_xn = dn_pre; dh = d z.
template <typename T>
void gru_backward_direct_row(T* __restrict__ dh, const T* __restrict__ d_out, const T* __restrict__ r,
                             const T* __restrict__ z, const T* __restrict__ n, const T* __restrict__ hh_n,
                             const T* __restrict__ h_prev, T* __restrict__ d_r, T* __restrict__ d_z,
                             T* __restrict__ d_hn, T* __restrict__ d_xn, int64_t H) {
    for (int64_t j = 0; j < H; ++j) {
        const T d = dh[j] + d_out[j];
        const T dn_pre = d * (T(1) - z[j]) * (T(1) - n[j] * n[j]);
        d_r[j] = dn_pre * hh_n[j] * r[j] * (T(1) - r[j]);
        d_z[j] = d * (h_prev[j] - n[j]) * z[j] * (T(1) - z[j]);
        d_hn[j] = dn_pre * r[j];
        d_xn[j] = dn_pre;
        dh[j] = d * z[j];
    }
}

template <typename T>
void gru_backward_direct(T* dh, const T* d_out, const T* rz, const T* n, const T* hh, const T* h_prev, T* d_hh,
                         T* d_xn, int64_t b, int64_t H) {
    for (int64_t row = 0; row < b; ++row) {
        const T* rzr = rz + row * 2 * H;
        T* dr = d_hh + row * 3 * H;
        gru_backward_direct_row<T>(dh + row * H, d_out + row * H, rzr, rzr + H, n + row * H, hh + row * 3 * H + 2 * H,
                                   h_prev + row * H, dr, dr + H, dr + 2 * H, d_xn + row * H, H);
    }
}

// tanh in place over n contiguous elements (the Elman RNN's step after its addmm).
template <typename T>
void tanh_inplace(T* __restrict__ x, int64_t n) {
    for (int64_t e = 0; e < n; ++e) x[e] = tanh_(x[e]);
}

}  // namespace

#define RNN_BY_HAND_EXPORT(T, suffix)                                                                       \
    extern "C" void lstm_forward_##suffix(T* z, const T* c_prev, T* c, T* m, T* k, int64_t b, int64_t H) { \
        if (k) lstm_forward<T, true>(z, c_prev, c, m, k, b, H);                                             \
        else lstm_forward<T, false>(z, c_prev, c, m, k, b, H);                                              \
    }                                                                                                       \
    extern "C" void lstm_backward_##suffix(const T* dm, const T* d_out, T* dc, const T* k, const T* acts,  \
                                           T* dz, int64_t b, int64_t H) {                                  \
        lstm_backward<T>(dm, d_out, dc, k, acts, dz, b, H);                                                 \
    }                                                                                                       \
    extern "C" void gru_forward_##suffix(T* hh, const T* x, const T* bias, const T* h_prev, T* rz, T* n,   \
                                         T* h, int64_t b, int64_t H) {                                      \
        gru_forward<T>(hh, x, bias, h_prev, rz, n, h, b, H);                                                \
    }                                                                                                       \
    extern "C" void gru_backward_direct_##suffix(T* dh, const T* d_out, const T* rz, const T* n, const T* hh, \
                                                 const T* h_prev, T* d_hh, T* d_xn, int64_t b, int64_t H) { \
        gru_backward_direct<T>(dh, d_out, rz, n, hh, h_prev, d_hh, d_xn, b, H);                              \
    }                                                                                                       \
    extern "C" void tanh_##suffix(T* x, int64_t n) { tanh_inplace<T>(x, n); }

RNN_BY_HAND_EXPORT(float, f32)
RNN_BY_HAND_EXPORT(double, f64)
