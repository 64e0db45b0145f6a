/* eapig.h: the one public header of libeapig, and the FFI contract.
 *
 * The Lua side generates its ffi.cdef from this file at build time (tools/gen_cdef.lua strips
 * the preprocessor lines and the EAPIG_API macro), so everything below the guard is plain C
 * declarations that LuaJIT's C parser accepts: no macros in declarations, constants as enums.
 *
 * Dimension glossary (used in every shape comment):
 *   B = batch rows, P = positions, N = B*P tokens, D = d_model, H = query heads, KV = key/value
 *   heads, Dh = d_head, F = d_mlp, V = vocab, L = layers, C = context length,
 *   NF = n_forward = 1 + L*(H+1) source nodes, NB = n_backward = L*(3H+1) + 1 destinations.
 *
 * Node order (EAP-IG's): forward node 0 is `input`; layer l's heads are 1 + l*(H+1) + h and its
 * MLP is 1 + l*(H+1) + H. Destination order: layer l occupies l*(3H+1) .. l*(3H+1)+3H: all q
 * inputs, all k inputs, all v inputs, then the MLP input; the logits input is last.
 *
 * Activation buffers are node-major: capture, reference and difference buffers are (NF, B, P, D)
 * so that the patching deltas and the score accumulation are each one GEMM per layer.
 *
 * Every function returns 0 (EAPIG_OK) or a negative status and leaves a message for
 * eapig_last_error(); the library never prints and never exits.
 */
#ifndef EAPIG_H
#define EAPIG_H
#include <stddef.h>
#include <stdint.h>
#if defined(EAPIG_BUILD)
#define EAPIG_API __attribute__((visibility("default")))
#else
#define EAPIG_API
#endif

enum {
    EAPIG_OK = 0,
    EAPIG_ERR_ARG = -1,     /* bad argument or shape */
    EAPIG_ERR_NOMEM = -2,   /* allocation failed */
    EAPIG_ERR_IO = -3,      /* file missing, unreadable or malformed */
    EAPIG_ERR_STATE = -4    /* e.g. backward without a forward that kept its activations */
};

/* ---- errors and threads ---------------------------------------------------------------- */
EAPIG_API const char *eapig_last_error(void);
/* The threads the core computes with (default: OpenBLAS's count, OPENBLAS_NUM_THREADS or the
 * cores). The core splits its products and row-wise kernels over them itself and keeps OpenBLAS
 * single-threaded inside each part (core/threads.c). Calls come from one thread at a time. */
EAPIG_API void eapig_set_num_threads(int n);
EAPIG_API int eapig_get_num_threads(void);

/* ---- model configuration ------------------------------------------------------------- */
enum { EAPIG_NORM_LAYERNORM = 0, EAPIG_NORM_RMSNORM = 1 };
enum {
    EAPIG_ACT_GELU_TANH = 0,  /* GPT-2's gelu_new */
    EAPIG_ACT_GELU_ERF = 1,   /* exact gelu (GPT-NeoX) */
    EAPIG_ACT_RELU = 2,
    EAPIG_ACT_SILU_GATED = 3, /* SwiGLU: down(silu(gate(x)) * up(x)) (llama, mistral, qwen2) */
    EAPIG_ACT_GELU_TANH_GATED = 4 /* GeGLU: down(gelu_tanh(gate(x)) * up(x)) (gemma) */
};
enum { EAPIG_POS_LEARNED = 0, EAPIG_POS_ROPE = 1 };
/* Rotary frequencies: theta^(-2i/rotary_dim), or Llama-3.1's rescaling of them (HF rope_type
 * "llama3": low frequencies divided by rope_factor, high ones kept, a smooth blend between). */
enum { EAPIG_ROPE_DEFAULT = 0, EAPIG_ROPE_LLAMA3 = 1 };
/* Where a block's norms sit. PRE: x + f(norm(x)) (every family above). SANDWICH: also a norm on
 * each output, x + norm_post(f(norm(x))) (gemma2). POST: x + norm_post(f(x)), no pre-norm (olmo2).
 * A head's node is its output before the attention's post-norm (summed with the other heads and
 * b_O, then normalised); an MLP's node is its output after its post-norm. */
enum { EAPIG_BLOCK_PRE_NORM = 0, EAPIG_BLOCK_SANDWICH = 1, EAPIG_BLOCK_POST_NORM = 2 };

typedef struct eapig_config {
    int32_t n_layers, n_heads, n_kv_heads, d_model, d_head, d_mlp, vocab, n_ctx;
    int32_t norm;              /* EAPIG_NORM_* */
    int32_t act;               /* EAPIG_ACT_* */
    int32_t pos;               /* EAPIG_POS_* */
    int32_t rotary_dim;        /* dims rotated in each head (half-split layout); d_head for full RoPE */
    int32_t parallel_attn_mlp; /* 1: attention and MLP both read the layer's input (GPT-NeoX) */
    float norm_eps;
    float rope_theta;
    /* Fields added with later families: zero keeps the behaviour of the families above. */
    int32_t rope_type;             /* EAPIG_ROPE_* */
    float rope_factor;             /* llama3: factor, low_freq_factor, high_freq_factor, */
    float rope_low_freq_factor;    /*   original_max_position_embeddings */
    float rope_high_freq_factor;
    int32_t rope_original_ctx;
    float embed_scale;             /* token embeddings are multiplied by it (gemma: sqrt(D)); 0 = 1 */
    int32_t block_norms;           /* EAPIG_BLOCK_* */
    int32_t qk_norm;               /* 1: RMSNorm over the whole q projection (all H heads) and the
                                    * whole ungrouped k projection, before RoPE (olmo2) */
    float attn_scale;              /* q.k is multiplied by it; 0 = 1/sqrt(d_head) */
    float attn_softcap;            /* scores become c tanh(s / c) before the mask; 0 = none (gemma2) */
    float final_softcap;           /* the same on the logits; 0 = none */
    int32_t sliding_window;        /* key j visible from query i only if i - j < window; 0 = none */
    int32_t sliding_period;        /* with a window: 0 = every layer slides; p > 0 = layers l with
                                    * (l + 1) % p == 0 are global, the others slide (gemma2: 2) */
    int32_t shared_unembed;        /* 1: w_unembed is wte itself, one copy (a tied model that is
                                    * not trained; f32 weights only, ignored when stored) */
} eapig_config;

/* Weights, float32, in PyTorch Linear layout (out, in). Every bias exists (zero when the
 * checkpoint has none) so the kernels have one code path; w_gate exists only for gated MLPs
 * and wpe only for learned positions (NULL otherwise). */
typedef struct eapig_layer_weights {
    float *ln1_w, *ln1_b;   /* (D), (D): norm before attention (ln1_b unused by RMSNorm) */
    float *wq, *bq;         /* (H*Dh, D), (H*Dh) */
    float *wk, *bk;         /* (KV*Dh, D), (KV*Dh) */
    float *wv, *bv;         /* (KV*Dh, D), (KV*Dh) */
    float *wo, *bo;         /* (D, H*Dh), (D) */
    float *ln2_w, *ln2_b;   /* (D), (D): norm before the MLP */
    float *w_in, *b_in;     /* (F, D), (F): fc (gpt2) or up_proj (gated) */
    float *w_gate;          /* (F, D): gate_proj, gated MLPs only (SwiGLU, GeGLU), else NULL */
    float *w_out, *b_out;   /* (D, F), (D): proj / down_proj */
    float *attn_post_w;     /* (D): norm of the attention output (SANDWICH, POST blocks), else NULL */
    float *mlp_post_w;      /* (D): norm of the MLP output (SANDWICH, POST blocks), else NULL */
    float *q_norm_w;        /* (H*Dh): q norm (qk_norm), else NULL */
    float *k_norm_w;        /* (KV*Dh): k norm (qk_norm), else NULL */
} eapig_layer_weights;

typedef struct eapig_weights {
    float *wte;                  /* (V, D) token embedding */
    float *wpe;                  /* (C, D) learned positions, or NULL */
    float *lnf_w, *lnf_b;        /* (D), (D) final norm */
    float *w_unembed;            /* (V, D) its own copy, also when the checkpoint ties it to wte */
    eapig_layer_weights *layers; /* (L) */
} eapig_weights;

typedef struct eapig_model eapig_model;

/* Allocates zeroed weights for cfg (checked: positive sizes, no overflow). NULL on error. */
EAPIG_API eapig_model *eapig_model_new(const eapig_config *cfg);
EAPIG_API void eapig_model_free(eapig_model *m);
/* The model's config and weights; NULL (with the error set) for a NULL model. */
EAPIG_API const eapig_config *eapig_model_config(const eapig_model *m);
EAPIG_API eapig_weights *eapig_model_weights(eapig_model *m);
/* After the weights are filled: fold value biases into bo and, on LayerNorm models, centre the
 * writing weights (wte, wpe, wo, bo, w_out, b_out) as TransformerLens does on load. wte itself
 * is left as it is (a tied unembedding may be the same table): its rows are centred as tokens
 * read them. Call once. */
EAPIG_API int eapig_model_finalize(eapig_model *m);
/* Source nodes (NF) and destinations (NB); -1 (with the error set) for a NULL model. */
EAPIG_API int32_t eapig_model_n_forward(const eapig_model *m);
EAPIG_API int32_t eapig_model_n_backward(const eapig_model *m);
/* Number of real edges u->v (u upstream of v); -1 (with the error set) for a NULL model. */
EAPIG_API int64_t eapig_model_n_edges(const eapig_model *m);
/* Fills mask (NF, NB) with 1 where the edge u->v exists, else 0. */
EAPIG_API int eapig_model_edge_mask(const eapig_model *m, uint8_t *mask);

/* ---- files: memory-mapped, every read bounds-checked ------------------------------------ */
enum { EAPIG_DTYPE_F32 = 0, EAPIG_DTYPE_F16 = 1, EAPIG_DTYPE_BF16 = 2, EAPIG_DTYPE_I32 = 3 };

typedef struct eapig_file eapig_file;
EAPIG_API eapig_file *eapig_file_open(const char *path);
EAPIG_API void eapig_file_close(eapig_file *f);
EAPIG_API uint64_t eapig_file_size(const eapig_file *f);
/* Copies n bytes at offset into dst; error (naming the file) if the range leaves the file. */
EAPIG_API int eapig_file_read(const eapig_file *f, uint64_t offset, uint64_t n, void *dst);
/* Converts the tensor stored at [begin, end) with the given dtype into float32 dst of rows*cols
 * elements; end - begin must equal rows*cols*element size. A NaN or infinite element is an error
 * naming its index (weights must be finite). transpose != 0 reads a stored
 * (cols, rows) matrix and writes its transpose (GPT-2's Conv1D weights). */
EAPIG_API int eapig_file_tensor(const eapig_file *f, uint64_t begin, uint64_t end, int32_t dtype,
                                float *dst, int64_t rows, int64_t cols, int32_t transpose);
/* Index of the first element of x (n floats) that is NaN or infinite, or -1 when all are finite.
 * Weights read from files pass through this (eapig_file_tensor calls it) before Lua sees them. */
EAPIG_API int64_t eapig_floats_first_nonfinite(const float *x, int64_t n);
/* Replaces every NaN in x by the quiet NaN of its sign (0x7fc00000 or 0xffc00000, no payload)
 * and returns how many it changed (NaNs that had a payload); *first_changed (optional) is the
 * index of the first, or -1.
 * LuaJIT may mistake a NaN with another payload, read from C memory, for a tagged object, so
 * floats read from a file where NaN is legitimate (graph scores) are canonicalised first. */
EAPIG_API int64_t eapig_floats_canonicalize_nan(float *x, int64_t n, int64_t *first_changed);

/* ---- paths: what is at a path, for callers that must not block on or replace special files -- */
enum {
    EAPIG_PATH_MISSING = 0, EAPIG_PATH_FILE = 1, EAPIG_PATH_DIR = 2, EAPIG_PATH_LINK = 3,
    EAPIG_PATH_FIFO = 4, EAPIG_PATH_CHAR = 5, EAPIG_PATH_BLOCK = 6, EAPIG_PATH_SOCKET = 7,
    EAPIG_PATH_OTHER = 8
};
/* What path names (EAPIG_PATH_*); follow != 0 describes a symlink's target (MISSING when it
 * dangles), follow = 0 the link itself. Never opens the path, so a FIFO cannot block it. */
EAPIG_API int32_t eapig_path_kind(const char *path, int32_t follow);
/* The absolute path with every symlink resolved (realpath) into out (cap bytes). */
EAPIG_API int eapig_path_resolve(const char *path, char *out, size_t cap);
EAPIG_API int32_t eapig_process_id(void);
/* Removes the regular files in dir named prefix + "<pid>-..." whose process no longer runs:
 * temporary outputs left by a killed writer. Sets *removed to how many went. */
EAPIG_API int eapig_remove_stale_temps(const char *dir, const char *prefix, int32_t *removed);

/* Reorders the rows of a (n_heads*d_head, d_in) projection from the interleaved RoPE layout
 * (pairs 2i, 2i+1) into the half-split layout (i, i + d_head/2), in place. */
EAPIG_API int eapig_rope_permute_rows(float *w, int32_t n_heads, int32_t d_head, int32_t d_in);
/* Per-frequency RoPE factors, as llama.cpp stores Llama-3.1's rope scaling in a GGUF file
 * (rope_freqs.weight): frequency i becomes inv_freq[i] / factors[i] (ggml_rope_ext divides theta
 * by freq_factors[i]), where inv_freq are the frequencies cfg gives (rope_type included).
 * n = rotary_dim / 2; every factor finite and positive. Setting them again replaces the previous
 * ones (they do not compound). A RoPE model only; call before running it. */
EAPIG_API int eapig_model_set_rope_factors(eapig_model *m, const float *factors, int32_t n);

/* ---- weights kept as stored (core/weights.c) ------------------------------------------ */
/* A model made with eapig_model_new_stored has f32 norms, biases and learned positions, but its
 * big matrices stay in the mapped checkpoint in their stored dtype (F32, F16, BF16): each is bound
 * to its file with eapig_model_bind, and the forward and backward convert one layer at a time
 * (and the unembedding in vocabulary chunks, the embedding row by row) into workspace buffers
 * just before use. Their pointers in eapig_weights are NULL. Training needs f32 weights. */
enum {
    EAPIG_MAT_WTE = 0,     /* (V, D) */
    EAPIG_MAT_UNEMBED = 1, /* (V, D) */
    EAPIG_MAT_WQ = 2,      /* (H*Dh, D) */
    EAPIG_MAT_WK = 3,      /* (KV*Dh, D) */
    EAPIG_MAT_WV = 4,      /* (KV*Dh, D) */
    EAPIG_MAT_WO = 5,      /* (D, H*Dh) */
    EAPIG_MAT_W_IN = 6,    /* (F, D) */
    EAPIG_MAT_W_GATE = 7,  /* (F, D), gated MLPs only */
    EAPIG_MAT_W_OUT = 8    /* (D, F) */
};
EAPIG_API eapig_model *eapig_model_new_stored(const eapig_config *cfg);
/* Binds matrix `which` (EAPIG_MAT_*) of layer `layer` (ignored for WTE and UNEMBED) to the tensor
 * at bytes [begin, end) of f, of dtype EAPIG_DTYPE_F32/F16/BF16 and stored_rows rows of the
 * matrix's cols (transpose 0), or cols rows of stored_rows (transpose != 0: a (in, out) Conv1D).
 * Row r of the matrix is stored row (column when transposed) row_map[r]; row_map (rows) may be
 * NULL for r -> r and is copied (fused q/k/v tensors, RoPE row orders). Every index and the byte
 * count are checked. The model keeps the mapping open until it is freed. */
EAPIG_API int eapig_model_bind(eapig_model *m, int32_t layer, int32_t which, eapig_file *f, uint64_t begin,
                               uint64_t end, int32_t dtype, int64_t stored_rows, int32_t transpose,
                               const int32_t *row_map);
/* 1 for a model made with eapig_model_new_stored. */
EAPIG_API int32_t eapig_model_is_stored(const eapig_model *m);
/* Bytes of cfg's weights converted whole to f32 (what eapig_model_new allocates). */
EAPIG_API int64_t eapig_weights_f32_bytes(const eapig_config *cfg);
/* Bytes a model made with eapig_model_new_stored allocates (its f32 tensors). */
EAPIG_API int64_t eapig_weights_stored_bytes(const eapig_config *cfg);
/* Bytes of the workspace buffers a stored model's runs add: one layer in f32 and one vocabulary
 * chunk of the unembedding. */
EAPIG_API int64_t eapig_weights_view_bytes(const eapig_config *cfg);

/* ---- GGUF files (core/gguf.c): llama.cpp's checkpoint format -------------------------------
 * Layout (little-endian, versions 2 and 3): "GGUF", uint32 version, uint64 tensor count, uint64
 * key count; each key: string name, uint32 value type, value (an array is uint32 element type,
 * uint64 count, elements); each tensor: string name, uint32 n_dims, uint64 ne[n_dims], uint32
 * ggml type, uint64 offset; then, at the next multiple of general.alignment (default 32), the
 * data section the offsets are relative to. A string is a uint64 length and that many bytes.
 * ne[0] varies fastest: a PyTorch (out, in) matrix is stored with ne = {in, out}.
 *
 * eapig_gguf_open checks the whole header before anything is returned: every length against the
 * bytes left, counts against the smallest size their entries can take, unique key and tensor
 * names, ne[0] a multiple of the type's block, every tensor inside the data section, aligned, and
 * no two tensors sharing a byte. Names and strings are returned as pointers into the mapping with
 * their lengths (not NUL-terminated); they live as long as the handle. Key and tensor indices
 * run from 0 in file order. */
enum {
    EAPIG_GGUF_UINT8 = 0, EAPIG_GGUF_INT8 = 1, EAPIG_GGUF_UINT16 = 2, EAPIG_GGUF_INT16 = 3,
    EAPIG_GGUF_UINT32 = 4, EAPIG_GGUF_INT32 = 5, EAPIG_GGUF_FLOAT32 = 6, EAPIG_GGUF_BOOL = 7,
    EAPIG_GGUF_STRING = 8, EAPIG_GGUF_ARRAY = 9, EAPIG_GGUF_UINT64 = 10, EAPIG_GGUF_INT64 = 11,
    EAPIG_GGUF_FLOAT64 = 12
};
/* ggml tensor types that eapig converts to float32; the others are known by name only. */
enum { EAPIG_GGML_F32 = 0, EAPIG_GGML_F16 = 1, EAPIG_GGML_Q8_0 = 8, EAPIG_GGML_BF16 = 30 };

typedef struct eapig_gguf eapig_gguf;
/* NULL on error; the message names the file and the field at fault. */
EAPIG_API eapig_gguf *eapig_gguf_open(const char *path);
EAPIG_API void eapig_gguf_close(eapig_gguf *g);
EAPIG_API uint32_t eapig_gguf_version(const eapig_gguf *g);
EAPIG_API int64_t eapig_gguf_n_keys(const eapig_gguf *g);
EAPIG_API int64_t eapig_gguf_n_tensors(const eapig_gguf *g);
/* Byte offset of the data section (tensor offsets are relative to it). */
EAPIG_API uint64_t eapig_gguf_data_offset(const eapig_gguf *g);
/* Index of the key with this NUL-terminated name, or -1. */
EAPIG_API int64_t eapig_gguf_find_key(const eapig_gguf *g, const char *name);
/* Key i's name and its length in *len; NULL for a bad index. */
EAPIG_API const char *eapig_gguf_key(const eapig_gguf *g, int64_t i, uint64_t *len);
/* Key i's value type (EAPIG_GGUF_*), or -1 for a bad index. An array sets *elem_type and *count
 * (its elements); a scalar sets *elem_type to its own type and *count to 1. */
EAPIG_API int32_t eapig_gguf_key_type(const eapig_gguf *g, int64_t i, int32_t *elem_type, uint64_t *count);
/* Elements [first, first + n) of key i's value (a scalar is element 0) as doubles: numbers and
 * bools (0 or 1). Strings are an error. */
EAPIG_API int eapig_gguf_key_numbers(const eapig_gguf *g, int64_t i, uint64_t first, uint64_t n, double *out);
/* The same as exact integers: integer and bool types only; a uint64 above INT64_MAX is an error. */
EAPIG_API int eapig_gguf_key_integers(const eapig_gguf *g, int64_t i, uint64_t first, uint64_t n, int64_t *out);
/* The same for strings: pointers into the mapping and their lengths. */
EAPIG_API int eapig_gguf_key_strings(const eapig_gguf *g, int64_t i, uint64_t first, uint64_t n,
                                     const char **ptrs, uint64_t *lens);
/* Index of the tensor with this NUL-terminated name, or -1. */
EAPIG_API int64_t eapig_gguf_find_tensor(const eapig_gguf *g, const char *name);
/* Tensor i's name and its length in *len; NULL for a bad index. */
EAPIG_API const char *eapig_gguf_tensor_name(const eapig_gguf *g, int64_t i, uint64_t *len);
/* Tensor i: ggml type, n_dims (0 .. 4, ne[] filled with 1 past them), element count and its
 * absolute byte range [*begin, *end) in the file. Any out-pointer may be NULL. */
EAPIG_API int eapig_gguf_tensor_info(const eapig_gguf *g, int64_t i, int32_t *type, int32_t *n_dims,
                                     int64_t *ne /* (4) */, int64_t *n_elements, uint64_t *begin, uint64_t *end);
/* "F32", "Q4_K", ... for a ggml type number, or NULL for one ggml does not define. */
EAPIG_API const char *eapig_gguf_type_name(int32_t type);
/* Converts tensor i (F32, F16, BF16 or Q8_0, dequantised: block scale times int8) into n floats
 * in stored order; n must be its element count. Other types are an error naming the type. */
EAPIG_API int eapig_gguf_tensor_read(const eapig_gguf *g, int64_t i, float *dst, int64_t n);

/* ---- forward and backward -------------------------------------------------------------- */
typedef struct eapig_workspace eapig_workspace;
EAPIG_API eapig_workspace *eapig_workspace_new(void);
EAPIG_API void eapig_workspace_free(eapig_workspace *ws);
/* What the edge-score accumulation of the backward runs on ws has cost since the last reset:
 * wall seconds (its GEMMs and the summing of batched integrated-gradient steps) and the GEMMs'
 * floating-point operations (2 per multiply-add). reset != 0 zeroes both after reading. For
 * benchmarks: a phase measured inside the engine, not a difference of two timings. */
EAPIG_API void eapig_workspace_score_stats(eapig_workspace *ws, double *seconds, double *flops, int32_t reset);

typedef struct eapig_batch {
    const int32_t *tokens;   /* (B, P) right-padded token ids, each < V */
    const int32_t *lengths;  /* (B) real tokens per row, 1..P */
    int32_t B, P;            /* P <= C */
} eapig_batch;

enum {
    EAPIG_GROUP_NONE = -1
    /* group g: 0 = input; 1 + 2l = all heads of layer l; 2 + 2l = MLP of layer l */
};

typedef struct eapig_forward_opts {
    /* Logits: with logit_pos (B), one row per batch row at that position -> logits (B, V);
     * without, every position -> logits (B, P, V). logits may be NULL (no unembedding). */
    const int32_t *logit_pos;
    float *logits;
    float *capture;          /* optional out (NF, B, P, D): every source node's output */
    /* With capture: 0 writes the outputs; 1 turns capture, holding reference activations R on
     * entry, into the difference buffer R - output in place; -1 into output - R. */
    int32_t capture_diff;
    /* Patching: destination v reads its clean input + sum_u W[u,v] (R_u - current_u). */
    const float *patch_ref;  /* (NF, B, P, D) reference activations R, or NULL */
    const float *patch_w;    /* (NF, NB) edge weights W, or NULL */
    const float *patch_scale; /* optional (NF, D): R_u - current_u is scaled per dimension (neuron circuits) */
    /* Override: the outputs of one node group are replaced by constants (no gradient flows
     * into the group's own computation). override_value is (nodes in group, B, P, D). */
    int32_t override_group;  /* EAPIG_GROUP_NONE or a group index */
    const float *override_value;
    int32_t keep_for_backward; /* 1: keep the activations eapig_backward needs */
    /* optional out (2L+1, B, P, D): the unpatched residual stream read by layer l's heads (2l),
     * by its MLP (2l+1) and by the logits (2L) */
    float *resid;
    float *attn_probs;       /* optional out (L, B, H, P, P): every head's attention pattern */
    /* 1: also keep what weight gradients need (token ids, attention values z, MLP activations);
     * implies keep_for_backward. Training sets it; attribution never pays for it. */
    int32_t keep_for_weights;
    /* Resume at layer start_layer (1..L; 0 = run everything) from an earlier run of the same batch:
     * start_resid (N, D) is the residual its heads read (block 2*start_layer of that run's resid
     * output) and start_capture (NF, B, P, D) its captured node outputs. The layers before are not
     * run, so patch_w must be zero on their destinations and nothing may be kept for backward:
     * exact patching of an edge into layer l reuses the unchanged prefix this way. */
    int32_t start_layer;
    const float *start_resid;
    const float *start_capture;
} eapig_forward_opts;

/* Patching deltas are constants for the backward: a patched destination's gradient is taken at
 * its own input, and the residual stream's gradient is the sum of its readers' gradients. */
typedef struct eapig_backward_opts {
    const float *dlogits;    /* same shape as the forward's logits */
    /* Score accumulation (all optional; diff is needed by any of the three):
     *   scores[u,v]        += sum_{b,p} <diff[u,b,p,:], G[v,b,p,:]>
     *   node_scores[u]     += sum_{b,p} <diff[u,b,p,:], g_u[b,p,:]>
     *   neuron_scores[u,d] += sum_{b,p} diff[u,b,p,d] g_u[b,p,d]
     * G[v] is the gradient at destination v's input, g_u the residual gradient where u's output
     * is added. diff has diff_B rows (0 = B); when B = k*diff_B (k integrated-gradient steps
     * batched as one batch), batch row r pairs with diff row r % diff_B and gradients are summed
     * over the steps before the one score GEMM. */
    const float *diff;       /* (NF, diff_B, P, D) */
    int32_t diff_B;
    float *scores;           /* (NF, NB), += */
    float *node_scores;      /* (NF), += */
    float *neuron_scores;    /* (NF, D), += */
    /* Memory budget of the edge-score accumulation, in bytes: destination gradients (summed
     * over steps) of as many consecutive layers as fit, at least one layer's, are gathered
     * before their score GEMMs, so that each read of diff serves many destinations. 0: as much
     * as diff itself (NF columns of Bd*P*D floats). */
    int64_t score_memory;
    float *dest_grads;       /* optional out (NB, B, P, D): every destination gradient G, = */
    float *node_grads;       /* optional out (NF, B, P, D): every g_u, = */
    /* optional: a model of the same config (eapig_model_new) whose weights accumulate (+=) the
     * gradient of every weight; the caller zeroes them. Needs a forward with keep_for_weights
     * and no patching; an overridden group's own weights get no gradient. */
    eapig_model *weight_grads;
} eapig_backward_opts;

EAPIG_API int eapig_forward(const eapig_model *m, eapig_workspace *ws, const eapig_batch *batch,
                            const eapig_forward_opts *opts);
/* Bytes a workspace holds for one run of B rows of P positions: eapig_forward's arena and, with
 * EAPIG_RUN_KEEP, eapig_backward's (diff_B as in eapig_backward_opts; 0 = B), plus a stored
 * model's converted layer. Logits on B rows unless EAPIG_RUN_ALL_LOGITS. -1 on bad arguments. */
enum { EAPIG_RUN_KEEP = 1, EAPIG_RUN_PATCH = 2, EAPIG_RUN_WEIGHT_GRADS = 4, EAPIG_RUN_ALL_LOGITS = 8 };
EAPIG_API int64_t eapig_workspace_bytes(const eapig_model *m, int32_t B, int32_t P, int32_t diff_B, int32_t flags);
/* Grows ws's forward and backward arenas to what a run of that shape needs (arguments as in
 * eapig_workspace_bytes), so that the runs of a batch, the largest one last, allocate and fault
 * in their memory once instead of once per size. Runs that need more still grow them. */
EAPIG_API int eapig_workspace_reserve(eapig_workspace *ws, const eapig_model *m, int32_t B, int32_t P, int32_t diff_B,
                                      int32_t flags);

/* Backward for the last forward run in ws, which must have had keep_for_backward set: the
 * activations, and the weights only when opts.weight_grads is set. */
EAPIG_API int eapig_backward(const eapig_model *m, eapig_workspace *ws,
                             const eapig_backward_opts *opts);

/* ---- buffers ------------------------------------------------------------------------- */
/* n zeroed floats for the Lua side's big per-batch buffers, freed explicitly when the batch ends
 * (eapig_floats_free) instead of whenever the garbage collector runs. NULL on error. */
EAPIG_API float *eapig_floats_new(int64_t n);
EAPIG_API void eapig_floats_free(float *p);

/* ---- per-batch arithmetic on node-major activation buffers (core/activations.c) -------------
 * What attribution and evaluation do to whole (NF, B, P, D) buffers between engine runs, so that
 * the Lua side never loops over activations. blk = B*P*D floats per node. */

/* out (n_nodes, S, blk) = base + alphas[s] * delta for every node and step s < S: the override
 * values of S integrated-gradient steps, step-major within each node. base and delta are
 * (n_nodes, blk). */
EAPIG_API int eapig_interpolate(float *out, const float *base, const float *delta, const float *alphas,
                                int32_t n_steps, int64_t n_nodes, int64_t blk);
/* sums += every node's outputs at the real positions (p < lengths[b]) of capture (NF, B, P, D):
 * sums is (NF, D), or (NF, P, D) with per_position != 0. Sums run in double. */
EAPIG_API int eapig_node_sums(double *sums, const float *capture, const int32_t *lengths, int32_t NF, int32_t B,
                              int32_t P, int32_t D, int32_t per_position);
/* R (NF, B, P, D) = means broadcast over rows and positions: means is (NF, D), or (NF, means_P, D)
 * with per_position != 0 (position p reads means row p; P <= means_P). */
EAPIG_API int eapig_broadcast_means(float *R, const float *means, int32_t NF, int32_t B, int32_t P, int32_t D,
                                    int32_t per_position, int32_t means_P);
/* Information-flow routes (Ferrando et al.): for a reader whose input at (b, p) is x (B, P, D),
 * imp[u] += sum_{b, p < lengths[b]} prox(u) / sum_w prox(w) / lengths[b] over sources u < n_up
 * of capture (NF, B, P, D), with proximity prox(u) = max(0, |x|_1 - |o_u - x|_1). In double. */
EAPIG_API int eapig_flow_importance(double *imp, const float *x, const float *capture, int32_t n_up,
                                    const int32_t *lengths, int32_t B, int32_t P, int32_t D);

/* ---- ABI check: the sizes C compiled, which the Lua side compares with its cdef ----------- */
enum {
    EAPIG_ABI_CONFIG = 0,
    EAPIG_ABI_LAYER_WEIGHTS = 1,
    EAPIG_ABI_WEIGHTS = 2,
    EAPIG_ABI_BATCH = 3,
    EAPIG_ABI_FORWARD_OPTS = 4,
    EAPIG_ABI_BACKWARD_OPTS = 5
};
/* sizeof the struct named by an EAPIG_ABI_* value, or 0 for an unknown one. */
EAPIG_API size_t eapig_abi_sizeof(int32_t which);

/* ---- BLAS, exposed for benchmarks (core/blas.c) --------------------------------------- */
/* C (M,N) = A (M,K) @ B (K,N), row-major, through cblas_sgemm. EAPIG_ERR_ARG (with a message)
 * for a size below 1 or a NULL matrix. */
EAPIG_API int eapig_sgemm(int32_t M, int32_t N, int32_t K, const float *A, const float *B, float *C);

/* ---- graphs in EAP-IG's JSON layout (core/graph_json.c) ---------------------------------- */
/* Names travel as one block: n_forward source names, then n_backward destination names, each
 * NUL-terminated, back to back (names_len bytes in all). */

/* Formats edges order[*next ..] (flat indices u*NB + v, EAP-IG's edge order) into out as the
 * entries of the "edges" object, `,\n"u->v": {"score": S, "in_graph": B}` (no comma before edge
 * 0), as many as fit in cap bytes; sets *out_len and advances *next. Scores as "%.9g", NaN and
 * infinities as NaN, Infinity, -Infinity. */
EAPIG_API int eapig_graph_json_edges(char *out, size_t cap, size_t *out_len, int64_t *next,
                                     const int32_t *order, int64_t n_edges, const float *scores,
                                     const uint8_t *in_graph, const char *names, size_t names_len,
                                     int32_t n_forward, int32_t n_backward);
/* Formats one node's neuron lists, `"neurons": [true, ...], "neurons_scores": [S, ...]`, of
 * flags (D) and scores (D) as eapig_graph_json_edges formats scores; cap >= 64 (D + 1) bytes. */
EAPIG_API int eapig_graph_json_neurons(char *out, size_t cap, size_t *out_len, const uint8_t *flags,
                                       const float *scores, int32_t d_model);
/* First pass over a graph JSON file: copies the "cfg" value's text into cfg (cfg_cap bytes with
 * its NUL) and sets *level from the node entries' keys: 2 when one has "neurons" or
 * "neurons_scores", else 1 when one has "score", else 0. Reads only as far as it needs. */
EAPIG_API int eapig_graph_json_header(const char *path, char *cfg, size_t cfg_cap, size_t *cfg_len,
                                      int32_t *level);
/* Second pass: streams the file (a bounded window) into a graph's buffers: scores and in_graph
 * (NF, NB) of the edges present (each must be real: real (NF, NB) != 0), nodes_in_graph (NF + 1)
 * and node_scores (NF) of the nodes present, and on neuron graphs neurons_in_graph and
 * neuron_scores (NF, D), both NULL otherwise. Entries missing from the file are left as they are. */
EAPIG_API int eapig_graph_json_read(const char *path, const char *names, size_t names_len,
                                    int32_t n_forward, int32_t n_backward, int32_t d_model,
                                    const uint8_t *real, float *scores, uint8_t *in_graph,
                                    uint8_t *nodes_in_graph, float *node_scores,
                                    uint8_t *neurons_in_graph, float *neuron_scores);

/* ---- tokenizers (core/tokenizer.c) ------------------------------------------------------ */
/* Byte-pair encoding as Hugging Face tokenizers, GPT-2 and llama2.c do it. The Lua side reads the
 * files (tokenizer.json, vocab.json + merges.txt) and feeds pieces and merges in; llama2.c's
 * tokenizer.bin is read here. Ids are int32; V = vocabulary size (largest id + 1).
 *
 * Pieces are given in the file's spelling. Byte-level tokenizers (GPT-2, Llama-3, Qwen2) spell
 * bytes in GPT-2's byte-to-unicode alphabet ("Ġ" = 0x20) and start every word as one symbol per
 * byte; character tokenizers (SentencePiece style: Llama-2, Mistral, llama2.c) start it as one
 * symbol per UTF-8 character, with "<0xHH>" pieces for bytes that have no piece (byte_fallback)
 * and a meta symbol (usually U+2581 "▁") standing for the space. */
enum { EAPIG_TOK_BYTE_LEVEL = 0, EAPIG_TOK_CHARS = 1 };
/* Pre-tokenization: words are merged separately. The named patterns are run by PCRE2 with
 * Unicode properties (UTF + UCP); EAPIG_TOK_SPLIT_REGEX runs config.pattern; METASPACE starts a
 * new word at every meta symbol (Metaspace split = true). Text between matches is kept as words. */
enum {
    EAPIG_TOK_SPLIT_NONE = 0,
    EAPIG_TOK_SPLIT_GPT2 = 1,      /* 's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+ */
    EAPIG_TOK_SPLIT_LLAMA3 = 2,    /* Llama-3 / tiktoken cl100k: digits in groups of up to 3 */
    EAPIG_TOK_SPLIT_QWEN2 = 3,     /* as Llama-3 with single digits */
    EAPIG_TOK_SPLIT_REGEX = 4,
    EAPIG_TOK_SPLIT_METASPACE = 5
};
/* A space put before each stretch of text (between added tokens): NONE; ALWAYS, even when it
 * starts with a space (Prepend normalizer, llama2.c's dummy prefix); MISSING, when it does not
 * start with one (Metaspace "always", ByteLevel add_prefix_space); FIRST, as MISSING but only for
 * the stretch at the start of the text (Metaspace "first"). */
enum { EAPIG_TOK_PREFIX_NONE = 0, EAPIG_TOK_PREFIX_ALWAYS = 1, EAPIG_TOK_PREFIX_MISSING = 2,
       EAPIG_TOK_PREFIX_FIRST = 3 };
/* Token flags for eapig_tokenizer_set_special. */
enum {
    EAPIG_TOKEN_CONTROL = 1,  /* special (BOS, EOS, ...): dropped by EAPIG_DECODE_SKIP_SPECIAL */
    EAPIG_TOKEN_MATCH = 2     /* found literally in input text (added tokens) with EAPIG_ENCODE_SPECIAL */
};
enum {
    EAPIG_ENCODE_SPECIAL = 1,   /* turn added tokens written in the text into their ids */
    EAPIG_ENCODE_REFERENCE = 2,      /* the straightforward algorithms (tests): the quadratic merge loop instead of
                                        the heap, and EAPIG_ENCODE_WHOLE_MATCHES */
    EAPIG_ENCODE_WHOLE_MATCHES = 4   /* (tests) pre-tokenizer matches over the whole text at once instead of in
                                        windows ahead of each start, with no bound on their work */
};
enum {
    EAPIG_DECODE_SKIP_SPECIAL = 1, /* leave out control tokens */
    EAPIG_DECODE_KEEP_PREFIX = 2   /* keep the leading space that config.strip_prefix removes */
};

typedef struct eapig_tokenizer_config {
    int32_t n_vocab;       /* V: ids are 0 .. V-1 */
    int32_t symbols;       /* EAPIG_TOK_BYTE_LEVEL or EAPIG_TOK_CHARS */
    int32_t split;         /* EAPIG_TOK_SPLIT_* */
    const char *pattern;   /* PCRE2 pattern for EAPIG_TOK_SPLIT_REGEX, else NULL */
    const char *space;     /* meta symbol written for ' ' in pieces ("\xe2\x96\x81"), or NULL */
    int32_t prefix;        /* EAPIG_TOK_PREFIX_* */
    int32_t byte_fallback; /* characters without a piece become their "<0xHH>" byte pieces */
    int32_t ignore_merges; /* a word that is itself a piece is that piece (Llama-3) */
    int32_t fuse_unk;      /* consecutive unknown characters give one unk */
    int32_t unk_id;        /* id for unknown symbols, or -1: they are dropped */
    int32_t strip_prefix;  /* decoding drops the space the prefix added before the first text token */
} eapig_tokenizer_config;

typedef struct eapig_tokenizer eapig_tokenizer;

/* An empty tokenizer (no pieces yet); NULL on error (bad config or pattern). */
EAPIG_API eapig_tokenizer *eapig_tokenizer_new(const eapig_tokenizer_config *cfg);
EAPIG_API void eapig_tokenizer_free(eapig_tokenizer *t);
/* Reads a llama2.c tokenizer.bin: int32 max_token_length, then per token float score, int32
 * length and that many bytes. n_vocab = 0 reads records to the end of the file. Merges are
 * ranked by score; ids 0, 1, 2 are <unk>, BOS and EOS. NULL on error (names file and field). */
EAPIG_API eapig_tokenizer *eapig_tokenizer_load_llama2c(const char *path, int32_t n_vocab);
/* A piece of the model's vocabulary, in the file's spelling. Each id is set at most once. */
EAPIG_API int eapig_tokenizer_set_token(eapig_tokenizer *t, int32_t id, const char *piece,
                                        size_t len, float score);
/* An added token: its literal text and EAPIG_TOKEN_* flags; the id may also be a piece. */
EAPIG_API int eapig_tokenizer_set_special(eapig_tokenizer *t, int32_t id, const char *content,
                                          size_t len, int32_t flags);
/* The next merge rule, in rank order: left and right pieces in the file's spelling; their
 * concatenation must be a piece too. */
EAPIG_API int eapig_tokenizer_add_merge(eapig_tokenizer *t, const char *left, size_t left_len,
                                        const char *right, size_t right_len);
/* Instead of a merge list: any two adjacent symbols whose concatenation is a piece may merge,
 * the piece with the highest score first (llama2.c, SentencePiece BPE). Call after the pieces. */
EAPIG_API int eapig_tokenizer_rank_by_score(eapig_tokenizer *t);
EAPIG_API int32_t eapig_tokenizer_n_vocab(const eapig_tokenizer *t);
EAPIG_API int32_t eapig_tokenizer_n_merges(const eapig_tokenizer *t);
/* Encodes len bytes of text (any bytes; UTF-8 expected). Writes up to cap ids and sets *n_ids to
 * the number the text needs: when that exceeds cap, call again with a larger buffer. */
EAPIG_API int eapig_tokenizer_encode(const eapig_tokenizer *t, const char *text, size_t len,
                                     int32_t flags, int32_t *ids, size_t cap, size_t *n_ids);
/* Decodes n ids into bytes. Writes up to cap bytes and sets *n_bytes to the full length, as
 * encode does. An id outside 0 .. V-1 or with no token is an error. */
EAPIG_API int eapig_tokenizer_decode(const eapig_tokenizer *t, const int32_t *ids, size_t n,
                                     int32_t flags, char *out, size_t cap, size_t *n_bytes);
/* The id of the token whose text is these bytes (added token, piece, piece with ' ' spelled as
 * the meta symbol, or a lone byte's fallback piece), or -1. */
EAPIG_API int32_t eapig_tokenizer_find(const eapig_tokenizer *t, const char *text, size_t len);

/* ---- training (core/train.c) ------------------------------------------------------------ */
/* Training works on raw weights: create the model with eapig_model_new, initialise it (or load
 * it without finalize), train, and call eapig_model_finalize only on a copy used for attribution
 * (or save the raw weights and load them again). A gradient or optimiser-state buffer is a model
 * of the same config made with eapig_model_new: its weight arena holds the values, so the same
 * named pointers (eapig_model_weights) address every tensor's gradient and moments.
 * R = rows of logits (B or B*P), V = vocab. */

/* Every weight of m, contiguous: *n floats in the order of eapig_weights (wte, wpe, lnf_w, lnf_b,
 * w_unembed, then each layer's tensors in eapig_layer_weights order). */
EAPIG_API float *eapig_model_arena(eapig_model *m, int64_t *n);
/* Copies every weight of src into dst (same config). */
EAPIG_API int eapig_model_copy_weights(eapig_model *dst, const eapig_model *src);

/* Random initialisation as GPT-2 does (Hugging Face GPT2PreTrainedModel._init_weights):
 * matrices and embeddings N(0, std^2), the residual writers wo and w_out N(0, std^2 / (2L)),
 * biases 0, norm gains 1. tied != 0 copies wte into w_unembed (GPT-2 ties them). Deterministic
 * in seed on every machine (splitmix64 + Box-Muller in double). */
EAPIG_API int eapig_model_init(eapig_model *m, uint64_t seed, float std, int32_t tied);

/* Softmax cross-entropy of each row of logits (R, V) against targets (R); a target of -1 skips
 * its row (loss 0, gradient 0). losses (R), optional: -log softmax(row)[target]. dlogits (R, V),
 * optional, may be logits itself (in place): scale * (softmax(row) - onehot(target)), so
 * scale = 1 / (rows counted) gives the gradient of the mean loss. Sums run in double. */
EAPIG_API int eapig_cross_entropy(float *losses, float *dlogits, const float *logits,
                                  const int32_t *targets, int64_t R, int32_t V, float scale);

/* Global L2 norm of a gradient model's weights. tied != 0 counts wte and w_unembed as one tensor
 * (their gradients summed), as eapig_adamw_step applies them. */
EAPIG_API int eapig_grad_norm(const eapig_model *grads, int32_t tied, double *norm);

typedef struct eapig_adamw_opts {
    float lr;           /* this step's learning rate (the caller owns the schedule) */
    float beta1, beta2; /* 0.9, 0.95 (nanoGPT) or 0.999 (PyTorch) */
    float eps;          /* 1e-8 */
    float weight_decay; /* decoupled, lr * wd * w; matrices and embeddings only (not biases or
                         * norm gains), as GPT-2 / nanoGPT training groups them */
    float grad_scale;   /* gradients are multiplied by this first (clipping by global norm) */
    int32_t step;       /* t = 1, 2, ...: Adam's bias correction */
    int32_t tied;       /* wte and w_unembed are one tensor: gradients summed, update copied */
} eapig_adamw_opts;

/* One AdamW step (PyTorch's torch.optim.AdamW): for every weight w with gradient g,
 *   w -= lr wd w (decayed tensors);  m1 = b1 m1 + (1-b1) g;  m2 = b2 m2 + (1-b2) g^2;
 *   w -= lr (m1 / (1-b1^t)) / (sqrt(m2 / (1-b2^t)) + eps).
 * grads, m1, m2 are models of m's config; m1 and m2 start zeroed. */
EAPIG_API int eapig_adamw_step(eapig_model *m, const eapig_model *grads, eapig_model *m1, eapig_model *m2,
                               const eapig_adamw_opts *opts);

#endif /* EAPIG_H */
