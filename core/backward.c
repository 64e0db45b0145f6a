/* backward.c: gradients of the activations, from dMetric/dlogits to every destination input,
 * reduced layer by layer into edge, node and neuron scores:
 *   S[u,v] += sum_{b,p} <diff[u,b,p,:], G[v,b,p,:]>   (one GEMM per layer and destination kind)
 * so the destination gradients G are never stored whole unless asked for. Weight gradients
 * (training) are computed only when asked, from the same activation gradients, so attribution
 * runs pay nothing for them.
 *
 * Patching deltas are constants for the backward: a patched destination's gradient is taken at
 * its own input, and the residual stream's gradient is the sum of its readers' gradients.
 *
 * B = batch rows, P = positions, N = B*P, D = d_model, H = heads, KV = kv heads, Dh = d_head,
 * F = d_mlp, V = vocab, L = layers, NF = source nodes, NB = destinations, J = 3H+1,
 * Bd = rows of the difference buffer (B = k * Bd for k batched integrated-gradient steps).
 */
#include <cblas.h>
#include <math.h>
#include <string.h>
#include <time.h>

#include "ops.h"
#include "run.h"

typedef struct {
    float *g;      /* (N,D) residual gradient at the current point */
    float *g_mid;  /* (N,D) residual gradient between attention and MLP */
    float *dxn;    /* (N,D) gradient of a normalised input */
    float *dz, *dq, *dk, *dv; /* (N, H*Dh) */
    float *dh, *dpre, *dup;   /* (N,F) */
    float *scratch;           /* (T,2,P,P): one block per thread (attention_backward) */
    float *tile;   /* one flush's partial products (flush_scores, eapig_edge_product_floats) */
    float *Gm;     /* (N,D) the MLP input's gradient (NULL when destination gradients go straight
                    * into the score gather, see below) */
    float *dest_tile; /* (T, EAPIG_TILE_ROWS, D) one block of a head destination's gradient per thread */
    float *g_part; /* (eapig_sum_parts()-1, N,D) partial sums of the heads' residual gradient */
    float *g_red;  /* (Nd,D) a residual gradient summed over batched steps (node scores) */
    float *g_attn;  /* (N,D) gradient at the summed attention output A, before its post-norm */
    float *d_mlp;   /* (N,D) gradient at the MLP output before its post-norm */
    float *kw;      /* (H*Dh) k norm weight per ungrouped key */
    float *dlog;    /* (rows,V) gradient of the logits before final soft-capping */
    float *dxf, *Gf; /* (rows,D) */
    /* Weight gradients only: */
    float *wy;     /* (N,D) a norm's output, recomputed from its saved xhat */
    float *wdxn;   /* (N,D) the gradient of the attention's shared normalised input */
    float *wdk, *wdv; /* (N, KV*Dh) k and v gradients summed over each kv head's query heads */
} bwd_scratch;

/* Score accumulation reads the difference buffer (NF, Nd*D) against destination gradients. One
 * GEMM per layer (37 destinations for GPT-2) would re-read all of diff for a few columns and be
 * memory-bound, so the destination gradients (summed over steps) of consecutive layers are
 * gathered into `buf` first, as many as the memory budget allows, and reduced together by
 * flush_scores. The gathered layers [lo, hi) cover the score columns [col(lo), hi_col); layer L
 * stands for the logits column. Column c lives at slot cap_cols - (hi_col - c), so the layers,
 * gathered from the top down, end up in column order. */
typedef struct {
    float *buf;       /* (cap_cols, ld): a column per destination */
    size_t cap_cols;
    size_t ld;        /* floats from a column to the next: Nd*D + EAPIG_EDGE_PAD */
    size_t lo, hi;    /* gathered layers; lo == hi: empty */
    size_t hi_col;    /* one past the last gathered column */
} score_gather;

typedef struct {
    const eapig_model *m;
    eapig_workspace *ws; /* not const: the score accumulation adds its timings */
    const eapig_backward_opts *o;
    const eapig_layer_weights *lw; /* the current layer's f32 weights (eapig_layer_view) */
    bwd_scratch s;
    score_gather sg;
    float *layer_gather; /* the current layer's first column in the gather, or NULL without scores */
    int direct;          /* destination gradients are written straight into the gather */
    size_t B, P, N, D, Bd, steps, NB, NF, J, H, L;
} bwd_run;

static float *carve(float **p, size_t n) {
    float *r = *p;
    *p += n;
    return r;
}

/* First score column of layer l (layer L: the logits column) and how many it has. */
static size_t layer_col(const bwd_run *r, size_t l) { return eapig_first_dest(r->H, l); }
static size_t layer_ncols(const bwd_run *r, size_t l) { return l == r->L ? 1 : r->J; }
/* Sources upstream of layer l's attention (of the logits for l = L). */
static size_t layer_n_up(const bwd_run *r, size_t l) { return eapig_first_node(r->H, l); }

/* Sums the batched integrated-gradient steps of n_blocks gradient blocks (each (N,D), step-major
 * rows) into n_blocks (Nd,D) blocks at dst. */
static void reduce_steps(const bwd_run *r, float *dst, const float *src, size_t n_blocks) {
    size_t nd = r->N * r->D, ndr = nd / r->steps;
    for (size_t j = 0; j < n_blocks; j++) {
        float *d = dst + j * ndr;
        memcpy(d, src + j * nd, ndr * sizeof(float));
        for (size_t k = 1; k < r->steps; k++) add_into(d, src + j * nd + k * ndr, ndr);
    }
}

static double seconds_now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

void eapig_workspace_score_stats(eapig_workspace *ws, double *seconds, double *flops, int32_t reset) {
    if (seconds) *seconds = ws ? ws->score_seconds : 0.0;
    if (flops) *flops = ws ? ws->score_flops : 0.0;
    if (ws && reset) ws->score_seconds = ws->score_flops = 0.0;
}

/* Sources upstream of score column c: the real edges into c come from sources u < col_n_up(c).
 * Non-decreasing in c. */
static size_t col_n_up(const bwd_run *r, size_t c) {
    size_t l = (size_t)eapig_dest_layer(r->H, c);
    if (l >= r->L) return r->NF;
    size_t n = layer_n_up(r, l);
    if (eapig_dest_is_mlp(r->H, c) && !r->m->cfg.parallel_attn_mlp) n += r->H; /* its own heads */
    return n;
}

/* reduce_steps into the score gather, timed as part of the score accumulation. */
static void reduce_into_gather(bwd_run *r, float *dst, const float *src, size_t n_blocks) {
    double t0 = seconds_now();
    reduce_steps(r, dst, src, n_blocks);
    r->ws->score_seconds += seconds_now() - t0;
}

/* The score columns of a flush: column j of the gather is score column c0 + j. */
typedef struct {
    const bwd_run *r;
    size_t c0;
} flush_columns;

static size_t flush_col_rows(const void *ctx, size_t j) {
    const flush_columns *f = ctx;
    return col_n_up(f->r, f->c0 + j);
}

/* Reduces the gathered layers into the scores and empties the gather: one edge product
 * (core/edge_product.c) of every source with every gathered column, over the real edges only
 * (u < col_n_up(c)). */
static void flush_scores(bwd_run *r) {
    score_gather *sg = &r->sg;
    if (sg->lo == sg->hi) return;
    size_t c0 = layer_col(r, sg->lo), n = sg->hi_col - c0, ndr = r->N * r->D / r->steps;
    const float *g = sg->buf + (sg->cap_cols - n) * sg->ld;
    double t0 = seconds_now(), useful = 0.0;
    flush_columns cols = {r, c0};
    eapig_edge_product(n, flush_col_rows, &cols, ndr, r->o->diff, ndr, g, sg->ld, r->o->scores + c0, r->NB, r->s.tile);
    for (size_t j = 0; j < n; j++) useful += (double)col_n_up(r, c0 + j);
    r->ws->score_seconds += seconds_now() - t0;
    r->ws->score_flops += 2.0 * useful * (double)ndr;
    sg->lo = sg->hi = 0;
}

/* Where layer l's (step-summed) destination gradients go in the gather: flushes first when they
 * do not fit beside the layers already there. Layers arrive from the top (logits) down. */
static float *gather_layer(bwd_run *r, size_t l) {
    score_gather *sg = &r->sg;
    if (sg->lo != sg->hi && sg->hi_col - layer_col(r, l) > sg->cap_cols) flush_scores(r);
    if (sg->lo == sg->hi) {
        sg->hi = l + 1;
        sg->hi_col = layer_col(r, l) + layer_ncols(r, l);
    }
    sg->lo = l;
    return sg->buf + (sg->cap_cols - (sg->hi_col - layer_col(r, l))) * sg->ld;
}

/* Node and neuron scores of sources [u0, u0+n) whose outputs all meet the residual gradient g:
 * node_scores[u0:u0+n] += diff[u0:u0+n] @ g (one pass over diff), neuron scores elementwise. */
static void accumulate_nodes(bwd_run *r, const float *g_res, int32_t u0, size_t n) {
    if (!r->o->node_scores && !r->o->neuron_scores) return;
    size_t ndr = r->N * r->D / r->steps, D = r->D, Nd = ndr / D;
    const float *g = g_res;
    if (r->steps > 1) {
        reduce_steps(r, r->s.g_red, g_res, 1);
        g = r->s.g_red;
    }
    const float *d0 = r->o->diff + (size_t)u0 * ndr;
    if (r->o->node_scores)
        cblas_sgemv(CblasRowMajor, CblasNoTrans, (int)n, (int)ndr, 1.0f, d0, (int)ndr, g, 1, 1.0f,
                    r->o->node_scores + u0, 1);
    if (r->o->neuron_scores)
        for (size_t i = 0; i < n; i++) {
            float *ns = r->o->neuron_scores + ((size_t)u0 + i) * D;
            const float *d = d0 + i * ndr;
            for (size_t t = 0; t < Nd; t++)
                for (size_t e = 0; e < D; e++) ns[e] += d[t * D + e] * g[t * D + e];
        }
}

static void output_node_grads(bwd_run *r, const float *g, int32_t u0, size_t n) {
    if (!r->o->node_grads) return;
    size_t nd = r->N * r->D;
    for (size_t i = 0; i < n; i++) memcpy(r->o->node_grads + ((size_t)u0 + i) * nd, g, nd * sizeof(float));
}

/* Gradient at a destination's input from the gradient dxn of its normalised input (its input
 * itself in post-norm-only blocks). */
static void dest_grad(bwd_run *r, float *G, const layer_state *st, size_t j, int is_mlp, const float *w) {
    const eapig_config *c = &r->m->cfg;
    size_t N = r->N, D = r->D;
    if (c->block_norms == EAPIG_BLOCK_POST_NORM) {
        memcpy(G, r->s.dxn, N * D * sizeof(float));
        return;
    }
    const float *hat, *rstd;
    if (st->own_flags[j]) {
        hat = st->own_hat + j * N * D;
        rstd = st->own_rstd + j * N;
    } else {
        hat = is_mlp ? st->mlp_hat : st->attn_hat;
        rstd = is_mlp ? st->mlp_rstd : st->attn_rstd;
    }
    norm_backward(G, r->s.dxn, hat, rstd, w, N, D, c->norm == EAPIG_NORM_RMSNORM);
}

/* Where the MLP input's gradient goes: its column of the score gather (one step, with scores),
 * or a buffer of its own (the residual gradient needs it after the heads'). */
static float *mlp_dest_buffer(const bwd_run *r) {
    return r->direct ? r->layer_gather + 3 * r->H * r->sg.ld : r->s.Gm;
}

/* The MLP input of layer li has its gradient Gm: summed over steps into the gather (when it is
 * not there already) and copied out when asked. */
static void mlp_dest_done(bwd_run *r, size_t li, const float *Gm) {
    size_t nd = r->N * r->D, j = 3 * r->H;
    if (r->layer_gather && !r->direct) reduce_into_gather(r, r->layer_gather + j * r->sg.ld, Gm, 1);
    if (r->o->dest_grads) memcpy(r->o->dest_grads + (li * r->J + j) * nd, Gm, nd * sizeof(float));
}

/* G_m (N,D) from the gradient g at the MLP's output. */
static void mlp_backward(bwd_run *r, int l, const layer_state *st, const float *g, float *G_m) {
    const eapig_config *c = &r->m->cfg;
    const eapig_layer_weights *lw = r->lw;
    size_t N = r->N, D = r->D, F = c->d_mlp;
    if (r->ws->override_group == eapig_mlp_group(l)) { /* a constant output: nothing flows back */
        memset(G_m, 0, N * D * sizeof(float));
        return;
    }
    if (c->block_norms != EAPIG_BLOCK_PRE_NORM) { /* through the MLP's post-norm first */
        norm_backward(r->s.d_mlp, g, st->mlp_post_hat, st->mlp_post_rstd, lw->mlp_post_w, N, D, 1);
        g = r->s.d_mlp;
    }
    linear_backward_input(r->s.dh, g, lw->w_out, N, D, F, D, 0);
    act_backward(r->s.dpre, r->s.dup, r->s.dh, st->mlp_pre, st->mlp_up, N * F, c->act);
    if (eapig_act_gated(c->act)) {
        linear_backward_input(r->s.dxn, r->s.dpre, lw->w_gate, N, F, D, F, 0);
        linear_backward_input(r->s.dxn, r->s.dup, lw->w_in, N, F, D, F, 1);
    } else {
        linear_backward_input(r->s.dxn, r->s.dpre, lw->w_in, N, F, D, F, 0);
    }
    dest_grad(r, G_m, st, 3 * (size_t)c->n_heads, 1, lw->ln2_w);
}

/* The heads' q, k and v destinations of one layer, split over the threads (head_dest_range). */
typedef struct {
    bwd_run *r;
    const layer_state *st;
    const float *dproj[3], *w[3]; /* (N, H*Dh) gradients at q, k and v; their weights */
    const float *norm_w;          /* the pre-norm's weight */
    size_t li;
    size_t parts; /* partial sums of the residual gradient (the first is r.s.g itself) */
} head_dests;

/* Parts [p0, p1) of the layer's destinations (j = t*H + h: type t of head h), each destination
 * and row block in turn: G = dproj_t[:, h] @ W_t[head] (K = d_head), back through the pre-norm
 * at the destination's own or the shared input, then summed over steps into the destination's
 * gather column, copied out when asked, and added to its part's sum of the residual gradient. */
static void head_dest_range(void *ctx, size_t p0, size_t p1, size_t index) {
    const head_dests *a = ctx;
    bwd_run *r = a->r;
    const eapig_config *c = &r->m->cfg;
    const layer_state *st = a->st;
    size_t N = r->N, D = r->D, H = r->H, Dh = c->d_head, group = H / c->n_kv_heads, nd = N * D;
    size_t Nd = N / r->steps;
    int pre_norm = c->block_norms != EAPIG_BLOCK_POST_NORM, rms = c->norm == EAPIG_NORM_RMSNORM;
    float *tile = r->s.dest_tile + index * EAPIG_TILE_ROWS * D;
    for (size_t p = p0; p < p1; p++) {
        float *g = p == 0 ? r->s.g : r->s.g_part + (p - 1) * nd;
        if (p > 0) memset(g, 0, nd * sizeof(float));
        size_t j0, j1;
        eapig_part(3 * H, a->parts, p, &j0, &j1);
        for (size_t j = j0; j < j1; j++) {
            size_t t = j / H, h = j % H, head = t == 0 ? h : h / group;
            const float *hat = st->own_flags[j] ? st->own_hat + j * nd : st->attn_hat;
            const float *rstd = st->own_flags[j] ? st->own_rstd + j * N : st->attn_rstd;
            float *col = r->layer_gather ? r->layer_gather + j * r->sg.ld : NULL; /* (Nd, D), summed over steps */
            float *out = r->o->dest_grads ? r->o->dest_grads + (a->li * r->J + j) * nd : NULL;
            for (size_t n0 = 0; n0 < N; n0 += EAPIG_TILE_ROWS) {
                size_t rows = N - n0 < EAPIG_TILE_ROWS ? N - n0 : EAPIG_TILE_ROWS;
                eapig_gemm(0, 0, rows, D, Dh, 1.0f, a->dproj[t] + n0 * H * Dh + h * Dh, H * Dh,
                           a->w[t] + head * Dh * D, D, 0.0f, tile, D);
                if (pre_norm) norm_backward(tile, tile, hat + n0 * D, rstd + n0, a->norm_w, rows, D, rms);
                for (size_t i = 0; i < rows; i++) {
                    size_t n = n0 + i;
                    const float *src = tile + i * D;
                    if (col) {
                        float *dst = col + (n % Nd) * D;
                        if (n < Nd)
                            memcpy(dst, src, D * sizeof(float));
                        else
                            for (size_t e = 0; e < D; e++) dst[e] += src[e];
                    }
                    float *gr = g + n * D;
                    for (size_t e = 0; e < D; e++) gr[e] += src[e];
                }
                if (out) memcpy(out + n0 * D, tile, rows * D * sizeof(float));
            }
        }
    }
}

/* Every head's q, k and v input gradient from the gradient g at the attention's output, added
 * to the residual gradient r.s.g, gathered and copied out (head_dest_range). */
static void attention_backward_layer(bwd_run *r, int l, const layer_state *st, const float *g) {
    const eapig_config *c = &r->m->cfg;
    const eapig_layer_weights *lw = r->lw;
    size_t N = r->N, D = r->D, H = c->n_heads, Dh = c->d_head, group = H / c->n_kv_heads, nd = N * D;
    if (r->ws->override_group == eapig_heads_group(l)) { /* constant outputs: no gradient reaches the inputs */
        if (r->layer_gather) memset(r->layer_gather, 0, 3 * H * r->sg.ld * sizeof(float));
        if (r->o->dest_grads) memset(r->o->dest_grads + (size_t)l * r->J * nd, 0, 3 * H * nd * sizeof(float));
        return;
    }
    linear_backward_input(r->s.dz, g, lw->wo, N, D, H * Dh, D, 0);
    attn_params ap = {c->attn_scale > 0.0f ? c->attn_scale : 1.0f / sqrtf((float)Dh), c->attn_softcap,
                      (size_t)eapig_layer_window(c, l)};
    attention_backward(r->s.dq, r->s.dk, r->s.dv, r->s.scratch, r->s.dz, st->att, st->q, st->k, st->v, r->B, r->P,
                       H, Dh, &ap);
    if (c->pos == EAPIG_POS_ROPE) {
        rope_apply(r->s.dq, r->B, r->P, H, Dh, (size_t)c->rotary_dim, r->m->rope_freq, 1);
        rope_apply(r->s.dk, r->B, r->P, H, Dh, (size_t)c->rotary_dim, r->m->rope_freq, 1);
    }
    if (c->qk_norm) { /* back through the norms over all heads' q and k, in place */
        for (size_t h = 0; h < H; h++)
            memcpy(r->s.kw + h * Dh, lw->k_norm_w + (h / group) * Dh, Dh * sizeof(float));
        norm_backward(r->s.dq, r->s.dq, st->q_hat, st->q_rstd, lw->q_norm_w, N, H * Dh, 1);
        norm_backward(r->s.dk, r->s.dk, st->k_hat, st->k_rstd, r->s.kw, N, H * Dh, 1);
    }
    head_dests a = {.r = r, .st = st, .dproj = {r->s.dq, r->s.dk, r->s.dv}, .w = {lw->wq, lw->wk, lw->wv},
                    .norm_w = lw->ln1_w, .li = (size_t)l, .parts = eapig_sum_parts()};
    eapig_parallel_for(a.parts, 1, head_dest_range, &a);
    for (size_t p = 1; p < a.parts; p++) add_into(r->s.g, r->s.g_part + (p - 1) * nd, nd);
}

/* Weight gradients of layer l's MLP, from the gradient g at its output; needs the activation
 * backward's dpre, dup and dxn of this layer (mlp_backward just left them). */
static void mlp_weight_grads(bwd_run *r, int l, const layer_state *st, const float *g) {
    const eapig_config *c = &r->m->cfg;
    if (r->ws->override_group == eapig_mlp_group(l)) return; /* a constant output: no weight was used */
    const eapig_layer_weights *lw = r->lw;
    eapig_layer_weights *gl = &r->o->weight_grads->layers[l];
    size_t N = r->N, D = r->D, F = c->d_mlp;
    int rms = c->norm == EAPIG_NORM_RMSNORM;
    linear_backward_weight(gl->w_out, gl->b_out, g, st->hidden, N, D, F, D, F);
    norm_output(r->s.wy, st->mlp_hat, lw->ln2_w, rms ? NULL : lw->ln2_b, N, D);
    if (eapig_act_gated(c->act)) {
        linear_backward_weight(gl->w_gate, NULL, r->s.dpre, r->s.wy, N, F, D, F, D);
        linear_backward_weight(gl->w_in, gl->b_in, r->s.dup, r->s.wy, N, F, D, F, D);
    } else {
        linear_backward_weight(gl->w_in, gl->b_in, r->s.dpre, r->s.wy, N, F, D, F, D);
    }
    norm_backward_weight(gl->ln2_w, rms ? NULL : gl->ln2_b, r->s.dxn, st->mlp_hat, N, D);
}

/* Sums the (N, H*Dh) per-query-head gradient src over each kv head's group into (N, KV*Dh). */
static const float *group_sum(float *dst, const float *src, size_t N, size_t H, size_t KV, size_t Dh) {
    if (KV == H) return src;
    size_t group = H / KV;
    memset(dst, 0, N * KV * Dh * sizeof(float));
    for (size_t n = 0; n < N; n++)
        for (size_t h = 0; h < H; h++) {
            const float *a = src + (n * H + h) * Dh;
            float *b = dst + (n * KV + h / group) * Dh;
            for (size_t e = 0; e < Dh; e++) b[e] += a[e];
        }
    return dst;
}

/* Weight gradients of layer l's attention from the gradient g at its output; needs the
 * activation backward's dq, dk, dv of this layer (after the inverse rotation). */
static void attention_weight_grads(bwd_run *r, int l, const layer_state *st, const float *g) {
    const eapig_config *c = &r->m->cfg;
    const eapig_layer_weights *lw = r->lw;
    eapig_layer_weights *gl = &r->o->weight_grads->layers[l];
    size_t N = r->N, D = r->D, H = c->n_heads, KV = c->n_kv_heads, Dh = c->d_head;
    size_t qd = H * Dh, kvd = KV * Dh;
    int rms = c->norm == EAPIG_NORM_RMSNORM;
    if (r->ws->override_group == eapig_heads_group(l)) { /* the heads are constants; b_O is still added */
        linear_backward_weight(NULL, gl->bo, g, NULL, N, D, 0, D, 0);
        return;
    }
    linear_backward_weight(gl->wo, gl->bo, g, st->z, N, D, qd, D, qd);
    norm_output(r->s.wy, st->attn_hat, lw->ln1_w, rms ? NULL : lw->ln1_b, N, D);
    const float *dk = group_sum(r->s.wdk, r->s.dk, N, H, KV, Dh);
    const float *dv = group_sum(r->s.wdv, r->s.dv, N, H, KV, Dh);
    linear_backward_weight(gl->wq, gl->bq, r->s.dq, r->s.wy, N, qd, D, qd, D);
    linear_backward_weight(gl->wk, gl->bk, dk, r->s.wy, N, kvd, D, kvd, D);
    linear_backward_weight(gl->wv, gl->bv, dv, r->s.wy, N, kvd, D, kvd, D);
    /* Every head read the one normalised input: its gradient is the sum over q, k and v. */
    linear_backward_input(r->s.wdxn, r->s.dq, lw->wq, N, qd, D, qd, 0);
    linear_backward_input(r->s.wdxn, dk, lw->wk, N, kvd, D, kvd, 1);
    linear_backward_input(r->s.wdxn, dv, lw->wv, N, kvd, D, kvd, 1);
    norm_backward_weight(gl->ln1_w, rms ? NULL : gl->ln1_b, r->s.wdxn, st->attn_hat, N, D);
}

/* The first feature of the model that the weight gradients do not cover, or NULL. Training
 * those families is refused rather than given wrong gradients. */
static const char *weightless_feature(const eapig_config *c) {
    if (c->embed_scale != 0.0f) return "embedding scaling (gemma)";
    if (c->block_norms != EAPIG_BLOCK_PRE_NORM) return "post-norm blocks (gemma2, olmo2)";
    if (c->qk_norm) return "q/k norms (olmo2)";
    if (c->attn_softcap != 0.0f || c->final_softcap != 0.0f) return "soft-capping (gemma2)";
    return NULL;
}

static int check_backward(const eapig_model *m, const eapig_workspace *ws, const eapig_backward_opts *o) {
    if (!m || !ws || !o) return eapig_set_error(EAPIG_ERR_ARG, "eapig_backward: NULL argument");
    if (!ws->kept || ws->model != m)
        return eapig_set_error(EAPIG_ERR_STATE,
                               "eapig_backward: the workspace holds no forward run of this model with "
                               "keep_for_backward and logits");
    if (!o->dlogits) return eapig_set_error(EAPIG_ERR_ARG, "eapig_backward: dlogits is required");
    if ((o->scores || o->node_scores || o->neuron_scores) && !o->diff)
        return eapig_set_error(EAPIG_ERR_ARG, "eapig_backward: scores need the difference buffer diff");
    int32_t bd = o->diff_B ? o->diff_B : ws->B;
    if (bd < 1 || ws->B % bd != 0)
        return eapig_set_error(EAPIG_ERR_ARG, "eapig_backward: batch %d is not a whole number of diff_B %d rows",
                               ws->B, bd);
    if (o->weight_grads) {
        if (m->cfg.shared_unembed)
            return eapig_set_error(EAPIG_ERR_ARG, "eapig_backward: weight gradients need the embedding and the "
                                                  "unembedding apart (a model with shared_unembed = 0)");
        if (!ws->kept_weights)
            return eapig_set_error(EAPIG_ERR_STATE,
                                   "eapig_backward: weight_grads needs a forward run with keep_for_weights");
        if (ws->patched)
            return eapig_set_error(EAPIG_ERR_ARG, "eapig_backward: weight_grads on a patched run is not supported");
        const char *feature = weightless_feature(&m->cfg);
        if (feature)
            return eapig_set_error(EAPIG_ERR_ARG, "eapig_backward: weight gradients of models with %s are not "
                                   "implemented", feature);
        if (o->weight_grads == m || o->weight_grads->stored ||
            memcmp(&o->weight_grads->cfg, &m->cfg, sizeof m->cfg) != 0)
            return eapig_set_error(EAPIG_ERR_ARG,
                                   "eapig_backward: weight_grads must be another f32 model of the same config");
    }
    return EAPIG_OK;
}

/* Columns of destination gradients the score gather holds: score_memory bytes, by default as
 * many columns as diff has rows (as much memory again as diff), at least one layer's (J) and at
 * most every destination. ndr = floats of one reduced gradient block. */
static size_t gather_columns(size_t ndr, int64_t score_memory, size_t NF, size_t J, size_t NB) {
    size_t cols = score_memory > 0 ? (size_t)score_memory / ((ndr + EAPIG_EDGE_PAD) * sizeof(float)) : NF;
    if (cols < J) cols = J;
    if (cols > NB) cols = NB;
    return cols;
}

size_t eapig_backward_floats(const eapig_config *c, size_t B, size_t P, size_t rows, size_t steps, int scores,
                             int nodes, int64_t score_memory, int weight_grads) {
    size_t N = B * P, D = (size_t)c->d_model, H = (size_t)c->n_heads, Dh = (size_t)c->d_head, F = (size_t)c->d_mlp;
    size_t J = eapig_layer_dests(H), nd = N * D, ndr = nd / steps, kvd = (size_t)c->n_kv_heads * Dh;
    size_t NF = eapig_n_sources(H, (size_t)c->n_layers), NB = eapig_n_dests(H, (size_t)c->n_layers);
    /* With one step and scores, the destination gradients are written straight into the gather. */
    int direct = scores && steps == 1;
    size_t cap_cols = scores ? gather_columns(ndr, score_memory, NF, J, NB) : 0;
    size_t T = (size_t)eapig_get_num_threads();
    size_t need = 3 * nd + 4 * N * H * Dh + 3 * N * F + T * 2 * P * P + 2 * rows * D;
    need += (direct ? 0 : nd) + T * EAPIG_TILE_ROWS * D + (eapig_sum_parts() - 1) * nd;
    need += cap_cols * (ndr + EAPIG_EDGE_PAD) + eapig_edge_product_floats(NF, cap_cols) + (nodes && steps > 1 ? ndr : 0);
    /* post-norm blocks, q/k norms and final soft-capping */
    need += (c->block_norms != EAPIG_BLOCK_PRE_NORM ? 2 * nd : 0) + (c->qk_norm ? H * Dh : 0);
    need += c->final_softcap > 0.0f ? rows * (size_t)c->vocab : 0;
    if (weight_grads) need += 2 * nd + 2 * N * kvd;
    return need;
}

int eapig_backward(const eapig_model *m, eapig_workspace *ws, const eapig_backward_opts *o) {
    int status = check_backward(m, ws, o);
    if (status != EAPIG_OK) return status;
    const eapig_config *c = &m->cfg;
    bwd_run r = {.m = m, .ws = ws, .o = o};
    r.B = (size_t)ws->B, r.P = (size_t)ws->P, r.N = r.B * r.P, r.D = (size_t)c->d_model;
    r.Bd = o->diff_B ? (size_t)o->diff_B : r.B;
    r.steps = r.B / r.Bd;
    r.NB = (size_t)eapig_model_n_backward(m), r.NF = (size_t)eapig_model_n_forward(m);
    r.H = (size_t)c->n_heads, r.L = (size_t)c->n_layers, r.J = eapig_layer_dests(r.H);
    size_t N = r.N, D = r.D, H = r.H, Dh = c->d_head, F = c->d_mlp, J = r.J, L = r.L;
    size_t V = c->vocab, rows = ws->logit_pos ? r.B : N, nd = N * D;
    size_t ndr = nd / r.steps;
    /* With one step and scores, the destination gradients are written straight into the gather. */
    int scores = o->scores != NULL, direct = scores && r.steps == 1;
    int nodes = o->node_scores || o->neuron_scores;
    r.sg.cap_cols = scores ? gather_columns(ndr, o->score_memory, r.NF, J, r.NB) : 0;

    size_t need = eapig_backward_floats(c, r.B, r.P, rows, r.steps, scores, nodes, o->score_memory,
                                        o->weight_grads != NULL);
    size_t kvd = (size_t)c->n_kv_heads * Dh;
    if (eapig_workspace_grow((void **)&ws->bwd, &ws->bwd_cap, need, sizeof(float), "eapig_backward", "gradients") != EAPIG_OK)
        return EAPIG_ERR_NOMEM;
    float *p = ws->bwd;
    r.s.g = carve(&p, nd), r.s.g_mid = carve(&p, nd), r.s.dxn = carve(&p, nd);
    r.s.dz = carve(&p, N * H * Dh), r.s.dq = carve(&p, N * H * Dh), r.s.dk = carve(&p, N * H * Dh);
    r.s.dv = carve(&p, N * H * Dh);
    r.s.dh = carve(&p, N * F), r.s.dpre = carve(&p, N * F), r.s.dup = carve(&p, N * F);
    size_t T = (size_t)eapig_get_num_threads();
    r.s.scratch = carve(&p, T * 2 * r.P * r.P);
    r.s.Gm = direct ? NULL : carve(&p, nd);
    r.s.dest_tile = carve(&p, T * EAPIG_TILE_ROWS * D);
    r.s.g_part = carve(&p, (eapig_sum_parts() - 1) * nd);
    r.direct = direct;
    r.sg.ld = ndr + EAPIG_EDGE_PAD;
    r.sg.buf = carve(&p, r.sg.cap_cols * r.sg.ld);
    r.s.tile = carve(&p, eapig_edge_product_floats(r.NF, r.sg.cap_cols));
    r.s.g_red = nodes && r.steps > 1 ? carve(&p, ndr) : NULL;
    int post = c->block_norms != EAPIG_BLOCK_PRE_NORM;
    r.s.g_attn = post ? carve(&p, nd) : NULL, r.s.d_mlp = post ? carve(&p, nd) : NULL;
    r.s.kw = c->qk_norm ? carve(&p, H * Dh) : NULL;
    r.s.dlog = ws->final_capped ? carve(&p, rows * V) : NULL;
    r.s.dxf = carve(&p, rows * D), r.s.Gf = carve(&p, rows * D);
    if (o->weight_grads) {
        r.s.wy = carve(&p, nd), r.s.wdxn = carve(&p, nd);
        r.s.wdk = carve(&p, N * kvd), r.s.wdv = carve(&p, N * kvd);
    }
    int rms = c->norm == EAPIG_NORM_RMSNORM;
    eapig_weights *gw = o->weight_grads ? &o->weight_grads->w : NULL;

    /* Logits: dL/dx_final = norm backward of dlogits @ W_U, at the unembedded rows only (through
     * the final soft-capping first, when the model has one). */
    const float *dlogits = o->dlogits;
    if (ws->final_capped) {
        float cap = c->final_softcap;
        for (size_t i = 0; i < rows * V; i++) {
            float t = ws->final_capped[i] / cap;
            r.s.dlog[i] = o->dlogits[i] * (1.0f - t * t);
        }
        dlogits = r.s.dlog;
    }
    status = eapig_unembed_backward(m, ws, r.s.dxf, dlogits, rows);
    if (status != EAPIG_OK) return status;
    norm_backward(r.s.Gf, r.s.dxf, ws->final_hat, ws->final_rstd, m->w.lnf_w, rows, D,
                  c->norm == EAPIG_NORM_RMSNORM);
    if (gw) {
        norm_output(r.s.wy, ws->final_hat, m->w.lnf_w, rms ? NULL : m->w.lnf_b, rows, D);
        linear_backward_weight(gw->w_unembed, NULL, dlogits, r.s.wy, rows, V, D, V, D);
        norm_backward_weight(gw->lnf_w, rms ? NULL : gw->lnf_b, r.s.dxf, ws->final_hat, rows, D);
    }
    memset(r.s.g, 0, nd * sizeof(float));
    for (size_t q = 0; q < rows; q++) {
        size_t dst = ws->logit_pos ? q * r.P + (size_t)ws->logit_pos[q] : q;
        memcpy(r.s.g + dst * D, r.s.Gf + q * D, D * sizeof(float));
    }
    if (o->dest_grads) memcpy(o->dest_grads + (r.NB - 1) * nd, r.s.g, nd * sizeof(float));
    if (scores) reduce_into_gather(&r, gather_layer(&r, L), r.s.g, 1);

    for (size_t li = L; li-- > 0;) {
        int l = (int)li;
        const layer_state *st = &ws->layers[l];
        status = eapig_layer_view(m, ws, l, &r.lw, "eapig_backward");
        if (status != EAPIG_OK) return status;
        int32_t first_head = (int32_t)eapig_first_node(H, (size_t)l), mlp_node = (int32_t)eapig_mlp_node(H, (size_t)l);
        r.layer_gather = scores ? gather_layer(&r, li) : NULL;
        float *G_m = mlp_dest_buffer(&r);
        /* r.s.g is the gradient after the layer; the MLP's output meets it there. */
        accumulate_nodes(&r, r.s.g, mlp_node, 1);
        output_node_grads(&r, r.s.g, mlp_node, 1);
        mlp_backward(&r, l, st, r.s.g, G_m);
        if (gw) mlp_weight_grads(&r, l, st, r.s.g);
        /* The heads' output gradient: after the MLP's reader (sequential blocks) or beside it
         * (parallel); a copy, since the residual gradient r.s.g is rebuilt while the heads run. */
        memcpy(r.s.g_mid, r.s.g, nd * sizeof(float));
        if (!c->parallel_attn_mlp) add_into(r.s.g_mid, G_m, nd);
        mlp_dest_done(&r, li, G_m);
        const float *g_heads = r.s.g_mid;
        if (c->block_norms != EAPIG_BLOCK_PRE_NORM) {
            /* the heads' outputs (and b_O) are summed, then normalised: their gradient is the
             * post-norm's input gradient. Destination gradients are unaffected. */
            norm_backward(r.s.g_attn, g_heads, st->attn_post_hat, st->attn_post_rstd, m->layers[l].attn_post_w, N,
                          D, 1);
            g_heads = r.s.g_attn;
        }
        accumulate_nodes(&r, g_heads, first_head, H);
        output_node_grads(&r, g_heads, first_head, H);
        /* The gradient before the layer: everything after it (with the MLP's reader, in g_mid for
         * sequential blocks), plus every head destination's gradient, added as each is found. */
        if (c->parallel_attn_mlp)
            add_into(r.s.g, G_m, nd);
        else
            memcpy(r.s.g, r.s.g_mid, nd * sizeof(float));
        attention_backward_layer(&r, l, st, g_heads);
        if (gw) attention_weight_grads(&r, l, st, g_heads);
    }
    if (scores) flush_scores(&r);
    accumulate_nodes(&r, r.s.g, 0, 1);
    output_node_grads(&r, r.s.g, 0, 1);
    /* r.s.g is now the gradient of the embedded input: token rows and learned positions. */
    if (gw) embedding_backward(ws->override_group == 0 ? NULL : gw->wte, gw->wpe, r.s.g, ws->tokens, N, r.P, D);
    return EAPIG_OK;
}
