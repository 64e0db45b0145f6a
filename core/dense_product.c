/* dense_product.c: the products of the linear layers, on register tiles that read the weights
 * where they lie,
 *
 *     C = A B     (trans_b = 0: B (K, N) row-major; the backward's dX = dY W, a head's dY_h W_h)
 *     C = A B^T   (trans_b = 1: B (N, K) row-major; the forward's Y = X W^T)
 *
 * with C either overwritten or added to.
 *
 * Why not OpenBLAS's sgemm here: at the row counts of attribution (B x P = 128 to 768 rows) each
 * weight matrix meets only those rows, and OpenBLAS first copies ("packs") every block of the
 * weights into its own layout, reading them from memory in a pass of their own: 15-20% of a
 * forward + backward's time on GPT-2-small. Here the weights are read once, as the tiles use them,
 * so the memory traffic overlaps the multiply-adds.
 *
 * One tile shape does both: MR rows of a "broadcast" operand times NV vectors of 16 columns of a
 * "streamed" operand, contiguous along its rows, accumulated in MR x NV registers over k:
 *   C = A B    A is broadcast (dY, a row per token), B streamed (W's rows, contiguous in the
 *              output's columns): the tile writes C directly.
 *   C = A B^T  the roles swap: B (W) is broadcast a weight row at a time and A^T streamed, from
 *              A's rows transposed into a panel of 64; the tiles make a block of C^T, written into
 *              C transposed. For a short k (a head's d_head), B^T's panels are copied first
 *              instead and the tile writes C directly.
 * Each output element is one chain of fused multiply-adds in k order within a chunk of KC, and
 * chunks are added in order, so the result does not depend on the tiling or the thread count.
 *
 * AVX-512 only (its 32 registers hold the 6 x 4 accumulators); other machines, and shapes too
 * small to pay for a tile (fewer than MIN_ROWS rows: the unembedding at the metric positions),
 * stay with OpenBLAS: eapig_dense_product then returns 0 and eapig_gemm calls sgemm.
 */
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

enum {
    MR = 6,       /* broadcast rows per tile */
    NV = 4,       /* vectors of 16 floats per tile: 64 streamed columns */
    NC = NV * 16, /* columns of a tile */
    KC = 1024,    /* k per chunk: a streamed panel of KC x 64 floats (256 KiB) stays in the L2 cache */
    NT = 384,     /* C = A B^T: columns of C per block of C^T made in a thread's scratch (96 KiB) */
    RB = 16 * MR, /* rows of A per unit of work when C has too few column panels to share */
    MIN_ROWS = 32 /* fewer rows of A than this: OpenBLAS (its small-matrix kernels) */
};

static pthread_once_t detected = PTHREAD_ONCE_INIT;
static int machine_can;           /* this machine runs AVX-512, found once */
static atomic_int turned_on = 1;  /* the tiles run unless turned off (a test checks the fallback) */

static void detect(void) {
#if defined(__x86_64__) && defined(__GNUC__)
    __builtin_cpu_init();
    machine_can = __builtin_cpu_supports("avx512f");
#endif
}

int eapig_dense_product_enable(int32_t on) {
    pthread_once(&detected, detect);
    if (on >= 0) atomic_store(&turned_on, on != 0);
    return machine_can && atomic_load(&turned_on);
}

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>

#define AVX512 __attribute__((target("avx512f")))

/* The accumulators of one tile: acc[i][v] holds columns 16v..16v+15 of broadcast row i. */
typedef struct {
    __m512 v[MR][NV];
} tile_acc;

/* The mask of a vector's first n lanes (all 16 for n >= 16): the loads and stores at an edge. */
static inline __mmask16 first_lanes(size_t n) { return n >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << n) - 1u); }

/* acc = sum over k < kc of a[i*lda + k] * b[k*ldb + 16v + lane], for i < mr and v < nv; the
 * other accumulators stay zero, and b's columns from `cols` (<= 16 nv) on are not read. Inlined
 * with constant mr and nv, so each shape gets its own unrolled loop. */
AVX512 static inline __attribute__((always_inline)) void tile_sum(tile_acc *t, int mr, int nv, size_t kc,
                                                                 const float *a, size_t lda, const float *b,
                                                                 size_t ldb, size_t cols) {
    __m512 acc[MR][NV];
#pragma GCC unroll 6
    for (int i = 0; i < MR; i++)
#pragma GCC unroll 4
        for (int v = 0; v < NV; v++) acc[i][v] = _mm512_setzero_ps();
    if (cols == 16u * (size_t)nv) {
        for (size_t k = 0; k < kc; k++) {
            __m512 bv[NV];
#pragma GCC unroll 4
            for (int v = 0; v < nv; v++) bv[v] = _mm512_loadu_ps(b + k * ldb + 16 * v);
#pragma GCC unroll 6
            for (int i = 0; i < mr; i++) {
                __m512 av = _mm512_set1_ps(a[i * lda + k]);
#pragma GCC unroll 4
                for (int v = 0; v < nv; v++) acc[i][v] = _mm512_fmadd_ps(av, bv[v], acc[i][v]);
            }
        }
    } else { /* the last columns of C = A B: masked loads stop at B's edge */
        __mmask16 m[NV];
        for (int v = 0; v < NV; v++) m[v] = first_lanes(cols > 16u * v ? cols - 16u * v : 0);
        for (size_t k = 0; k < kc; k++) {
            __m512 bv[NV];
#pragma GCC unroll 4
            for (int v = 0; v < nv; v++) bv[v] = _mm512_maskz_loadu_ps(m[v], b + k * ldb + 16 * v);
#pragma GCC unroll 6
            for (int i = 0; i < mr; i++) {
                __m512 av = _mm512_set1_ps(a[i * lda + k]);
#pragma GCC unroll 4
                for (int v = 0; v < nv; v++) acc[i][v] = _mm512_fmadd_ps(av, bv[v], acc[i][v]);
            }
        }
    }
    memcpy(t->v, acc, sizeof acc);
}

/* tile_sum specialised by shape: the full tile, full rows with fewer vectors (C's last columns,
 * or A's last rows in a panel of A^T), and fewer rows at full width. cols <= NC. */
AVX512 static void tile_rows(tile_acc *t, int mr, size_t kc, const float *a, size_t lda, const float *b, size_t ldb,
                             size_t cols) {
    int nv = (int)((cols + 15) / 16);
    if (mr == MR) {
        switch (nv) {
        case 4: tile_sum(t, 6, 4, kc, a, lda, b, ldb, cols); break;
        case 3: tile_sum(t, 6, 3, kc, a, lda, b, ldb, cols); break;
        case 2: tile_sum(t, 6, 2, kc, a, lda, b, ldb, cols); break;
        default: tile_sum(t, 6, 1, kc, a, lda, b, ldb, cols); break;
        }
        return;
    }
    switch (mr) {
    case 5: tile_sum(t, 5, 4, kc, a, lda, b, ldb, cols); break;
    case 4: tile_sum(t, 4, 4, kc, a, lda, b, ldb, cols); break;
    case 3: tile_sum(t, 3, 4, kc, a, lda, b, ldb, cols); break;
    case 2: tile_sum(t, 2, 4, kc, a, lda, b, ldb, cols); break;
    default: tile_sum(t, 1, 4, kc, a, lda, b, ldb, cols); break;
    }
}

/* C[i*ldc + j] (+)= tile[i][j] for i < mr, j < cols. */
AVX512 static void store_rows(const tile_acc *t, int mr, size_t cols, int add, float *c, size_t ldc) {
    for (int i = 0; i < mr; i++)
        for (int v = 0; v < NV && 16u * v < cols; v++) {
            __mmask16 m = first_lanes(cols - 16u * v);
            float *p = c + i * ldc + 16 * v;
            __m512 x = t->v[i][v];
            if (add) x = _mm512_add_ps(_mm512_maskz_loadu_ps(m, p), x);
            _mm512_mask_storeu_ps(p, m, x);
        }
}

typedef struct {
    int trans_b, add;
    int copy_bt; /* C = A B^T from copies of B^T (range_panels), not from A^T (range_nt) */
    size_t M, N, K;
    size_t row_blocks; /* units per panel of C's columns (range_panels) */
    const float *A, *B;
    size_t lda, ldb, ldc;
    float *C;
    float *panels;     /* C = A B^T: per_thread floats of scratch for each thread */
    size_t per_thread;
} dense_job;

/* The rows of A that unit u of a product split by C's column panels covers: a panel's rows are
 * split into row_blocks blocks only when there are too few panels to share between threads. */
static void unit_rows(const dense_job *j, size_t u, size_t *r0, size_t *r1) {
    size_t block = u % j->row_blocks;
    *r0 = block * RB;
    *r1 = block + 1 == j->row_blocks ? j->M : *r0 + RB;
}

/* C = A B, or C = A B^T from copies of B^T: units [u0, u1) (a panel of 64 columns of C, or a
 * block of its rows), per chunk of k each row tile of A against the panel of B: B itself for
 * A B; for A B^T, 64 of B's rows (a chunk of k) copied transposed into this thread's scratch. */
AVX512 static void range_panels(const dense_job *j, size_t u0, size_t u1, size_t index) {
    float *copy = j->trans_b ? j->panels + index * j->per_thread : NULL;
    tile_acc t;
    for (size_t u = u0; u < u1; u++) {
        size_t c0 = u / j->row_blocks * NC, cols = j->N - c0 < NC ? j->N - c0 : NC, r0, r1;
        unit_rows(j, u, &r0, &r1);
        for (size_t k0 = 0; k0 < j->K; k0 += KC) {
            size_t kc = j->K - k0 < KC ? j->K - k0 : KC, ldb = j->ldb;
            int add = j->add || k0 > 0;
            const float *b = j->B + k0 * ldb + c0;
            if (copy) {
                for (size_t c = 0; c < cols; c++) {
                    const float *src = j->B + (c0 + c) * j->ldb + k0;
                    for (size_t k = 0; k < kc; k++) copy[k * NC + c] = src[k];
                }
                b = copy, ldb = NC;
            }
            for (size_t r = r0; r < r1; r += MR) {
                int mr = r1 - r < MR ? (int)(r1 - r) : MR;
                tile_rows(&t, mr, kc, j->A + r * j->lda + k0, j->lda, b, ldb, cols);
                store_rows(&t, mr, cols, add, j->C + r * j->ldc + c0, j->ldc);
            }
        }
    }
}

/* Transposes the 16 x 16 floats in r: r[i][j] becomes r[j][i]. */
AVX512 static inline void transpose16(__m512 r[16]) {
    __m512 t[16];
    for (int i = 0; i < 16; i += 2) { /* interleave pairs of rows: 2 x 2 blocks */
        t[i] = _mm512_unpacklo_ps(r[i], r[i + 1]);
        t[i + 1] = _mm512_unpackhi_ps(r[i], r[i + 1]);
    }
    for (int i = 0; i < 16; i += 4) { /* pairs of pairs: 4 x 4 blocks within each 128-bit lane */
        __m512d a = _mm512_castps_pd(t[i]), b = _mm512_castps_pd(t[i + 1]);
        __m512d c = _mm512_castps_pd(t[i + 2]), d = _mm512_castps_pd(t[i + 3]);
        r[i] = _mm512_castpd_ps(_mm512_unpacklo_pd(a, c));
        r[i + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(a, c));
        r[i + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(b, d));
        r[i + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(b, d));
    }
    for (int i = 0; i < 4; i++) { /* then the 128-bit lanes, in two rounds */
        t[i] = _mm512_shuffle_f32x4(r[i], r[i + 4], 0x88);
        t[i + 4] = _mm512_shuffle_f32x4(r[i], r[i + 4], 0xDD);
        t[i + 8] = _mm512_shuffle_f32x4(r[i + 8], r[i + 12], 0x88);
        t[i + 12] = _mm512_shuffle_f32x4(r[i + 8], r[i + 12], 0xDD);
    }
    for (int i = 0; i < 8; i++) {
        r[i] = _mm512_shuffle_f32x4(t[i], t[i + 8], 0x88);
        r[i + 8] = _mm512_shuffle_f32x4(t[i], t[i + 8], 0xDD);
    }
}

/* A^T's panel: panel[k*NC + r] = A[(r0 + r)*lda + k0 + k] for k < kc, r < rows, and zeros in
 * the lanes past A's last row (unused, but garbage there could be slow denormals), in blocks of
 * 16 x 16 transposed in registers. */
AVX512 static void pack_at(float *panel, const float *A, size_t lda, size_t r0, size_t rows, size_t k0, size_t kc) {
    __m512 v[16];
    for (size_t kb = 0; kb < kc; kb += 16) {
        __mmask16 m = first_lanes(kc - kb);
        for (size_t rb = 0; rb < NC; rb += 16) {
            for (size_t i = 0; i < 16; i++) {
                const float *src = A + (r0 + rb + i) * lda + k0 + kb;
                v[i] = rb + i < rows ? _mm512_maskz_loadu_ps(m, src) : _mm512_setzero_ps();
            }
            transpose16(v);
            for (size_t k = 0; k < 16 && kb + k < kc; k++) _mm512_storeu_ps(panel + (kb + k) * NC + rb, v[k]);
        }
    }
}

/* C[r*ldc + n] (+)= ct[n*NC + r] for r < rows, n < nt (nt <= NT; ct holds NT rows), in blocks of
 * 16 x 16 transposed in registers, so that C is written 16 floats of a row at a time. */
AVX512 static void write_transposed(const float *ct, size_t rows, size_t nt, int add, float *C, size_t ldc) {
    __m512 v[16];
    for (size_t n0 = 0; n0 < nt; n0 += 16) {
        __mmask16 m = first_lanes(nt - n0);
        for (size_t rb = 0; rb < rows; rb += 16) {
            for (int i = 0; i < 16; i++) v[i] = _mm512_loadu_ps(ct + (n0 + i) * NC + rb);
            transpose16(v);
            for (size_t r = 0; r < 16 && rb + r < rows; r++) {
                float *p = C + (rb + r) * ldc + n0;
                __m512 x = v[r];
                if (add) x = _mm512_add_ps(_mm512_maskz_loadu_ps(m, p), x);
                _mm512_mask_storeu_ps(p, m, x);
            }
        }
    }
}

/* C = A B^T, columns [MR*q0, MR*q1) of C (rows of B): for each panel of 64 rows of A and block
 * of NT columns of C, a block of C^T (NT x 64) is made in this thread's scratch, a chunk of k at
 * a time from A's chunk transposed into the panel, and written into C transposed at the end.
 * (Written a tile at a time instead, 6 floats into each of 64 rows of C, those rows fell into a
 * few sets of the L1 cache and evicted each other.) */
AVX512 static void range_nt(const dense_job *j, size_t q0, size_t q1, size_t index) {
    float *panel = j->panels + index * j->per_thread, *ct = panel + (j->K < KC ? j->K : KC) * NC;
    size_t n_end = q1 * MR < j->N ? q1 * MR : j->N;
    size_t packed_r0 = SIZE_MAX, packed_k0 = SIZE_MAX; /* what the panel holds */
    tile_acc t;
    for (size_t r0 = 0; r0 < j->M; r0 += NC) {
        size_t rows = j->M - r0 < NC ? j->M - r0 : NC;
        size_t lanes = (rows + 15) / 16 * 16; /* the panel's vectors that hold rows of A */
        for (size_t nb = q0 * MR; nb < n_end; nb += NT) {
            size_t nt = n_end - nb < NT ? n_end - nb : NT;
            for (size_t k0 = 0; k0 < j->K; k0 += KC) {
                size_t kc = j->K - k0 < KC ? j->K - k0 : KC;
                if (packed_r0 != r0 || packed_k0 != k0) pack_at(panel, j->A, j->lda, r0, rows, k0, kc);
                packed_r0 = r0, packed_k0 = k0;
                for (size_t n = 0; n < nt; n += MR) {
                    int mr = nt - n < MR ? (int)(nt - n) : MR;
                    tile_rows(&t, mr, kc, j->B + (nb + n) * j->ldb + k0, j->ldb, panel, NC, lanes);
                    store_rows(&t, mr, NC, k0 > 0, ct + n * NC, NC);
                }
            }
            write_transposed(ct, rows, nt, j->add, j->C + r0 * j->ldc + nb, j->ldc);
        }
    }
}

static void dense_range(void *ctx, size_t begin, size_t end, size_t index) {
    const dense_job *j = ctx;
    if (j->trans_b && !j->copy_bt)
        range_nt(j, begin, end, index);
    else
        range_panels(j, begin, end, index);
}

int eapig_dense_product(int trans_b, size_t M, size_t N, size_t K, const float *A, size_t lda, const float *B,
                        size_t ldb, int accumulate, float *C, size_t ldc) {
    if (eapig_dense_product_enable(-1) != 1 || M < MIN_ROWS || N == 0 || K == 0) return 0;
    /* C = A B^T: transposing A's panels costs M x K copies, and C is written transposed;
     * copying B^T instead costs N x K copies and writes C directly. Both run within a few percent
     * of each other on GPT-2's shapes from 128 to 640 rows, except for a short k (a head's
     * d_head), where A's transpose and C's are a large part of the work. */
    int copy_bt = trans_b && K * 2 <= M;
    size_t panels = (N + NC - 1) / NC, threads = (size_t)eapig_get_num_threads();
    size_t row_blocks = panels >= 2 * threads ? 1 : (M + RB - 1) / RB;
    dense_job j = {trans_b, accumulate, copy_bt, M, N, K, row_blocks, A, B, lda, ldb, ldc, C, NULL, 0};
    if (trans_b) { /* per thread: a chunk of k of A^T's or B^T's panel, and a block of C^T */
        j.per_thread = ((K < KC ? K : KC) + (copy_bt ? 0 : NT)) * NC;
        j.panels = malloc(threads * j.per_thread * sizeof(float));
        if (!j.panels) return 0;
    }
    if (trans_b && !copy_bt)
        eapig_parallel_for((N + MR - 1) / MR, 4, dense_range, &j);
    else
        eapig_parallel_for(panels * row_blocks, 1, dense_range, &j);
    free(j.panels);
    return 1;
}

#else /* no AVX-512 tiles on this compiler or machine: OpenBLAS does every product */

int eapig_dense_product(int trans_b, size_t M, size_t N, size_t K, const float *A, size_t lda, const float *B,
                        size_t ldb, int accumulate, float *C, size_t ldc) {
    (void)trans_b, (void)M, (void)N, (void)K, (void)A, (void)lda, (void)B, (void)ldb, (void)accumulate, (void)C,
        (void)ldc;
    return 0;
}
#endif
