/* internal.h: declarations shared by the core's files, not part of the public API. */
#ifndef EAPIG_INTERNAL_H
#define EAPIG_INTERNAL_H
#include <stddef.h>
#include <stdint.h>

#include "eapig.h"

/* Sets the thread-local message and returns status, so callers can `return eapig_set_error(...)`. */
int eapig_set_error(int status, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* SwiGLU and GeGLU: the MLP has a gate projection and multiplies by the up projection. */
static inline int eapig_act_gated(int32_t act) {
    return act == EAPIG_ACT_SILU_GATED || act == EAPIG_ACT_GELU_TANH_GATED;
}

/* The sliding window of layer l (keys i - j < window visible), or 0 for global attention. */
int eapig_layer_window(const eapig_config *c, int l);

/* ---- the residual graph's indices (DESIGN "The one idea"); lua/eapig/indices.lua is the twin ----
 * Sources: input 0, then per layer l its H heads 1 + l(H+1) + h and its MLP 1 + l(H+1) + H:
 * NF = 1 + L(H+1). Destinations: per layer l the J = 3H+1 slots from l*J (q of head h at +h,
 * k at +H+h, v at +2H+h, the MLP input at +3H), then the logits: NB = L*J + 1. */
/* Sources before layer l (input and every earlier layer's nodes): also a{l}.h0's index. */
static inline size_t eapig_first_node(size_t H, size_t l) { return 1 + l * (H + 1); }
/* The node of layer l's MLP. */
static inline size_t eapig_mlp_node(size_t H, size_t l) { return eapig_first_node(H, l) + H; }
/* Sources upstream of layer l's MLP input (its own heads too, unless attention and MLP are parallel). */
static inline size_t eapig_mlp_upstream(size_t H, size_t l, int parallel) {
    return eapig_first_node(H, l) + (parallel ? 0 : H);
}
/* Destinations per layer, J = 3H+1. */
static inline size_t eapig_layer_dests(size_t H) { return 3 * H + 1; }
/* The first destination of layer l (head 0's q input); l = L gives the logits. */
static inline size_t eapig_first_dest(size_t H, size_t l) { return l * eapig_layer_dests(H); }
/* Layer l's MLP input. */
static inline size_t eapig_mlp_dest(size_t H, size_t l) { return eapig_first_dest(H, l) + 3 * H; }
/* NF and NB of a model of L layers of H heads. */
static inline size_t eapig_n_sources(size_t H, size_t L) { return eapig_first_node(H, L); }
static inline size_t eapig_n_dests(size_t H, size_t L) { return eapig_first_dest(H, L) + 1; }
/* Whether source u is a head, and its layer (-1 for input). */
static inline int eapig_node_is_head(size_t H, size_t u) { return u > 0 && (u - 1) % (H + 1) < H; }
static inline int eapig_node_layer(size_t H, size_t u) { return u == 0 ? -1 : (int)((u - 1) / (H + 1)); }
/* The layer of destination v (L for the logits), and whether it is an MLP input. */
static inline int eapig_dest_layer(size_t H, size_t v) { return (int)(v / eapig_layer_dests(H)); }
static inline int eapig_dest_is_mlp(size_t H, size_t v) { return v % eapig_layer_dests(H) == 3 * H; }
/* Node groups (eapig_forward_opts.override_group): 0 the input, 1 + 2l layer l's heads, 2 + 2l
 * its MLP; 2L + 1 in all. */
static inline int eapig_heads_group(int l) { return 1 + 2 * l; }
static inline int eapig_mlp_group(int l) { return 2 + 2 * l; }
static inline int eapig_n_groups(int L) { return 1 + 2 * L; }
/* Residual-stream readers (eapig_forward_opts.resid): 2l layer l's heads, 2l + 1 its MLP, 2L the
 * logits; 2L + 1 in all. */
static inline size_t eapig_attn_reader(size_t l) { return 2 * l; }
static inline size_t eapig_mlp_reader(size_t l) { return 2 * l + 1; }
static inline size_t eapig_logits_reader(size_t L) { return 2 * L; }

/* Checked size arithmetic: returns 0 and sets an error on overflow. */
static inline int eapig_mul_ok(size_t a, size_t b, size_t *out) {
    return !__builtin_mul_overflow(a, b, out);
}

/* A weight matrix that stays in a mapped checkpoint and is converted to f32 at each use
 * (core/weights.c). It gives the (rows, cols) f32 matrix
 *   dst[r][c] = stored[map[r]][c]      (transpose 0: the stored tensor is (stored_rows, cols))
 *   dst[r][c] = stored[c][map[r]]      (transpose 1: the stored tensor is (cols, stored_rows))
 * with map[r] = r when row_map is NULL. */
typedef struct stored_matrix {
    const uint8_t *data;  /* first byte of the stored tensor in its mapping; NULL = not bound */
    int32_t dtype;        /* EAPIG_DTYPE_* */
    int32_t transpose;
    size_t rows, cols;    /* the f32 matrix */
    size_t stored_rows;
    int32_t *row_map;     /* (rows) owned, or NULL */
    int centre_columns;   /* subtract each column's mean over the rows (LayerNorm writers) */
} stored_matrix;

/* ---- the weight tensors of a model (core/model_params.c) ---- */
/* What a tensor is, for initialisation and weight decay (core/train.c). */
enum {
    EAPIG_TENSOR_MATRIX,  /* a projection read from the residual stream */
    EAPIG_TENSOR_WRITER,  /* a projection that writes into it (wo, w_out): GPT-2 scales its init */
    EAPIG_TENSOR_WTE,     /* token embedding */
    EAPIG_TENSOR_WPE,     /* learned positions */
    EAPIG_TENSOR_UNEMBED, /* unembedding */
    EAPIG_TENSOR_GAIN,    /* norm weight */
    EAPIG_TENSOR_BIAS     /* bias (and norm bias) */
};
/* A tensor's dimensions, by name: 1, d_model, d_mlp, vocab, n_ctx, n_heads*d_head, n_kv_heads*d_head. */
enum { EAPIG_DIM_1, EAPIG_DIM_D, EAPIG_DIM_F, EAPIG_DIM_V, EAPIG_DIM_CTX, EAPIG_DIM_QD, EAPIG_DIM_KVD };
/* When a tensor exists: always, learned positions, gated MLPs, post-norm blocks, q/k norms. */
enum { EAPIG_IF_ALWAYS, EAPIG_IF_LEARNED_POS, EAPIG_IF_GATED, EAPIG_IF_POST_NORM, EAPIG_IF_QK_NORM };

typedef struct eapig_tensor_desc {
    const char *name;  /* the field's name */
    int per_layer;     /* 0: a field of eapig_weights, 1: of eapig_layer_weights */
    size_t offset;     /* offsetof the field (a float *) in its struct */
    int rows, cols;    /* EAPIG_DIM_*: the (rows, cols) shape, cols 1 for vectors */
    int kind;          /* EAPIG_TENSOR_* */
    int matrix;        /* EAPIG_MAT_* of a big matrix (stored mode keeps it in its file), or -1 */
    int present;       /* EAPIG_IF_* */
} eapig_tensor_desc;

/* Every tensor, in arena order: the globals, then one layer's (repeated for each layer). */
extern const eapig_tensor_desc eapig_tensors[];
extern const size_t eapig_n_tensors;
/* Whether the tensor exists in a model of c. */
int eapig_tensor_present(const eapig_config *c, const eapig_tensor_desc *t);
/* Its (rows, cols) in a model of c. */
void eapig_tensor_shape(const eapig_config *c, const eapig_tensor_desc *t, size_t *rows, size_t *cols);
/* The pointer field of the tensor: in w for a global, in lw for a per-layer one. */
float **eapig_tensor_slot(eapig_weights *w, eapig_layer_weights *lw, const eapig_tensor_desc *t);
/* The tensor of big matrix which (EAPIG_MAT_*), or NULL. */
const eapig_tensor_desc *eapig_matrix_desc(int which);

/* Matrices per layer in stored_matrix order after the two global ones (wte, unembedding). */
enum { EAPIG_LAYER_MATS = EAPIG_MAT_W_OUT - EAPIG_MAT_WQ + 1 };

struct eapig_model {
    eapig_config cfg;
    eapig_weights w;
    eapig_layer_weights *layers; /* (L), owned */
    float *arena;                /* every f32 weight tensor, one allocation */
    size_t arena_floats;
    float *rope_freq;            /* (rotary_dim/2) inverse frequencies, or NULL without RoPE */
    int finalized;
    /* LayerNorm models: each embedding row is centred as it is read (eapig_embed_rows), so the
     * table itself stays as stored and a tied unembedding can be that same table. */
    int centre_embed;
    /* Stored mode: the big matrices are NULL in w and layers and are read from mats instead. */
    int stored;
    stored_matrix *mats;         /* (2 + EAPIG_LAYER_MATS * L), indexed by mat_index() */
    eapig_file **files;          /* (n_files) mappings the matrices point into, retained */
    size_t n_files;
};

/* ---- threads (core/threads.c) ---- */
enum { EAPIG_MAX_THREADS = 64 }; /* eapig_set_num_threads caps its count here */

/* Part p of `parts` over [0, n) (contiguous, in order). */
static inline void eapig_part(size_t n, size_t parts, size_t p, size_t *begin, size_t *end) {
    *begin = n * p / parts;
    *end = n * (p + 1) / parts;
}
/* A range [begin, end) of some work; index is the range's number (0 runs on the calling thread),
 * for per-thread scratch: index < eapig_get_num_threads(). */
typedef void (*eapig_range_fn)(void *ctx, size_t begin, size_t end, size_t index);
/* Runs fn over [0, n) in up to eapig_get_num_threads() contiguous ranges of whole grains (the
 * last takes the remainder), the first on the calling thread; returns when all are done. A call
 * from inside a range runs serially. One calling thread at a time. */
void eapig_parallel_for(size_t n, size_t grain, eapig_range_fn fn, void *ctx);
/* Rows of one head's block made at a time (a head's output, its own input, its destination
 * gradient): a block of EAPIG_TILE_ROWS x d_model floats stays in the core's L2 cache from its
 * product through the norm, the sums, the capture and the gather, instead of a pass over memory
 * each. */
enum { EAPIG_TILE_ROWS = 128 };
/* A sum over heads split over the threads is made as this many partial sums, added in order at
 * the end: four up to four threads, so the result is the same bits at one to four threads (one
 * partial sum per thread beyond). Each part past the first costs a buffer and a pass. */
static inline size_t eapig_sum_parts(void) {
    size_t t = (size_t)eapig_get_num_threads();
    return t > 4 ? t : 4;
}
/* Row-major C (M,N) = alpha op(A) op(B) + beta C, op = transpose when trans_* is set, as
 * cblas_sgemm: the linear layers' forms (A not transposed, alpha 1, beta 0 or 1) on the core's
 * own tiles (eapig_dense_product) where the machine has them, anything else with OpenBLAS
 * single-threaded, split over the core's threads when large enough. */
void eapig_gemm(int trans_a, int trans_b, size_t M, size_t N, size_t K, float alpha, const float *A, size_t lda,
                const float *B, size_t ldb, float beta, float *C, size_t ldc);

/* ---- the linear layers' product (core/dense_product.c) ---- */
/* C (M,N) = A (M,K) @ B, or + C when accumulate, with B (K,N) when trans_b = 0 and B^T for
 * B (N,K) when trans_b = 1, all row-major, on the core's own AVX-512 tiles, which read B (the
 * weights) where it lies; split over the threads, the same bits at any thread count. Returns 1
 * when done, 0 when it leaves the product to OpenBLAS (C untouched): no AVX-512, fewer than 32
 * rows, turned off, or no memory for its scratch. */
int eapig_dense_product(int trans_b, size_t M, size_t N, size_t K, const float *A, size_t lda, const float *B,
                        size_t ldb, int accumulate, float *C, size_t ldc);
/* on = 1 or 0 turns the tiles on (where the machine has AVX-512) or off (OpenBLAS for every
 * product), on < 0 only asks; returns whether they are on. */
int eapig_dense_product_enable(int32_t on);

/* ---- the edge-score product (core/edge_product.c) ---- */
/* Rows wanted in column c of an edge product: u < rows(ctx, c), non-decreasing in c. */
typedef size_t (*eapig_col_rows_fn)(const void *ctx, size_t c);
/* C[u*ldc + c] += sum over k < K of A[u*lda + k] * B[c*ldb + k], for c < n_cols and
 * u < rows(ctx, c) only (C's other entries are untouched). partial: scratch of
 * eapig_edge_product_floats(rows(ctx, n_cols - 1), n_cols) floats. The same bits at one to four
 * threads. */
void eapig_edge_product(size_t n_cols, eapig_col_rows_fn rows, const void *ctx, size_t K, const float *A,
                        size_t lda, const float *B, size_t ldb, float *C, size_t ldc, float *partial);
size_t eapig_edge_product_floats(size_t n_rows, size_t n_cols);
/* An edge product's B should have its rows this many floats further apart than their length:
 * rows a multiple of 4 KiB apart (d_model 768 x 16 rows...) all fall into one set of the L2
 * cache at the same k, which then holds only a few of them. */
enum { EAPIG_EDGE_PAD = 16 };
/* The product's register tiles: which < 0 returns the name of those in use (at first the fastest
 * this machine runs); which >= 0 switches to instance `which` (0 the fastest kind, the last the
 * portable one) and returns its name, or NULL when there is none or this machine cannot run it. */
const char *eapig_edge_product_tiles(int32_t which);

/* ---- files (core/file.c) ---- */
size_t eapig_dtype_size(int32_t dtype);
void eapig_file_retain(eapig_file *f);
const char *eapig_file_path(const eapig_file *f);
/* Pointer to bytes [begin, end) of the mapping, or NULL when the range leaves the file. */
const uint8_t *eapig_file_bytes(const eapig_file *f, uint64_t begin, uint64_t end);
/* Index of the first NaN or infinite element among count stored elements of dtype (F32, F16,
 * BF16) at p, or -1: a bit test per element, so stored weights are checked without converting. */
int64_t eapig_stored_first_nonfinite(const uint8_t *p, size_t count, int32_t dtype);
/* n elements of dtype at src (any alignment) -> float32 dst. */
void eapig_convert(float *dst, const uint8_t *src, size_t n, int32_t dtype);
/* Drops the whole pages inside [p, p + n) from this process's resident set (they stay in the
 * page cache and come back on the next read). */
void eapig_file_release(const uint8_t *p, size_t n);

/* ---- big buffers (core/buffer.c) ---- */
/* n zeroed floats, 64-byte aligned; large ones are their own huge-page mapping. NULL when out of
 * memory (no error set: the caller names itself). Free with eapig_big_floats_free. */
float *eapig_big_floats(size_t n);
void eapig_big_floats_free(float *p);

/* ---- weights (core/model.c, core/weights.c) ---- */
/* Subtracts from every column of the (rows, cols) row-major w its mean over the rows. */
void eapig_centre_columns(float *w, size_t rows, size_t cols);
/* Releases what stored mode added to m (matrices, retained files). */
void eapig_model_free_stored(eapig_model *m);
/* Stored mode: an error naming the first matrix not bound yet (EAPIG_OK in f32 mode). */
int eapig_model_check_bound(const eapig_model *m, const char *fn);
/* Stored mode: matrix which (EAPIG_MAT_*) of layer l converted into dst (rows*cols floats). */
int eapig_stored_convert(const eapig_model *m, int l, int which, float *dst);
/* Stored mode, LayerNorm models: centre wo and w_out columns at every conversion. */
void eapig_stored_centre(eapig_model *m);

#endif
