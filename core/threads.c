/* threads.c: the core's worker threads, and the matrix product that splits its work over them.
 *
 * With n threads (eapig_set_num_threads; default: OpenBLAS's own count, OPENBLAS_NUM_THREADS or
 * the cores), OpenBLAS runs single-threaded and the core splits work itself: a product by rows
 * (or columns, or along its inner dimension when the output is small and the inner dimension
 * huge, as in the edge-score products), the norms and activations by rows. The calling thread
 * runs the first range and n - 1 helpers the others. Why not OpenBLAS's threads: between two of
 * its products its idle workers spin on the other cores while the core's own loops (norms,
 * activations, captures; a third of an attribution) ran on one; and products with a tiny output
 * and a huge inner dimension are split by OpenBLAS over the output, so every thread reads all of
 * both inputs. Measured in scripts/bench.lua (docs/performance.md).
 *
 * Helpers spin briefly for the next range, then sleep on a condition variable, so a process that
 * stops computing does not keep its cores busy. A range function never calls back into
 * eapig_parallel_for from a helper (nested calls run serially). Nothing here aborts or prints: a
 * helper that cannot be started leaves the work to fewer threads.
 */
#include <cblas.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>

#include "internal.h"

void openblas_set_num_threads(int n);
int openblas_get_num_threads(void);

enum { MAX_THREADS = EAPIG_MAX_THREADS, SPIN = 20000 };

typedef struct {
    eapig_range_fn fn;
    void *ctx;
    size_t n, grain, parts;
} job;

static struct {
    pthread_mutex_t lock;
    pthread_cond_t wake, done;
    pthread_t helpers[MAX_THREADS];
    int n_helpers;         /* started */
    int wanted;            /* threads in all (helpers + the caller); 0 = not chosen yet */
    job current;
    atomic_ulong generation; /* bumped for every job */
    atomic_int pending;      /* helpers still running the current job */
    atomic_int stop;
    int sleeping;            /* helpers waiting on `wake` (under lock) */
    unsigned long start_generation; /* the generation new helpers start from */
} pool = {.lock = PTHREAD_MUTEX_INITIALIZER, .wake = PTHREAD_COND_INITIALIZER, .done = PTHREAD_COND_INITIALIZER};

/* A spin-wait step: tells the core (and a sibling hyperthread) that this thread only waits. */
static inline void cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
}

static _Thread_local int in_task; /* a helper, or the caller inside a job: nested calls run serially */

/* Range p of `parts` over [0, n): whole grains, the last range takes the remainder. */
static void range_of(const job *j, size_t p, size_t *begin, size_t *end) {
    size_t grains = (j->n + j->grain - 1) / j->grain;
    size_t b = grains * p / j->parts * j->grain, e = grains * (p + 1) / j->parts * j->grain;
    *begin = b < j->n ? b : j->n;
    *end = e < j->n ? e : j->n;
}

static void *helper_main(void *arg) {
    size_t index = (size_t)(uintptr_t)arg;
    /* the generation when the caller started this helper: a job it posts right after is still new */
    unsigned long seen = pool.start_generation;
    in_task = 1;
    for (;;) {
        unsigned long g;
        int spins = 0;
        while ((g = atomic_load_explicit(&pool.generation, memory_order_acquire)) == seen && !atomic_load(&pool.stop)) {
            if (++spins < SPIN) {
                cpu_relax();
                continue;
            }
            pthread_mutex_lock(&pool.lock);
            pool.sleeping++;
            while (atomic_load(&pool.generation) == seen && !atomic_load(&pool.stop))
                pthread_cond_wait(&pool.wake, &pool.lock);
            pool.sleeping--;
            pthread_mutex_unlock(&pool.lock);
            spins = 0;
        }
        if (atomic_load(&pool.stop)) return NULL;
        seen = g;
        job j = pool.current;
        if (index < j.parts) {
            size_t b, e;
            range_of(&j, index, &b, &e);
            if (b < e) j.fn(j.ctx, b, e, index);
        }
        if (atomic_fetch_sub_explicit(&pool.pending, 1, memory_order_acq_rel) == 1) {
            pthread_mutex_lock(&pool.lock);
            pthread_cond_signal(&pool.done);
            pthread_mutex_unlock(&pool.lock);
        }
    }
}

/* A child of fork() has only the forking thread: it starts its own helpers if it needs them. */
static void forget_helpers_in_child(void) {
    pool.n_helpers = 0;
    pool.sleeping = 0;
    pthread_mutex_init(&pool.lock, NULL);
    pthread_cond_init(&pool.wake, NULL);
    pthread_cond_init(&pool.done, NULL);
}

/* Starts helpers up to wanted - 1 (under no lock: only the calling thread changes the pool). */
static void start_helpers(void) {
    static int atfork_done;
    if (!atfork_done && pool.n_helpers < pool.wanted - 1) atfork_done = pthread_atfork(NULL, NULL, forget_helpers_in_child) == 0;
    pool.start_generation = atomic_load(&pool.generation); /* before pthread_create: it happens-before the helper */
    while (pool.n_helpers < pool.wanted - 1) {
        if (pthread_create(&pool.helpers[pool.n_helpers], NULL, helper_main,
                           (void *)(uintptr_t)(pool.n_helpers + 1)) != 0) {
            pool.wanted = pool.n_helpers + 1; /* fewer threads, never a failure */
            return;
        }
        pool.n_helpers++;
    }
}

static void stop_helpers(void) {
    if (pool.n_helpers == 0) return;
    atomic_store(&pool.stop, 1);
    pthread_mutex_lock(&pool.lock);
    pthread_cond_broadcast(&pool.wake);
    pthread_mutex_unlock(&pool.lock);
    for (int i = 0; i < pool.n_helpers; i++) pthread_join(pool.helpers[i], NULL);
    pool.n_helpers = 0;
    atomic_store(&pool.stop, 0);
}

/* The library may be unloaded (dlclose at LuaJIT's exit) while helpers wait in its code. */
__attribute__((destructor)) static void threads_unload(void) { stop_helpers(); }

static void choose_default(void) {
    if (pool.wanted > 0) return;
    int n = openblas_get_num_threads();
    pool.wanted = n < 1 ? 1 : (n > MAX_THREADS ? MAX_THREADS : n);
    openblas_set_num_threads(1);
}

void eapig_set_num_threads(int n) {
    if (n < 1) return;
    if (n > MAX_THREADS) n = MAX_THREADS;
    if (in_task) return;
    openblas_set_num_threads(1);
    if (n < pool.n_helpers + 1) stop_helpers();
    pool.wanted = n;
}

int eapig_get_num_threads(void) {
    choose_default();
    return pool.wanted;
}

void eapig_parallel_for(size_t n, size_t grain, eapig_range_fn fn, void *ctx) {
    if (n == 0) return;
    if (grain < 1) grain = 1;
    choose_default();
    size_t grains = (n + grain - 1) / grain;
    size_t parts = (size_t)pool.wanted < grains ? (size_t)pool.wanted : grains;
    if (parts > 1 && !in_task) start_helpers();
    parts = parts < (size_t)pool.n_helpers + 1 ? parts : (size_t)pool.n_helpers + 1;
    if (parts <= 1 || in_task) {
        fn(ctx, 0, n, 0);
        return;
    }
    job j = {fn, ctx, n, grain, parts};
    pool.current = j;
    atomic_store(&pool.pending, pool.n_helpers);
    atomic_fetch_add_explicit(&pool.generation, 1, memory_order_acq_rel);
    pthread_mutex_lock(&pool.lock);
    if (pool.sleeping > 0) pthread_cond_broadcast(&pool.wake);
    pthread_mutex_unlock(&pool.lock);
    in_task = 1;
    size_t b, e;
    range_of(&j, 0, &b, &e);
    fn(ctx, b, e, 0);
    in_task = 0;
    for (int spins = 0; atomic_load_explicit(&pool.pending, memory_order_acquire) > 0;) {
        if (++spins < SPIN) {
            cpu_relax();
            continue;
        }
        pthread_mutex_lock(&pool.lock);
        while (atomic_load(&pool.pending) > 0) pthread_cond_wait(&pool.done, &pool.lock);
        pthread_mutex_unlock(&pool.lock);
    }
}

/* ---- the split matrix product ---- */

typedef struct {
    int ta, tb;
    size_t M, N, K;
    float alpha, beta;
    const float *A, *B;
    float *C;
    size_t lda, ldb, ldc;
    int split; /* 0 rows of C, 1 columns of C, 2 the inner dimension */
    float *partial; /* split 2: (threads - 1) partial products (M, N), beyond range 0's */
} gemm_job;

static void gemm_block(const gemm_job *g, size_t M, size_t N, size_t K, const float *A, const float *B, float beta,
                       float *C, size_t ldc) {
    cblas_sgemm(CblasRowMajor, g->ta ? CblasTrans : CblasNoTrans, g->tb ? CblasTrans : CblasNoTrans, (int)M, (int)N,
                (int)K, g->alpha, A, (int)g->lda, B, (int)g->ldb, beta, C, (int)ldc);
}

static void gemm_range(void *ctx, size_t b, size_t e, size_t index) {
    const gemm_job *g = ctx;
    if (g->split == 0) { /* rows i of C: row i of A, or column i of a transposed A */
        const float *A = g->ta ? g->A + b : g->A + b * g->lda;
        gemm_block(g, e - b, g->N, g->K, A, g->B, g->beta, g->C + b * g->ldc, g->ldc);
    } else if (g->split == 1) { /* columns j of C */
        const float *B = g->tb ? g->B + b * g->ldb : g->B + b;
        gemm_block(g, g->M, e - b, g->K, g->A, B, g->beta, g->C + b, g->ldc);
    } else { /* inner k: range 0 adds into C, the others write partial products summed after */
        const float *A = g->ta ? g->A + b * g->lda : g->A + b;
        const float *B = g->tb ? g->B + b : g->B + b * g->ldb;
        if (index == 0)
            gemm_block(g, g->M, g->N, e - b, A, B, g->beta, g->C, g->ldc);
        else
            gemm_block(g, g->M, g->N, e - b, A, B, 0.0f, g->partial + (index - 1) * g->M * g->N, g->N);
    }
}

/* Below this many multiply-adds a product runs on one thread: splitting costs more than it saves. */
static const double SPLIT_FROM = 1 << 20;

void eapig_gemm(int trans_a, int trans_b, size_t M, size_t N, size_t K, float alpha, const float *A, size_t lda,
                const float *B, size_t ldb, float beta, float *C, size_t ldc) {
    /* The linear layers' shapes: the core's own tiles, which do not copy the weights first. */
    if (!trans_a && alpha == 1.0f && (beta == 0.0f || beta == 1.0f) &&
        eapig_dense_product(trans_b, M, N, K, A, lda, B, ldb, beta == 1.0f, C, ldc))
        return;
    gemm_job g = {trans_a, trans_b, M, N, K, alpha, beta, A, B, C, lda, ldb, ldc, 0, NULL};
    size_t T = (size_t)eapig_get_num_threads();
    if (T <= 1 || in_task || (double)M * (double)N * (double)K < SPLIT_FROM || M == 0 || N == 0) {
        if (M && N) gemm_block(&g, M, N, K, A, B, beta, C, ldc);
        return;
    }
    /* A small output with a long inner dimension: split k, so each thread reads its share of both
     * inputs (by rows or columns each would read all of the other input). */
    if (K >= 8 * (M + N) && M * N <= ((size_t)1 << 18)) {
        g.split = 2;
        g.partial = calloc((T - 1) * M * N, sizeof(float)); /* zero: a range left unused adds nothing */
        if (g.partial) {
            eapig_parallel_for(K, 256, gemm_range, &g);
            for (size_t p = 1; p < T; p++)
                for (size_t i = 0; i < M; i++) {
                    const float *src = g.partial + ((p - 1) * M + i) * N;
                    float *dst = C + i * ldc;
                    for (size_t j = 0; j < N; j++) dst[j] += src[j];
                }
            free(g.partial);
            return;
        }
        /* no memory for the partial products: split the output instead */
    }
    /* Each thread packs its part of one input and all of the other: split the larger side. */
    g.split = M >= N ? 0 : 1;
    eapig_parallel_for(g.split == 0 ? M : N, 16, gemm_range, &g);
}
