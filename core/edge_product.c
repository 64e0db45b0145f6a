/* edge_product.c: the product that turns activation differences and destination gradients into
 * edge scores,
 *
 *     C[u, c] += sum over k of A[u, k] * B[c, k]     for every column c and row u < rows(c),
 *
 * with A the difference buffer (a row per source), B the gathered destination gradients (a row
 * per destination) and k over batch rows x positions x d_model (about 10^5 for GPT-2 at B=8,
 * P=16), so the output is small (sources x gathered destinations, ~150 x 150) and the inner
 * dimension huge. The wanted pairs form a staircase: the real edges into destination c come from
 * the sources upstream of it, u < rows(c), non-decreasing in c.
 *
 * Why not OpenBLAS's sgemm: it packs both operands for every block of k, which on an output this
 * small costs a fifth of the multiply-adds, and it cannot skip the pairs that are not edges (a
 * later source, an earlier destination: 30% of a GPT-2 gather). Here register tiles of dot
 * products (core/edge_tiles.h) read both operands where they lie. k runs in chunks of KC; in a
 * chunk each tile of rows of A stays in the cache while it meets every tile of columns of B at
 * or past the staircase, which the L2 cache holds for the whole chunk. Tiles wholly above the
 * staircase are never computed. B's rows must not all fall into the same sets of the cache (a
 * row length that is a multiple of 4 KiB does that): the caller spaces them by
 * EAPIG_EDGE_PAD floats more than their length.
 *
 * Threads split k into eapig_sum_parts() parts, each streaming its own share of both operands
 * into its own partial tile; the parts are added in order at the end, so the result is the same
 * bits at one to four threads. The tiles come in three instances chosen once at run time: AVX-512,
 * AVX2 + FMA, and the compiler's default vectors (any machine).
 */
#include <string.h>

#include "internal.h"

/* k per chunk (a multiple of every TILE_W): B's chunk, ~150 rows x 8 KiB, fits the L2 cache.
 * Measured best of 512 to 4096 on GPT-2-sized flushes (scripts/bench.lua). */
enum { KC = 2048 };

/* Any machine: the compiler's own vectors of 4 (SSE2, NEON), 8 accumulators. */
#define TILE(x) x##_default
#define TILE_ATTR
#define TILE_W 4
#define TILE_MR 2
#define TILE_NR 4
#include "edge_tiles.h"

#if defined(__x86_64__) && defined(__GNUC__)
/* AVX2 + FMA: 16 vector registers hold 3 x 4 accumulators, 3 rows of A and one of B. */
#define TILE(x) x##_avx2
#define TILE_ATTR __attribute__((target("avx2,fma")))
#define TILE_W 8
#define TILE_MR 3
#define TILE_NR 4
#include "edge_tiles.h"

/* AVX-512: its 32 registers (AVX-512VL gives them to 8-float vectors) hold 6 x 4 accumulators.
 * 16-float vectors ran slower here (a Zen 4 core splits them in two; their lane sums cost more). */
#define TILE(x) x##_avx512
#define TILE_ATTR __attribute__((target("avx512f,avx512vl")))
#define TILE_W 8
#define TILE_MR 6
#define TILE_NR 4
#include "edge_tiles.h"
#endif

typedef struct {
    const char *name;
    void (*full)(size_t kc, const float *a, size_t lda, const float *b, size_t ldb, float *c, size_t ldc);
    void (*edge)(size_t mr, size_t nr, size_t kc, const float *a, size_t lda, const float *b, size_t ldb, float *c,
                 size_t ldc);
    size_t w, mr, nr;
} tile_set;

static const tile_set tile_sets[] = {
#if defined(__x86_64__) && defined(__GNUC__)
    {"avx512", full_avx512, edge_avx512, 8, 6, 4},
    {"avx2", full_avx2, edge_avx2, 8, 3, 4},
#endif
    {"default", full_default, edge_default, 4, 2, 4},
};
enum { N_TILE_SETS = sizeof tile_sets / sizeof tile_sets[0] };

static int tile_set_runs(size_t i) {
#if defined(__x86_64__) && defined(__GNUC__)
    __builtin_cpu_init();
    if (strcmp(tile_sets[i].name, "avx512") == 0) return __builtin_cpu_supports("avx512f");
    if (strcmp(tile_sets[i].name, "avx2") == 0) return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#endif
    (void)i;
    return 1;
}

static const tile_set *chosen; /* NULL: the fastest this machine runs, chosen at the first product */

const char *eapig_edge_product_tiles(int32_t which) {
    if (which < 0) {
        if (!chosen)
            for (size_t i = 0; i < N_TILE_SETS && !chosen; i++)
                if (tile_set_runs(i)) chosen = &tile_sets[i];
        return chosen->name;
    }
    if ((size_t)which >= N_TILE_SETS || !tile_set_runs((size_t)which)) return NULL;
    chosen = &tile_sets[which];
    return chosen->name;
}

typedef struct {
    const tile_set *t;
    size_t n_cols, M, K, parts;
    eapig_col_rows_fn rows;
    const void *ctx;
    const float *A, *B;
    size_t lda, ldb;
    float *partial; /* (parts, M, n_cols) */
} product_job;

/* Part p: k in [kb, ke), whole vectors except at K's end; its products into partial tile p.
 * For each chunk of k, each tile of rows of A in turn (it stays in the cache) meets the tiles of
 * columns at or past the staircase, streamed from the L2 cache. */
static void product_part(const product_job *j, size_t p) {
    const tile_set *t = j->t;
    size_t n = j->n_cols, M = j->M, vb, ve;
    eapig_part(j->K / t->w, j->parts, p, &vb, &ve); /* in whole vectors; the last part takes K's tail */
    size_t kb = vb * t->w, ke = p + 1 == j->parts ? j->K : ve * t->w;
    float *out = j->partial + p * M * n;
    memset(out, 0, M * n * sizeof(float));
    for (size_t k0 = kb; k0 < ke; k0 += KC) {
        size_t kc = ke - k0 < KC ? ke - k0 : KC, kv = kc / t->w * t->w;
        size_t c0 = 0; /* the first column with an edge from the current row tile */
        for (size_t u = 0; u < M; u += t->mr) {
            size_t mr = M - u < t->mr ? M - u : t->mr;
            while (j->rows(j->ctx, c0) <= u) c0++;
            const float *a = j->A + u * j->lda + k0;
            for (size_t c = c0; c < n; c += t->nr) {
                size_t nr = n - c < t->nr ? n - c : t->nr;
                const float *b = j->B + c * j->ldb + k0;
                float *o = out + u * n + c;
                if (kv > 0 && mr == t->mr && nr == t->nr)
                    t->full(kv, a, j->lda, b, j->ldb, o, n);
                else if (kv > 0)
                    t->edge(mr, nr, kv, a, j->lda, b, j->ldb, o, n);
                for (size_t i = 0; i < mr && kv < kc; i++) /* the last few k, fewer than a vector */
                    for (size_t jj = 0; jj < nr; jj++) {
                        float s = 0.0f;
                        for (size_t k = kv; k < kc; k++) s += a[i * j->lda + k] * b[jj * j->ldb + k];
                        o[i * n + jj] += s;
                    }
            }
        }
    }
}

static void product_range(void *ctx, size_t begin, size_t end, size_t index) {
    (void)index;
    for (size_t p = begin; p < end; p++) product_part(ctx, p);
}

size_t eapig_edge_product_floats(size_t n_rows, size_t n_cols) { return eapig_sum_parts() * n_rows * n_cols; }

void eapig_edge_product(size_t n_cols, eapig_col_rows_fn rows, const void *ctx, size_t K, const float *A,
                        size_t lda, const float *B, size_t ldb, float *C, size_t ldc, float *partial) {
    if (n_cols == 0) return;
    eapig_edge_product_tiles(-1);
    product_job j = {chosen, n_cols, rows(ctx, n_cols - 1), K, eapig_sum_parts(), rows, ctx, A, B, lda, ldb, partial};
    eapig_parallel_for(j.parts, 1, product_range, &j);
    size_t part = j.M * n_cols;
    for (size_t c = 0; c < n_cols; c++) {
        size_t m = rows(ctx, c);
        for (size_t u = 0; u < m; u++) {
            float s = partial[u * n_cols + c];
            for (size_t p = 1; p < j.parts; p++) s += partial[p * part + u * n_cols + c];
            C[u * ldc + c] += s;
        }
    }
}
