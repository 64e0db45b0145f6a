/* train.c: what training adds to the engine: the weight-gradient kernels that eapig_backward
 * calls when asked for weight gradients, GPT-2's random initialisation, the softmax
 * cross-entropy loss with its gradient, the global gradient norm and the AdamW step.
 *
 * A gradient or optimiser-state buffer is a model of the same config: its weight arena has the
 * same layout, so one tensor is at the same offset in the weights, the gradients and both
 * moments, and every per-tensor loop below walks the four arenas together.
 *
 * N = token rows, M = rows of a product, K = its inner size, D = d_model, F = d_mlp, P = positions,
 * V = vocab, L = layers, R = rows of logits.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "run.h"

/* ---- weight-gradient kernels (declared in run.h) -------------------------------------------- */

void linear_backward_weight(float *dw, float *db, const float *dout, const float *inp, size_t M, size_t N,
                            size_t K, size_t ld_dout, size_t ld_inp) {
    if (dw && M > 0 && K > 0)
        eapig_gemm(1, 0, N, K, M, 1.0f, dout, ld_dout, inp, ld_inp, 1.0f, dw, K);
    if (db)
        for (size_t m = 0; m < M; m++) {
            const float *row = dout + m * ld_dout;
            for (size_t j = 0; j < N; j++) db[j] += row[j];
        }
}

void norm_backward_weight(float *dw, float *db, const float *dout, const float *xhat, size_t N, size_t D) {
    for (size_t n = 0; n < N; n++) {
        const float *dy = dout + n * D, *xh = xhat + n * D;
        for (size_t i = 0; i < D; i++) dw[i] += dy[i] * xh[i];
        if (db)
            for (size_t i = 0; i < D; i++) db[i] += dy[i];
    }
}

void norm_output(float *y, const float *xhat, const float *w, const float *b, size_t N, size_t D) {
    for (size_t n = 0; n < N; n++) {
        const float *xh = xhat + n * D;
        float *o = y + n * D;
        for (size_t i = 0; i < D; i++) o[i] = xh[i] * w[i] + (b ? b[i] : 0.0f);
    }
}

void embedding_backward(float *dwte, float *dwpe, const float *dout, const int32_t *tokens, size_t N, size_t P,
                        size_t D) {
    for (size_t n = 0; n < N; n++) {
        const float *g = dout + n * D;
        if (dwte) {
            float *row = dwte + (size_t)tokens[n] * D;
            for (size_t i = 0; i < D; i++) row[i] += g[i];
        }
        if (dwpe) {
            float *row = dwpe + (n % P) * D;
            for (size_t i = 0; i < D; i++) row[i] += g[i];
        }
    }
}

/* ---- the tensors of a model (the table in core/model_params.c) ------------------------------ */

typedef struct {
    size_t off, n; /* floats from the arena's start, count */
    int kind;      /* EAPIG_TENSOR_* */
} tensor_ref;

/* Fills out (when not NULL) with every tensor of m in arena order; returns the count. */
static size_t list_tensors(const eapig_model *m, tensor_ref *out) {
    const eapig_config *c = &m->cfg;
    eapig_weights *w = (eapig_weights *)&m->w; /* only read through the slots */
    size_t k = 0;
    for (int l = -1; l < c->n_layers; l++)
        for (size_t i = 0; i < eapig_n_tensors; i++) {
            const eapig_tensor_desc *t = &eapig_tensors[i];
            if (t->per_layer != (l >= 0)) continue;
            const float *p = *eapig_tensor_slot(w, l >= 0 ? &m->layers[l] : NULL, t);
            if (!p) continue;
            size_t rows, cols;
            eapig_tensor_shape(c, t, &rows, &cols);
            if (out) out[k] = (tensor_ref){(size_t)(p - m->arena), rows * cols, t->kind};
            k++;
        }
    return k;
}

/* The tensor list of m, malloc'ed; NULL (with the error set) when out of memory. */
static tensor_ref *tensors_of(const eapig_model *m, size_t *count, const char *fn) {
    *count = list_tensors(m, NULL);
    tensor_ref *t = malloc(*count * sizeof *t);
    if (!t) {
        eapig_set_error(EAPIG_ERR_NOMEM, "%s: out of memory", fn);
        return NULL;
    }
    list_tensors(m, t);
    return t;
}

static int same_config(const eapig_model *a, const eapig_model *b) {
    return memcmp(&a->cfg, &b->cfg, sizeof a->cfg) == 0;
}

/* ---- public API ------------------------------------------------------------------------- */

float *eapig_model_arena(eapig_model *m, int64_t *n) {
    if (!m) {
        eapig_set_error(EAPIG_ERR_ARG, "eapig_model_arena: model is NULL");
        return NULL;
    }
    if (m->stored) {
        eapig_set_error(EAPIG_ERR_ARG, "eapig_model_arena: the model keeps its weights as stored; training and "
                                       "weight copies need f32 weights (load with weights = \"f32\")");
        return NULL;
    }
    if (n) *n = (int64_t)m->arena_floats;
    return m->arena;
}

int eapig_model_copy_weights(eapig_model *dst, const eapig_model *src) {
    if (!dst || !src) return eapig_set_error(EAPIG_ERR_ARG, "eapig_model_copy_weights: NULL model");
    if (dst->stored || src->stored)
        return eapig_set_error(EAPIG_ERR_ARG, "eapig_model_copy_weights: needs f32 weights (load with weights = \"f32\")");
    if (!same_config(dst, src))
        return eapig_set_error(EAPIG_ERR_ARG, "eapig_model_copy_weights: the two models have different configs");
    if (dst != src) memcpy(dst->arena, src->arena, src->arena_floats * sizeof(float));
    dst->finalized = src->finalized;
    return EAPIG_OK;
}

/* splitmix64 (Steele et al.): a fixed, portable stream from one 64-bit seed. */
static uint64_t splitmix64(uint64_t *state) {
    uint64_t z = (*state += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

/* Uniform in (0, 1): 53 random bits, offset by half a step so log() never sees 0. */
static double uniform01(uint64_t *state) {
    return ((double)(splitmix64(state) >> 11) + 0.5) * (1.0 / 9007199254740992.0);
}

int eapig_model_init(eapig_model *m, uint64_t seed, float std, int32_t tied) {
    if (!m) return eapig_set_error(EAPIG_ERR_ARG, "eapig_model_init: model is NULL");
    if (m->stored) return eapig_set_error(EAPIG_ERR_ARG, "eapig_model_init: needs a model with f32 weights");
    if (!(std >= 0.0f) || isinf(std))
        return eapig_set_error(EAPIG_ERR_ARG, "eapig_model_init: std %g must be finite and >= 0", (double)std);
    size_t count;
    tensor_ref *t = tensors_of(m, &count, "eapig_model_init");
    if (!t) return EAPIG_ERR_NOMEM;
    uint64_t state = seed;
    double writer_std = std / sqrt(2.0 * m->cfg.n_layers);
    for (size_t i = 0; i < count; i++) {
        float *p = m->arena + t[i].off;
        size_t n = t[i].n;
        if (t[i].kind == EAPIG_TENSOR_GAIN || t[i].kind == EAPIG_TENSOR_BIAS) {
            float v = t[i].kind == EAPIG_TENSOR_GAIN ? 1.0f : 0.0f;
            for (size_t e = 0; e < n; e++) p[e] = v;
            continue;
        }
        double s = t[i].kind == EAPIG_TENSOR_WRITER ? writer_std : std;
        /* Box-Muller, both outputs used; each tensor starts a fresh pair (an odd count drops one). */
        for (size_t e = 0; e < n; e += 2) {
            double r = sqrt(-2.0 * log(uniform01(&state))), a = 2.0 * M_PI * uniform01(&state);
            p[e] = (float)(s * r * cos(a));
            if (e + 1 < n) p[e + 1] = (float)(s * r * sin(a));
        }
    }
    if (tied && m->w.w_unembed != m->w.wte)
        memcpy(m->w.w_unembed, m->w.wte, (size_t)m->cfg.vocab * m->cfg.d_model * sizeof(float));
    free(t);
    m->finalized = 0;
    return EAPIG_OK;
}

int eapig_cross_entropy(float *losses, float *dlogits, const float *logits, const int32_t *targets, int64_t R,
                        int32_t V, float scale) {
    if (!logits || !targets || R < 0 || V < 1)
        return eapig_set_error(EAPIG_ERR_ARG, "eapig_cross_entropy: logits and targets are required (R %lld, V %d)",
                               (long long)R, V);
    for (int64_t r = 0; r < R; r++)
        if (targets[r] < -1 || targets[r] >= V)
            return eapig_set_error(EAPIG_ERR_ARG, "eapig_cross_entropy: target %d of row %lld is outside -1..%d",
                                   targets[r], (long long)r, V - 1);
    for (int64_t r = 0; r < R; r++) {
        const float *x = logits + (size_t)r * V;
        float *d = dlogits ? dlogits + (size_t)r * V : NULL;
        int32_t t = targets[r];
        if (t < 0) {
            if (losses) losses[r] = 0.0f;
            if (d) memset(d, 0, (size_t)V * sizeof(float));
            continue;
        }
        double mx = x[0], sum = 0.0;
        for (int32_t j = 1; j < V; j++) mx = x[j] > mx ? x[j] : mx;
        for (int32_t j = 0; j < V; j++) sum += exp((double)x[j] - mx);
        double logz = mx + log(sum);
        if (losses) losses[r] = (float)(logz - x[t]);
        /* In place is safe: element j is read before it is written. */
        if (d)
            for (int32_t j = 0; j < V; j++) d[j] = (float)(scale * (exp((double)x[j] - logz) - (j == t ? 1.0 : 0.0)));
    }
    return EAPIG_OK;
}

int eapig_grad_norm(const eapig_model *grads, int32_t tied, double *norm) {
    if (!grads || !norm) return eapig_set_error(EAPIG_ERR_ARG, "eapig_grad_norm: NULL argument");
    if (grads->stored) return eapig_set_error(EAPIG_ERR_ARG, "eapig_grad_norm: gradients must be an f32 model");
    const float *g = grads->arena;
    size_t n = grads->arena_floats;
    double acc = 0.0;
    for (size_t i = 0; i < n; i++) acc += (double)g[i] * g[i];
    if (tied) { /* replace |a|^2 + |b|^2 by |a + b|^2 for the tied pair */
        const float *a = grads->w.wte, *b = grads->w.w_unembed;
        size_t vd = (size_t)grads->cfg.vocab * grads->cfg.d_model;
        for (size_t i = 0; i < vd; i++) acc += 2.0 * (double)a[i] * b[i];
    }
    *norm = sqrt(acc > 0.0 ? acc : 0.0);
    return EAPIG_OK;
}

int eapig_adamw_step(eapig_model *m, const eapig_model *grads, eapig_model *m1, eapig_model *m2,
                     const eapig_adamw_opts *o) {
    if (!m || !grads || !m1 || !m2 || !o) return eapig_set_error(EAPIG_ERR_ARG, "eapig_adamw_step: NULL argument");
    if (m->stored || grads->stored || m1->stored || m2->stored)
        return eapig_set_error(EAPIG_ERR_ARG, "eapig_adamw_step: training needs f32 weights; this model keeps its "
                                              "weights as stored (load with weights = \"f32\")");
    if (!same_config(m, grads) || !same_config(m, m1) || !same_config(m, m2))
        return eapig_set_error(EAPIG_ERR_ARG, "eapig_adamw_step: grads, m1 and m2 must have the model's config");
    if (m == grads || m == m1 || m == m2 || grads == m1 || grads == m2 || m1 == m2)
        return eapig_set_error(EAPIG_ERR_ARG, "eapig_adamw_step: the four models must be distinct");
    if (o->step < 1 || !(o->lr >= 0.0f) || !(o->beta1 >= 0.0f && o->beta1 < 1.0f) ||
        !(o->beta2 >= 0.0f && o->beta2 < 1.0f) || !(o->eps > 0.0f) || !(o->weight_decay >= 0.0f) ||
        !isfinite(o->grad_scale))
        return eapig_set_error(EAPIG_ERR_ARG,
                               "eapig_adamw_step: bad hyperparameters (step %d, lr %g, betas %g %g, eps %g, wd %g, "
                               "grad_scale %g)",
                               o->step, (double)o->lr, (double)o->beta1, (double)o->beta2, (double)o->eps,
                               (double)o->weight_decay, (double)o->grad_scale);
    size_t count;
    tensor_ref *t = tensors_of(m, &count, "eapig_adamw_step");
    if (!t) return EAPIG_ERR_NOMEM;
    double bc1 = 1.0 - pow((double)o->beta1, o->step), bc2 = 1.0 - pow((double)o->beta2, o->step);
    float step_size = (float)(o->lr / bc1), inv_sqrt_bc2 = (float)(1.0 / sqrt(bc2));
    float b1 = o->beta1, b2 = o->beta2, eps = o->eps, gs = o->grad_scale;
    const float *tied_g = o->tied ? grads->w.w_unembed : NULL; /* added to wte's gradient */
    for (size_t i = 0; i < count; i++) {
        int kind = t[i].kind;
        if (o->tied && kind == EAPIG_TENSOR_UNEMBED) continue; /* updated through wte */
        size_t off = t[i].off, n = t[i].n;
        float *w = m->arena + off, *mo = m1->arena + off, *v = m2->arena + off;
        const float *g = grads->arena + off;
        const float *g2 = kind == EAPIG_TENSOR_WTE ? tied_g : NULL;
        int decay = kind != EAPIG_TENSOR_GAIN && kind != EAPIG_TENSOR_BIAS;
        float shrink = decay ? (float)(1.0 - (double)o->lr * o->weight_decay) : 1.0f;
        for (size_t e = 0; e < n; e++) {
            float ge = (g2 ? g[e] + g2[e] : g[e]) * gs;
            w[e] *= shrink;
            mo[e] = b1 * mo[e] + (1.0f - b1) * ge;
            v[e] = b2 * v[e] + (1.0f - b2) * ge * ge;
            w[e] -= step_size * mo[e] / (sqrtf(v[e]) * inv_sqrt_bc2 + eps);
        }
    }
    if (o->tied && m->w.w_unembed != m->w.wte)
        memcpy(m->w.w_unembed, m->w.wte, (size_t)m->cfg.vocab * m->cfg.d_model * sizeof(float));
    free(t);
    return EAPIG_OK;
}
