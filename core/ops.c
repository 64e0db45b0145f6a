/* ops.c: kernels for one op each, forward and backward. Dense products go through eapig_gemm
 * and the row-wise kernels through eapig_parallel_for (core/threads.c): each serial kernel
 * below works on a range of rows, and its public wrapper splits the rows over the threads.
 *
 * N = token rows, D = model width, F = MLP width, H = heads, Dh = head width, P = positions.
 */
#include "ops.h"

#include <cblas.h>
#include <math.h>
#include <string.h>

#include "internal.h"

void linear_forward(float *out, const float *inp, const float *w, const float *bias, size_t M, size_t N,
                    size_t K, size_t ld_out) {
    if (bias) {
        for (size_t i = 0; i < M; i++) memcpy(out + i * ld_out, bias, N * sizeof(float));
    }
    eapig_gemm(0, 1, M, N, K, 1.0f, inp, K, w, K, bias ? 1.0f : 0.0f, out, ld_out);
}

void linear_backward_input(float *dinp, const float *dout, const float *w, size_t M, size_t N, size_t K,
                           size_t ld_dout, int accumulate) {
    eapig_gemm(0, 0, M, K, N, 1.0f, dout, ld_dout, w, K, accumulate ? 1.0f : 0.0f, dinp, K);
}

void linear_forward_naive(float *out, const float *inp, const float *w, const float *bias, size_t M,
                          size_t N, size_t K) {
    for (size_t i = 0; i < M; i++)
        for (size_t j = 0; j < N; j++) {
            double acc = bias ? bias[j] : 0.0;
            for (size_t k = 0; k < K; k++) acc += (double)inp[i * K + k] * w[j * K + k];
            out[i * N + j] = (float)acc;
        }
}

EAPIG_VECTOR_CLONES
static void norm_forward_rows(float *out, float *xhat, float *rstd, const float *inp, const float *w, const float *b,
                              size_t N, size_t D, int rms, float eps) {
    /* Mean and variance in double, each over eight partial sums: the compiler vectorises them
     * without reassociating (no fast-math), where one running sum would be a chain of D
     * dependent additions. */
    for (size_t n = 0; n < N; n++) {
        const float *x = inp + n * D;
        double mean = 0.0, var = 0.0, s[8];
        size_t i;
        if (!rms) {
            for (size_t k = 0; k < 8; k++) s[k] = 0.0;
            for (i = 0; i + 8 <= D; i += 8)
                for (size_t k = 0; k < 8; k++) s[k] += x[i + k];
            for (; i < D; i++) mean += x[i];
            for (size_t k = 0; k < 8; k++) mean += s[k];
            mean /= (double)D;
        }
        for (size_t k = 0; k < 8; k++) s[k] = 0.0;
        for (i = 0; i + 8 <= D; i += 8)
            for (size_t k = 0; k < 8; k++) s[k] += (x[i + k] - mean) * (x[i + k] - mean);
        for (; i < D; i++) var += (x[i] - mean) * (x[i] - mean);
        for (size_t k = 0; k < 8; k++) var += s[k];
        var /= (double)D;
        float r = (float)(1.0 / sqrt(var + eps));
        float *xh = xhat + n * D, *o = out + n * D;
        for (size_t i = 0; i < D; i++) {
            xh[i] = (float)((x[i] - mean) * r);
            o[i] = xh[i] * w[i] + (rms ? 0.0f : b[i]);
        }
        rstd[n] = r;
    }
}

EAPIG_VECTOR_CLONES
static void norm_backward_rows(float *dinp, const float *dout, const float *xhat, const float *rstd, const float *w,
                               size_t N, size_t D, int rms) {
    /* 32 partial sums per reduction let the compiler vectorise without reassociating (no
     * fast-math), in several independent chains of vector adds (one chain of 8 waited on each
     * add's latency: 3.6x slower); float is ample for D terms of this size. */
    enum { PARTS = 32 };
    for (size_t n = 0; n < N; n++) {
        const float *dy = dout + n * D, *xh = xhat + n * D;
        float s1[PARTS] = {0}, s2[PARTS] = {0};
        size_t i = 0;
        for (; i + PARTS <= D; i += PARTS)
            for (size_t k = 0; k < PARTS; k++) {
                float dxh = dy[i + k] * w[i + k];
                s1[k] += dxh;
                s2[k] += dxh * xh[i + k];
            }
        float mean_dxh = 0.0f, mean_dxh_xh = 0.0f;
        for (; i < D; i++) {
            float dxh = dy[i] * w[i];
            mean_dxh += dxh;
            mean_dxh_xh += dxh * xh[i];
        }
        for (size_t k = 0; k < PARTS; k++) mean_dxh += s1[k], mean_dxh_xh += s2[k];
        mean_dxh /= (float)D;
        mean_dxh_xh /= (float)D;
        if (rms) mean_dxh = 0.0f; /* RMSNorm does not subtract the mean */
        float *dx = dinp + n * D;
        float r = rstd[n];
        for (i = 0; i < D; i++) dx[i] = r * (dy[i] * w[i] - mean_dxh - xh[i] * mean_dxh_xh);
    }
}

static const float GELU_C = 0.7978845608f; /* sqrt(2/pi) */

/* e^x in float without a library call, so that the activation loops vectorise (glibc's expf is
 * a scalar call each element; these loops were a tenth of an attribution's time). Range
 * reduction x = n ln2 + r with |r| <= ln2/2 (ln2 split in two for exact n ln2), e^r by its
 * Taylor series to r^7 (truncation below 6e-9 relative), 2^n from the exponent bits. Within 1
 * ulp of expf (checked over [-87, 88] in relative steps of 1e-5); x is clamped to [-87, 88], where e^x is a normal float (the activations divide by
 * 1 + e^x, so the clamp changes no result beyond float's resolution). */
static inline float exp_vec(float x) {
    x = x > 88.0f ? 88.0f : x;
    x = x < -87.0f ? -87.0f : x;
    const float shifter = 12582912.0f; /* 1.5 * 2^23: adding it rounds to an integer */
    float t = x * 1.44269504f + shifter;
    float n = t - shifter;
    float r = (x - n * 0.693145752f) - n * 1.42860677e-6f;
    float p = 1.0f / 5040.0f;
    p = p * r + 1.0f / 720.0f;
    p = p * r + 1.0f / 120.0f;
    p = p * r + 1.0f / 24.0f;
    p = p * r + 1.0f / 6.0f;
    p = p * r + 0.5f;
    p = p * r + 1.0f;
    p = p * r + 1.0f;
    int32_t e = (int32_t)n + 127;
    uint32_t bits = (uint32_t)e << 23;
    float scale;
    memcpy(&scale, &bits, sizeof scale);
    return p * scale;
}

/* Pointwise activations in float: they are a tenth of the forward's time in double. */
EAPIG_VECTOR_CLONES
static void act_forward_range(float *out, const float *pre, const float *up, size_t n, int act) {
    switch (act) {
    case EAPIG_ACT_GELU_TANH:
        /* 0.5 x (1 + tanh u) = x sigmoid(2u): one expf instead of a tanhf */
        for (size_t i = 0; i < n; i++) {
            float x = pre[i];
            out[i] = x / (1.0f + exp_vec(-2.0f * GELU_C * (x + 0.044715f * x * x * x)));
        }
        break;
    case EAPIG_ACT_GELU_ERF:
        for (size_t i = 0; i < n; i++) out[i] = 0.5f * pre[i] * (1.0f + erff(pre[i] * 0.70710678f));
        break;
    case EAPIG_ACT_RELU:
        for (size_t i = 0; i < n; i++) out[i] = pre[i] > 0.0f ? pre[i] : 0.0f;
        break;
    case EAPIG_ACT_GELU_TANH_GATED:
        for (size_t i = 0; i < n; i++) {
            float x = pre[i];
            out[i] = x / (1.0f + exp_vec(-2.0f * GELU_C * (x + 0.044715f * x * x * x))) * up[i];
        }
        break;
    default: /* SiLU-gated */
        for (size_t i = 0; i < n; i++) out[i] = pre[i] / (1.0f + exp_vec(-pre[i])) * up[i];
        break;
    }
}

EAPIG_VECTOR_CLONES
static void act_backward_range(float *dpre, float *dup, const float *dout, const float *pre, const float *up, size_t n,
                               int act) {
    switch (act) {
    case EAPIG_ACT_GELU_TANH:
        for (size_t i = 0; i < n; i++) {
            float x = pre[i];
            float t = 2.0f / (1.0f + exp_vec(-2.0f * GELU_C * (x + 0.044715f * x * x * x))) - 1.0f; /* tanh u */
            float d = 0.5f * (1.0f + t) + 0.5f * x * (1.0f - t * t) * GELU_C * (1.0f + 3.0f * 0.044715f * x * x);
            dpre[i] = dout[i] * d;
        }
        break;
    case EAPIG_ACT_GELU_ERF:
        for (size_t i = 0; i < n; i++) {
            float x = pre[i];
            float d = 0.5f * (1.0f + erff(x * 0.70710678f)) + x * expf(-0.5f * x * x) * 0.39894228f;
            dpre[i] = dout[i] * d;
        }
        break;
    case EAPIG_ACT_RELU:
        for (size_t i = 0; i < n; i++) dpre[i] = pre[i] > 0.0f ? dout[i] : 0.0f;
        break;
    case EAPIG_ACT_GELU_TANH_GATED:
        for (size_t i = 0; i < n; i++) {
            float x = pre[i];
            float e = 1.0f / (1.0f + exp_vec(-2.0f * GELU_C * (x + 0.044715f * x * x * x)));
            float t = 2.0f * e - 1.0f; /* tanh u */
            float d = 0.5f * (1.0f + t) + 0.5f * x * (1.0f - t * t) * GELU_C * (1.0f + 3.0f * 0.044715f * x * x);
            dup[i] = dout[i] * x * e;
            dpre[i] = dout[i] * d * up[i];
        }
        break;
    default: /* SiLU-gated */
        for (size_t i = 0; i < n; i++) {
            float x = pre[i], s = 1.0f / (1.0f + exp_vec(-x));
            dup[i] = dout[i] * x * s;
            dpre[i] = dout[i] * s * (1.0f + x * (1.0f - s)) * up[i];
        }
        break;
    }
}

/* The public row-wise kernels: their arguments, and the range each thread runs. Below
 * SERIAL_BELOW floats in all a kernel runs on the calling thread. */
enum { SERIAL_BELOW = 1 << 15, ROW_GRAIN = 4, ELEM_GRAIN = 4096 };

typedef struct {
    float *out, *xhat, *rstd, *dinp, *dup;
    const float *inp, *dout, *pre, *up, *w, *b;
    const float *c_xhat, *c_rstd;
    size_t D;
    int rms, act;
    float eps;
} rows_args;

/* fn over [0, n) split over the threads, or on the calling thread when the kernel touches fewer
 * than SERIAL_BELOW floats per input (a split costs more than it saves). */
static void split_rows(size_t n, size_t floats, size_t grain, eapig_range_fn fn, rows_args *a) {
    if (floats < SERIAL_BELOW)
        fn(a, 0, n, 0);
    else
        eapig_parallel_for(n, grain, fn, a);
}

static void norm_forward_range(void *ctx, size_t r0, size_t r1, size_t index) {
    const rows_args *a = ctx;
    (void)index;
    norm_forward_rows(a->out + r0 * a->D, a->xhat + r0 * a->D, a->rstd + r0, a->inp + r0 * a->D, a->w, a->b, r1 - r0,
                      a->D, a->rms, a->eps);
}

void norm_forward(float *out, float *xhat, float *rstd, const float *inp, const float *w, const float *b,
                  size_t N, size_t D, int rms, float eps) {
    rows_args a = {.out = out, .xhat = xhat, .rstd = rstd, .inp = inp, .w = w, .b = b, .D = D, .rms = rms, .eps = eps};
    split_rows(N, N * D, ROW_GRAIN, norm_forward_range, &a);
}

static void norm_backward_range(void *ctx, size_t r0, size_t r1, size_t index) {
    const rows_args *a = ctx;
    (void)index;
    norm_backward_rows(a->dinp + r0 * a->D, a->dout + r0 * a->D, a->c_xhat + r0 * a->D, a->c_rstd + r0, a->w, r1 - r0,
                       a->D, a->rms);
}

void norm_backward(float *dinp, const float *dout, const float *xhat, const float *rstd, const float *w,
                   size_t N, size_t D, int rms) {
    rows_args a = {.dinp = dinp, .dout = dout, .c_xhat = xhat, .c_rstd = rstd, .w = w, .D = D, .rms = rms};
    split_rows(N, N * D, ROW_GRAIN, norm_backward_range, &a);
}

static void act_forward_part(void *ctx, size_t i0, size_t i1, size_t index) {
    const rows_args *a = ctx;
    (void)index;
    act_forward_range(a->out + i0, a->pre + i0, a->up ? a->up + i0 : NULL, i1 - i0, a->act);
}

void act_forward(float *out, const float *pre, const float *up, size_t n, int act) {
    rows_args a = {.out = out, .pre = pre, .up = up, .act = act};
    split_rows(n, n, ELEM_GRAIN, act_forward_part, &a);
}

static void act_backward_part(void *ctx, size_t i0, size_t i1, size_t index) {
    const rows_args *a = ctx;
    (void)index;
    act_backward_range(a->dinp + i0, a->dup ? a->dup + i0 : NULL, a->dout + i0, a->pre + i0, a->up ? a->up + i0 : NULL,
                       i1 - i0, a->act);
}

void act_backward(float *dpre, float *dup, const float *dout, const float *pre, const float *up, size_t n,
                  int act) {
    rows_args a = {.dinp = dpre, .dup = dup, .dout = dout, .pre = pre, .up = up, .act = act};
    split_rows(n, n, ELEM_GRAIN, act_backward_part, &a);
}

static void add_range(void *ctx, size_t b, size_t e, size_t index) {
    const rows_args *a = ctx;
    (void)index;
    for (size_t i = b; i < e; i++) a->out[i] += a->inp[i];
}

void add_into(float *y, const float *x, size_t n) {
    rows_args a = {.out = y, .inp = x};
    split_rows(n, n, ELEM_GRAIN, add_range, &a);
}

void rope_apply(float *x, size_t B, size_t P, size_t H, size_t Dh, size_t rot, const float *inv_freq,
                int inverse) {
    size_t half = rot / 2;
    for (size_t p = 0; p < P; p++) {
        for (size_t i = 0; i < half; i++) {
            float angle = (float)p * inv_freq[i];
            float c = cosf(angle), s = inverse ? -sinf(angle) : sinf(angle);
            for (size_t b = 0; b < B; b++)
                for (size_t h = 0; h < H; h++) {
                    float *v = x + ((b * P + p) * H + h) * Dh;
                    float x1 = v[i], x2 = v[i + half];
                    v[i] = x1 * c - x2 * s;
                    v[i + half] = x2 * c + x1 * s;
                }
        }
    }
}

/* The keys row i of sequence b may see, [*lo, hi): causal, inside the real length and, with a
 * window, i - j < window. A padded row (i >= len) keeps at least its last key, so its softmax
 * stays finite (nothing real reads it). */
static size_t visible_keys(size_t i, int32_t len, size_t window, size_t *lo) {
    size_t n = i + 1 < (size_t)len ? i + 1 : (size_t)len;
    size_t first = window > 0 && i + 1 > window ? i + 1 - window : 0;
    *lo = first < n ? first : (n > 0 ? n - 1 : 0); /* n >= 1: lengths are checked */
    return n;
}

typedef struct {
    float *z, *att, *dq, *dk, *dv, *scratch;
    const float *q, *k, *v, *dz, *c_att;
    const int32_t *len;
    size_t B, P, H, Dh;
    const attn_params *ap;
} attn_args;

/* Attention of the (row, head) pairs [bh0, bh1): each writes its own probabilities and its own
 * columns of z, so pairs run on any thread. */
static void attention_forward_range(void *ctx, size_t bh0, size_t bh1, size_t index) {
    const attn_args *x = ctx;
    size_t P = x->P, H = x->H, Dh = x->Dh, ld = H * Dh;
    float cap = x->ap->softcap;
    (void)index;
    for (size_t bh = bh0; bh < bh1; bh++) {
        size_t b = bh / H, h = bh % H;
        const float *qb = x->q + b * P * ld + h * Dh, *kb = x->k + b * P * ld + h * Dh, *vb = x->v + b * P * ld + h * Dh;
        float *a = x->att + (b * H + h) * P * P;
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)P, (int)P, (int)Dh, x->ap->scale, qb, (int)ld, kb,
                    (int)ld, 0.0f, a, (int)P);
        for (size_t i = 0; i < P; i++) {
            float *row = a + i * P;
            size_t lo, n = visible_keys(i, x->len[b], x->ap->window, &lo);
            if (cap > 0.0f)
                for (size_t j = lo; j < n; j++) row[j] = cap * tanhf(row[j] / cap);
            float mx = row[lo];
            for (size_t j = lo + 1; j < n; j++) mx = row[j] > mx ? row[j] : mx;
            double sum = 0.0;
            for (size_t j = lo; j < n; j++) {
                row[j] = expf(row[j] - mx);
                sum += row[j];
            }
            for (size_t j = 0; j < lo; j++) row[j] = 0.0f;
            for (size_t j = lo; j < n; j++) row[j] = (float)(row[j] / sum);
            for (size_t j = n; j < P; j++) row[j] = 0.0f;
        }
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)P, (int)Dh, (int)P, 1.0f, a, (int)P, vb, (int)ld,
                    0.0f, x->z + b * P * ld + h * Dh, (int)ld);
    }
}

/* Below this many multiply-adds in all, attention runs on the calling thread. */
static const double ATTN_SPLIT_FROM = 1 << 18;

void attention_forward(float *z, float *att, const float *q, const float *k, const float *v,
                       const int32_t *len, size_t B, size_t P, size_t H, size_t Dh, const attn_params *ap) {
    attn_args x = {.z = z, .att = att, .q = q, .k = k, .v = v, .len = len, .B = B, .P = P, .H = H, .Dh = Dh, .ap = ap};
    if ((double)B * H * P * P * Dh < ATTN_SPLIT_FROM)
        attention_forward_range(&x, 0, B * H, 0);
    else
        eapig_parallel_for(B * H, 1, attention_forward_range, &x);
}

/* The backward of the (row, head) pairs [bh0, bh1), with range `index`'s own (2, P, P) scratch. */
static void attention_backward_range(void *ctx, size_t bh0, size_t bh1, size_t index) {
    const attn_args *x = ctx;
    size_t P = x->P, H = x->H, Dh = x->Dh, ld = H * Dh;
    const attn_params *ap = x->ap;
    float cap = ap->softcap;
    float *scratch = x->scratch + index * 2 * P * P;
    float *raw = scratch + P * P; /* soft-capping: the scores before the cap, recomputed */
    const float *q = x->q, *k = x->k, *v = x->v, *dz = x->dz;
    for (size_t bh = bh0; bh < bh1; bh++) {
        size_t b = bh / H, h = bh % H;
        size_t off = b * P * ld + h * Dh;
        const float *a = x->c_att + (b * H + h) * P * P;
        /* dV = A^T dZ; dA = dZ V^T */
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (int)P, (int)Dh, (int)P, 1.0f, a, (int)P, dz + off,
                    (int)ld, 0.0f, x->dv + off, (int)ld);
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)P, (int)P, (int)Dh, 1.0f, dz + off, (int)ld,
                    v + off, (int)ld, 0.0f, scratch, (int)P);
        /* softmax backward: dS = A * (dA - sum_j A dA); masked keys (padding, future, outside the
         * window) have A = 0, so their dS is 0 with no mask of its own */
        for (size_t i = 0; i < P; i++) {
            const float *ar = a + i * P;
            float *dr = scratch + i * P;
            double dot = 0.0;
            for (size_t j = 0; j < P; j++) dot += (double)ar[j] * dr[j];
            for (size_t j = 0; j < P; j++) dr[j] = (float)(ar[j] * (dr[j] - dot));
        }
        if (cap > 0.0f) { /* d/ds c tanh(s / c) = 1 - tanh^2 */
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)P, (int)P, (int)Dh, ap->scale, q + off,
                        (int)ld, k + off, (int)ld, 0.0f, raw, (int)P);
            for (size_t e = 0; e < P * P; e++) {
                float t = tanhf(raw[e] / cap);
                scratch[e] *= 1.0f - t * t;
            }
        }
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)P, (int)Dh, (int)P, ap->scale, scratch,
                    (int)P, k + off, (int)ld, 0.0f, x->dq + off, (int)ld);
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (int)P, (int)Dh, (int)P, ap->scale, scratch, (int)P,
                    q + off, (int)ld, 0.0f, x->dk + off, (int)ld);
    }
}

void attention_backward(float *dq, float *dk, float *dv, float *scratch, const float *dz, const float *att,
                        const float *q, const float *k, const float *v, size_t B, size_t P, size_t H, size_t Dh,
                        const attn_params *ap) {
    attn_args x = {.dq = dq, .dk = dk, .dv = dv, .scratch = scratch, .dz = dz, .c_att = att, .q = q, .k = k, .v = v,
                   .B = B, .P = P, .H = H, .Dh = Dh, .ap = ap};
    if ((double)B * H * P * P * Dh < ATTN_SPLIT_FROM)
        attention_backward_range(&x, 0, B * H, 0);
    else
        eapig_parallel_for(B * H, 1, attention_backward_range, &x);
}
