/* forward.c: the patched forward pass over the residual graph (DESIGN "The one idea").
 *
 * Each destination v (a head's q, k or v input, an MLP input, the logits input) reads the clean
 * residual stream plus sum_u W[u,v] (R_u - current_u). Destinations whose weights are all zero
 * share one normalised input; the others get their own copy through their own norm, as
 * TransformerLens does with use_split_qkv_input. Every source node's output can be captured.
 *
 * Post-norm blocks (gemma2, olmo2) normalise the summed head outputs before the residual stream,
 * so a head's difference cannot be added to a destination's input: there, as EAP-IG's
 * evaluate_graph does with use_normalization_before_and_after, a destination v reads
 *   x_v + sum_{u not a head} W[u,v] (R_u - C_u)
 *       + sum_{layers i before v} [ post_i(A'_iv) - post_i(A_i) ],
 *   A_i = sum_h C_ih + b_O,  A'_iv = sum_h [(1 - W[h,v]) C_ih + W[h,v] R_ih] + b_O,
 * with C the current run's outputs (head_patch_terms).
 *
 * B = batch rows, P = positions, N = B*P, D = d_model, H = heads, KV = kv heads, Dh = d_head,
 * F = d_mlp, V = vocab, L = layers, NF = source nodes, NB = destinations, J = 3H+1.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "ops.h"
#include "run.h"

/* A workspace buffer grown for eapig_forward (core/workspace.c). */
static int grow(void **buf, size_t *cap, size_t n, size_t elem, const char *what) {
    return eapig_workspace_grow(buf, cap, n, elem, "eapig_forward", what);
}

typedef struct {
    float *base;
    size_t used;
} carver;

static float *carve(carver *c, size_t n) {
    float *p = c->base ? c->base + c->used : NULL;
    c->used += n;
    return p;
}

/* Scratch of one forward run (not needed by the backward). */
typedef struct {
    float *resid;    /* (N,D) residual stream */
    float *x_in;     /* (N,D) layer input, kept for parallel MLPs */
    float *y;        /* (N,D) a normalised input */
    float *own_in;   /* (N,D) a destination's own input */
    float *node;     /* (N,D) one head's output */
    float *attn_out; /* (N,D) */
    float *grouped;  /* (N, KV*Dh) a shared projection before ungrouping */
    float *z;        /* (N, H*Dh) attention values */
    float *hidden;   /* (N,F) MLP activation */
    float *delta;    /* (J,N,D) patching deltas of one layer, or NULL */
    float *diff;     /* (NF,N,D) R - current, or NULL (rows of heads zero in post-norm models) */
    float *diff_sum; /* (N,D) sum of diff over sources [0, fwd_run.summed), or NULL */
    /* Post-norm patching only (else NULL): */
    float *cur;      /* (NF,N,D) current outputs (heads' rows used) */
    float *contrib;  /* (L,N,D) post_i(A_i): each layer's normalised attention output */
    float *apost, *apost_y, *apost_hat, *apost_rstd; /* (N,D) x3, (N): one post_i(A'_iv) */
    /* Post-norm blocks: */
    float *mlp_raw;  /* (N,D) MLP output before its post-norm */
    /* q/k norms: */
    float *kw;       /* (H*Dh) the k norm weight of each ungrouped key */
    float *final_x;  /* (rows,D) gathered final residual */
    float *final_y;  /* (rows,D) */
    float *head_tile;  /* (T, EAPIG_TILE_ROWS, D) one block of a head's output per thread */
    float *attn_part;  /* (eapig_sum_parts()-1, N,D) partial sums of the attention output */
} scratch;

/* Carves the saved per-layer state and the scratch; with c->base NULL it only counts. */
static void carve_run(carver *c, const eapig_config *cfg, layer_state *layers, int n_slots, scratch *s,
                      size_t B, size_t P, size_t rows, int patching, int for_weights, float **final_hat,
                      float **final_rstd, float **final_capped) {
    size_t N = B * P, D = cfg->d_model, H = cfg->n_heads, Dh = cfg->d_head, F = cfg->d_mlp;
    size_t J = eapig_layer_dests(H), NF = eapig_n_sources(H, (size_t)cfg->n_layers);
    int gated = eapig_act_gated(cfg->act), post = cfg->block_norms != EAPIG_BLOCK_PRE_NORM, qk = cfg->qk_norm;
    for (int l = 0; l < n_slots; l++) {
        layer_state *st = &layers[l];
        st->attn_hat = carve(c, N * D), st->attn_rstd = carve(c, N);
        st->mlp_hat = carve(c, N * D), st->mlp_rstd = carve(c, N);
        st->own_hat = patching ? carve(c, J * N * D) : NULL;
        st->own_rstd = patching ? carve(c, J * N) : NULL;
        st->q = carve(c, N * H * Dh), st->k = carve(c, N * H * Dh), st->v = carve(c, N * H * Dh);
        st->att = carve(c, B * H * P * P);
        st->mlp_pre = carve(c, N * F);
        st->mlp_up = gated ? carve(c, N * F) : NULL;
        st->z = for_weights ? carve(c, N * H * Dh) : NULL;
        st->hidden = for_weights ? carve(c, N * F) : NULL;
        st->attn_post_hat = post ? carve(c, N * D) : NULL, st->attn_post_rstd = post ? carve(c, N) : NULL;
        st->mlp_post_hat = post ? carve(c, N * D) : NULL, st->mlp_post_rstd = post ? carve(c, N) : NULL;
        st->q_hat = qk ? carve(c, N * H * Dh) : NULL, st->q_rstd = qk ? carve(c, N) : NULL;
        st->k_hat = qk ? carve(c, N * H * Dh) : NULL, st->k_rstd = qk ? carve(c, N) : NULL;
    }
    int post_patch = post && patching;
    s->cur = post_patch ? carve(c, NF * N * D) : NULL;
    s->contrib = post_patch ? carve(c, (size_t)cfg->n_layers * N * D) : NULL;
    s->apost = post_patch ? carve(c, N * D) : NULL, s->apost_y = post_patch ? carve(c, N * D) : NULL;
    s->apost_hat = post_patch ? carve(c, N * D) : NULL, s->apost_rstd = post_patch ? carve(c, N) : NULL;
    s->mlp_raw = post ? carve(c, N * D) : NULL;
    s->kw = qk ? carve(c, H * Dh) : NULL;
    *final_capped = cfg->final_softcap > 0.0f ? carve(c, rows * (size_t)cfg->vocab) : NULL;
    s->resid = carve(c, N * D), s->x_in = carve(c, N * D), s->y = carve(c, N * D);
    s->own_in = carve(c, N * D), s->node = carve(c, N * D), s->attn_out = carve(c, N * D);
    size_t T = (size_t)eapig_get_num_threads();
    s->head_tile = carve(c, T * EAPIG_TILE_ROWS * D), s->attn_part = carve(c, (eapig_sum_parts() - 1) * N * D);
    s->grouped = carve(c, N * (size_t)cfg->n_kv_heads * Dh), s->z = carve(c, N * H * Dh);
    s->hidden = carve(c, N * F);
    s->delta = patching ? carve(c, J * N * D) : NULL;
    s->diff = patching ? carve(c, NF * N * D) : NULL;
    s->diff_sum = patching ? carve(c, N * D) : NULL;
    s->final_x = carve(c, rows * D), s->final_y = carve(c, rows * D);
    *final_hat = carve(c, rows * D), *final_rstd = carve(c, rows);
}

typedef struct {
    const eapig_model *m;
    const eapig_forward_opts *o;
    const eapig_layer_weights *lw; /* the current layer's f32 weights (eapig_layer_view) */
    scratch s;
    size_t B, P, N, D;
    size_t summed; /* sources whose differences s.diff_sum holds */
} fwd_run;

/* Writes n elements of a node's output into its capture: the output itself, or its difference
 * with the reference the capture held (sign 1: R - out, -1: out - R). */
static void capture_block(float *cap, const float *out, size_t n, int32_t sign) {
    if (sign == 0)
        memcpy(cap, out, n * sizeof(float));
    else if (sign > 0)
        for (size_t i = 0; i < n; i++) cap[i] -= out[i];
    else
        for (size_t i = 0; i < n; i++) cap[i] = out[i] - cap[i];
}

/* Rows [n0, n0 + rows) of source u's output are known (out: those rows): capture them and, when
 * patching, keep R_u - current_u there (in post-norm models a head's output itself instead:
 * head_patch_terms reads it). */
static void record_rows(fwd_run *r, int32_t u, const float *out, size_t n0, size_t rows) {
    size_t D = r->D, off = (size_t)u * r->N * D + n0 * D, n = rows * D;
    if (r->s.cur && eapig_node_is_head((size_t)r->m->cfg.n_heads, (size_t)u)) {
        memcpy(r->s.cur + off, out, n * sizeof(float));
        memset(r->s.diff + off, 0, n * sizeof(float));
    } else if (r->s.diff) {
        const float *ref = r->o->patch_ref + off;
        float *d = r->s.diff + off;
        for (size_t i = 0; i < n; i++) d[i] = ref[i] - out[i];
        if (r->o->patch_scale) {
            const float *scale = r->o->patch_scale + (size_t)u * D;
            for (size_t i = 0; i < rows; i++)
                for (size_t e = 0; e < D; e++) d[i * D + e] *= scale[e];
        }
    }
    /* after the patching difference: capture may be the buffer patch_ref points into */
    if (r->o->capture) capture_block(r->o->capture + off, out, n, r->o->capture_diff);
}

typedef struct {
    fwd_run *r;
    int32_t u;
    const float *out;
} record_job;

static void record_range(void *ctx, size_t n0, size_t n1, size_t index) {
    const record_job *j = ctx;
    (void)index;
    record_rows(j->r, j->u, j->out + n0 * j->r->D, n0, n1 - n0);
}

/* A source node's whole output (N,D) is known: record_rows, split over the threads by rows. */
static void record_node(fwd_run *r, int32_t u, const float *out) {
    if (!r->o->capture && !r->s.diff) return;
    record_job j = {r, u, out};
    size_t grain = ((size_t)1 << 14) / r->D + 1;
    eapig_parallel_for(r->N, grain, record_range, &j);
}

/* A norm of the model's kind (RMSNorm here: post-norm blocks need it). */
static void model_norm(const eapig_config *c, float *out, float *hat, float *rstd, const float *x, const float *w,
                       const float *b, size_t N, size_t D) {
    norm_forward(out, hat, rstd, x, w, b, N, D, c->norm == EAPIG_NORM_RMSNORM, c->norm_eps);
}

/* Post-norm models: adds to delta (N,D) of destination v the change of every earlier layer's
 * normalised attention output when v reads some of its heads from the reference, formed
 * directly as sum_h [(1 - w) C + w R] + b_O (a layer whose heads are all zero-ablated then gives
 * exactly post(b_O)). patch_scale scales w per dimension (neuron circuits). */
static void head_patch_terms(fwd_run *r, size_t n_up, size_t v, float *delta) {
    const eapig_config *c = &r->m->cfg;
    size_t N = r->N, D = r->D, H = c->n_heads, nd = N * D, nb = (size_t)eapig_model_n_backward(r->m);
    const float *W = r->o->patch_w, *scale = r->o->patch_scale;
    for (size_t i = 0; eapig_mlp_node(H, i) <= n_up; i++) {
        size_t h0 = eapig_first_node(H, i);
        int any = 0;
        for (size_t h = 0; h < H; h++) any |= W[(h0 + h) * nb + v] != 0.0f;
        if (!any) continue;
        const eapig_layer_weights *lw = &r->m->layers[i];
        float *a = r->s.apost;
        for (size_t n = 0; n < N; n++) memcpy(a + n * D, lw->bo, D * sizeof(float));
        for (size_t h = 0; h < H; h++) {
            float wv = W[(h0 + h) * nb + v];
            const float *C = r->s.cur + (h0 + h) * nd, *R = r->o->patch_ref + (h0 + h) * nd;
            const float *sc = scale ? scale + (h0 + h) * D : NULL;
            for (size_t e = 0; e < nd; e++) {
                float we = sc ? wv * sc[e % D] : wv;
                a[e] += (1.0f - we) * C[e] + we * R[e];
            }
        }
        model_norm(c, r->s.apost_y, r->s.apost_hat, r->s.apost_rstd, a, lw->attn_post_w, NULL, N, D);
        const float *cur = r->s.contrib + i * nd;
        for (size_t e = 0; e < nd; e++) delta[e] += r->s.apost_y[e] - cur[e];
    }
}

/* A layer's patching deltas from few terms (sparse_deltas): per destination column j, the delta
 * is base_j + sum of coef * diff_u over its terms, base_j 0 or the sum of every upstream
 * difference (diff_sum). */
typedef struct {
    fwd_run *r;
    size_t n_up, ncols;
    const uint8_t *own;
    const uint8_t *from_sum; /* (ncols) column j starts from diff_sum */
    const uint32_t *term_u;  /* the terms' sources, column by column */
    const float *term_coef;
    const size_t *first_term; /* (ncols + 1) column j's terms are [first_term[j], first_term[j+1]) */
    size_t catch_up;          /* diff_sum gets sources [catch_up, n_up) added first */
} sparse_job;

/* Elements per block of sparse_deltas: the n_up source blocks a block reads (at most 157 x 4 KB
 * for GPT-2-small) stay in the core's L2 cache across its columns. */
enum { DELTA_BLOCK = 1024 };

static void sparse_range(void *ctx, size_t b0, size_t b1, size_t index) {
    const sparse_job *j = ctx;
    fwd_run *r = j->r;
    size_t nd = r->N * r->D;
    (void)index;
    for (size_t b = b0; b < b1; b++) {
        size_t e0 = b * DELTA_BLOCK, n = nd - e0 < DELTA_BLOCK ? nd - e0 : DELTA_BLOCK;
        float *sum = r->s.diff_sum + e0;
        for (size_t u = j->catch_up; u < j->n_up; u++) {
            const float *d = r->s.diff + u * nd + e0;
            if (u == 0)
                memcpy(sum, d, n * sizeof(float));
            else
                for (size_t e = 0; e < n; e++) sum[e] += d[e];
        }
        for (size_t c = 0; c < j->ncols; c++) {
            if (!j->own[c]) continue;
            float *delta = r->s.delta + c * nd + e0;
            if (j->from_sum[c])
                memcpy(delta, sum, n * sizeof(float));
            else
                memset(delta, 0, n * sizeof(float));
            for (size_t t = j->first_term[c]; t < j->first_term[c + 1]; t++) {
                const float *d = r->s.diff + (size_t)j->term_u[t] * nd + e0;
                float a = j->term_coef[t];
                for (size_t e = 0; e < n; e++) delta[e] += a * d[e];
            }
        }
    }
}

/* The deltas of the own columns from their terms, when few: a column whose weights are mostly 1
 * (a small circuit: most edges patched) is diff_sum minus its few in-circuit sources, one whose
 * weights are mostly 0 the sum of its few patched sources. Returns 0 (nothing written) when the
 * terms would cost more than half the dense product, which then runs instead. */
static int sparse_deltas(fwd_run *r, size_t n_up, size_t col, size_t ncols, const uint8_t *own) {
    const float *w = r->o->patch_w;
    size_t nb = (size_t)eapig_model_n_backward(r->m);
    if (r->summed > n_up) return 0;
    uint8_t *from_sum = calloc(ncols, 1);
    if (!from_sum) return 0; /* the dense product needs no memory of its own */
    size_t terms = 0, own_cols = 0;
    for (size_t j = 0; j < ncols; j++) {
        if (!own[j]) continue;
        size_t nonzero = 0, not_one = 0;
        for (size_t u = 0; u < n_up; u++) {
            float a = w[u * nb + col + j];
            nonzero += a != 0.0f;
            not_one += a != 1.0f;
        }
        from_sum[j] = not_one + 1 < nonzero;
        terms += from_sum[j] ? not_one + 1 : nonzero;
        own_cols++;
    }
    uint32_t *term_u = NULL;
    float *term_coef = NULL;
    size_t *first_term = NULL;
    if (2 * terms <= own_cols * n_up) {
        term_u = malloc((terms + 1) * sizeof *term_u);
        term_coef = malloc((terms + 1) * sizeof *term_coef);
        first_term = malloc((ncols + 1) * sizeof *first_term);
    }
    if (!term_u || !term_coef || !first_term) {
        free(from_sum);
        free(term_u);
        free(term_coef);
        free(first_term);
        return 0;
    }
    size_t t = 0;
    for (size_t j = 0; j < ncols; j++) {
        first_term[j] = t;
        if (!own[j]) continue;
        for (size_t u = 0; u < n_up; u++) {
            float a = w[u * nb + col + j];
            float coef = from_sum[j] ? a - 1.0f : a; /* diff_sum + sum (a - 1) diff_u */
            if (coef != 0.0f && t < terms) term_u[t] = (uint32_t)u, term_coef[t++] = coef;
        }
    }
    first_term[ncols] = t;
    size_t nd = r->N * r->D;
    sparse_job job = {r, n_up, ncols, own, from_sum, term_u, term_coef, first_term, r->summed};
    eapig_parallel_for((nd + DELTA_BLOCK - 1) / DELTA_BLOCK, 4, sparse_range, &job);
    r->summed = n_up;
    free(from_sum);
    free(term_u);
    free(term_coef);
    free(first_term);
    return 1;
}

/* Deltas for destinations [col, col+ncols) from the first n_up sources: delta (ncols, N*D) =
 * W[0:n_up, col:col+ncols]^T @ diff[0:n_up], from few terms (sparse_deltas) or as one product.
 * Returns 1 if any weight was non-zero and fills own[j] with whether destination col+j has a
 * non-zero weight. */
static int patch_deltas(fwd_run *r, size_t n_up, size_t col, size_t ncols, uint8_t *own) {
    if (!r->s.diff) {
        memset(own, 0, ncols);
        return 0;
    }
    const float *w = r->o->patch_w;
    size_t nb = (size_t)eapig_model_n_backward(r->m);
    int any = 0;
    for (size_t j = 0; j < ncols; j++) {
        own[j] = 0;
        for (size_t u = 0; u < n_up; u++)
            if (w[u * nb + col + j] != 0.0f) {
                own[j] = 1;
                any = 1;
                break;
            }
    }
    if (!any) return 0;
    size_t nd = r->N * r->D;
    if (!sparse_deltas(r, n_up, col, ncols, own))
        eapig_gemm(1, 0, ncols, nd, n_up, 1.0f, w + col, nb, r->s.diff, nd, 0.0f, r->s.delta, nd);
    if (r->s.cur)
        for (size_t j = 0; j < ncols; j++)
            if (own[j]) head_patch_terms(r, n_up, col + j, r->s.delta + j * nd);
    return 1;
}

/* A block's pre-norm of x into out (saving hat and rstd); post-norm-only blocks (olmo2) have
 * none: out is x itself. */
static void pre_norm(fwd_run *r, float *out, float *hat, float *rstd, const float *x, const float *w,
                     const float *b) {
    const eapig_config *c = &r->m->cfg;
    if (c->block_norms == EAPIG_BLOCK_POST_NORM)
        memcpy(out, x, r->N * r->D * sizeof(float));
    else
        model_norm(c, out, hat, rstd, x, w, b, r->N, r->D);
}

/* The normalised input of a destination with its own input: base + delta, then the pre-norm. */
static const float *own_input(fwd_run *r, const float *base, const float *delta, float *hat, float *rstd,
                              const float *w, const float *b) {
    size_t nd = r->N * r->D;
    for (size_t i = 0; i < nd; i++) r->s.own_in[i] = base[i] + delta[i];
    pre_norm(r, r->s.y, hat, rstd, r->s.own_in, w, b);
    return r->s.y;
}

/* The heads of one type (q, k or v) that read their own inputs (own_heads_range). */
typedef struct {
    fwd_run *r;
    layer_state *st;
    const eapig_layer_weights *lw;
    int t;
    const float *x;   /* (N,D) the shared residual input */
    const uint8_t *own;
    const float *w, *bias; /* the type's projection */
    float *out;       /* (N, H*Dh) */
} own_heads;

/* Heads [h0, h1) of type t, those with their own input, each row block in turn: the input x +
 * delta, its pre-norm (saving hat and rstd), and its projection into the head's columns of out;
 * a block stays in the core's L2 cache throughout. */
static void own_heads_range(void *ctx, size_t h0, size_t h1, size_t index) {
    const own_heads *a = ctx;
    fwd_run *r = a->r;
    const eapig_config *c = &r->m->cfg;
    size_t N = r->N, D = r->D, H = c->n_heads, Dh = c->d_head, group = H / c->n_kv_heads;
    float *tile = r->s.head_tile + index * EAPIG_TILE_ROWS * D;
    for (size_t h = h0; h < h1; h++) {
        size_t j = (size_t)a->t * H + h, g = a->t == 0 ? h : h / group;
        if (!a->own[j]) continue;
        const float *delta = r->s.delta + j * N * D;
        float *hat = a->st->own_hat + j * N * D, *rstd = a->st->own_rstd + j * N;
        for (size_t n0 = 0; n0 < N; n0 += EAPIG_TILE_ROWS) {
            size_t rows = N - n0 < EAPIG_TILE_ROWS ? N - n0 : EAPIG_TILE_ROWS;
            const float *xr = a->x + n0 * D, *dr = delta + n0 * D;
            for (size_t i = 0; i < rows * D; i++) tile[i] = xr[i] + dr[i];
            if (c->block_norms != EAPIG_BLOCK_POST_NORM) /* post-norm-only blocks read x itself */
                model_norm(c, tile, hat + n0 * D, rstd + n0, tile, a->lw->ln1_w, a->lw->ln1_b, rows, D);
            linear_forward(a->out + n0 * H * Dh + h * Dh, tile, a->w + g * Dh * D, a->bias ? a->bias + g * Dh : NULL,
                           rows, Dh, D, H * Dh);
        }
    }
}

/* Projects the q, k or v inputs (type t) of every head into out (N, H*Dh), one k/v per query
 * head. Heads without their own input share the one normalised input `shared_y`. */
static void project_qkv(fwd_run *r, layer_state *st, const eapig_layer_weights *lw, int t, const float *x,
                        const float *shared_y, const uint8_t *own, float *out) {
    const eapig_config *c = &r->m->cfg;
    size_t N = r->N, D = r->D, H = c->n_heads, KV = c->n_kv_heads, Dh = c->d_head, group = H / KV;
    const float *w = t == 0 ? lw->wq : t == 1 ? lw->wk : lw->wv;
    const float *bias = t == 0 ? lw->bq : t == 1 ? lw->bk : lw->bv;
    size_t n_proj = t == 0 ? H : KV;
    int any_shared = 0, any_own = 0;
    for (size_t h = 0; h < H; h++) any_shared |= !own[t * H + h], any_own |= own[t * H + h];
    if (any_shared) {
        float *dst = n_proj == H ? out : r->s.grouped;
        linear_forward(dst, shared_y, w, bias, N, n_proj * Dh, D, n_proj * Dh);
        if (n_proj != H) /* ungroup: query head h reads kv head h / group */
            for (size_t n = 0; n < N; n++)
                for (size_t h = 0; h < H; h++)
                    if (!own[t * H + h])
                        memcpy(out + (n * H + h) * Dh, r->s.grouped + (n * KV + h / group) * Dh, Dh * sizeof(float));
    }
    if (any_own) {
        own_heads a = {r, st, lw, t, x, own, w, bias, out};
        eapig_parallel_for(H, 1, own_heads_range, &a);
    }
}

/* Keeps the residual stream a reader saw, when asked. */
static void record_resid(fwd_run *r, size_t index, const float *x) {
    size_t nd = r->N * r->D;
    if (r->o->resid) memcpy(r->o->resid + index * nd, x, nd * sizeof(float));
}

/* q/k norms (olmo2): RMSNorm over each token's whole q row (all H heads) and whole ungrouped k
 * row, in place, before RoPE. Key head h uses the weight slice of its kv head h / group, so the
 * unpatched result equals the norm over the KV*Dh grouped keys. */
static void qk_norm_forward(fwd_run *r, const eapig_layer_weights *lw, layer_state *st) {
    const eapig_config *c = &r->m->cfg;
    size_t N = r->N, H = c->n_heads, Dh = c->d_head, group = H / c->n_kv_heads;
    for (size_t h = 0; h < H; h++) memcpy(r->s.kw + h * Dh, lw->k_norm_w + (h / group) * Dh, Dh * sizeof(float));
    model_norm(c, st->q, st->q_hat, st->q_rstd, st->q, lw->q_norm_w, NULL, N, H * Dh);
    model_norm(c, st->k, st->k_hat, st->k_rstd, st->k, r->s.kw, NULL, N, H * Dh);
}

/* The attention parameters of layer l. */
static attn_params layer_attention(const eapig_config *c, int l) {
    attn_params ap = {c->attn_scale > 0.0f ? c->attn_scale : 1.0f / sqrtf((float)c->d_head), c->attn_softcap,
                      (size_t)eapig_layer_window(c, l)};
    return ap;
}

/* Adds the attention output A = attn_out + b_O to the residual stream: as it is, or through the
 * block's post-norm (whose value post(A) the post-norm patching terms compare against). */
static void add_attention_output(fwd_run *r, int l, layer_state *st) {
    const eapig_config *c = &r->m->cfg;
    const eapig_layer_weights *lw = r->lw;
    size_t N = r->N, D = r->D, nd = N * D;
    float *a = r->s.attn_out;
    for (size_t n = 0; n < N; n++)
        for (size_t i = 0; i < D; i++) a[n * D + i] += lw->bo[i];
    if (c->block_norms == EAPIG_BLOCK_PRE_NORM) {
        add_into(r->s.resid, a, nd);
        return;
    }
    model_norm(c, r->s.node, st->attn_post_hat, st->attn_post_rstd, a, lw->attn_post_w, NULL, N, D);
    add_into(r->s.resid, r->s.node, nd);
    if (r->s.contrib) memcpy(r->s.contrib + (size_t)l * nd, r->s.node, nd * sizeof(float));
}

/* The heads of one layer whose outputs are recorded one by one (head_outputs_range). */
typedef struct {
    fwd_run *r;
    const float *z, *wo;
    int32_t first_head;
    size_t parts; /* partial sums of the attention output (the first is s.attn_out itself) */
} head_outputs;

/* Parts [p0, p1) of the heads, each head and row block in turn: its output z_h W_O[h]^T (without
 * b_O) is added to its part's sum of the attention output and recorded (captured, and its
 * patching difference kept). */
static void head_outputs_range(void *ctx, size_t p0, size_t p1, size_t index) {
    const head_outputs *a = ctx;
    fwd_run *r = a->r;
    size_t N = r->N, D = r->D, H = r->m->cfg.n_heads, Dh = r->m->cfg.d_head, nd = N * D;
    float *tile = r->s.head_tile + index * EAPIG_TILE_ROWS * D;
    for (size_t p = p0; p < p1; p++) {
        float *sum = p == 0 ? r->s.attn_out : r->s.attn_part + (p - 1) * nd;
        if (p > 0) memset(sum, 0, nd * sizeof(float));
        size_t h0, h1;
        eapig_part(H, a->parts, p, &h0, &h1);
        for (size_t h = h0; h < h1; h++)
            for (size_t n0 = 0; n0 < N; n0 += EAPIG_TILE_ROWS) {
                size_t rows = N - n0 < EAPIG_TILE_ROWS ? N - n0 : EAPIG_TILE_ROWS;
                eapig_gemm(0, 1, rows, D, Dh, 1.0f, a->z + n0 * H * Dh + h * Dh, H * Dh, a->wo + h * Dh, H * Dh,
                           0.0f, tile, D);
                float *dst = sum + n0 * D;
                for (size_t i = 0; i < rows * D; i++) dst[i] += tile[i];
                record_rows(r, a->first_head + (int32_t)h, tile, n0, rows);
            }
    }
}

/* The attention block of layer l: reads x (N,D), adds its output into resid. */
static void attention_block(fwd_run *r, int l, layer_state *st, uint8_t *own, const float *x,
                            const int32_t *lengths) {
    const eapig_model *m = r->m;
    const eapig_config *c = &m->cfg;
    const eapig_layer_weights *lw = r->lw;
    size_t N = r->N, D = r->D, H = c->n_heads, Dh = c->d_head, nd = N * D;
    size_t n_up = eapig_first_node(H, (size_t)l);
    int32_t first_head = (int32_t)n_up;
    int overridden = r->o->override_group == eapig_heads_group(l);

    memset(r->s.attn_out, 0, nd * sizeof(float));
    if (overridden) {
        memset(own, 0, 3 * H);
        for (size_t h = 0; h < H; h++) {
            const float *out = r->o->override_value + h * nd;
            add_into(r->s.attn_out, out, nd);
            record_node(r, first_head + (int32_t)h, out);
        }
    } else {
        patch_deltas(r, n_up, eapig_first_dest(H, (size_t)l), 3 * H, own);
        pre_norm(r, r->s.y, st->attn_hat, st->attn_rstd, x, lw->ln1_w, lw->ln1_b);
        /* Heads with their own inputs reuse s.y, so keep the shared normalised input aside. */
        memcpy(r->s.node, r->s.y, nd * sizeof(float));
        float *proj[3] = {st->q, st->k, st->v};
        for (int t = 0; t < 3; t++) project_qkv(r, st, lw, t, x, r->s.node, own, proj[t]);
        if (c->qk_norm) qk_norm_forward(r, lw, st);
        if (c->pos == EAPIG_POS_ROPE) {
            rope_apply(st->q, r->B, r->P, H, Dh, (size_t)c->rotary_dim, m->rope_freq, 0);
            rope_apply(st->k, r->B, r->P, H, Dh, (size_t)c->rotary_dim, m->rope_freq, 0);
        }
        /* z goes straight into the saved state when weight gradients will need it */
        float *z = st->z ? st->z : r->s.z;
        attn_params ap = layer_attention(c, l);
        attention_forward(z, st->att, st->q, st->k, st->v, lengths, r->B, r->P, H, Dh, &ap);
        if (r->o->attn_probs) {
            size_t per_layer = r->B * H * r->P * r->P;
            memcpy(r->o->attn_probs + (size_t)l * per_layer, st->att, per_layer * sizeof(float));
        }
        if (r->o->capture || r->s.diff) {
            size_t parts = eapig_sum_parts();
            head_outputs a = {r, z, lw->wo, first_head, H < parts ? H : parts};
            eapig_parallel_for(a.parts, 1, head_outputs_range, &a);
            for (size_t p = 1; p < a.parts; p++) add_into(r->s.attn_out, r->s.attn_part + (p - 1) * nd, nd);
        } else {
            linear_forward(r->s.attn_out, z, lw->wo, NULL, N, D, H * Dh, D);
        }
    }
    add_attention_output(r, l, st);
}

/* The MLP block of layer l: reads x (N,D) (plus its patching delta), adds its output to resid. */
static void mlp_block(fwd_run *r, int l, layer_state *st, uint8_t *own, const float *x) {
    const eapig_model *m = r->m;
    const eapig_config *c = &m->cfg;
    const eapig_layer_weights *lw = r->lw;
    size_t N = r->N, D = r->D, H = c->n_heads, F = c->d_mlp, nd = N * D, J = eapig_layer_dests(H);
    int32_t node = (int32_t)eapig_mlp_node(H, (size_t)l);
    const float *out;

    if (r->o->override_group == eapig_mlp_group(l)) {
        own[J - 1] = 0;
        out = r->o->override_value;
    } else {
        size_t n_up = eapig_mlp_upstream(H, (size_t)l, c->parallel_attn_mlp);
        const float *y;
        if (patch_deltas(r, n_up, eapig_mlp_dest(H, (size_t)l), 1, own + J - 1)) {
            /* the delta went to row 0 of s.delta; the attention's rows are no longer needed */
            y = own_input(r, x, r->s.delta, st->own_hat + (J - 1) * nd, st->own_rstd + (J - 1) * N, lw->ln2_w,
                          lw->ln2_b);
        } else {
            pre_norm(r, r->s.y, st->mlp_hat, st->mlp_rstd, x, lw->ln2_w, lw->ln2_b);
            y = r->s.y;
        }
        int gated = eapig_act_gated(c->act);
        linear_forward(st->mlp_pre, y, gated ? lw->w_gate : lw->w_in, gated ? NULL : lw->b_in, N, F, D, F);
        if (st->mlp_up) linear_forward(st->mlp_up, y, lw->w_in, lw->b_in, N, F, D, F);
        float *hidden = st->hidden ? st->hidden : r->s.hidden;
        act_forward(hidden, st->mlp_pre, st->mlp_up, N * F, c->act);
        if (c->block_norms == EAPIG_BLOCK_PRE_NORM) {
            linear_forward(r->s.node, hidden, lw->w_out, lw->b_out, N, D, F, D);
        } else { /* the MLP's node is its output after the post-norm */
            linear_forward(r->s.mlp_raw, hidden, lw->w_out, lw->b_out, N, D, F, D);
            model_norm(c, r->s.node, st->mlp_post_hat, st->mlp_post_rstd, r->s.mlp_raw, lw->mlp_post_w, NULL, N, D);
        }
        out = r->s.node;
    }
    record_node(r, node, out);
    add_into(r->s.resid, out, nd);
}

/* The two arenas of a run of B rows of P positions (flags and diff_B as eapig_workspace_bytes):
 * eapig_forward's, and eapig_backward's for attribution with keep (edge scores with the default
 * gather, no node scores); 0 without keep. Returns 0 on bad arguments, naming fn. */
static int run_floats(const eapig_model *m, int32_t B, int32_t P, int32_t diff_B, int32_t flags, size_t *fwd_floats,
                      size_t *bwd_floats, const char *fn) {
    if (!m || B < 1 || P < 1 || diff_B < 0 || (diff_B > 0 && B % diff_B != 0)) {
        eapig_set_error(EAPIG_ERR_ARG, "%s: bad batch (%d, %d) or diff_B %d", fn, B, P, diff_B);
        return 0;
    }
    const eapig_config *c = &m->cfg;
    int keep = (flags & (EAPIG_RUN_KEEP | EAPIG_RUN_WEIGHT_GRADS)) != 0;
    int weights = (flags & EAPIG_RUN_WEIGHT_GRADS) != 0, patching = (flags & EAPIG_RUN_PATCH) != 0;
    size_t rows = (flags & EAPIG_RUN_ALL_LOGITS) ? (size_t)B * (size_t)P : (size_t)B;
    /* carve_run's size is linear in the number of kept layer slots: count 0 and 1, then scale */
    layer_state one;
    scratch s;
    float *fh, *fr, *fc;
    carver none = {NULL, 0}, with_one = {NULL, 0};
    carve_run(&none, c, &one, 0, &s, (size_t)B, (size_t)P, rows, patching, weights, &fh, &fr, &fc);
    carve_run(&with_one, c, &one, 1, &s, (size_t)B, (size_t)P, rows, patching, weights, &fh, &fr, &fc);
    size_t slots = keep ? (size_t)c->n_layers : 1;
    *fwd_floats = none.used + (with_one.used - none.used) * slots;
    *bwd_floats = 0;
    if (keep) {
        size_t steps = diff_B > 0 ? (size_t)(B / diff_B) : 1;
        *bwd_floats = eapig_backward_floats(c, (size_t)B, (size_t)P, rows, steps, 1, 0, 0, weights);
    }
    return 1;
}

int64_t eapig_workspace_bytes(const eapig_model *m, int32_t B, int32_t P, int32_t diff_B, int32_t flags) {
    size_t fwd, bwd;
    if (!run_floats(m, B, P, diff_B, flags, &fwd, &bwd, "eapig_workspace_bytes")) return -1;
    const eapig_config *c = &m->cfg;
    size_t bytes = (fwd + bwd) * sizeof(float) + (size_t)c->n_layers * eapig_layer_dests((size_t)c->n_heads);
    if (m->stored) bytes += (size_t)eapig_weights_view_bytes(c);
    return (int64_t)bytes;
}

int eapig_workspace_reserve(eapig_workspace *ws, const eapig_model *m, int32_t B, int32_t P, int32_t diff_B,
                            int32_t flags) {
    size_t fwd, bwd;
    if (!ws) return eapig_set_error(EAPIG_ERR_ARG, "eapig_workspace_reserve: workspace is NULL");
    if (!run_floats(m, B, P, diff_B, flags, &fwd, &bwd, "eapig_workspace_reserve")) return EAPIG_ERR_ARG;
    if (eapig_workspace_grow((void **)&ws->fwd, &ws->fwd_cap, fwd, sizeof(float), "eapig_workspace_reserve",
                             "activations") != EAPIG_OK ||
        eapig_workspace_grow((void **)&ws->bwd, &ws->bwd_cap, bwd, sizeof(float), "eapig_workspace_reserve",
                             "gradients") != EAPIG_OK)
        return EAPIG_ERR_NOMEM;
    return EAPIG_OK;
}

/* The input node is the scaled embedding (gemma's sqrt(d_model), rounded to float32 as Hugging
 * Face does, so each product is the same float); scale 0 means none. */
static void scale_embeddings(float *x, size_t n, float scale) {
    if (scale == 0.0f) return;
    for (size_t i = 0; i < n; i++) x[i] *= scale;
}

/* A resumed post-norm run: layer i's post(A_i) from the captured head outputs of the earlier run. */
static void resume_contrib(fwd_run *r, int i) {
    const eapig_config *c = &r->m->cfg;
    const eapig_layer_weights *lw = &r->m->layers[i];
    size_t N = r->N, D = r->D, H = c->n_heads, nd = N * D, h0 = eapig_first_node(H, (size_t)i);
    float *a = r->s.apost;
    for (size_t n = 0; n < N; n++) memcpy(a + n * D, lw->bo, D * sizeof(float));
    for (size_t h = 0; h < H; h++) {
        const float *C = r->s.cur + (h0 + h) * nd;
        for (size_t e = 0; e < nd; e++) a[e] += C[e];
    }
    model_norm(c, r->s.contrib + (size_t)i * nd, r->s.apost_hat, r->s.apost_rstd, a, lw->attn_post_w, NULL, N, D);
}

/* Final soft-capping (gemma2): logits = cap tanh(logits / cap), in place; a copy is kept for the
 * backward (its derivative is 1 - (capped / cap)^2). */
static void softcap_logits(float *logits, float *kept, size_t n, float cap) {
    for (size_t i = 0; i < n; i++) {
        logits[i] = cap * tanhf(logits[i] / cap);
        kept[i] = logits[i];
    }
}

static int check_inputs(const eapig_model *m, const eapig_batch *bt, const eapig_forward_opts *o) {
    const eapig_config *c = &m->cfg;
    if (!bt || !o || !bt->tokens || !bt->lengths)
        return eapig_set_error(EAPIG_ERR_ARG, "eapig_forward: batch, tokens, lengths and opts are required");
    if (bt->B < 1 || bt->P < 1)
        return eapig_set_error(EAPIG_ERR_ARG, "eapig_forward: batch shape (%d, %d) must be positive", bt->B, bt->P);
    if (bt->P > c->n_ctx)
        return eapig_set_error(EAPIG_ERR_ARG, "eapig_forward: sequence length %d is longer than the context (%d)",
                               bt->P, c->n_ctx);
    for (int32_t b = 0; b < bt->B; b++) {
        if (bt->lengths[b] < 1 || bt->lengths[b] > bt->P)
            return eapig_set_error(EAPIG_ERR_ARG, "eapig_forward: row %d has length %d, outside 1..%d", b + 1,
                                   bt->lengths[b], bt->P);
        for (int32_t p = 0; p < bt->P; p++) {
            int32_t t = bt->tokens[(size_t)b * bt->P + p];
            if (t < 0 || t >= c->vocab)
                return eapig_set_error(EAPIG_ERR_ARG,
                                       "eapig_forward: token id %d at row %d, position %d is outside the vocabulary (0..%d)",
                                       t, b + 1, p + 1, c->vocab - 1);
        }
        if (o->logit_pos && (o->logit_pos[b] < 0 || o->logit_pos[b] >= bt->P))
            return eapig_set_error(EAPIG_ERR_ARG, "eapig_forward: logit position %d of row %d is outside 0..%d",
                                   o->logit_pos[b], b + 1, bt->P - 1);
    }
    if (o->capture_diff < -1 || o->capture_diff > 1 || (o->capture_diff != 0 && !o->capture))
        return eapig_set_error(EAPIG_ERR_ARG, "eapig_forward: capture_diff %d must be -1, 0 or 1, with a capture",
                               o->capture_diff);
    if ((o->patch_ref == NULL) != (o->patch_w == NULL))
        return eapig_set_error(EAPIG_ERR_ARG, "eapig_forward: patching needs both patch_ref and patch_w");
    if (o->start_layer != 0) {
        if (o->start_layer < 0 || o->start_layer > c->n_layers || !o->start_resid || !o->start_capture)
            return eapig_set_error(EAPIG_ERR_ARG,
                                   "eapig_forward: start_layer %d must be in 1..%d with start_resid and start_capture",
                                   o->start_layer, c->n_layers);
        if (o->keep_for_backward || o->keep_for_weights || o->override_group != EAPIG_GROUP_NONE)
            return eapig_set_error(EAPIG_ERR_ARG,
                                   "eapig_forward: a resumed run (start_layer %d) cannot keep activations or override",
                                   o->start_layer);
        if (o->patch_w) {
            size_t nb = (size_t)eapig_model_n_backward(m), nf = (size_t)eapig_model_n_forward(m);
            size_t first_col = eapig_first_dest((size_t)c->n_heads, (size_t)o->start_layer);
            for (size_t u = 0; u < nf; u++)
                for (size_t v = 0; v < first_col; v++)
                    if (o->patch_w[u * nb + v] != 0.0f)
                        return eapig_set_error(EAPIG_ERR_ARG,
                                               "eapig_forward: start_layer %d skips destination %zu, whose "
                                               "patch weight from source %zu is not zero",
                                               o->start_layer, v, u);
        }
    }
    int n_groups = eapig_n_groups(c->n_layers);
    if (o->override_group != EAPIG_GROUP_NONE &&
        (o->override_group < 0 || o->override_group >= n_groups || !o->override_value))
        return eapig_set_error(EAPIG_ERR_ARG, "eapig_forward: override group %d must be in 0..%d with a value",
                               o->override_group, n_groups - 1);
    return EAPIG_OK;
}

int eapig_forward(const eapig_model *m, eapig_workspace *ws, const eapig_batch *bt, const eapig_forward_opts *o) {
    if (!m || !ws) return eapig_set_error(EAPIG_ERR_ARG, "eapig_forward: model and workspace are required");
    int st_check = check_inputs(m, bt, o);
    if (st_check != EAPIG_OK) return st_check;
    const eapig_config *c = &m->cfg;
    size_t B = (size_t)bt->B, P = (size_t)bt->P, N = B * P, D = c->d_model, L = (size_t)c->n_layers;
    size_t H = c->n_heads, J = eapig_layer_dests(H);
    size_t rows = o->logit_pos ? B : N;
    int for_weights = o->keep_for_weights != 0;
    int keep = o->keep_for_backward != 0 || for_weights, patching = o->patch_w != NULL;
    int n_slots = keep ? (int)L : 1;
    ws->kept = 0;
    ws->kept_weights = 0;

    /* Size everything first, then carve one arena. */
    if (grow((void **)&ws->layers, &ws->layers_cap, (size_t)n_slots, sizeof(layer_state), "layer states") !=
        EAPIG_OK)
        return EAPIG_ERR_NOMEM;
    fwd_run r = {.m = m, .o = o, .B = B, .P = P, .N = N, .D = D};
    carver count = {NULL, 0};
    float *final_hat, *final_rstd, *final_capped;
    carve_run(&count, c, ws->layers, n_slots, &r.s, B, P, rows, patching, for_weights, &final_hat, &final_rstd,
              &final_capped);
    if (grow((void **)&ws->fwd, &ws->fwd_cap, count.used, sizeof(float), "activations") != EAPIG_OK ||
        grow((void **)&ws->flags, &ws->flags_cap, L * J, 1, "flags") != EAPIG_OK ||
        grow((void **)&ws->lengths, &ws->len_cap, B, sizeof(int32_t), "lengths") != EAPIG_OK)
        return EAPIG_ERR_NOMEM;
    free(ws->logit_pos);
    ws->logit_pos = NULL;
    if (o->logit_pos) {
        ws->logit_pos = malloc(B * sizeof(int32_t));
        if (!ws->logit_pos) return eapig_set_error(EAPIG_ERR_NOMEM, "eapig_forward: out of memory");
        memcpy(ws->logit_pos, o->logit_pos, B * sizeof(int32_t));
    }
    memcpy(ws->lengths, bt->lengths, B * sizeof(int32_t));
    if (for_weights) { /* the embedding's gradient is scattered back to the rows the ids chose */
        if (grow((void **)&ws->tokens, &ws->tok_cap, N, sizeof(int32_t), "token ids") != EAPIG_OK)
            return EAPIG_ERR_NOMEM;
        memcpy(ws->tokens, bt->tokens, N * sizeof(int32_t));
    }
    carver cv = {ws->fwd, 0};
    carve_run(&cv, c, ws->layers, n_slots, &r.s, B, P, rows, patching, for_weights, &final_hat, &final_rstd,
              &final_capped);
    for (int l = 0; l < n_slots; l++) ws->layers[l].own_flags = ws->flags + (size_t)l * J;

    size_t first_layer = (size_t)o->start_layer;
    if (first_layer > 0) {
        /* Resume: the prefix's residual and node outputs come from the earlier run. */
        memcpy(r.s.resid, o->start_resid, N * D * sizeof(float));
        size_t n_up = eapig_first_node(H, first_layer);
        for (size_t u = 0; u < n_up; u++) record_node(&r, (int32_t)u, o->start_capture + u * N * D);
        if (r.s.contrib)
            for (size_t i = 0; i < first_layer; i++) resume_contrib(&r, (int)i);
    } else if (o->override_group == 0) {
        /* Embedding: the input node is the token embedding; learned positions are outside it. */
        memcpy(r.s.resid, o->override_value, N * D * sizeof(float));
    } else {
        int status = eapig_embed_rows(m, r.s.resid, bt->tokens, N);
        if (status != EAPIG_OK) return status;
        scale_embeddings(r.s.resid, N * D, c->embed_scale);
    }
    if (first_layer == 0) {
        record_node(&r, 0, r.s.resid);
        if (m->w.wpe)
            for (size_t n = 0; n < N; n++)
                for (size_t i = 0; i < D; i++) r.s.resid[n * D + i] += m->w.wpe[(n % P) * D + i];
    }

    int any_patched = 0;
    for (size_t l = first_layer; l < L; l++) {
        layer_state *st = &ws->layers[keep ? l : 0];
        uint8_t *own = ws->flags + l * J;
        int status = eapig_layer_view(m, ws, (int)l, &r.lw, "eapig_forward");
        if (status != EAPIG_OK) return status;
        memcpy(r.s.x_in, r.s.resid, N * D * sizeof(float));
        record_resid(&r, eapig_attn_reader(l), r.s.x_in);
        attention_block(&r, (int)l, st, own, r.s.x_in, bt->lengths);
        record_resid(&r, eapig_mlp_reader(l), c->parallel_attn_mlp ? r.s.x_in : r.s.resid);
        mlp_block(&r, (int)l, st, own, c->parallel_attn_mlp ? r.s.x_in : r.s.resid);
        for (size_t j = 0; j < J; j++) any_patched |= own[j];
        if (!keep) ws->layers[0].own_flags = ws->flags; /* only slot 0 exists */
    }

    /* Logits input: the final residual (plus its own delta when patched), at the chosen rows. */
    size_t nb = (size_t)eapig_model_n_backward(m), nf = (size_t)eapig_model_n_forward(m);
    uint8_t logits_own = 0;
    const float *x_final = r.s.resid;
    record_resid(&r, eapig_logits_reader(L), r.s.resid);
    if (patch_deltas(&r, nf, nb - 1, 1, &logits_own)) {
        for (size_t i = 0; i < N * D; i++) r.s.own_in[i] = r.s.resid[i] + r.s.delta[i];
        x_final = r.s.own_in;
        any_patched = 1;
    }
    if (o->logits) {
        for (size_t q = 0; q < rows; q++) {
            size_t src = o->logit_pos ? q * P + (size_t)o->logit_pos[q] : q;
            memcpy(r.s.final_x + q * D, x_final + src * D, D * sizeof(float));
        }
        norm_forward(r.s.final_y, final_hat, final_rstd, r.s.final_x, m->w.lnf_w, m->w.lnf_b, rows, D,
                     c->norm == EAPIG_NORM_RMSNORM, c->norm_eps);
        int status = eapig_unembed_forward(m, ws, o->logits, r.s.final_y, rows);
        if (status != EAPIG_OK) return status;
        if (final_capped) softcap_logits(o->logits, final_capped, rows * (size_t)c->vocab, c->final_softcap);
    }

    ws->final_hat = final_hat;
    ws->final_rstd = final_rstd;
    ws->final_capped = final_capped;
    ws->model = m;
    ws->B = bt->B;
    ws->P = bt->P;
    ws->override_group = o->override_group;
    ws->patched = any_patched;
    ws->kept = keep && o->logits != NULL;
    ws->kept_weights = ws->kept && for_weights;
    return EAPIG_OK;
}
