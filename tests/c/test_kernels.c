/* test_kernels.c: the kernels of core/ops.c tested directly from C (llm.c's test_gpt2.c style),
 * for the ops whose indexing is easiest to get wrong: norms, RoPE, causal attention with right
 * padding, the MLP activations and the dense products; and core/threads.c's split of them over
 * threads (eapig_gemm by rows, columns and inner dimension; the row-wise kernels by rows), at
 * one, two and three threads; and core/edge_product.c's staircase product of the edge scores.
 *
 * Each forward is compared with a plain double-precision reference written here from the
 * definition; each backward is compared with central differences of that reference applied to
 * the loss <dout, f(x)>. Prints one line per check and exits 1 when any fails.
 *
 * N = token rows, D = model width, B = batch rows, P = positions, H = heads, Dh = head width.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "eapig.h"
#include "internal.h"
#include "ops.h"

static int failures = 0;

/* A fixed generator so every run checks the same numbers (xorshift64*). */
static unsigned long long rng_state = 0x9E3779B97F4A7C15ULL;
static float uniform(void) { /* in [-1, 1) */
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    unsigned long long r = rng_state * 2685821657736338717ULL;
    return (float)((double)(r >> 11) / 9007199254740992.0 * 2.0 - 1.0);
}
static float *random_floats(size_t n, float scale) {
    float *x = malloc(n * sizeof(float));
    for (size_t i = 0; i < n; i++) x[i] = scale * uniform();
    return x;
}

/* max |a - b| / max(1, max |b|): one number per check, reported beside its tolerance. */
static void check(const char *what, const float *got, const double *want, size_t n, double tol) {
    double worst = 0.0, scale = 1.0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)got[i] - want[i]);
        if (!(d <= worst)) worst = d; /* NaN counts as the worst */
        if (fabs(want[i]) > scale) scale = fabs(want[i]);
    }
    double rel = worst / scale;
    int ok = rel <= tol;
    printf("%-56s max rel diff %.3g (tol %.1g) %s\n", what, rel, tol, ok ? "ok" : "FAIL");
    if (!ok) failures++;
}

/* ---- references in double ------------------------------------------------------------- */

static void norm_ref(double *out, const double *x, const float *w, const float *b, size_t N, size_t D, int rms,
                     double eps) {
    for (size_t n = 0; n < N; n++) {
        double mean = 0.0, var = 0.0;
        if (!rms) {
            for (size_t i = 0; i < D; i++) mean += x[n * D + i];
            mean /= (double)D;
        }
        for (size_t i = 0; i < D; i++) var += (x[n * D + i] - mean) * (x[n * D + i] - mean);
        var /= (double)D;
        for (size_t i = 0; i < D; i++)
            out[n * D + i] = (x[n * D + i] - mean) / sqrt(var + eps) * w[i] + (rms ? 0.0 : b[i]);
    }
}

/* Causal attention with right padding: query i of row b sees keys j <= i with j < len[b] and,
 * with a window, i - j < window (a padded row keeps at least its last key); scores are
 * scale * q.k, soft-capped to c tanh(s / c) when c > 0. */
static void attention_ref(double *z, const double *q, const double *k, const double *v, const int32_t *len,
                          size_t B, size_t P, size_t H, size_t Dh, const attn_params *ap) {
    size_t ld = H * Dh;
    double *s = malloc(P * sizeof(double));
    for (size_t b = 0; b < B; b++)
        for (size_t h = 0; h < H; h++)
            for (size_t i = 0; i < P; i++) {
                size_t n = i + 1 < (size_t)len[b] ? i + 1 : (size_t)len[b];
                size_t lo = ap->window > 0 && i + 1 > ap->window ? i + 1 - ap->window : 0;
                if (lo > n - 1) lo = n - 1;
                double mx = -INFINITY, sum = 0.0;
                for (size_t j = lo; j < n; j++) {
                    double dot = 0.0;
                    for (size_t d = 0; d < Dh; d++) dot += q[(b * P + i) * ld + h * Dh + d] * k[(b * P + j) * ld + h * Dh + d];
                    s[j] = dot * ap->scale;
                    if (ap->softcap > 0) s[j] = ap->softcap * tanh(s[j] / ap->softcap);
                    if (s[j] > mx) mx = s[j];
                }
                for (size_t j = lo; j < n; j++) sum += (s[j] = exp(s[j] - mx));
                for (size_t d = 0; d < Dh; d++) {
                    double acc = 0.0;
                    for (size_t j = lo; j < n; j++) acc += s[j] / sum * v[(b * P + j) * ld + h * Dh + d];
                    z[(b * P + i) * ld + h * Dh + d] = acc;
                }
            }
    free(s);
}

/* Rotate-half RoPE on the first rot dims of each head, angle = position * theta^(-2i/rot). */
static void rope_ref(double *x, size_t B, size_t P, size_t H, size_t Dh, size_t rot, double theta) {
    size_t half = rot / 2;
    for (size_t b = 0; b < B; b++)
        for (size_t p = 0; p < P; p++)
            for (size_t h = 0; h < H; h++)
                for (size_t i = 0; i < half; i++) {
                    double a = (double)p * pow(theta, -(double)(2 * i) / (double)rot);
                    double *v = x + ((b * P + p) * H + h) * Dh;
                    double x1 = v[i], x2 = v[i + half];
                    v[i] = x1 * cos(a) - x2 * sin(a);
                    v[i + half] = x2 * cos(a) + x1 * sin(a);
                }
}

static double act_ref(double x, double up, int act) {
    switch (act) {
    case EAPIG_ACT_GELU_TANH: return 0.5 * x * (1.0 + tanh(sqrt(2.0 / M_PI) * (x + 0.044715 * x * x * x)));
    case EAPIG_ACT_GELU_ERF: return 0.5 * x * (1.0 + erf(x / sqrt(2.0)));
    case EAPIG_ACT_RELU: return x > 0.0 ? x : 0.0;
    case EAPIG_ACT_GELU_TANH_GATED:
        return 0.5 * x * (1.0 + tanh(sqrt(2.0 / M_PI) * (x + 0.044715 * x * x * x))) * up;
    default: return x / (1.0 + exp(-x)) * up;
    }
}

static double *to_double(const float *x, size_t n) {
    double *y = malloc(n * sizeof(double));
    for (size_t i = 0; i < n; i++) y[i] = x[i];
    return y;
}

/* ---- checks --------------------------------------------------------------------------- */

static void test_linear(void) {
    size_t M = 7, N = 5, K = 9;
    float *x = random_floats(M * K, 1.0f), *w = random_floats(N * K, 1.0f), *bias = random_floats(N, 1.0f);
    float *fast = malloc(M * N * sizeof(float)), *naive = malloc(M * N * sizeof(float));
    double *want = malloc(M * N * sizeof(double));
    linear_forward(fast, x, w, bias, M, N, K, N);
    linear_forward_naive(naive, x, w, bias, M, N, K);
    for (size_t i = 0; i < M * N; i++) want[i] = naive[i];
    check("linear_forward vs the naive kernel", fast, want, M * N, 1e-5);
    /* dinp = dout @ W against the definition */
    float *dout = random_floats(M * N, 1.0f), *dinp = malloc(M * K * sizeof(float));
    double *dwant = malloc(M * K * sizeof(double));
    linear_backward_input(dinp, dout, w, M, N, K, N, 0);
    for (size_t i = 0; i < M; i++)
        for (size_t k = 0; k < K; k++) {
            double acc = 0.0;
            for (size_t j = 0; j < N; j++) acc += (double)dout[i * N + j] * w[j * K + k];
            dwant[i * K + k] = acc;
        }
    check("linear_backward_input vs dout @ W", dinp, dwant, M * K, 1e-5);
    free(x), free(w), free(bias), free(fast), free(naive), free(want), free(dout), free(dinp), free(dwant);
}

static void test_norm(int rms) {
    size_t N = 5, D = 19; /* D not a multiple of 8: the vectorised tail runs too */
    double eps = 1e-5;
    float *x = random_floats(N * D, 2.0f), *w = random_floats(D, 1.0f), *b = random_floats(D, 1.0f);
    float *out = malloc(N * D * sizeof(float)), *xhat = malloc(N * D * sizeof(float));
    float *rstd = malloc(N * sizeof(float)), *dout = random_floats(N * D, 1.0f), *dinp = malloc(N * D * sizeof(float));
    double *xd = to_double(x, N * D), *ref = malloc(N * D * sizeof(double)), *fd = malloc(N * D * sizeof(double));
    norm_forward(out, xhat, rstd, x, w, b, N, D, rms, (float)eps);
    norm_ref(ref, xd, w, b, N, D, rms, eps);
    check(rms ? "norm_forward (RMSNorm)" : "norm_forward (LayerNorm)", out, ref, N * D, 1e-5);
    norm_backward(dinp, dout, xhat, rstd, w, N, D, rms);
    double h = 1e-6;
    for (size_t i = 0; i < N * D; i++) {
        double keep = xd[i], lp = 0.0, lm = 0.0;
        xd[i] = keep + h;
        norm_ref(ref, xd, w, b, N, D, rms, eps);
        for (size_t j = 0; j < N * D; j++) lp += dout[j] * ref[j];
        xd[i] = keep - h;
        norm_ref(ref, xd, w, b, N, D, rms, eps);
        for (size_t j = 0; j < N * D; j++) lm += dout[j] * ref[j];
        xd[i] = keep;
        fd[i] = (lp - lm) / (2.0 * h);
    }
    check(rms ? "norm_backward (RMSNorm) vs finite differences" : "norm_backward (LayerNorm) vs finite differences",
          dinp, fd, N * D, 1e-4);
    free(x), free(w), free(b), free(out), free(xhat), free(rstd), free(dout), free(dinp), free(xd), free(ref), free(fd);
}

static void test_rope(size_t rot) {
    size_t B = 2, P = 6, H = 3, Dh = 8, n = B * P * H * Dh;
    float theta = 10000.0f;
    float *x = random_floats(n, 1.0f), *y = malloc(n * sizeof(float));
    double *ref = to_double(x, n);
    memcpy(y, x, n * sizeof(float));
    float inv_freq[8];
    for (size_t i = 0; i < rot / 2; i++) inv_freq[i] = (float)pow(theta, -(double)(2 * i) / (double)rot);
    rope_apply(y, B, P, H, Dh, rot, inv_freq, 0);
    rope_ref(ref, B, P, H, Dh, rot, theta);
    char label[64];
    snprintf(label, sizeof label, "rope_apply (rot %zu of %zu) vs rotate-half", rot, Dh);
    check(label, y, ref, n, 1e-5);
    /* The inverse undoes it: the backward of a rotation is its transpose. */
    rope_apply(y, B, P, H, Dh, rot, inv_freq, 1);
    double *orig = to_double(x, n);
    snprintf(label, sizeof label, "rope_apply inverse after forward (rot %zu)", rot);
    check(label, y, orig, n, 1e-5);
    free(x), free(y), free(ref), free(orig);
}

static void test_attention(const attn_params *ap, const char *what) {
    size_t B = 3, P = 5, H = 2, Dh = 4, n = B * P * H * Dh;
    int32_t len[3] = {5, 3, 1};
    char label[128];
    float *q = random_floats(n, 1.5f), *k = random_floats(n, 1.5f), *v = random_floats(n, 1.0f);
    float *z = malloc(n * sizeof(float)), *att = malloc(B * H * P * P * sizeof(float));
    double *qd = to_double(q, n), *kd = to_double(k, n), *vd = to_double(v, n), *zr = malloc(n * sizeof(double));
    attention_forward(z, att, q, k, v, len, B, P, H, Dh, ap);
    attention_ref(zr, qd, kd, vd, len, B, P, H, Dh, ap);
    /* Padded query rows (i >= len) attend to the real keys only: the reference does the same. */
    snprintf(label, sizeof label, "attention_forward vs the definition (padded rows, %s)", what);
    check(label, z, zr, n, 1e-5);

    float *dz = random_floats(n, 1.0f), *scratch = malloc(2 * P * P * sizeof(float));
    float *dq = malloc(n * sizeof(float)), *dk = malloc(n * sizeof(float)), *dv = malloc(n * sizeof(float));
    attention_backward(dq, dk, dv, scratch, dz, att, q, k, v, B, P, H, Dh, ap);
    double *fd = malloc(n * sizeof(double)), h = 1e-6;
    double *inputs[3] = {qd, kd, vd};
    float *grads[3] = {dq, dk, dv};
    const char *names[3] = {"attention_backward dq vs finite differences", "attention_backward dk vs finite differences",
                            "attention_backward dv vs finite differences"};
    for (int which = 0; which < 3; which++) {
        double *xin = inputs[which];
        for (size_t i = 0; i < n; i++) {
            double keep = xin[i], lp = 0.0, lm = 0.0;
            xin[i] = keep + h;
            attention_ref(zr, qd, kd, vd, len, B, P, H, Dh, ap);
            for (size_t j = 0; j < n; j++) lp += dz[j] * zr[j];
            xin[i] = keep - h;
            attention_ref(zr, qd, kd, vd, len, B, P, H, Dh, ap);
            for (size_t j = 0; j < n; j++) lm += dz[j] * zr[j];
            xin[i] = keep;
            fd[i] = (lp - lm) / (2.0 * h);
        }
        snprintf(label, sizeof label, "%s (%s)", names[which], what);
        check(label, grads[which], fd, n, 1e-4);
    }
    free(q), free(k), free(v), free(z), free(att), free(qd), free(kd), free(vd), free(zr);
    free(dz), free(scratch), free(dq), free(dk), free(dv), free(fd);
}

static void test_activation(int act, const char *name) {
    size_t n = 64;
    float *pre = random_floats(n, 3.0f), *up = random_floats(n, 1.0f), *out = malloc(n * sizeof(float));
    float *dout = random_floats(n, 1.0f), *dpre = malloc(n * sizeof(float)), *dup = malloc(n * sizeof(float));
    double *ref = malloc(n * sizeof(double)), *fd = malloc(n * sizeof(double)), *fdu = malloc(n * sizeof(double));
    int gated = act == EAPIG_ACT_SILU_GATED || act == EAPIG_ACT_GELU_TANH_GATED;
    act_forward(out, pre, gated ? up : NULL, n, act);
    for (size_t i = 0; i < n; i++) ref[i] = act_ref(pre[i], up[i], act);
    char label[64];
    snprintf(label, sizeof label, "act_forward (%s)", name);
    check(label, out, ref, n, 1e-5);
    act_backward(dpre, gated ? dup : NULL, dout, pre, gated ? up : NULL, n, act);
    double h = 1e-6;
    for (size_t i = 0; i < n; i++) {
        fd[i] = dout[i] * (act_ref(pre[i] + h, up[i], act) - act_ref(pre[i] - h, up[i], act)) / (2.0 * h);
        fdu[i] = dout[i] * (act_ref(pre[i], up[i] + h, act) - act_ref(pre[i], up[i] - h, act)) / (2.0 * h);
    }
    snprintf(label, sizeof label, "act_backward (%s) vs finite differences", name);
    check(label, dpre, fd, n, 1e-4);
    snprintf(label, sizeof label, "act_backward (%s) d up vs finite differences", name);
    if (gated) check(label, dup, fdu, n, 1e-4);
    free(pre), free(up), free(out), free(dout), free(dpre), free(dup), free(ref), free(fd), free(fdu);
}

/* eapig_gemm against a double reference for each transpose pair, at shapes that take each split:
 * rows (tall), columns (wide, few rows), the inner dimension (tiny output, long K) and none
 * (below the split size); sizes that are not multiples of the split grain, alpha and beta both
 * active. */
static void test_gemm_splits(int threads) {
    static const size_t shapes[][3] = {{203, 97, 61}, {5, 3001, 77}, {13, 9, 40000}, {3, 3, 3}};
    eapig_set_num_threads(threads);
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++)
        for (int ta = 0; ta < 2; ta++)
            for (int tb = 0; tb < 2; tb++) {
                size_t M = shapes[s][0], N = shapes[s][1], K = shapes[s][2];
                size_t lda = (ta ? M : K) + 3, ldb = (tb ? K : N) + 2, ldc = N + 1;
                float *A = random_floats((ta ? K : M) * lda, 1.0f), *B = random_floats((tb ? N : K) * ldb, 1.0f);
                float *C = random_floats(M * ldc, 1.0f), *got = malloc(M * N * sizeof(float));
                double *want = malloc(M * N * sizeof(double));
                for (size_t i = 0; i < M; i++)
                    for (size_t j = 0; j < N; j++) {
                        double acc = 0.0;
                        for (size_t k = 0; k < K; k++)
                            acc += (double)(ta ? A[k * lda + i] : A[i * lda + k]) * (tb ? B[j * ldb + k] : B[k * ldb + j]);
                        want[i * N + j] = 0.5 * acc + 0.25 * C[i * ldc + j];
                    }
                eapig_gemm(ta, tb, M, N, K, 0.5f, A, lda, B, ldb, 0.25f, C, ldc);
                for (size_t i = 0; i < M; i++) memcpy(got + i * N, C + i * ldc, N * sizeof(float));
                char label[96];
                snprintf(label, sizeof label, "eapig_gemm %zux%zux%zu %c%c, %d thread%s", M, N, K, ta ? 'T' : 'N',
                         tb ? 'T' : 'N', threads, threads > 1 ? "s" : "");
                check(label, got, want, M * N, 1e-5);
                free(A), free(B), free(C), free(got), free(want);
            }
}

/* The row-wise kernels split over threads give exactly the one-thread result (each row, each
 * element, is computed the same way whichever thread runs it). */
static void test_row_splits(int threads) {
    size_t N = 301, D = 211, n = N * D;
    float *x = random_floats(n, 2.0f), *w = random_floats(D, 1.0f), *b = random_floats(D, 1.0f);
    float *dout = random_floats(n, 1.0f), *up = random_floats(n, 1.0f);
    float *out[2], *xhat[2], *rstd[2], *dinp[2], *act[2], *dpre[2], *dup[2];
    for (int k = 0; k < 2; k++) {
        eapig_set_num_threads(k == 0 ? 1 : threads);
        out[k] = malloc(n * sizeof(float)), xhat[k] = malloc(n * sizeof(float)), rstd[k] = malloc(N * sizeof(float));
        dinp[k] = malloc(n * sizeof(float)), act[k] = malloc(n * sizeof(float)), dpre[k] = malloc(n * sizeof(float));
        dup[k] = malloc(n * sizeof(float));
        norm_forward(out[k], xhat[k], rstd[k], x, w, b, N, D, 0, 1e-5f);
        norm_backward(dinp[k], dout, xhat[k], rstd[k], w, N, D, 0);
        act_forward(act[k], x, up, n, EAPIG_ACT_SILU_GATED);
        act_backward(dpre[k], dup[k], dout, x, up, n, EAPIG_ACT_SILU_GATED);
    }
    int same = !memcmp(out[0], out[1], n * sizeof(float)) && !memcmp(rstd[0], rstd[1], N * sizeof(float)) &&
               !memcmp(dinp[0], dinp[1], n * sizeof(float)) && !memcmp(act[0], act[1], n * sizeof(float)) &&
               !memcmp(dpre[0], dpre[1], n * sizeof(float)) && !memcmp(dup[0], dup[1], n * sizeof(float));
    printf("%-56s max rel diff %s (tol 0) %s\n", threads == 2 ? "norms and activations, 2 threads = 1 thread"
                                                             : "norms and activations, 3 threads = 1 thread",
           same ? "0" : "nonzero", same ? "ok" : "FAIL");
    if (!same) failures++;
    for (int k = 0; k < 2; k++) free(out[k]), free(xhat[k]), free(rstd[k]), free(dinp[k]), free(act[k]), free(dpre[k]), free(dup[k]);
    free(x), free(w), free(b), free(dout), free(up);
}

/* Attention split over (row, head) pairs gives exactly the one-thread result, forward and
 * backward (each thread with its own scratch block), at a size above the split threshold. */
static void test_attention_split(int threads) {
    size_t B = 3, P = 70, H = 4, Dh = 8, n = B * P * H * Dh;
    int32_t len[3] = {70, 41, 1};
    attn_params ap = {0.35f, 0.0f, 0};
    float *q = random_floats(n, 1.0f), *k = random_floats(n, 1.0f), *v = random_floats(n, 1.0f);
    float *dz = random_floats(n, 1.0f);
    float *z[2], *att[2], *dq[2], *dk[2], *dv[2];
    float *scratch = malloc((size_t)threads * 2 * P * P * sizeof(float));
    for (int r = 0; r < 2; r++) {
        eapig_set_num_threads(r == 0 ? 1 : threads);
        z[r] = malloc(n * sizeof(float)), att[r] = malloc(B * H * P * P * sizeof(float));
        dq[r] = malloc(n * sizeof(float)), dk[r] = malloc(n * sizeof(float)), dv[r] = malloc(n * sizeof(float));
        attention_forward(z[r], att[r], q, k, v, len, B, P, H, Dh, &ap);
        attention_backward(dq[r], dk[r], dv[r], scratch, dz, att[r], q, k, v, B, P, H, Dh, &ap);
    }
    int same = !memcmp(z[0], z[1], n * sizeof(float)) && !memcmp(att[0], att[1], B * H * P * P * sizeof(float)) &&
               !memcmp(dq[0], dq[1], n * sizeof(float)) && !memcmp(dk[0], dk[1], n * sizeof(float)) &&
               !memcmp(dv[0], dv[1], n * sizeof(float));
    char label[64];
    snprintf(label, sizeof label, "attention, %d threads = 1 thread", threads);
    printf("%-56s max rel diff %s (tol 0) %s\n", label, same ? "0" : "nonzero", same ? "ok" : "FAIL");
    if (!same) failures++;
    for (int r = 0; r < 2; r++) free(z[r]), free(att[r]), free(dq[r]), free(dk[r]), free(dv[r]);
    free(q), free(k), free(v), free(dz), free(scratch);
}

/* The staircase of an edge product: column c wants rows u < edge_rows(c) (non-decreasing). */
static size_t edge_rows(const void *ctx, size_t c) {
    size_t M = *(const size_t *)ctx, r = 2 + c * 4 / 3;
    return r < M ? r : M;
}

/* eapig_edge_product (core/edge_product.c) with every register-tile instance this machine runs,
 * against a double reference: only the staircase's entries change, the others keep their bits;
 * k crosses the chunks and ends in a part of a vector; rows and columns are not multiples of any
 * tile. The same bits at one to four threads, within rounding at six. */
static void test_edge_product(void) {
    static const size_t Ks[] = {4183, 5};
    for (size_t s = 0; s < sizeof Ks / sizeof Ks[0]; s++) {
        size_t M = 41, n = 37, K = Ks[s], lda = K + 3, ldb = K + EAPIG_EDGE_PAD + 1, ldc = n + 2;
        float *A = random_floats(M * lda, 1.0f), *B = random_floats(n * ldb, 1.0f), *C0 = random_floats(M * ldc, 1.0f);
        float *C = malloc(M * ldc * sizeof(float)), *one = malloc(M * ldc * sizeof(float));
        float *partial = malloc(eapig_edge_product_floats(M, n) * 2 * sizeof(float)); /* room for 6 threads' parts */
        double *want = malloc(M * ldc * sizeof(double));
        for (size_t u = 0; u < M; u++)
            for (size_t c = 0; c < ldc; c++) {
                double acc = 0.0;
                for (size_t k = 0; c < n && u < edge_rows(&M, c) && k < K; k++) acc += (double)A[u * lda + k] * B[c * ldb + k];
                want[u * ldc + c] = C0[u * ldc + c] + acc;
            }
        for (int32_t which = 0; which < 8; which++) {
            const char *name = eapig_edge_product_tiles(which);
            if (!name) continue;
            static const int threads[] = {1, 2, 3, 4, 6};
            for (size_t t = 0; t < sizeof threads / sizeof threads[0]; t++) {
                eapig_set_num_threads(threads[t]);
                memcpy(C, C0, M * ldc * sizeof(float));
                eapig_edge_product(n, edge_rows, &M, K, A, lda, B, ldb, C, ldc, partial);
                char label[96];
                snprintf(label, sizeof label, "edge product %s, K %zu, %d thread%s", name, K, threads[t],
                         threads[t] > 1 ? "s" : "");
                check(label, C, want, M * ldc, 1e-5);
                int untouched = 1;
                for (size_t u = 0; u < M; u++)
                    for (size_t c = 0; c < ldc; c++)
                        if ((c >= n || u >= edge_rows(&M, c)) && memcmp(&C[u * ldc + c], &C0[u * ldc + c], sizeof(float)))
                            untouched = 0;
                snprintf(label, sizeof label, "edge product %s, K %zu: no entry off the staircase", name, K);
                printf("%-56s max rel diff %s (tol 0) %s\n", label, untouched ? "0" : "nonzero", untouched ? "ok" : "FAIL");
                if (!untouched) failures++;
                if (threads[t] == 1) memcpy(one, C, M * ldc * sizeof(float));
                if (threads[t] > 1 && threads[t] <= 4) {
                    int same = !memcmp(one, C, M * ldc * sizeof(float));
                    snprintf(label, sizeof label, "edge product %s, K %zu, %d threads = 1 thread", name, K, threads[t]);
                    printf("%-56s max rel diff %s (tol 0) %s\n", label, same ? "0" : "nonzero", same ? "ok" : "FAIL");
                    if (!same) failures++;
                }
            }
        }
        for (int32_t which = 0; !eapig_edge_product_tiles(which); which++) continue; /* back to the fastest */
        free(A), free(B), free(C0), free(C), free(one), free(partial), free(want);
    }
    eapig_set_num_threads(1);
}

/* The linear layers' own product (core/dense_product.c) against a double reference: C = A B and
 * C = A B^T, written and added, with rows and columns that are not multiples of its tiles, k
 * across its chunks, leading dimensions wider than the rows, each of its three paths for A B^T
 * (A transposed; B's rows copied for a short k; the same when B's rows are a multiple of 4 KiB
 * apart), at 1 to 3 threads, which must give the same bits. Entries past C's columns keep theirs. */
static void test_dense_product(void) {
    if (!eapig_dense_product_enable(-1)) {
        printf("dense product: this machine has no AVX-512; every product is OpenBLAS's (nothing to check)\n");
        return;
    }
    /* M, N, K, ldb extra: K = 1025 and 2100 cross chunks, N = 389 a block of C^T, M = 131 and 260
     * panels of A^T; for A B^T, M = 140 with K = 64 copies B^T's panels. */
    static const size_t shapes[][4] = {{37, 65, 1025, 3}, {131, 389, 70, 1}, {64, 64, 1, 0}, {140, 130, 64, 5},
                                       {33, 7, 1000, 24}, {96, 200, 2100, 2}, {260, 70, 300, 1}};
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++)
        for (int tb = 0; tb < 2; tb++)
            for (int add = 0; add < 2; add++) {
                size_t M = shapes[s][0], N = shapes[s][1], K = shapes[s][2];
                size_t lda = K + 3, ldb = (tb ? K : N) + shapes[s][3], ldc = N + 5;
                float *A = random_floats(M * lda, 1.0f), *B = random_floats((tb ? N : K) * ldb, 1.0f);
                float *C0 = random_floats(M * ldc, 1.0f), *C = malloc(M * ldc * sizeof(float));
                float *one = malloc(M * ldc * sizeof(float));
                double *want = malloc(M * N * sizeof(double));
                float *got = malloc(M * N * sizeof(float));
                for (size_t i = 0; i < M; i++)
                    for (size_t j = 0; j < N; j++) {
                        double acc = add ? C0[i * ldc + j] : 0.0;
                        for (size_t k = 0; k < K; k++)
                            acc += (double)A[i * lda + k] * (tb ? B[j * ldb + k] : B[k * ldb + j]);
                        want[i * N + j] = acc;
                    }
                char label[96];
                int same = 1, kept = 1;
                for (int threads = 1; threads <= 3; threads++) {
                    eapig_set_num_threads(threads);
                    memcpy(C, C0, M * ldc * sizeof(float));
                    if (!eapig_dense_product(tb, M, N, K, A, lda, B, ldb, add, C, ldc)) kept = 0;
                    for (size_t i = 0; i < M; i++)
                        if (memcmp(C + i * ldc + N, C0 + i * ldc + N, (ldc - N) * sizeof(float))) kept = 0;
                    if (threads == 1) {
                        for (size_t i = 0; i < M; i++) memcpy(got + i * N, C + i * ldc, N * sizeof(float));
                        snprintf(label, sizeof label, "dense product %zux%zux%zu %s%s", M, N, K, tb ? "A B^T" : "A B",
                                 add ? " added" : "");
                        check(label, got, want, M * N, 1e-5);
                        memcpy(one, C, M * ldc * sizeof(float));
                    } else if (memcmp(one, C, M * ldc * sizeof(float))) {
                        same = 0;
                    }
                }
                snprintf(label, sizeof label, "dense product %zux%zux%zu %s%s: 2, 3 threads = 1", M, N, K,
                         tb ? "A B^T" : "A B", add ? " added" : "");
                printf("%-56s max rel diff %s (tol 0) %s\n", label, same && kept ? "0" : "nonzero",
                       same && kept ? "ok" : "FAIL");
                if (!same || !kept) failures++;
                free(A), free(B), free(C0), free(C), free(one), free(want), free(got);
            }
    /* eapig_gemm hands it the linear layers' forms (A not transposed, alpha 1, beta 0 or 1). */
    for (int tb = 0; tb < 2; tb++) {
        /* k past one chunk: there OpenBLAS and the tiles sum in other orders, so a fallback shows */
        size_t M = 45, N = 70, K = 1100;
        float *A = random_floats(M * K, 1.0f), *B = random_floats(N * K, 1.0f), *C0 = random_floats(M * N, 1.0f);
        float *via_gemm = malloc(M * N * sizeof(float)), *direct = malloc(M * N * sizeof(float));
        memcpy(via_gemm, C0, M * N * sizeof(float));
        memcpy(direct, C0, M * N * sizeof(float));
        eapig_gemm(0, tb, M, N, K, 1.0f, A, K, B, tb ? K : N, 1.0f, via_gemm, N);
        eapig_dense_product(tb, M, N, K, A, K, B, tb ? K : N, 1, direct, N);
        int same = !memcmp(via_gemm, direct, M * N * sizeof(float));
        printf("%-56s max rel diff %s (tol 0) %s\n", tb ? "eapig_gemm A B^T + C takes the dense product" :
               "eapig_gemm A B + C takes the dense product", same ? "0" : "nonzero", same ? "ok" : "FAIL");
        if (!same) failures++;
        free(A), free(B), free(C0), free(via_gemm), free(direct);
    }
    /* Turned off, or with too few rows, it leaves the product to OpenBLAS and C as it was. */
    float a[64] = {1.0f}, b[64] = {1.0f}, c[64] = {0.0f};
    int small = eapig_dense_product(0, 8, 8, 8, a, 8, b, 8, 0, c, 8);
    eapig_dense_product_enable(0);
    int off = eapig_dense_product(0, 64, 1, 1, a, 1, b, 1, 0, c, 1);
    eapig_dense_product_enable(1);
    int declined = !small && !off && c[0] == 0.0f;
    printf("%-56s max rel diff %s (tol 0) %s\n", "dense product: declines 8 rows, and when off", declined ? "0" : "nonzero",
           declined ? "ok" : "FAIL");
    if (!declined) failures++;
    eapig_set_num_threads(1);
}

int main(void) {
    test_dense_product();
    test_edge_product();
    for (int t = 1; t <= 3; t++) test_gemm_splits(t);
    test_attention_split(2);
    test_attention_split(3);
    test_row_splits(2);
    test_row_splits(3);
    eapig_set_num_threads(1);
    test_linear();
    test_norm(0);
    test_norm(1);
    test_rope(8);
    test_rope(4); /* partial rotary (GPT-NeoX rotary_pct) */
    attn_params plain = {0.5f, 0.0f, 0}, gemma2 = {0.35f, 1.5f, 2};
    test_attention(&plain, "1/sqrt(Dh)");
    test_attention(&gemma2, "scale 0.35, soft-cap 1.5, window 2");
    test_activation(EAPIG_ACT_GELU_TANH, "gelu tanh");
    test_activation(EAPIG_ACT_GELU_ERF, "gelu erf");
    test_activation(EAPIG_ACT_RELU, "relu");
    test_activation(EAPIG_ACT_SILU_GATED, "silu gated");
    test_activation(EAPIG_ACT_GELU_TANH_GATED, "gelu tanh gated");
    printf("%d failed\n", failures);
    return failures ? 1 : 0;
}
