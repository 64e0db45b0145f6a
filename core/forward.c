/* forward.c: the patched forward pass over the residual graph (DESIGN "The one idea").
 *
 * Each destination v (a head's q, k or v input, an MLP input, the logits input) reads the clean
 * residual stream plus sum_u W[u,v] (R_u - current_u). Destinations whose weights are all zero
 * share one normalised input; the others get their own copy through their own norm, as
 * TransformerLens does with use_split_qkv_input. Every source node's output can be captured.
 *
 * B = batch rows, P = positions, N = B*P, D = d_model, H = heads, KV = kv heads, Dh = d_head,
 * F = d_mlp, V = vocab, L = layers, NF = source nodes, NB = destinations, J = 3H+1.
 */
#include <cblas.h>
#include <stdlib.h>
#include <string.h>

#include "ops.h"
#include "run.h"

eapig_workspace *eapig_workspace_new(void) {
    eapig_workspace *ws = calloc(1, sizeof *ws);
    if (!ws) eapig_set_error(EAPIG_ERR_NOMEM, "eapig_workspace_new: out of memory");
    return ws;
}

void eapig_workspace_free(eapig_workspace *ws) {
    if (!ws) return;
    free(ws->fwd);
    free(ws->bwd);
    free(ws->flags);
    free(ws->layers);
    free(ws->lengths);
    free(ws->logit_pos);
    free(ws->tokens);
    free(ws->wbuf);
    free(ws);
}

/* Grows *buf to hold n elements of size elem; keeps it when already big enough. */
static int grow(void **buf, size_t *cap, size_t n, size_t elem, const char *what) {
    if (n <= *cap) return EAPIG_OK;
    size_t bytes;
    if (!eapig_mul_ok(n, elem, &bytes))
        return eapig_set_error(EAPIG_ERR_NOMEM, "eapig_forward: %s size overflows", what);
    void *p = malloc(bytes ? bytes : 1);
    if (!p) return eapig_set_error(EAPIG_ERR_NOMEM, "eapig_forward: out of memory for %s (%zu bytes)", what, bytes);
    free(*buf);
    *buf = p;
    *cap = n;
    return EAPIG_OK;
}

int eapig_workspace_grow(void **buf, size_t *cap, size_t n, size_t elem, const char *what) {
    return grow(buf, cap, n, elem, what);
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
    float *diff;     /* (NF,N,D) R - current, or NULL */
    float *final_x;  /* (rows,D) gathered final residual */
    float *final_y;  /* (rows,D) */
} scratch;

/* Carves the saved per-layer state and the scratch; with c->base NULL it only counts. */
static void carve_run(carver *c, const eapig_config *cfg, layer_state *layers, int n_slots, scratch *s,
                      size_t B, size_t P, size_t rows, int patching, int for_weights, float **final_hat,
                      float **final_rstd) {
    size_t N = B * P, D = cfg->d_model, H = cfg->n_heads, Dh = cfg->d_head, F = cfg->d_mlp;
    size_t J = 3 * H + 1, NF = 1 + (size_t)cfg->n_layers * (H + 1);
    int gated = cfg->act == EAPIG_ACT_SILU_GATED;
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
    }
    s->resid = carve(c, N * D), s->x_in = carve(c, N * D), s->y = carve(c, N * D);
    s->own_in = carve(c, N * D), s->node = carve(c, N * D), s->attn_out = carve(c, N * D);
    s->grouped = carve(c, N * (size_t)cfg->n_kv_heads * Dh), s->z = carve(c, N * H * Dh);
    s->hidden = carve(c, N * F);
    s->delta = patching ? carve(c, J * N * D) : NULL;
    s->diff = patching ? carve(c, NF * N * D) : NULL;
    s->final_x = carve(c, rows * D), s->final_y = carve(c, rows * D);
    *final_hat = carve(c, rows * D), *final_rstd = carve(c, rows);
}

typedef struct {
    const eapig_model *m;
    const eapig_forward_opts *o;
    const eapig_layer_weights *lw; /* the current layer's f32 weights (eapig_layer_view) */
    scratch s;
    size_t B, P, N, D;
} fwd_run;

/* A source node's output is known: capture it and, when patching, keep R_u - current_u. */
static void record_node(fwd_run *r, int32_t u, const float *out) {
    size_t nd = r->N * r->D, off = (size_t)u * nd;
    if (r->o->capture) memcpy(r->o->capture + off, out, nd * sizeof(float));
    if (r->s.diff) {
        const float *ref = r->o->patch_ref + off;
        float *d = r->s.diff + off;
        for (size_t i = 0; i < nd; i++) d[i] = ref[i] - out[i];
        if (r->o->patch_scale) {
            const float *scale = r->o->patch_scale + (size_t)u * r->D;
            for (size_t i = 0; i < nd; i++) d[i] *= scale[i % r->D];
        }
    }
}

/* Deltas for destinations [col, col+ncols) from the first n_up sources: delta (ncols, N*D) =
 * W[0:n_up, col:col+ncols]^T @ diff[0:n_up]. Returns 1 if any weight was non-zero and fills
 * own[j] with whether destination col+j has a non-zero weight. */
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
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (int)ncols, (int)nd, (int)n_up, 1.0f, w + col, (int)nb,
                r->s.diff, (int)nd, 0.0f, r->s.delta, (int)nd);
    return 1;
}

/* The normalised input of a destination with its own input: base + delta, then the norm. */
static const float *own_input(fwd_run *r, const float *base, const float *delta, float *hat, float *rstd,
                              const float *w, const float *b) {
    const eapig_config *c = &r->m->cfg;
    size_t nd = r->N * r->D;
    for (size_t i = 0; i < nd; i++) r->s.own_in[i] = base[i] + delta[i];
    norm_forward(r->s.y, hat, rstd, r->s.own_in, w, b, r->N, r->D, c->norm == EAPIG_NORM_RMSNORM, c->norm_eps);
    return r->s.y;
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
    int any_shared = 0;
    for (size_t h = 0; h < H; h++) any_shared |= !own[t * H + h];
    if (any_shared) {
        float *dst = n_proj == H ? out : r->s.grouped;
        linear_forward(dst, shared_y, w, bias, N, n_proj * Dh, D, n_proj * Dh);
        if (n_proj != H) /* ungroup: query head h reads kv head h / group */
            for (size_t n = 0; n < N; n++)
                for (size_t h = 0; h < H; h++)
                    if (!own[t * H + h])
                        memcpy(out + (n * H + h) * Dh, r->s.grouped + (n * KV + h / group) * Dh, Dh * sizeof(float));
    }
    for (size_t h = 0; h < H; h++) {
        size_t j = t * H + h;
        if (!own[j]) continue;
        const float *y = own_input(r, x, r->s.delta + j * N * D, st->own_hat + j * N * D, st->own_rstd + j * N,
                                   lw->ln1_w, lw->ln1_b);
        size_t g = t == 0 ? h : h / group;
        linear_forward(out + h * Dh, y, w + g * Dh * D, bias + g * Dh, N, Dh, D, H * Dh);
    }
}

/* Keeps the residual stream a reader saw, when asked. */
static void record_resid(fwd_run *r, size_t index, const float *x) {
    size_t nd = r->N * r->D;
    if (r->o->resid) memcpy(r->o->resid + index * nd, x, nd * sizeof(float));
}

/* The attention block of layer l: reads x (N,D), adds its output into resid. */
static void attention_block(fwd_run *r, int l, layer_state *st, uint8_t *own, const float *x,
                            const int32_t *lengths) {
    const eapig_model *m = r->m;
    const eapig_config *c = &m->cfg;
    const eapig_layer_weights *lw = r->lw;
    size_t N = r->N, D = r->D, H = c->n_heads, Dh = c->d_head, nd = N * D;
    size_t n_up = 1 + (size_t)l * (H + 1);
    int32_t first_head = (int32_t)n_up;
    int rms = c->norm == EAPIG_NORM_RMSNORM;
    int overridden = r->o->override_group == 1 + 2 * l;

    memset(r->s.attn_out, 0, nd * sizeof(float));
    if (overridden) {
        memset(own, 0, 3 * H);
        for (size_t h = 0; h < H; h++) {
            const float *out = r->o->override_value + h * nd;
            for (size_t i = 0; i < nd; i++) r->s.attn_out[i] += out[i];
            record_node(r, first_head + (int32_t)h, out);
        }
    } else {
        patch_deltas(r, n_up, (size_t)l * (3 * H + 1), 3 * H, own);
        norm_forward(r->s.y, st->attn_hat, st->attn_rstd, x, lw->ln1_w, lw->ln1_b, N, D, rms, c->norm_eps);
        /* Heads with their own inputs reuse s.y, so keep the shared normalised input aside. */
        memcpy(r->s.node, r->s.y, nd * sizeof(float));
        float *proj[3] = {st->q, st->k, st->v};
        for (int t = 0; t < 3; t++) project_qkv(r, st, lw, t, x, r->s.node, own, proj[t]);
        if (c->pos == EAPIG_POS_ROPE) {
            rope_apply(st->q, r->B, r->P, H, Dh, (size_t)c->rotary_dim, c->rope_theta, 0);
            rope_apply(st->k, r->B, r->P, H, Dh, (size_t)c->rotary_dim, c->rope_theta, 0);
        }
        /* z goes straight into the saved state when weight gradients will need it */
        float *z = st->z ? st->z : r->s.z;
        attention_forward(z, st->att, st->q, st->k, st->v, lengths, r->B, r->P, H, Dh);
        if (r->o->attn_probs) {
            size_t per_layer = r->B * H * r->P * r->P;
            memcpy(r->o->attn_probs + (size_t)l * per_layer, st->att, per_layer * sizeof(float));
        }
        if (r->o->capture || r->s.diff) {
            /* Each head's output separately: z_h W_O[h]^T, without b_O. */
            for (size_t h = 0; h < H; h++) {
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)N, (int)D, (int)Dh, 1.0f, z + h * Dh,
                            (int)(H * Dh), lw->wo + h * Dh, (int)(H * Dh), 0.0f, r->s.node, (int)D);
                for (size_t i = 0; i < nd; i++) r->s.attn_out[i] += r->s.node[i];
                record_node(r, first_head + (int32_t)h, r->s.node);
            }
        } else {
            linear_forward(r->s.attn_out, z, lw->wo, NULL, N, D, H * Dh, D);
        }
    }
    for (size_t n = 0; n < N; n++)
        for (size_t i = 0; i < D; i++) r->s.resid[n * D + i] += r->s.attn_out[n * D + i] + lw->bo[i];
}

/* The MLP block of layer l: reads x (N,D) (plus its patching delta), adds its output to resid. */
static void mlp_block(fwd_run *r, int l, layer_state *st, uint8_t *own, const float *x) {
    const eapig_model *m = r->m;
    const eapig_config *c = &m->cfg;
    const eapig_layer_weights *lw = r->lw;
    size_t N = r->N, D = r->D, H = c->n_heads, F = c->d_mlp, nd = N * D, J = 3 * H + 1;
    int32_t node = 1 + l * (c->n_heads + 1) + c->n_heads;
    int rms = c->norm == EAPIG_NORM_RMSNORM;
    const float *out;

    if (r->o->override_group == 2 + 2 * l) {
        own[J - 1] = 0;
        out = r->o->override_value;
    } else {
        size_t n_up = 1 + (size_t)l * (H + 1) + (c->parallel_attn_mlp ? 0 : H);
        const float *y;
        if (patch_deltas(r, n_up, (size_t)l * J + 3 * H, 1, own + J - 1)) {
            /* the delta went to row 0 of s.delta; the attention's rows are no longer needed */
            y = own_input(r, x, r->s.delta, st->own_hat + (J - 1) * nd, st->own_rstd + (J - 1) * N, lw->ln2_w,
                          lw->ln2_b);
        } else {
            norm_forward(r->s.y, st->mlp_hat, st->mlp_rstd, x, lw->ln2_w, lw->ln2_b, N, D, rms, c->norm_eps);
            y = r->s.y;
        }
        linear_forward(st->mlp_pre, y, c->act == EAPIG_ACT_SILU_GATED ? lw->w_gate : lw->w_in,
                       c->act == EAPIG_ACT_SILU_GATED ? NULL : lw->b_in, N, F, D, F);
        if (st->mlp_up) linear_forward(st->mlp_up, y, lw->w_in, lw->b_in, N, F, D, F);
        float *hidden = st->hidden ? st->hidden : r->s.hidden;
        act_forward(hidden, st->mlp_pre, st->mlp_up, N * F, c->act);
        linear_forward(r->s.node, hidden, lw->w_out, lw->b_out, N, D, F, D);
        out = r->s.node;
    }
    record_node(r, node, out);
    for (size_t i = 0; i < nd; i++) r->s.resid[i] += out[i];
}

int64_t eapig_workspace_bytes(const eapig_model *m, int32_t B, int32_t P, int32_t diff_B, int32_t flags) {
    if (!m || B < 1 || P < 1 || diff_B < 0 || (diff_B > 0 && B % diff_B != 0)) {
        eapig_set_error(EAPIG_ERR_ARG, "eapig_workspace_bytes: bad batch (%d, %d) or diff_B %d", B, P, diff_B);
        return -1;
    }
    const eapig_config *c = &m->cfg;
    int keep = (flags & (EAPIG_RUN_KEEP | EAPIG_RUN_WEIGHT_GRADS)) != 0;
    int weights = (flags & EAPIG_RUN_WEIGHT_GRADS) != 0, patching = (flags & EAPIG_RUN_PATCH) != 0;
    size_t rows = (flags & EAPIG_RUN_ALL_LOGITS) ? (size_t)B * (size_t)P : (size_t)B;
    /* carve_run's size is linear in the number of kept layer slots: count 0 and 1, then scale */
    layer_state one;
    scratch s;
    float *fh, *fr;
    carver none = {NULL, 0}, with_one = {NULL, 0};
    carve_run(&none, c, &one, 0, &s, (size_t)B, (size_t)P, rows, patching, weights, &fh, &fr);
    carve_run(&with_one, c, &one, 1, &s, (size_t)B, (size_t)P, rows, patching, weights, &fh, &fr);
    size_t slots = keep ? (size_t)c->n_layers : 1;
    size_t floats = none.used + (with_one.used - none.used) * slots;
    if (keep) {
        size_t steps = diff_B > 0 ? (size_t)(B / diff_B) : 1;
        /* the attribution backward: edge scores with the default gather, no node scores */
        floats += eapig_backward_floats(c, (size_t)B, (size_t)P, rows, steps, 1, 0, 0, weights);
    }
    size_t bytes = floats * sizeof(float) + (size_t)c->n_layers * (3 * (size_t)c->n_heads + 1);
    if (m->stored) bytes += (size_t)eapig_weights_view_bytes(c);
    return (int64_t)bytes;
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
            size_t first_col = (size_t)o->start_layer * (3 * (size_t)c->n_heads + 1);
            for (size_t u = 0; u < nf; u++)
                for (size_t v = 0; v < first_col; v++)
                    if (o->patch_w[u * nb + v] != 0.0f)
                        return eapig_set_error(EAPIG_ERR_ARG,
                                               "eapig_forward: start_layer %d skips destination %zu, whose "
                                               "patch weight from source %zu is not zero",
                                               o->start_layer, v, u);
        }
    }
    int n_groups = 1 + 2 * c->n_layers;
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
    size_t H = c->n_heads, J = 3 * H + 1;
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
    float *final_hat, *final_rstd;
    carve_run(&count, c, ws->layers, n_slots, &r.s, B, P, rows, patching, for_weights, &final_hat, &final_rstd);
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
    carve_run(&cv, c, ws->layers, n_slots, &r.s, B, P, rows, patching, for_weights, &final_hat, &final_rstd);
    for (int l = 0; l < n_slots; l++) ws->layers[l].own_flags = ws->flags + (size_t)l * J;

    size_t first_layer = (size_t)o->start_layer;
    if (first_layer > 0) {
        /* Resume: the prefix's residual and node outputs come from the earlier run. */
        memcpy(r.s.resid, o->start_resid, N * D * sizeof(float));
        size_t n_up = 1 + first_layer * (H + 1);
        for (size_t u = 0; u < n_up; u++) record_node(&r, (int32_t)u, o->start_capture + u * N * D);
    } else if (o->override_group == 0) {
        /* Embedding: the input node is the token embedding; learned positions are outside it. */
        memcpy(r.s.resid, o->override_value, N * D * sizeof(float));
    } else {
        int status = eapig_embed_rows(m, r.s.resid, bt->tokens, N);
        if (status != EAPIG_OK) return status;
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
        int status = eapig_layer_view(m, ws, (int)l, &r.lw);
        if (status != EAPIG_OK) return status;
        memcpy(r.s.x_in, r.s.resid, N * D * sizeof(float));
        record_resid(&r, 2 * l, r.s.x_in);
        attention_block(&r, (int)l, st, own, r.s.x_in, bt->lengths);
        record_resid(&r, 2 * l + 1, c->parallel_attn_mlp ? r.s.x_in : r.s.resid);
        mlp_block(&r, (int)l, st, own, c->parallel_attn_mlp ? r.s.x_in : r.s.resid);
        for (size_t j = 0; j < J; j++) any_patched |= own[j];
        if (!keep) ws->layers[0].own_flags = ws->flags; /* only slot 0 exists */
    }

    /* Logits input: the final residual (plus its own delta when patched), at the chosen rows. */
    size_t nb = (size_t)eapig_model_n_backward(m), nf = (size_t)eapig_model_n_forward(m);
    uint8_t logits_own = 0;
    const float *x_final = r.s.resid;
    record_resid(&r, 2 * L, r.s.resid);
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
    }

    ws->final_hat = final_hat;
    ws->final_rstd = final_rstd;
    ws->model = m;
    ws->B = bt->B;
    ws->P = bt->P;
    ws->override_group = o->override_group;
    ws->patched = any_patched;
    ws->kept = keep && o->logits != NULL;
    ws->kept_weights = ws->kept && for_weights;
    return EAPIG_OK;
}
