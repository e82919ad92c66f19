// The gate math of one time step as one pass over the step's rows, for the fused path on the CPU.
//
// Built and loaded by models/cpu_kernels.py (which says why it exists and how it is checked). Each
// function does the arithmetic of the function of the same name in models/eager_steps.py and of the Triton
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
#include <cstdlib>
#include <cstring>
#include <type_traits>
#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#endif
#include <algorithm>
#include <memory>
#ifdef _OPENMP
#include <omp.h>
#endif

namespace {

// e^r ≈ Σ_k kExp[k] r^k for |r| ≤ ln2/2: a degree-6 polynomial fitted to e^r's relative error (at most
// 2·10⁻⁹ in exact arithmetic, below float's rounding; Taylor's series needs degree 7 for that).
constexpr float kExp[7] = {1.0f, 1.0f, 0.4999999f, 0.1666642f, 0.041668225f, 0.008374816f, 0.0013836846f};

inline float exp_f(float x) {
    x = x > 88.0f ? 88.0f : x;    // e^88 < FLT_MAX, and 2^n below stays a normal float
    x = x < -87.0f ? -87.0f : x;
    const float n = __builtin_floorf(x * 1.44269504f + 0.5f);  // x = n ln2 + r, |r| ≤ ln2/2
    const float r = (x - n * 0.693145752f) - n * 1.42860677e-6f;  // ln2 in two parts: n·ln2_hi is exact
    float p = kExp[6];
    for (int k = 5; k >= 0; --k) p = p * r + kExp[k];
    const uint32_t bits = static_cast<uint32_t>(static_cast<int32_t>(n) + 127) << 23;  // 2^n
    float scale;
    std::memcpy(&scale, &bits, sizeof scale);
    return p * scale;
}

inline float sigmoid(float x) { return 1.0f / (1.0f + exp_f(-x)); }
inline float tanh_(float x) { return 2.0f / (1.0f + exp_f(-2.0f * x)) - 1.0f; }
inline double sigmoid(double x) { return 1.0 / (1.0 + std::exp(-x)); }
inline double tanh_(double x) { return std::tanh(x); }

// The same e^x, σ and tanh several floats at a time in intrinsics, for the LSTM's forward row (its five
// exponentials a unit are most of a step's gate math): eight in AVX2 (`Avx2`), sixteen in AVX-512
// (`Avx512`), one formula for both over their operations. Written out because the compiler, from the
// scalar code, clamps with compare-and-blend where min/max do: MINPS and MAXPS return their second
// operand when either is NaN, so with x second a NaN still passes through.
#if defined(__AVX2__) && defined(__FMA__)
struct Avx2 {
    typedef __m256 V;
    static constexpr int width = 8;
    static V load(const float* p) { return _mm256_loadu_ps(p); }
    static void store(float* p, V x) { _mm256_storeu_ps(p, x); }
    static V set(float x) { return _mm256_set1_ps(x); }
    static V add(V a, V b) { return _mm256_add_ps(a, b); }
    static V sub(V a, V b) { return _mm256_sub_ps(a, b); }
    static V mul(V a, V b) { return _mm256_mul_ps(a, b); }
    static V reciprocal(V d) { return _mm256_div_ps(_mm256_set1_ps(1.0f), d); }
    static V fmadd(V a, V b, V c) { return _mm256_fmadd_ps(a, b, c); }   // a b + c
    static V fnmadd(V a, V b, V c) { return _mm256_fnmadd_ps(a, b, c); } // c − a b
    static V fmsub(V a, V b, V c) { return _mm256_fmsub_ps(a, b, c); }   // a b − c
    static V min(V a, V b) { return _mm256_min_ps(a, b); }
    static V max(V a, V b) { return _mm256_max_ps(a, b); }
    static V scale(V p, V n) {  // p · 2^n for integral n in float's normal range: n + 127 in the exponent bits
        const __m256i bits = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvttps_epi32(n), _mm256_set1_epi32(127)), 23);
        return _mm256_mul_ps(p, _mm256_castsi256_ps(bits));
    }
};
#endif

#ifdef __AVX512F__
struct Avx512 {
    typedef __m512 V;
    static constexpr int width = 16;
    static V load(const float* p) { return _mm512_loadu_ps(p); }
    static void store(float* p, V x) { _mm512_storeu_ps(p, x); }
    static V set(float x) { return _mm512_set1_ps(x); }
    static V add(V a, V b) { return _mm512_add_ps(a, b); }
    static V sub(V a, V b) { return _mm512_sub_ps(a, b); }
    static V mul(V a, V b) { return _mm512_mul_ps(a, b); }
    static V reciprocal(V d) {  // 1/d for d ≥ 1: VRCP14PS's 14 bits, then one Newton step y(2 − d y)
        const V y = _mm512_rcp14_ps(d);
        return _mm512_mul_ps(y, _mm512_fnmadd_ps(d, y, _mm512_set1_ps(2.0f)));
    }
    static V fmadd(V a, V b, V c) { return _mm512_fmadd_ps(a, b, c); }
    static V fnmadd(V a, V b, V c) { return _mm512_fnmadd_ps(a, b, c); }
    static V fmsub(V a, V b, V c) { return _mm512_fmsub_ps(a, b, c); }
    static V min(V a, V b) { return _mm512_min_ps(a, b); }
    static V max(V a, V b) { return _mm512_max_ps(a, b); }
    static V scale(V p, V n) { return _mm512_scalef_ps(p, n); }
};
#endif

// e^(s·x) for s = −1 (σ's) or −2 (tanh's), a vector at a time: exp_f with its argument s·x, the factor
// s folded into the clamps, the range reduction and the polynomial instead of a multiplication of its
// own: r = s·x − n ln2 = s·u with u = x + n ln2/|s|, and e^r = Σ_k (kExp[k] s^k) u^k. Scaling by a
// power of two is exact, so every step rounds as the same step on s·x and r would.
template <typename O, int S>
inline typename O::V exp_scaled_v(typename O::V x) {
    typedef typename O::V V;
    constexpr float s = S, s2 = s * s, s3 = s2 * s, s4 = s2 * s2, s5 = s4 * s, s6 = s3 * s3;
    x = O::min(O::set(87.0f / -s), x);  // s·x in [−87, 88], as exp_f's; x second: a NaN stays (see above)
    x = O::max(O::set(88.0f / s), x);
    // n = round(s·x / ln2): adding 1.5·2²³ leaves no bits below the units place (|s·x / ln2| < 2²²),
    // so the sum rounds to an integer, which subtracting it again gives exactly (two additions instead
    // of a rounding instruction, which takes two µops on one port where these cores have AVX-512)
    const V n = O::sub(O::fmadd(x, O::set(s * 1.44269504f), O::set(12582912.0f)), O::set(12582912.0f));
    V u = O::fmadd(n, O::set(0.693145752f / -s), x);  // x + n ln2/|s|, ln2 in two parts
    u = O::fmadd(n, O::set(1.42860677e-6f / -s), u);
    V p = O::set(kExp[6] * s6);
    p = O::fmadd(p, u, O::set(kExp[5] * s5));
    p = O::fmadd(p, u, O::set(kExp[4] * s4));
    p = O::fmadd(p, u, O::set(kExp[3] * s3));
    p = O::fmadd(p, u, O::set(kExp[2] * s2));
    p = O::fmadd(p, u, O::set(kExp[1] * s));
    p = O::fmadd(p, u, O::set(kExp[0]));
    return O::scale(p, n);
}

template <typename O>
inline typename O::V sigmoid_v(typename O::V x) {  // 1 / (1 + e^−x)
    return O::reciprocal(O::add(O::set(1.0f), exp_scaled_v<O, -1>(x)));
}

template <typename O>
inline typename O::V tanh_v(typename O::V x) {  // 2σ(2x) − 1
    return O::fmsub(O::set(2.0f), O::reciprocal(O::add(O::set(1.0f), exp_scaled_v<O, -2>(x))), O::set(1.0f));
}

// lstm_forward_row's formulas (below) for O::width units from unit j on.
template <typename O, bool FOR_BACKWARD, bool BIAS, bool ADD_X>
inline void lstm_forward_units(int64_t j, const float* __restrict__ z_i, float* __restrict__ z_f,
                               const float* __restrict__ z_g, const float* __restrict__ z_o,
                               const float* __restrict__ b, const float* __restrict__ x,
                               const float* __restrict__ c_prev, float* __restrict__ c, float* __restrict__ m,
                               float* __restrict__ k_i, float* __restrict__ k_f, float* __restrict__ k_g,
                               float* __restrict__ k_o, float* __restrict__ k_c, int64_t ld,
                               float* __restrict__ f_copy, float* __restrict__ m_copy) {
    typedef typename O::V V;
    auto pre = [&](const float* z, int gate) {  // z (+ x) (+ b) for the gate
        V v = O::load(z + j);
        if (ADD_X) v = O::add(v, O::load(x + gate * ld + j));
        return BIAS ? O::add(v, O::load(b + gate * ld + j)) : v;
    };
    const V i = sigmoid_v<O>(pre(z_i, 0)), f = sigmoid_v<O>(pre(z_f, 1));
    const V g = tanh_v<O>(pre(z_g, 2)), o = sigmoid_v<O>(pre(z_o, 3));
    const V cp = O::load(c_prev + j);
    const V gi = O::mul(g, i);
    const V cc = O::fmadd(f, cp, gi);  // c = f ⊙ c_prev + i ⊙ g
    const V tc = tanh_v<O>(cc);
    const V mm = O::mul(o, tc);  // m = o ⊙ tanh(c)
    O::store(c + j, cc);
    O::store(m + j, mm);
    if (m_copy) O::store(m_copy + j, mm);
    if (FOR_BACKWARD) {
        const V cf = O::mul(cp, f);
        O::store(z_f + j, f);
        if (f_copy) O::store(f_copy + j, f);
        O::store(k_i + j, O::fnmadd(gi, i, gi));  // g i (1 − i)
        O::store(k_f + j, O::fnmadd(cf, f, cf));  // c_prev f (1 − f)
        O::store(k_g + j, O::fnmadd(gi, g, i));  // i (1 − g²)
        O::store(k_o + j, O::fnmadd(mm, o, mm));  // m − m ⊙ o
        O::store(k_c + j, O::fnmadd(mm, tc, o));  // o − m ⊙ tanh(c)
    }
}

// Each kernel loops over rows and hands one row to a function whose every gate slice is its own
// __restrict__ pointer: then gcc can prove that a store into one gate's columns never feeds a load
// from another's, and vectorises the row (with one pointer per row and symbolic H it does not).

// LSTM, LSTMFunction.forward's step: z = x_proj + h_prev W_hhᵀ (b, 4H) = [z_i | z_f | z_g | z_o], where
// z holds x_proj already or, with ADD_X, x_proj (the row's [x_i | x_f | x_g | x_o]) is added here; and
// z or x_proj holds b_ih + b_hh already or, with BIAS, b (4H) = b_ih + b_hh is added here (units j of
// gate q at x[q·ld + j] and b[q·ld + j]: ld is the layer's H when the row is a share of its units)
// → c (b, H), m = o ⊙ tanh(c) (b, H); for a backward: f back into z's f column and
// k = [k_i | k_f | k_g | k_o | k_c] (b, 5H), the backward's factors. f_copy, m_copy: null, or where f
// (for a backward) and m go as well, while they are in registers.
template <typename T, bool FOR_BACKWARD, bool BIAS = false, bool ADD_X = false>
void lstm_forward_row(const T* __restrict__ z_i, T* __restrict__ z_f, const T* __restrict__ z_g,
                      const T* __restrict__ z_o, const T* __restrict__ c_prev, T* __restrict__ c,
                      T* __restrict__ m, T* __restrict__ k_i, T* __restrict__ k_f, T* __restrict__ k_g,
                      T* __restrict__ k_o, T* __restrict__ k_c, int64_t H, const T* __restrict__ b = nullptr,
                      const T* __restrict__ x = nullptr, int64_t ld = 0, T* __restrict__ f_copy = nullptr,
                      T* __restrict__ m_copy = nullptr) {
    int64_t j = 0;
    if constexpr (std::is_same_v<T, float>) {  // a vector of units at a time: the same formulas as below
#ifdef __AVX512F__
        for (; j + Avx512::width <= H; j += Avx512::width)
            lstm_forward_units<Avx512, FOR_BACKWARD, BIAS, ADD_X>(j, z_i, z_f, z_g, z_o, b, x, c_prev, c, m, k_i,
                                                                  k_f, k_g, k_o, k_c, ld, f_copy, m_copy);
#endif
#if defined(__AVX2__) && defined(__FMA__)
        for (; j + Avx2::width <= H; j += Avx2::width)
            lstm_forward_units<Avx2, FOR_BACKWARD, BIAS, ADD_X>(j, z_i, z_f, z_g, z_o, b, x, c_prev, c, m, k_i, k_f,
                                                                k_g, k_o, k_c, ld, f_copy, m_copy);
#endif
    }
    auto pre = [&](const T* z, int q) {  // z (+ x) (+ b) for gate q
        T v = z[j];
        if (ADD_X) v += x[q * ld + j];
        return BIAS ? v + b[q * ld + j] : v;
    };
    for (; j < H; ++j) {
        const T zi = pre(z_i, 0), zf = pre(z_f, 1), zg = pre(z_g, 2), zo = pre(z_o, 3);
        const T i = sigmoid(zi), f = sigmoid(zf), g = tanh_(zg), o = sigmoid(zo);
        const T cc = f * c_prev[j] + i * g;
        const T tc = tanh_(cc);
        const T mm = o * tc;
        c[j] = cc;
        m[j] = mm;
        if (m_copy) m_copy[j] = mm;
        if (FOR_BACKWARD) {
            z_f[j] = f;
            if (f_copy) f_copy[j] = f;
            k_i[j] = g * i * (T(1) - i);
            k_f[j] = c_prev[j] * f * (T(1) - f);
            k_g[j] = i * (T(1) - g * g);
            k_o[j] = mm - mm * o;
            k_c[j] = o - mm * tc;
        }
    }
}

template <typename T, bool FOR_BACKWARD>
void lstm_forward(T* z, const T* c_prev, T* c, T* m, T* k, int64_t b, int64_t H) {
    for (int64_t row = 0; row < b; ++row) {
        T* zr = z + row * 4 * H;
        T* kr = FOR_BACKWARD ? k + row * 5 * H : nullptr;
        auto k_gate = [&](int q) { return FOR_BACKWARD ? kr + q * H : nullptr; };  // k_i, k_f, k_g, k_o, k_c
        lstm_forward_row<T, FOR_BACKWARD>(zr, zr + H, zr + 2 * H, zr + 3 * H, c_prev + row * H, c + row * H,
                                          m + row * H, k_gate(0), k_gate(1), k_gate(2), k_gate(3), k_gate(4), H);
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

// GRU, GRUFunction.backward's step before its matmul. It computes its factors from the saved
// activations in the step itself (so no (N, 3H) buffer of them is built before the loop):
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


// ---- whole sequences: the time loop itself, recurrent matmuls included ------------------------------
//
// One call runs every step of one direction: per step the recurrent matmul and the row functions
// above, so a step costs no Python and no torch dispatch. The recurrent weight is packed once per
// call into column panels (`Packed`) that a small register-blocked kernel (`panel_kernel`) streams
// through every step, its other operand (h_prev, or dz) packed a step at a time (`pack_rows`). The
// LSTM's forward can take the input projection into the same matmul ([x_t | h_prev] [W_ih | W_hh]ᵀ).
// The work of a step is split over `threads` OpenMP threads (torch's own pool:
// libgomp is the one torch loaded) in one of two ways:
//   by rows   each thread owns a slice of the batch for the whole sequence. A row's recurrence reads
//             only that row (h_prev W_hhᵀ row by row; the backward's dz W_hh too), so the threads
//             never wait for each other;
//   by units  each thread owns a slice of the hidden units j, for every gate's columns (z[:, gH + j])
//             and for the states. A step's matmul reads every unit of the previous state, so the
//             threads meet at one barrier per step. This is the split that works at batch 1.
// Uniform batches only (every step has B rows); the caller takes the per-step path otherwise.
// Buffers are row-major and contiguous, in the layouts of models/layout.py: the (N, ·) per-step rows
// with N = T·B, step t's rows at t·B; the history buffers of h (and c) hold h0 and every step's state,
// forwards [h0 | step 0 | … | step T−1], backwards [step 0 | … | step T−1 | h0].

// The vector the matmul kernels compute in: AVX-512's 64 bytes (32 registers) where the compiler targets
// it, else AVX2's 32 bytes (16 registers; the compiler splits it where vectors are narrower).
#ifdef __AVX512F__
constexpr int kVectorBytes = 64, kVectorRegisters = 32;
#else
constexpr int kVectorBytes = 32, kVectorRegisters = 16;
#endif

// load and store move a vector to and from memory of any alignment in one instruction each (a memcpy
// into a vector is compiled, for some targets, as two half-width copies through the stack, and the
// full-width load after them waits for both stores).
template <typename T>
struct Simd {
    typedef T vector __attribute__((vector_size(kVectorBytes)));
    typedef T unaligned __attribute__((vector_size(kVectorBytes), aligned(alignof(T)), may_alias));
    static constexpr int width = kVectorBytes / sizeof(T);
    static vector load(const T* p) { return *reinterpret_cast<const unaligned*>(p); }
    static void store(T* p, vector v) { *reinterpret_cast<unaligned*>(p) = v; }
};

// n values of T, not initialised (a std::vector would zero them first, one thread, every call), from a
// 64-byte boundary: a vector load that straddles two cache lines costs two, and new T[] aligns to 16.
template <typename T>
struct Buffer {
    static constexpr std::size_t kAlign = 64;
    struct Free {
        void operator()(T* p) const { std::free(p); }
    };
    std::unique_ptr<T[], Free> values;
    explicit Buffer(int64_t n)
        : values(n > 0 ? static_cast<T*>(std::aligned_alloc(kAlign, (n * sizeof(T) + kAlign - 1) / kAlign * kAlign))
                       : nullptr) {}
    T* data() { return values.get(); }
    const T* data() const { return values.get(); }
};

// A weight packed for C = A · B, B (K × N) split into `blocks` gate blocks of `width` columns each:
// panel p of block g holds B's columns g·width + p·NR … + NR − 1 (zeros past the block's end) for
// every k, NR consecutive values per k, so the kernel reads it front to back. NR = two vectors.
// The panels live in a buffer of its own or, given `outside` (size(…) values, 64-byte aligned), in the
// caller's memory: then one packing serves several calls (a sequence run a chunk of steps at a time).
template <typename T>
struct Packed {
    static constexpr int NR = 2 * Simd<T>::width;
    static int64_t size(int blocks, int64_t K, int64_t width) { return blocks * ((width + NR - 1) / NR) * NR * K; }
    Buffer<T> own;
    T* data;  // every value written by the pack functions, padding included
    int64_t K, width, panels;  // panels per block
    Packed(int blocks, int64_t K_, int64_t width_, T* outside = nullptr)
        : own(outside ? 0 : size(blocks, K_, width_)), data(outside ? outside : own.data()), K(K_), width(width_),
          panels((width_ + NR - 1) / NR) {}
    T* panel(int g, int64_t p) { return data + ((g * panels + p) * K) * NR; }
    const T* panel(int g, int64_t p) const { return data + ((g * panels + p) * K) * NR; }
};

// Packs W (blocks·width × K, row-major) for A · Wᵀ: the forward's h_prev W_hhᵀ. With W_in (blocks·width
// × K_in) it packs [W_in | W] (K_in + K columns) for [x | h_prev] [W_ih | W_hh]ᵀ, the input projection
// and the recurrent matmul in one (P.K = K_in + K). Called by every thread of a team, which share the
// panels; returns after the last panel is written (omp for's barrier).
template <typename T>
void pack_panel_transposed(const T* W, int64_t K, int64_t row0, int cols, T* out);

template <typename T>
void pack_transposed(const T* W, int blocks, Packed<T>& P, const T* W_in = nullptr, int64_t K_in = 0) {
    constexpr int NR = Packed<T>::NR;
    const int64_t K = P.K - K_in, width = P.width, count = blocks * P.panels;
#pragma omp for
    for (int64_t q = 0; q < count; ++q) {
        const int g = static_cast<int>(q / P.panels);
        const int64_t p = q % P.panels;
        T* out = P.panel(g, p);
        const int cols = static_cast<int>(std::min<int64_t>(NR, width - p * NR));
        const int64_t row0 = g * width + p * NR;  // the panel's columns are the weights' rows row0 …
        if (K_in > 0) pack_panel_transposed<T>(W_in, K_in, row0, cols, out);
        pack_panel_transposed<T>(W, K, row0, cols, out + K_in * NR);
    }
}

// Packs W (K × width, row-major) for A · W: the backward's dz W_hh. Same team contract.
template <typename T>
void pack_plain(const T* W, Packed<T>& P) {
    constexpr int NR = Packed<T>::NR;
    const int64_t K = P.K, width = P.width;
#pragma omp for
    for (int64_t p = 0; p < P.panels; ++p) {
        T* out = P.panel(0, p);
        for (int64_t k = 0; k < K; ++k)
            for (int c = 0; c < NR; ++c) out[k * NR + c] = p * NR + c < width ? W[k * width + p * NR + c] : T(0);
    }
}

// C (ROWS rows, ldc; its first `cols` ≤ NR columns) = or += A · one panel, A packed by pack_rows
// (A[r, k] at k·S + r): per row two vectors of accumulators, updated by one broadcast of A and two loads
// of the panel per k, then stored into C (added to it when accumulating); a panel cut by the block's
// end goes through a row buffer. With few rows the additions into one accumulator would wait on each
// other (an FMA's latency is several cycles), so KU steps of k go to KU separate accumulators, summed
// at the end. With PREFETCH, `ahead` is the panel that the kernel reads next (matmul_columns says
// why): each k also asks for that panel's row k to be brought into L2.
// The accumulators start at zero, the k loop runs at least once and each instantiation stores them
// one way (ACCUMULATE: added to C; FULL: cols = NR): one path from the first instruction to the last.
// Where paths meet (accumulators from C or from zero, a loop that may not run, two ways to store),
// gcc keeps the accumulators on the stack and copies them in and out around the loop.
template <typename T, int ROWS, int S, int KU, bool PREFETCH, bool ACCUMULATE, bool FULL>
inline void panel_kernel_as(const T* __restrict__ A, const T* __restrict__ panel, int64_t K, T* __restrict__ C,
                            int64_t ldc, int cols, const T* ahead) {
    typedef typename Simd<T>::vector V;
    constexpr int W = Simd<T>::width;
    V lo[KU][ROWS], hi[KU][ROWS];
    for (int u = 0; u < KU; ++u)
        for (int r = 0; r < ROWS; ++r) lo[u][r] = hi[u][r] = V{};
    auto step = [&](int64_t k, int u) {
        if constexpr (PREFETCH)  // row k of the next panel, every cache line of it, into L2 (hint T1)
            for (std::size_t line = 0; line < 2 * W * sizeof(T); line += 64)
                __builtin_prefetch(reinterpret_cast<const char*>(ahead + k * 2 * W) + line, 0, 2);
        const V b_lo = Simd<T>::load(panel + k * 2 * W), b_hi = Simd<T>::load(panel + k * 2 * W + W);
        for (int r = 0; r < ROWS; ++r) {
            const T a = A[k * S + r];
            lo[u][r] += a * b_lo;
            hi[u][r] += a * b_hi;
        }
    };
    int64_t k = 0;
    if constexpr (KU == 1) {
        do step(k, 0);
        while (++k < K);
    } else {
        for (; k + KU <= K; k += KU)
            for (int u = 0; u < KU; ++u) step(k + u, u);
        for (; k < K; ++k) step(k, 0);
    }
    for (int r = 0; r < ROWS; ++r)
        for (int u = 1; u < KU; ++u) {
            lo[0][r] += lo[u][r];
            hi[0][r] += hi[u][r];
        }
    if constexpr (FULL) {
        for (int r = 0; r < ROWS; ++r) {
            T* c = C + r * ldc;
            Simd<T>::store(c, ACCUMULATE ? Simd<T>::load(c) + lo[0][r] : lo[0][r]);
            Simd<T>::store(c + W, ACCUMULATE ? Simd<T>::load(c + W) + hi[0][r] : hi[0][r]);
        }
        return;
    }
    for (int r = 0; r < ROWS; ++r) {
        T row[2 * W];
        Simd<T>::store(row, lo[0][r]);
        Simd<T>::store(row + W, hi[0][r]);
        T* c = C + r * ldc;
        for (int j = 0; j < cols; ++j) c[j] = ACCUMULATE ? c[j] + row[j] : row[j];
    }
}

template <typename T, int ROWS, int S, int KU = (ROWS >= 4 ? 1 : ROWS >= 2 ? 2 : 4), bool PREFETCH = false>
inline void panel_kernel(const T* __restrict__ A, const T* __restrict__ panel, int64_t K, T* __restrict__ C,
                         int64_t ldc, int cols, bool accumulate, const T* ahead = nullptr) {
    if (K <= 0) {  // C = or += nothing
        if (!accumulate)
            for (int r = 0; r < ROWS; ++r) std::fill(C + r * ldc, C + r * ldc + cols, T(0));
        return;
    }
    const bool full = cols == 2 * Simd<T>::width;
    if (accumulate && full) panel_kernel_as<T, ROWS, S, KU, PREFETCH, true, true>(A, panel, K, C, ldc, cols, ahead);
    else if (accumulate) panel_kernel_as<T, ROWS, S, KU, PREFETCH, true, false>(A, panel, K, C, ldc, cols, ahead);
    else if (full) panel_kernel_as<T, ROWS, S, KU, PREFETCH, false, true>(A, panel, K, C, ldc, cols, ahead);
    else panel_kernel_as<T, ROWS, S, KU, PREFETCH, false, false>(A, panel, K, C, ldc, cols, ahead);
}

// The panel kernel for the last rows < S of a matmul: panel_kernel<T, rows, S>.
template <typename T, int ROWS, int S>
inline void panel_kernel_rows(int rows, const T* A, const T* panel, int64_t K, T* C, int64_t ldc, int cols,
                              bool accumulate) {
    if constexpr (ROWS > 0) {
        if (rows == ROWS) panel_kernel<T, ROWS, S>(A, panel, K, C, ldc, cols, accumulate);
        else panel_kernel_rows<T, ROWS - 1, S>(rows, A, panel, K, C, ldc, cols, accumulate);
    }
}

// dst[k · ldd + r] = src[r · ld + k] for r < rows ≤ 16 and k < 16, dst's first `cols` values a k: a
// 16 × 16 block of floats transposed in AVX-512 registers (four rounds of two-source permutes, each
// swapping the off-diagonal blocks of half the size), rows past `rows` read as zeros. What the
// packing functions below do value by value elsewhere, for double, and for the edges.
#ifdef __AVX512F__
template <int h>
struct TransposeRound {  // the permutes' lanes: (c & h) == 0 ? row i's c : row i + h's c − h, and the rest
    struct Lanes {
        alignas(64) int32_t lo[16], hi[16];
    };
    static constexpr Lanes lanes() {
        Lanes l{};
        for (int c = 0; c < 16; ++c) {
            l.lo[c] = (c & h) ? 16 + c - h : c;
            l.hi[c] = (c & h) ? 16 + c : c + h;
        }
        return l;
    }
    static inline void apply(__m512* v) {
        static constexpr Lanes l = lanes();
        const __m512i lo = _mm512_load_si512(l.lo), hi = _mm512_load_si512(l.hi);
#pragma GCC unroll 16
        for (int i = 0; i < 16; ++i)
            if (!(i & h)) {
                const __m512 a = v[i], b = v[i + h];
                v[i] = _mm512_permutex2var_ps(a, lo, b);
                v[i + h] = _mm512_permutex2var_ps(a, hi, b);
            }
    }
};

inline void transpose_16x16(const float* src, int64_t ld, int rows, float* dst, int64_t ldd, int cols) {
    __m512 v[16];
#pragma GCC unroll 16
    for (int r = 0; r < 16; ++r) v[r] = r < rows ? _mm512_loadu_ps(src + r * ld) : _mm512_setzero_ps();
    TransposeRound<8>::apply(v);
    TransposeRound<4>::apply(v);
    TransposeRound<2>::apply(v);
    TransposeRound<1>::apply(v);
    const __mmask16 keep = static_cast<__mmask16>((1u << cols) - 1);
#pragma GCC unroll 16
    for (int k = 0; k < 16; ++k) _mm512_mask_storeu_ps(dst + k * ldd, keep, v[k]);
}
#endif

// One weight panel for pack_transposed: out[k·NR + c] = W[(row0 + c)·K + k] for c < cols, zeros for
// the rest (W row-major, K columns). Written in order; read as NR streams of rows, or, for float in
// AVX-512 (NR = 32), as two stacks of 16 rows transposed 16 values of k at a time in registers.
template <typename T>
void pack_panel_transposed(const T* W, int64_t K, int64_t row0, int cols, T* out) {
    constexpr int NR = Packed<T>::NR;
    int64_t k = 0;
#ifdef __AVX512F__
    if constexpr (std::is_same_v<T, float> && NR == 32)
        for (; k + 16 <= K; k += 16)
            for (int half = 0; half < 2; ++half) {
                const int rows = std::max(0, std::min(16, cols - 16 * half));  // rows past `rows` read as zeros
                const T* src = rows > 0 ? W + (row0 + 16 * half) * K + k : W;
                transpose_16x16(src, K, rows, out + k * NR + 16 * half, NR, 16);
            }
#endif
    for (; k < K; ++k)
        for (int c = 0; c < NR; ++c) out[k * NR + c] = c < cols ? W[(row0 + c) * K + k] : T(0);
}

// A (M × K, lda) packed for the panel kernel in blocks of S rows, k-major: row b·S + r's k-th value
// at b·block + k·S + r (block = K·S, or more when A is the first columns of a wider packed matrix).
// The kernel then reads A as one stream, at fixed offsets from one pointer.
template <typename T, int S>
void pack_rows(const T* A, int64_t lda, int64_t M, int64_t K, T* __restrict__ out, int64_t block = 0) {
    if (block == 0) block = K * S;
    for (int64_t b = 0; b * S < M; ++b) {
        const int64_t rows = std::min<int64_t>(S, M - b * S);
        T* __restrict__ o = out + b * block;
        const T* a = A + b * S * lda;
        int64_t k = 0;
#ifdef __AVX512F__
        if constexpr (std::is_same_v<T, float> && S <= 16)  // 16 values of k at a time, in registers
            for (; k + 16 <= K; k += 16) transpose_16x16(a + k, lda, static_cast<int>(rows), o + k * S, S, S);
#endif
        if (rows == S)  // written in order, read as S streams of rows
            for (; k < K; ++k)
                for (int r = 0; r < S; ++r) o[k * S + r] = a[r * lda + k];
        else
            for (; k < K; ++k)
                for (int64_t r = 0; r < rows; ++r) o[k * S + r] = a[r * lda + k];
    }
}

// [X | A] (M × (K_x + K)) packed as pack_rows packs one matrix: X's K_x columns, then A's K.
template <typename T, int S>
void pack_rows(const T* X, int64_t ldx, int64_t K_x, const T* A, int64_t lda, int64_t M, int64_t K, T* out) {
    const int64_t block = (K_x + K) * S;
    if (K_x > 0) pack_rows<T, S>(X, ldx, M, K_x, out, block);
    pack_rows<T, S>(A, lda, M, K, out + K_x * S, block);
}

// The matmul's rows at a time: as many as the registers hold, 2·MR vector accumulators + 2 loads + 1
// broadcast (6 rows in AVX2's 16 registers, 14 in AVX-512's 32).
constexpr int MR = (kVectorRegisters - 3) / 2 / 2 * 2;

// How many values M rows of K packed by packed_rows take.
inline int64_t packed_size(int64_t M, int64_t K) { return (M + MR - 1) / MR * MR * K; }

// A (M × K, lda), or [X | A] with X (M × K_x, ldx), packed by pack_rows<T, MR> into `out`
// (packed_size(M, K_x + K) values: each thread's own, allocated once per call), for matmul_columns.
template <typename T>
const T* packed_rows(T* out, const T* A, int64_t lda, int64_t M, int64_t K, const T* X = nullptr, int64_t ldx = 0,
                     int64_t K_x = 0) {
    pack_rows<T, MR>(X, ldx, K_x, A, lda, M, K, out);
    return out;
}

// C[:, j0:j1] = or += A (M × K) · block g of P, columns j0 … j1 − 1 of the block (j0 a multiple of
// NR), A packed by packed_rows; C points at the block's column 0. MR rows at a time.
//
// Each panel is read once for every MR rows: the first time from wherever it lies (a weight larger
// than a core's L2 comes from the shared cache every step), then from L2. So while the first MR rows
// run over panel p, panel p + 1 is prefetched into L2, and the first pass over it reads L2 as well;
// the last panel of the range prefetches `after` (null: nothing), the panel the caller reads next.
// A prefetch never changes a result, and `set_panel_prefetch(0)` turns them off to measure them.
bool panel_prefetch = true;

template <typename T>
void matmul_columns(const Packed<T>& P, int g, int64_t j0, int64_t j1, int64_t M, const T* packed, T* C,
                    int64_t ldc, bool accumulate, const T* after = nullptr) {
    constexpr int NR = Packed<T>::NR;
    const int64_t K = P.K;
    for (int64_t p = j0 / NR; p * NR < j1; ++p) {
        const int cols = static_cast<int>(std::min<int64_t>(NR, j1 - p * NR));
        const T* panel = P.panel(g, p);
        const T* ahead = (p + 1) * NR < j1 ? P.panel(g, p + 1) : after;
        T* Cp = C + p * NR;
        int64_t i = 0;
        if (panel_prefetch && ahead && i + MR <= M) {
            panel_kernel<T, MR, MR, 1, true>(packed, panel, K, Cp, ldc, cols, accumulate, ahead);
            i += MR;
        }
        for (; i + MR <= M; i += MR)
            panel_kernel<T, MR, MR>(packed + i * K, panel, K, Cp + i * ldc, ldc, cols, accumulate);
        if (i < M)
            panel_kernel_rows<T, MR - 1, MR>(static_cast<int>(M - i), packed + i * K, panel, K, Cp + i * ldc, ldc, cols,
                                             accumulate);
    }
}

struct Share {  // this thread's rows [r0, r1) and units [j0, j1)
    int64_t r0, r1, j0, j1;
    int64_t rows() const { return r1 - r0; }
    int64_t units() const { return j1 - j0; }
};

// Unit slices start on multiples of `align`: of the weight panels' width (matmul_columns starts at a
// panel), and of 16 (a 64-byte line of floats), so threads never write one line.
template <typename T>
inline Share share_of(int p, int nt, bool by_rows, int64_t B, int64_t H) {
    constexpr int64_t align = std::max<int64_t>(16, Packed<T>::NR);
    if (by_rows) return {B * p / nt, B * (p + 1) / nt, 0, H};
    auto edge = [&](int q) { return q == nt ? H : std::min(H, (H * q / nt + align / 2) / align * align); };
    return {0, B, edge(p), edge(p + 1)};
}

inline int thread_id() {
#ifdef _OPENMP
    return omp_get_thread_num();
#else
    return 0;
#endif
}

inline int team_size() {
#ifdef _OPENMP
    return omp_get_num_threads();
#else
    return 1;
#endif
}

// The rows of the history buffer that hold step t's state, and those that hold its previous state.
inline int64_t state_row(int64_t t, int64_t T_, int64_t B, bool reverse) { return reverse ? t * B : (t + 1) * B; }
inline int64_t previous_row(int64_t t, int64_t T_, int64_t B, bool reverse) { return reverse ? (t + 1) * B : t * B; }

// C[rows, g·H + j] = or += A[rows] · W[g·H + j]ᵀ for the share's units j, in each of the gate blocks
// g (C's row stride ldc): a step's h_prev W_hhᵀ, W_hh packed by pack_transposed.
template <typename T>
void gate_columns(const Share& s, const Packed<T>& W, int blocks, const T* A, int64_t lda, T* C, int64_t ldc,
                  bool accumulate, T* scratch, const T* X = nullptr, int64_t I = 0) {
    const T* packed = packed_rows<T>(scratch, A, lda, s.rows(), W.K - I, X, I, I);
    const int64_t first = s.j0 / Packed<T>::NR;  // the share's first panel in each block
    for (int g = 0; g < blocks; ++g)  // after block g: block g + 1's first panel, or the next step's
        matmul_columns<T>(W, g, s.j0, s.j1, s.rows(), packed, C + g * W.width, ldc, accumulate,
                          W.panel(g + 1 < blocks ? g + 1 : 0, first));
}

// At batch 1 a step's products are matrix–vector products that read all of W_hh once a step either
// way, so they read it as it lies, row by row, and the call packs nothing. Every other step reads the
// rows in the reverse order (`backwards`): a weight larger than the core's L2, read in the same order
// every step, has each line leave L2 before it comes round again; read back and forth, a step first
// reads what the previous one read last, still in L2. A row's product is the same either way; the
// backward's sums over rows (vector_times_columns) add in the reverse order then.

// z[n] = or += W[n, :] · h for R consecutive rows of W (K columns), R rows sharing each load of h.
template <typename T, int R>
inline void some_rows_times_vector(const T* W, int64_t K, const T* __restrict__ h, T* __restrict__ z, bool accumulate) {
    typedef typename Simd<T>::vector V;
    constexpr int L = Simd<T>::width;
    V acc[R];
    for (int r = 0; r < R; ++r) acc[r] = V{};
    int64_t k = 0;
    for (; k + L <= K; k += L) {
        const V hv = Simd<T>::load(h + k);
        for (int r = 0; r < R; ++r) {
            acc[r] += Simd<T>::load(W + r * K + k) * hv;
        }
    }
    T sums[R];
#if defined(__AVX2__) && defined(__FMA__)
    // AVX2: the eight sums of eight lanes in one vector
    if constexpr (std::is_same_v<T, float> && R == 8 && Simd<T>::width == 8) {
        __m256 a[8];
        std::memcpy(a, acc, sizeof a);
        const __m256 u0 = _mm256_hadd_ps(_mm256_hadd_ps(a[0], a[1]), _mm256_hadd_ps(a[2], a[3]));
        const __m256 u1 = _mm256_hadd_ps(_mm256_hadd_ps(a[4], a[5]), _mm256_hadd_ps(a[6], a[7]));
        const __m256 lo = _mm256_permute2f128_ps(u0, u1, 0x20), hi = _mm256_permute2f128_ps(u0, u1, 0x31);
        _mm256_storeu_ps(sums, _mm256_add_ps(lo, hi));
    } else
#endif
    for (int r = 0; r < R; ++r) {
        T lanes[L], sum = 0;
        std::memcpy(lanes, &acc[r], sizeof(V));
        for (int i = 0; i < L; ++i) sum += lanes[i];
        sums[r] = sum;
    }
    for (int r = 0; r < R; ++r) {
        T sum = sums[r];
        for (int64_t kk = k; kk < K; ++kk) sum += W[r * K + kk] * h[kk];
        z[r] = accumulate ? z[r] + sum : sum;
    }
}

// z[n] = or += W[n, :] · h for `rows` consecutive rows of W (K columns): the forward's h_prev W_hhᵀ.
template <typename T>
void rows_times_vector(const T* W, int64_t K, const T* __restrict__ h, T* __restrict__ z, int64_t rows,
                       bool accumulate, bool backwards = false) {
    const int64_t grouped = rows / 8 * 8;  // rows eight at a time, then the rest one at a time
    if (!backwards) {
        for (int64_t n = 0; n < grouped; n += 8) some_rows_times_vector<T, 8>(W + n * K, K, h, z + n, accumulate);
        for (int64_t n = grouped; n < rows; ++n) some_rows_times_vector<T, 1>(W + n * K, K, h, z + n, accumulate);
        return;
    }
    for (int64_t n = rows - 1; n >= grouped; --n) some_rows_times_vector<T, 1>(W + n * K, K, h, z + n, accumulate);
    for (int64_t n = grouped - 8; n >= 0; n -= 8) some_rows_times_vector<T, 8>(W + n * K, K, h, z + n, accumulate);
}

// c[j0:j1] = or += a (K) · W[:, j0:j1] (W row-major with H columns). Eight rows of W at a time, so c
// is read and written once per eight rows.
template <typename T>
void vector_times_columns(const T* __restrict__ a, int64_t K, const T* W, int64_t H, int64_t j0, int64_t j1,
                          T* __restrict__ c, bool accumulate, bool backwards = false) {
    constexpr int R = 8;
    if (!accumulate)
        for (int64_t j = j0; j < j1; ++j) c[j] = T(0);
    auto eight_rows = [&](int64_t n0) {
        const T* __restrict__ w = W + n0 * H;
        const T a0 = a[n0], a1 = a[n0 + 1], a2 = a[n0 + 2], a3 = a[n0 + 3];
        const T a4 = a[n0 + 4], a5 = a[n0 + 5], a6 = a[n0 + 6], a7 = a[n0 + 7];
        for (int64_t j = j0; j < j1; ++j)
            c[j] += ((a0 * w[j] + a1 * w[H + j]) + (a2 * w[2 * H + j] + a3 * w[3 * H + j])) +
                    ((a4 * w[4 * H + j] + a5 * w[5 * H + j]) + (a6 * w[6 * H + j] + a7 * w[7 * H + j]));
    };
    auto one_row = [&](int64_t n0) {
        const T an = a[n0];
        const T* __restrict__ w = W + n0 * H;
        for (int64_t j = j0; j < j1; ++j) c[j] += an * w[j];
    };
    const int64_t grouped = K / R * R;
    if (!backwards) {
        for (int64_t n0 = 0; n0 < grouped; n0 += R) eight_rows(n0);
        for (int64_t n0 = grouped; n0 < K; ++n0) one_row(n0);
        return;
    }
    for (int64_t n0 = K - 1; n0 >= grouped; --n0) one_row(n0);
    for (int64_t n0 = grouped - R; n0 >= 0; n0 -= R) eight_rows(n0);
}

// A step's h_prev W_hhᵀ into C's gate blocks, for the share: from the packed panels, or at batch 1
// (`rowwise`) from W_hh's rows as they lie, the blocks and their rows in the reverse order if
// `backwards`.
template <typename T>
void forward_product(const Share& s, const Packed<T>& P, bool rowwise, const T* w_hh, int blocks, int64_t H,
                     const T* A, T* C, int64_t ldc, bool accumulate, T* scratch, const T* X = nullptr,
                     const T* w_ih = nullptr, int64_t I = 0, bool backwards = false) {
    if (s.rows() == 0) return;
    if (!rowwise) {
        gate_columns<T>(s, P, blocks, A, H, C, ldc, accumulate, scratch, X, I);
        return;
    }
    for (int q = 0; q < blocks; ++q) {
        const int g = backwards ? blocks - 1 - q : q;
        if (X)  // C = (C +) x W_ihᵀ + h W_hhᵀ
            rows_times_vector<T>(w_ih + (g * H + s.j0) * I, I, X, C + g * H + s.j0, s.units(), accumulate,
                                 backwards);
        rows_times_vector<T>(w_hh + (g * H + s.j0) * H, H, A, C + g * H + s.j0, s.units(), accumulate || X,
                             backwards);
    }
}

// A step's dh = or += dZ W_hh for the share (dZ: the rows' K = G·H gradients), from the packed panels.
// At batch 1 (`rowwise`: nothing packed) a team that shares the step by units splits W_hh's K rows
// instead, so that each thread reads whole rows of W_hh as they lie: each multiplies its rows into a
// partial sum of all H units (`partials`, H values a thread), and after a barrier adds up the partial
// sums of its own units. Every thread of such a team must call it (the barrier); shared by rows, the
// one thread that owns the row does all of it.
template <typename T>
void backward_product(const Share& s, const Packed<T>& P, bool rowwise, bool by_rows, T* partials, const T* w_hh,
                      int64_t K, int64_t H, const T* dZ, T* dh, bool accumulate, T* scratch, bool backwards = false) {
    if (s.rows() == 0) return;
    if (!rowwise) {
        matmul_columns<T>(P, 0, s.j0, s.j1, s.rows(), packed_rows<T>(scratch, dZ, K, s.rows(), K), dh, H, accumulate,
                          P.panel(0, s.j0 / Packed<T>::NR));  // after the last panel: the next step's first
        return;
    }
    const int p = thread_id(), nt = team_size();
    if (by_rows || nt == 1) {
        vector_times_columns<T>(dZ, K, w_hh, H, s.j0, s.j1, dh, accumulate, backwards);
        return;
    }
    const int64_t n0 = K * p / nt / 8 * 8, n1 = p + 1 == nt ? K : K * (p + 1) / nt / 8 * 8;
    vector_times_columns<T>(dZ + n0, n1 - n0, w_hh + n0 * H, H, 0, H, partials + p * H, false, backwards);
#pragma omp barrier
    for (int64_t j = s.j0; j < s.j1; ++j) {
        T sum = accumulate ? dh[j] : T(0);
        for (int q = 0; q < nt; ++q) sum += partials[q * H + j];
        dh[j] = sum;
    }
}

// LSTM forward: acts (N, 4H) holds x W_ihᵀ; when a backward follows, its f column gets f (the rest is
// left as it is); bias (4H) = b_ih + b_hh, or null; h and c histories (N + B, H); k (N, 5H) or null;
// w_packed: null, or where W's panels go (lstm_packed_size values), already there if w_packed_ready.
// Per step, as LSTMFunction: z = x_proj + h_prev W_hhᵀ, then lstm_forward_row on the share. The matmul
// writes h_prev W_hhᵀ to a buffer of the thread's own, which stays in cache, and the row adds x_proj and
// the bias as it reads it: acts is then only read, not first fetched from memory to be overwritten. With
// INPUT, x (N, I) and w_ih (4H, I) come instead of x_proj: each step computes
// z = [x_t | h_prev] [W_ih | W_hh]ᵀ in one matmul (the whole sequence's x_proj is never built; acts, when
// a backward follows, holds only f).
template <typename T, bool FOR_BACKWARD, bool BIAS, bool INPUT>
void lstm_forward_sequence(T* acts, const T* x, const T* w_ih, int64_t I, const T* bias, T* h, T* c, T* k,
                           const T* w_hh, int64_t T_, int64_t B, int64_t H, bool reverse, int threads, bool by_rows,
                           T* w_packed, bool w_packed_ready, bool c_two_rows, const T* h0, const T* c0, T* h_n,
                           T* c_n, T* out) {
    const bool rowwise = B == 1;
    if (!INPUT) I = 0;
    // c_two_rows: c holds two states (2B, H), not a history: step t's in the rows the history would
    // give it, modulo 2B (no backward reads c: the forward needs only the last one, and k holds what
    // the backward needs of it). out: null, or (N, H), where each step's h goes too, at rows t·B (the
    // caller's output, apart from the history that the backward reads).
    auto c_row = [&](int64_t row) { return c_two_rows ? row % (2 * B) : row; };
    // Given h0, c0 (B, H), the loop copies them into the rows where its first step reads the previous
    // state; given h_n, c_n (B, H), it copies its last step's states there (each thread its share).
    const int64_t first = previous_row(reverse ? T_ - 1 : 0, T_, B, reverse);  // the rows of the first step's
    const int64_t last = state_row(reverse ? 0 : T_ - 1, T_, B, reverse);  // previous state, of the last's state
    auto copy_share = [&](const Share& s, const T* from, int64_t from_row, T* to, int64_t to_row) {
        for (int64_t r = s.r0; r < s.r1; ++r)
            std::memcpy(to + (to_row + r) * H + s.j0, from + (from_row + r) * H + s.j0, s.units() * sizeof(T));
    };
    Packed<T> W(rowwise ? 0 : 4, I + H, H, w_packed);  // [W_ih | W_hh] for [x_t | h_prev] [W_ih | W_hh]ᵀ
#pragma omp parallel num_threads(threads)
    {
        const int nt = team_size();
        const Share s = share_of<T>(thread_id(), nt, by_rows, B, H);
        if (h0) copy_share(s, h0, 0, h, first);
        if (c0) copy_share(s, c0, 0, c, c_row(first));
        if (!rowwise && !w_packed_ready) pack_transposed<T>(w_hh, 4, W, w_ih, I);
        if (h0 && !by_rows && nt > 1) {  // by units the first step's matmul reads every thread's share of h0
#pragma omp barrier
        }
        Buffer<T> packed(rowwise ? 0 : packed_size(s.rows(), I + H));  // each step's [x_t | h_prev], packed
        Buffer<T> gates(s.rows() * 4 * H);  // (rows, 4H): the step's z
        T* z = gates.data();
        for (int64_t step = 0; step < T_; ++step) {
            const int64_t t = reverse ? T_ - 1 - step : step;
            T* acts_t = acts ? acts + (t * B + s.r0) * 4 * H : nullptr;
            const T* h_prev = h + (previous_row(t, T_, B, reverse) + s.r0) * H;
            const T* c_prev = c + (c_row(previous_row(t, T_, B, reverse)) + s.r0) * H;
            T* h_t = h + (state_row(t, T_, B, reverse) + s.r0) * H;
            T* c_t = c + (c_row(state_row(t, T_, B, reverse)) + s.r0) * H;
            if (!by_rows && nt > 1 && step > 0) {
#pragma omp barrier
            }
            if (INPUT)  // z = x_t W_ihᵀ + h_prev W_hhᵀ
                forward_product<T>(s, W, rowwise, w_hh, 4, H, h_prev, z, 4 * H, false, packed.data(),
                                   x + (t * B + s.r0) * I, w_ih, I, step % 2 == 1);
            else  // z = h_prev W_hhᵀ, and x_proj is added in the row
                forward_product<T>(s, W, rowwise, w_hh, 4, H, h_prev, z, 4 * H, false, packed.data(), nullptr,
                                   nullptr, 0, step % 2 == 1);
            for (int64_t row = 0; row < s.rows(); ++row) {
                T* zr = z + row * 4 * H + s.j0;
                T* kr = FOR_BACKWARD ? k + (t * B + s.r0 + row) * 5 * H + s.j0 : nullptr;
                auto k_gate = [&](int q) { return FOR_BACKWARD ? kr + q * H : nullptr; };  // k_i, k_f, k_g, k_o, k_c
                const int64_t o = row * H + s.j0;
                const T* x_proj = INPUT ? nullptr : acts_t + row * 4 * H + s.j0;
                T* f_acts = FOR_BACKWARD ? acts_t + row * 4 * H + H + s.j0 : nullptr;  // f where the backward reads it
                T* h_out = out ? out + (t * B + s.r0 + row) * H + s.j0 : nullptr;  // h once more, for the caller
                lstm_forward_row<T, FOR_BACKWARD, BIAS, !INPUT>(zr, zr + H, zr + 2 * H, zr + 3 * H, c_prev + o, c_t + o,
                                                                h_t + o, k_gate(0), k_gate(1), k_gate(2), k_gate(3),
                                                                k_gate(4), s.units(), BIAS ? bias + s.j0 : nullptr,
                                                                x_proj, H, f_acts, h_out);
            }
        }
        if (h_n) copy_share(s, h, last, h_n, 0);
        if (c_n) copy_share(s, c, c_row(last), c_n, 0);
    }
}

// LSTM backward: d_out (N, H) or null, running dh and dc (B, H) in and out (the initial states'
// gradients at the end), k (N, 5H) and acts (N, 4H) from the forward; writes dz (N, 4H). Per step,
// as LSTMFunction: lstm_backward_row on the share, then dh = dz W_hh. Given d_x (N, I) and w_ih
// (4H, I), each step also writes its dx_t = dz_t W_ih from the same packed dz_t, which the sequence's
// dx = dZ W_ih would have to read from memory and transpose again (shared by rows only: by units, a
// thread holds a slice of dz_t's columns, and the caller computes dx after the loop). Given d_b (4H),
// it writes db = Σ_rows dz there, each thread summing the dz it wrote while it is in cache.
template <typename T>
void lstm_backward_sequence(const T* d_out, T* dh, T* dc, const T* k, const T* acts, T* dz, const T* w_hh, int64_t T_,
                            int64_t B, int64_t H, bool reverse, int threads, bool by_rows, const T* w_ih, int64_t I,
                            T* d_x, T* d_b) {
    const bool rowwise = B == 1;
    Packed<T> W(rowwise ? 0 : 1, 4 * H, H);  // W_hh for dz W_hh: one block, H columns
    Packed<T> W_in(d_x ? 1 : 0, 4 * H, I);  // W_ih for dz W_ih
    Buffer<T> partials(rowwise ? threads * H : 0);  // at batch 1: each thread's share of dz W_hh
    Buffer<T> bias_sums(d_b ? threads * 4 * H : 0);  // each thread's Σ dz over its rows and columns
    if (d_b) std::fill(bias_sums.data(), bias_sums.data() + threads * 4 * H, T(0));  // a team may be smaller
#pragma omp parallel num_threads(threads)
    {
        const int nt = team_size();
        const Share s = share_of<T>(thread_id(), nt, by_rows, B, H);
        Buffer<T> packed(rowwise ? 0 : packed_size(s.rows(), 4 * H));  // each step's matmul operand, packed
        if (!rowwise) pack_plain<T>(w_hh, W);
        if (d_x) pack_plain<T>(w_ih, W_in);
        T* db = d_b ? bias_sums.data() + thread_id() * 4 * H : nullptr;
        for (int64_t step = 0; step < T_; ++step) {
            const int64_t t = reverse ? step : T_ - 1 - step;
            for (int64_t row = s.r0; row < s.r1; ++row) {
                const int64_t n = t * B + row;
                const T* kr = k + n * 5 * H + s.j0;
                T* dzr = dz + n * 4 * H + s.j0;
                T* dh_r = dh + row * H + s.j0;
                T* dc_r = dc + row * H + s.j0;
                const T* f = acts + n * 4 * H + H + s.j0;
                if (d_out)
                    lstm_backward_row<T, true>(dh_r, d_out + n * H + s.j0, dc_r, kr, kr + H, kr + 2 * H, kr + 3 * H,
                                               kr + 4 * H, f, dzr, dzr + H, dzr + 2 * H, dzr + 3 * H, s.units());
                else
                    lstm_backward_row<T, false>(dh_r, nullptr, dc_r, kr, kr + H, kr + 2 * H, kr + 3 * H, kr + 4 * H,
                                                f, dzr, dzr + H, dzr + 2 * H, dzr + 3 * H, s.units());
            }
            if (db)  // db += Σ_rows dz over the share's columns of each gate
                for (int64_t row = s.r0; row < s.r1; ++row)
                    for (int g = 0; g < 4; ++g) {
                        const T* dzr = dz + (t * B + row) * 4 * H + g * H;
                        for (int64_t j = s.j0; j < s.j1; ++j) db[g * H + j] += dzr[j];
                    }
            if (!by_rows && nt > 1) {
#pragma omp barrier
            }
            // dh[rows, units] = dz[rows, :] W_hh[:, units]
            backward_product<T>(s, W, rowwise, by_rows, partials.data(), w_hh, 4 * H, H, dz + (t * B + s.r0) * 4 * H,
                                dh + s.r0 * H, false, packed.data(), step % 2 == 1);
            if (d_x && s.rows() > 0)  // dx_t[rows] = dz_t[rows] W_ih, dz_t as backward_product packed it
                matmul_columns<T>(W_in, 0, 0, I, s.rows(), packed.data(), d_x + (t * B + s.r0) * I, I, false);
        }
    }
    if (d_b)
        for (int64_t j = 0; j < 4 * H; ++j) {
            T sum = 0;
            for (int p = 0; p < threads; ++p) sum += bias_sums.data()[p * 4 * H + j];
            d_b[j] = sum;
        }
}

// GRU forward: x (N, 3H) = x_proj + b_ih; hh (N, 3H), rz (N, 2H), n (N, H) written; h history (N + B, H).
// Per step, as GRUFunction: hh = h_prev W_hhᵀ, then gru_forward_row on the share (which adds b_hh).
// With hh, rz and n null (no backward to follow), each thread keeps its step's in a buffer of its own.
template <typename T>
void gru_forward_sequence(const T* x, const T* bias, T* hh, T* rz, T* n, T* h, const T* w_hh, int64_t T_, int64_t B,
                          int64_t H, bool reverse, int threads, bool by_rows) {
    const bool rowwise = B == 1;
    Packed<T> W(rowwise ? 0 : 3, H, H);  // W_hh for h_prev W_hhᵀ
#pragma omp parallel num_threads(threads)
    {
        const int nt = team_size();
        const Share s = share_of<T>(thread_id(), nt, by_rows, B, H);
        Buffer<T> packed(rowwise ? 0 : packed_size(s.rows(), H));  // each step's matmul operand, packed
        const bool keep = hh != nullptr;
        Buffer<T> step_buffer(keep ? 0 : s.rows() * 6 * H);  // without a backward: the step's hh | rz | n
        if (!rowwise) pack_transposed<T>(w_hh, 3, W);
        for (int64_t step = 0; step < T_; ++step) {
            const int64_t t = reverse ? T_ - 1 - step : step;
            const T* h_prev = h + (previous_row(t, T_, B, reverse) + s.r0) * H;
            T* h_t = h + (state_row(t, T_, B, reverse) + s.r0) * H;
            T* hh_t = keep ? hh + (t * B + s.r0) * 3 * H : step_buffer.data();
            T* rz_t = keep ? rz + (t * B + s.r0) * 2 * H : step_buffer.data() + s.rows() * 3 * H;
            T* n_t = keep ? n + (t * B + s.r0) * H : step_buffer.data() + s.rows() * 5 * H;
            if (!by_rows && nt > 1 && step > 0) {
#pragma omp barrier
            }
            forward_product<T>(s, W, rowwise, w_hh, 3, H, h_prev, hh_t, 3 * H, false, packed.data(), nullptr, nullptr,
                               0, step % 2 == 1);  // hh = h_prev W_hhᵀ
            for (int64_t row = 0; row < s.rows(); ++row) {
                const int64_t j = s.j0;
                T* hr = hh_t + row * 3 * H + j;
                const T* xr = x + (t * B + s.r0 + row) * 3 * H + j;
                T* rzr = rz_t + row * 2 * H + j;
                if (bias)
                    gru_forward_row<T, true>(hr, hr + H, hr + 2 * H, xr, xr + H, xr + 2 * H, bias + j, bias + H + j,
                                             bias + 2 * H + j, h_prev + row * H + j, rzr, rzr + H, n_t + row * H + j,
                                             h_t + row * H + j, s.units());
                else
                    gru_forward_row<T, false>(hr, hr + H, hr + 2 * H, xr, xr + H, xr + 2 * H, nullptr, nullptr,
                                              nullptr, h_prev + row * H + j, rzr, rzr + H, n_t + row * H + j,
                                              h_t + row * H + j, s.units());
            }
        }
    }
}

// GRU backward: d_out (N, H), running dh (B, H), rz, n, hh and h_prev (N, ·) from the forward; writes
// d_hh (N, 3H) and d_xn (N, H). Per step, as GRUFunction with the CPU kernels:
// gru_backward_direct_row on the share (dh becomes dh ⊙ z), then dh += d hh W_hh.
template <typename T>
void gru_backward_sequence(const T* d_out, T* dh, const T* rz, const T* n, const T* hh, const T* h_prev, T* d_hh,
                           T* d_xn, const T* w_hh, int64_t T_, int64_t B, int64_t H, bool reverse, int threads,
                           bool by_rows) {
    const bool rowwise = B == 1;
    Packed<T> W(rowwise ? 0 : 1, 3 * H, H);  // W_hh for dz W_hh: one block, H columns
    Buffer<T> partials(rowwise ? threads * H : 0);  // at batch 1: each thread's share of dz W_hh
#pragma omp parallel num_threads(threads)
    {
        const int nt = team_size();
        const Share s = share_of<T>(thread_id(), nt, by_rows, B, H);
        Buffer<T> packed(rowwise ? 0 : packed_size(s.rows(), 3 * H));  // each step's matmul operand, packed
        if (!rowwise) pack_plain<T>(w_hh, W);
        for (int64_t step = 0; step < T_; ++step) {
            const int64_t t = reverse ? step : T_ - 1 - step;
            for (int64_t row = s.r0; row < s.r1; ++row) {
                const int64_t nr = t * B + row, j = s.j0;
                const T* rzr = rz + nr * 2 * H + j;
                T* dr = d_hh + nr * 3 * H + j;
                gru_backward_direct_row<T>(dh + row * H + j, d_out + nr * H + j, rzr, rzr + H, n + nr * H + j,
                                           hh + nr * 3 * H + 2 * H + j, h_prev + nr * H + j, dr, dr + H, dr + 2 * H,
                                           d_xn + nr * H + j, s.units());
            }
            if (!by_rows && nt > 1) {
#pragma omp barrier
            }
            // dh[rows, units] += d_hh[rows, :] W_hh[:, units]
            backward_product<T>(s, W, rowwise, by_rows, partials.data(), w_hh, 3 * H, H, d_hh + (t * B + s.r0) * 3 * H,
                                dh + s.r0 * H, true, packed.data(), step % 2 == 1);
        }
    }
}

// Elman RNN forward: x (N, H) = x W_ihᵀ, bias (H) = b_ih + b_hh (BIAS) or already in x; h history
// (N + B, H). Per step, as RNNFunction: h = φ(x_proj + h_prev W_hhᵀ), φ = tanh or relu.
template <typename T, bool BIAS>
void rnn_forward_sequence(const T* x, const T* bias, T* h, const T* w_hh, int64_t T_, int64_t B, int64_t H,
                          bool reverse, bool relu, int threads, bool by_rows) {
    const bool rowwise = B == 1;
    Packed<T> W(rowwise ? 0 : 1, H, H);  // W_hh for h_prev W_hhᵀ
#pragma omp parallel num_threads(threads)
    {
        const int nt = team_size();
        const Share s = share_of<T>(thread_id(), nt, by_rows, B, H);
        Buffer<T> packed(rowwise ? 0 : packed_size(s.rows(), H));  // each step's matmul operand, packed
        if (!rowwise) pack_transposed<T>(w_hh, 1, W);
        for (int64_t step = 0; step < T_; ++step) {
            const int64_t t = reverse ? T_ - 1 - step : step;
            const T* h_prev = h + (previous_row(t, T_, B, reverse) + s.r0) * H;
            T* h_t = h + (state_row(t, T_, B, reverse) + s.r0) * H;
            if (!by_rows && nt > 1 && step > 0) {
#pragma omp barrier
            }
            forward_product<T>(s, W, rowwise, w_hh, 1, H, h_prev, h_t, H, false, packed.data(), nullptr, nullptr, 0,
                               step % 2 == 1);  // h = h_prev W_hhᵀ
            for (int64_t row = 0; row < s.rows(); ++row) {
                T* __restrict__ hr = h_t + row * H + s.j0;
                const T* __restrict__ xr = x + (t * B + s.r0 + row) * H + s.j0;
                const T* __restrict__ b = BIAS ? bias + s.j0 : nullptr;
                if (relu)
                    for (int64_t j = 0; j < s.units(); ++j)
                        hr[j] = std::max(hr[j] + xr[j] + (BIAS ? b[j] : T(0)), T(0));
                else
                    for (int64_t j = 0; j < s.units(); ++j) hr[j] = tanh_(hr[j] + xr[j] + (BIAS ? b[j] : T(0)));
            }
        }
    }
}

// Elman RNN backward: d_out (N, H), running dh (B, H), out (N, H) = every step's h from the forward;
// writes dz (N, H). Per step, as RNNFunction: dz = (dh + d_out) ⊙ φ'(h), φ' = 1 − h² or [h > 0];
// dh = dz W_hh.
template <typename T>
void rnn_backward_sequence(const T* d_out, T* dh, const T* out, T* dz, const T* w_hh, int64_t T_, int64_t B, int64_t H,
                           bool reverse, bool relu, int threads, bool by_rows) {
    const bool rowwise = B == 1;
    Packed<T> W(rowwise ? 0 : 1, H, H);  // W_hh for dz W_hh: one block, H columns
    Buffer<T> partials(rowwise ? threads * H : 0);  // at batch 1: each thread's share of dz W_hh
#pragma omp parallel num_threads(threads)
    {
        const int nt = team_size();
        const Share s = share_of<T>(thread_id(), nt, by_rows, B, H);
        Buffer<T> packed(rowwise ? 0 : packed_size(s.rows(), H));  // each step's matmul operand, packed
        if (!rowwise) pack_plain<T>(w_hh, W);
        for (int64_t step = 0; step < T_; ++step) {
            const int64_t t = reverse ? step : T_ - 1 - step;
            for (int64_t row = s.r0; row < s.r1; ++row) {
                const int64_t nr = t * B + row;
                const T* __restrict__ hr = out + nr * H + s.j0;
                const T* __restrict__ dor = d_out + nr * H + s.j0;
                const T* __restrict__ dhr = dh + row * H + s.j0;
                T* __restrict__ dzr = dz + nr * H + s.j0;
                if (relu)
                    for (int64_t j = 0; j < s.units(); ++j) dzr[j] = hr[j] > T(0) ? dhr[j] + dor[j] : T(0);
                else
                    for (int64_t j = 0; j < s.units(); ++j) dzr[j] = (dhr[j] + dor[j]) * (T(1) - hr[j] * hr[j]);
            }
            if (!by_rows && nt > 1) {
#pragma omp barrier
            }
            // dh[rows, units] = dz[rows, :] W_hh[:, units]
            backward_product<T>(s, W, rowwise, by_rows, partials.data(), w_hh, H, H, dz + (t * B + s.r0) * H,
                                dh + s.r0 * H, false, packed.data(), step % 2 == 1);
        }
    }
}

// ---- the time-independent matmuls: input projection, dx and the weight gradients -------------------
//
// C (M × N, ldc) = op(A) · op(B), + bias (N) on every row where given, or += with accumulate. op(A)
// (M × K) is A (M × K, row stride lda) or, with a_t, the transpose of A (K × M, lda); op(B) (K × N) is
// B (K × N, ldb) or, with b_t, the transpose of B (N × K, ldb). The sequences' panel kernel on blocks:
// KC × NC of op(B) packed into panels (a block fits a core's L2, one panel its L1) and MC × KC of op(A)
// packed by rows. Each thread takes a slice of C's rows, or of its columns where C is wider than it is
// tall, and packs its own blocks (what two threads would both pack is then the smaller operand), so
// the threads never wait for each other. This is what the fast path's large matmuls run where torch's BLAS would leave
// this build's vectors half used (models.cpu_kernels.own_matmul says where).
// A block of op(A), MC × KC, is packed once for all of op(B)'s column blocks; with one block of op(B),
// KC × NC, it stays in a core's L2 (the kernel reads one panel of the one and MR rows of the other from L1).
constexpr int64_t KC = 512, NC = 256, MC = 128 / MR * MR;

// op(B)[k0 : k0 + P.K, j0 : j0 + P.width] packed into P's panels (one block), zeros past its width.
// Each source row is read front to back (a strided walk down a column of a matrix that is not in the
// cache waits on memory for every line), the panels, in L2, are written across.
template <typename T>
void pack_block(const T* B, int64_t ldb, bool b_t, int64_t k0, int64_t j0, Packed<T>& P) {
    constexpr int NR = Packed<T>::NR;
    const int64_t width = P.width;
    if (b_t) {  // op(B)[k, c] = B[c, k]: B's row c is the panel's column c
        for (int64_t p = 0; p < P.panels; ++p) {
            T* out = P.panel(0, p);
            const int cols = static_cast<int>(std::min<int64_t>(NR, width - p * NR));
            const T* rows = B + (j0 + p * NR) * ldb + k0;
            int64_t k = 0;
#ifdef __AVX512F__
            if constexpr (std::is_same_v<T, float>)  // 16 × 16 blocks in registers, zeros past the last column
                for (; k + 16 <= P.K; k += 16)
                    for (int c = 0; c < NR; c += 16)
                        transpose_16x16(rows + c * ldb + k, ldb, std::clamp(cols - c, 0, 16), out + k * NR + c, NR, 16);
#endif
            for (int c = 0; c < NR; ++c)
                for (int64_t kk = k; kk < P.K; ++kk) out[kk * NR + c] = c < cols ? rows[c * ldb + kk] : T(0);
        }
        return;
    }
    for (int64_t k = 0; k < P.K; ++k) {  // B's row k0 + k is row k of every panel
        const T* row = B + (k0 + k) * ldb + j0;
        for (int64_t p = 0; p < P.panels; ++p) {
            T* out = P.panel(0, p) + k * NR;
            const int cols = static_cast<int>(std::min<int64_t>(NR, width - p * NR));
            if (cols == NR) {  // a whole panel row: two vectors
                Simd<T>::store(out, Simd<T>::load(row + p * NR));
                Simd<T>::store(out + NR / 2, Simd<T>::load(row + p * NR + NR / 2));
            } else {
                for (int c = 0; c < NR; ++c) out[c] = c < cols ? row[p * NR + c] : T(0);
            }
        }
    }
}

// op(A)[i0 : i0 + M, k0 : k0 + K] packed as pack_rows<T, MR> packs a row-major matrix.
template <typename T>
void pack_block_rows(const T* A, int64_t lda, bool a_t, int64_t i0, int64_t k0, int64_t M, int64_t K, T* out) {
    if (!a_t) return pack_rows<T, MR>(A + i0 * lda + k0, lda, M, K, out);
    for (int64_t k = 0; k < K; ++k) {  // op(A)[r, k] = A[k, r]: A's row k0 + k, front to back, is every block's k
        const T* a = A + (k0 + k) * lda + i0;
        int64_t b = 0;
        for (; (b + 1) * MR <= M; ++b) std::memcpy(out + b * K * MR + k * MR, a + b * MR, MR * sizeof(T));
        if (b * MR < M) std::memcpy(out + b * K * MR + k * MR, a + b * MR, (M - b * MR) * sizeof(T));
    }
}

template <typename T>
void matmul(const T* A, int64_t lda, bool a_t, const T* B, int64_t ldb, bool b_t, const T* bias, T* C, int64_t ldc,
            int64_t M, int64_t N, int64_t K, bool accumulate, int threads) {
    if (M <= 0 || N <= 0) return;
    if (K <= 0) {  // an empty sum: C is the bias, or zero, or left as it is
        if (!accumulate)
            for (int64_t i = 0; i < M; ++i)
                for (int64_t j = 0; j < N; ++j) C[i * ldc + j] = bias ? bias[j] : T(0);
        else if (bias)
            for (int64_t i = 0; i < M; ++i)
                for (int64_t j = 0; j < N; ++j) C[i * ldc + j] += bias[j];
        return;
    }
    constexpr int NR = Packed<T>::NR;
    const bool by_rows = M >= N;
    const int64_t tiles = by_rows ? (M + MR - 1) / MR : (N + NR - 1) / NR, tile = by_rows ? MR : NR;
    threads = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(threads, tiles)));
#pragma omp parallel num_threads(threads)
    {
        const int p = thread_id(), nt = team_size();
        const int64_t lo = tiles * p / nt * tile, hi = tiles * (p + 1) / nt * tile;  // this thread's slice
        const int64_t i0 = by_rows ? std::min(M, lo) : 0, i1 = by_rows ? std::min(M, hi) : M;
        const int64_t j_begin = by_rows ? 0 : std::min(N, lo), j_end = by_rows ? N : std::min(N, hi);
        Buffer<T> a_pack(packed_size(MC, KC)), b_pack(Packed<T>::size(1, KC, NC));
        for (int64_t m0 = i0; m0 < i1; m0 += MC)
            for (int64_t k0 = 0; k0 < K && j_begin < j_end; k0 += KC) {
                const int64_t rows = std::min(MC, i1 - m0), kc = std::min(KC, K - k0);
                pack_block_rows<T>(A, lda, a_t, m0, k0, rows, kc, a_pack.data());
                for (int64_t j0 = j_begin; j0 < j_end; j0 += NC) {
                    Packed<T> P(1, kc, std::min(NC, j_end - j0), b_pack.data());
                    pack_block<T>(B, ldb, b_t, k0, j0, P);
                    T* block = C + m0 * ldc + j0;
                    bool add = accumulate || k0 > 0;
                    if (k0 == 0 && bias) {  // the bias first, then the products are added to it
                        for (int64_t r = 0; r < rows; ++r)
                            for (int64_t j = 0; j < P.width; ++j)
                                block[r * ldc + j] = accumulate ? block[r * ldc + j] + bias[j0 + j] : bias[j0 + j];
                        add = true;
                    }
                    matmul_columns<T>(P, 0, 0, P.width, rows, a_pack.data(), block, ldc, add);
                }
            }
    }
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
    extern "C" void tanh_##suffix(T* x, int64_t n) { tanh_inplace<T>(x, n); }                             \
    extern "C" void matmul_##suffix(const T* A, int64_t lda, int64_t a_t, const T* B, int64_t ldb, int64_t b_t, \
                                    const T* bias, T* C, int64_t ldc, int64_t M, int64_t N, int64_t K,        \
                                    int64_t accumulate, int64_t threads) {                                   \
        matmul<T>(A, lda, a_t != 0, B, ldb, b_t != 0, bias, C, ldc, M, N, K, accumulate != 0,                 \
                  static_cast<int>(threads));                                                               \
    }                                                                                                       \
    extern "C" int64_t lstm_packed_size_##suffix(int64_t B, int64_t H) {                                    \
        return B == 1 ? 0 : Packed<T>::size(4, H, H);                                                        \
    }                                                                                                       \
    extern "C" void lstm_forward_sequence_##suffix(T* acts, const T* x, const T* w_ih, int64_t I,            \
                                                   const T* bias, T* h, T* c, T* k, const T* w_hh, int64_t T_, \
                                                   int64_t B, int64_t H, int64_t reverse, int64_t threads,    \
                                                   int64_t by_rows, T* w_packed, int64_t w_packed_ready,      \
                                                   int64_t c_two_rows, const T* h0, const T* c0, T* h_n,      \
                                                   T* c_n, T* out) {                                          \
        auto run = [&](auto for_backward, auto has_bias, auto input) {                                          \
            lstm_forward_sequence<T, decltype(for_backward)::value, decltype(has_bias)::value,                    \
                                  decltype(input)::value>(acts, x, w_ih, I, bias, h, c, k, w_hh, T_, B, H,   \
                                                          reverse, threads, by_rows, w_packed, w_packed_ready, \
                                                          c_two_rows, h0, c0, h_n, c_n, out);               \
        };                                                                                                  \
        auto with_input = [&](auto for_backward, auto has_bias) {                                               \
            if (x) run(for_backward, has_bias, std::true_type{});                                               \
            else run(for_backward, has_bias, std::false_type{});                                                \
        };                                                                                                  \
        if (k && bias) with_input(std::true_type{}, std::true_type{});                                      \
        else if (k) with_input(std::true_type{}, std::false_type{});                                        \
        else if (bias) with_input(std::false_type{}, std::true_type{});                                     \
        else with_input(std::false_type{}, std::false_type{});                                              \
    }                                                                                                       \
    extern "C" void lstm_backward_sequence_##suffix(const T* d_out, T* dh, T* dc, const T* k, const T* acts,  \
                                                    T* dz, const T* w_hh, int64_t T_, int64_t B, int64_t H,   \
                                                    int64_t reverse, int64_t threads, int64_t by_rows,        \
                                                    const T* w_ih, int64_t I, T* d_x, T* d_b) {               \
        lstm_backward_sequence<T>(d_out, dh, dc, k, acts, dz, w_hh, T_, B, H, reverse, threads, by_rows, w_ih, I, \
                                  d_x, d_b);                                                                \
    }                                                                                                       \
    extern "C" void gru_forward_sequence_##suffix(const T* x, const T* bias, T* hh, T* rz, T* n, T* h,         \
                                                  const T* w_hh, int64_t T_, int64_t B, int64_t H,            \
                                                  int64_t reverse, int64_t threads, int64_t by_rows) {        \
        gru_forward_sequence<T>(x, bias, hh, rz, n, h, w_hh, T_, B, H, reverse, threads, by_rows);            \
    }                                                                                                       \
    extern "C" void gru_backward_sequence_##suffix(const T* d_out, T* dh, const T* rz, const T* n, const T* hh, \
                                                   const T* h_prev, T* d_hh, T* d_xn, const T* w_hh, int64_t T_, \
                                                   int64_t B, int64_t H, int64_t reverse, int64_t threads,    \
                                                   int64_t by_rows) {                                         \
        gru_backward_sequence<T>(d_out, dh, rz, n, hh, h_prev, d_hh, d_xn, w_hh, T_, B, H, reverse, threads,  \
                                 by_rows);                                                                  \
    }                                                                                                       \
    extern "C" void rnn_forward_sequence_##suffix(const T* x, const T* bias, T* h, const T* w_hh, int64_t T_, \
                                                  int64_t B, int64_t H, int64_t reverse, int64_t relu,        \
                                                  int64_t threads, int64_t by_rows) {                         \
        if (bias) rnn_forward_sequence<T, true>(x, bias, h, w_hh, T_, B, H, reverse, relu, threads, by_rows);  \
        else rnn_forward_sequence<T, false>(x, bias, h, w_hh, T_, B, H, reverse, relu, threads, by_rows);      \
    }                                                                                                       \
    extern "C" void rnn_backward_sequence_##suffix(const T* d_out, T* dh, const T* out, T* dz, const T* w_hh,  \
                                                   int64_t T_, int64_t B, int64_t H, int64_t reverse,         \
                                                   int64_t relu, int64_t threads, int64_t by_rows) {          \
        rnn_backward_sequence<T>(d_out, dh, out, dz, w_hh, T_, B, H, reverse, relu, threads, by_rows);        \
    }

extern "C" int64_t vector_bytes() { return kVectorBytes; }  // the width the matmul kernels compute in

extern "C" int64_t set_panel_prefetch(int64_t on) {  // returns the setting it replaces
    const bool before = panel_prefetch;
    panel_prefetch = on != 0;
    return before;
}

RNN_BY_HAND_EXPORT(float, f32)
RNN_BY_HAND_EXPORT(double, f64)
