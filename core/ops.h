/* ops.h: the forward and backward kernels of one transformer op each (STYLE 1: outputs first,
 * then saved statistics, inputs, weights, dimensions). Backward kernels write (=) their input
 * gradient; only linear_backward_input adds (+=) to it, when its accumulate argument is set (the
 * weight-gradient kernels in run.h always add).
 *
 * N = token rows, D = model width, F = MLP width, Dh = head width, P = positions.
 */
#ifndef EAPIG_OPS_H
#define EAPIG_OPS_H
#include <stddef.h>
#include <stdint.h>

/* The pointwise kernels that run over every activation are compiled for AVX-512 and AVX2 too,
 * the version matching the CPU chosen when the library loads (x86-64 GCC and Clang; elsewhere,
 * and under ThreadSanitizer, whose runtime is not up yet when the loader picks the version, one
 * portable version). */
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__)) && !defined(__SANITIZE_THREAD__)
#define EAPIG_VECTOR_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define EAPIG_VECTOR_CLONES
#endif

/* C (M,N) = A (M,K) @ W^T for W (N,K) in PyTorch Linear layout, + bias (N) when not NULL. */
void linear_forward(float *out, const float *inp, const float *w, const float *bias, size_t M, size_t N,
                    size_t K, size_t ld_out);
/* dinp (M,K) (+)= dout (M,N) @ W (N,K); accumulate chooses beta = 1. */
void linear_backward_input(float *dinp, const float *dout, const float *w, size_t M, size_t N, size_t K,
                           size_t ld_dout, int accumulate);
/* The naive reference of linear_forward, for tests of the fast path. */
void linear_forward_naive(float *out, const float *inp, const float *w, const float *bias, size_t M,
                          size_t N, size_t K);

/* Norms. xhat (N,D) and rstd (N) are saved for the backward; out = xhat*w (+ b for LayerNorm). */
void norm_forward(float *out, float *xhat, float *rstd, const float *inp, const float *w, const float *b,
                  size_t N, size_t D, int rms, float eps);
/* dinp (N,D) = gradient of the norm's input from dout (N,D). */
void norm_backward(float *dinp, const float *dout, const float *xhat, const float *rstd, const float *w,
                   size_t N, size_t D, int rms);

/* Pointwise MLP activations: act is EAPIG_ACT_*. Gated ones: out = act(pre) * up. */
void act_forward(float *out, const float *pre, const float *up, size_t n, int act);
/* dpre = d out/d pre * dout; for gated also dup (else NULL). */
void act_backward(float *dpre, float *dup, const float *dout, const float *pre, const float *up, size_t n,
                  int act);

/* y (n) += x (n), split over the threads (the residual gradient gathering its readers'). */
void add_into(float *y, const float *x, size_t n);

/* Rotary embedding, half-split layout, on x (B*P rows of H heads of Dh) at positions 0..P-1,
 * angle p * inv_freq[i] for the rot/2 frequencies. inverse != 0 applies the transposed rotation
 * (the backward). */
void rope_apply(float *x, size_t B, size_t P, size_t H, size_t Dh, size_t rot, const float *inv_freq,
                int inverse);

/* How attention scores are formed: s = scale * q.k, then softcap * tanh(s / softcap) when
 * softcap > 0 (gemma2); with window > 0 only keys with i - j < window are visible (sliding). */
typedef struct {
    float scale, softcap;
    size_t window;
} attn_params;

/* Causal attention with right padding, per row b and head h. q, k, v, z are (B*P, H*Dh) rows;
 * att is (B, H, P, P) probabilities (saved); keys j <= i and j < len[b] (and inside the window)
 * are visible. */
void attention_forward(float *z, float *att, const float *q, const float *k, const float *v,
                       const int32_t *len, size_t B, size_t P, size_t H, size_t Dh, const attn_params *ap);
/* dq, dk, dv (B*P, H*Dh) = gradients from dz; scratch is (T, 2, P, P) for T =
 * eapig_get_num_threads() (one (2, P, P) block per thread). The mask needs no lengths:
 * the saved probabilities att are 0 wherever the forward masked a key. */
void attention_backward(float *dq, float *dk, float *dv, float *scratch, const float *dz, const float *att,
                        const float *q, const float *k, const float *v, size_t B, size_t P, size_t H, size_t Dh,
                        const attn_params *ap);

#endif
