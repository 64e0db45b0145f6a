/* model.c: model configuration checks, the weight arena, TransformerLens-style weight
 * processing on load, and the residual graph's sizes and edge mask.
 *
 * L = layers, H = heads, KV = key/value heads, D = d_model, Dh = d_head, F = d_mlp, V = vocab,
 * C = context length, NF = 1 + L*(H+1) source nodes, NB = L*(3H+1) + 1 destinations.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

static int check_config(const eapig_config *c) {
    if (c->n_layers < 1 || c->n_heads < 1 || c->n_kv_heads < 1 || c->d_model < 1 || c->d_head < 1 ||
        c->d_mlp < 1 || c->vocab < 1 || c->n_ctx < 1)
        return eapig_set_error(EAPIG_ERR_ARG,
                               "eapig_model_new: every size must be positive (layers %d, heads %d, kv_heads %d, "
                               "d_model %d, d_head %d, d_mlp %d, vocab %d, n_ctx %d)",
                               c->n_layers, c->n_heads, c->n_kv_heads, c->d_model, c->d_head, c->d_mlp,
                               c->vocab, c->n_ctx);
    if (c->n_heads % c->n_kv_heads != 0)
        return eapig_set_error(EAPIG_ERR_ARG, "eapig_model_new: n_heads %d is not a multiple of n_kv_heads %d",
                               c->n_heads, c->n_kv_heads);
    if (c->norm != EAPIG_NORM_LAYERNORM && c->norm != EAPIG_NORM_RMSNORM)
        return eapig_set_error(EAPIG_ERR_ARG, "eapig_model_new: unknown norm %d", c->norm);
    if (c->act < EAPIG_ACT_GELU_TANH || c->act > EAPIG_ACT_GELU_TANH_GATED)
        return eapig_set_error(EAPIG_ERR_ARG, "eapig_model_new: unknown activation %d", c->act);
    if (c->pos != EAPIG_POS_LEARNED && c->pos != EAPIG_POS_ROPE)
        return eapig_set_error(EAPIG_ERR_ARG, "eapig_model_new: unknown positional encoding %d", c->pos);
    if (c->pos == EAPIG_POS_ROPE && (c->rotary_dim < 2 || c->rotary_dim > c->d_head || c->rotary_dim % 2))
        return eapig_set_error(EAPIG_ERR_ARG, "eapig_model_new: rotary_dim %d must be even and in [2, d_head %d]",
                               c->rotary_dim, c->d_head);
    if (!(c->norm_eps > 0.0f) || (c->pos == EAPIG_POS_ROPE && !(c->rope_theta > 0.0f)))
        return eapig_set_error(EAPIG_ERR_ARG, "eapig_model_new: norm_eps and rope_theta must be positive");
    if (c->embed_scale < 0.0f || c->embed_scale != c->embed_scale)
        return eapig_set_error(EAPIG_ERR_ARG, "eapig_model_new: embed_scale %g must be >= 0 (0: none)",
                               (double)c->embed_scale);
    if (c->block_norms < EAPIG_BLOCK_PRE_NORM || c->block_norms > EAPIG_BLOCK_POST_NORM ||
        (c->block_norms != EAPIG_BLOCK_PRE_NORM && c->norm != EAPIG_NORM_RMSNORM))
        return eapig_set_error(EAPIG_ERR_ARG, "eapig_model_new: block_norms %d needs RMSNorm (0, 1 or 2)",
                               c->block_norms);
    if ((c->qk_norm != 0 && c->qk_norm != 1) || (c->qk_norm && c->norm != EAPIG_NORM_RMSNORM))
        return eapig_set_error(EAPIG_ERR_ARG, "eapig_model_new: qk_norm %d must be 0 or 1 (RMSNorm models)",
                               c->qk_norm);
    if (!(c->attn_scale >= 0.0f) || !(c->attn_softcap >= 0.0f) || !(c->final_softcap >= 0.0f) ||
        c->sliding_window < 0 || c->sliding_period < 0)
        return eapig_set_error(EAPIG_ERR_ARG,
                               "eapig_model_new: attn_scale, attn_softcap, final_softcap, sliding_window and "
                               "sliding_period must be >= 0 (0: off)");
    if (c->rope_type != EAPIG_ROPE_DEFAULT && c->rope_type != EAPIG_ROPE_LLAMA3)
        return eapig_set_error(EAPIG_ERR_ARG, "eapig_model_new: unknown rope_type %d", c->rope_type);
    if (c->rope_type == EAPIG_ROPE_LLAMA3 &&
        (!(c->rope_factor > 0.0f) || !(c->rope_low_freq_factor > 0.0f) ||
         !(c->rope_high_freq_factor > c->rope_low_freq_factor) || c->rope_original_ctx < 1))
        return eapig_set_error(EAPIG_ERR_ARG,
                               "eapig_model_new: llama3 rope scaling needs factor > 0, 0 < low_freq_factor < "
                               "high_freq_factor and original_max_position_embeddings > 0 (got %g, %g, %g, %d)",
                               (double)c->rope_factor, (double)c->rope_low_freq_factor,
                               (double)c->rope_high_freq_factor, c->rope_original_ctx);
    /* Keep every index product far inside size_t and int32 GEMM dimensions. */
    if ((int64_t)c->n_heads * c->d_head > (1 << 20) || c->d_model > (1 << 20) || c->d_mlp > (1 << 22) ||
        c->vocab > (1 << 24) || c->n_layers > 4096 || c->n_heads > 4096 || c->n_ctx > (1 << 24))
        return eapig_set_error(EAPIG_ERR_ARG, "eapig_model_new: model dimensions are implausibly large");
    return EAPIG_OK;
}

/* Hands out consecutive slices of the arena; a NULL arena only counts. */
typedef struct {
    float *base;
    size_t used;
} carver;

static float *carve(carver *cv, size_t n) {
    float *p = cv->base ? cv->base + cv->used : NULL;
    cv->used += n;
    return p;
}

/* A big matrix: carved in f32 mode, left NULL (read from its file) in stored mode. */
static float *carve_matrix(carver *cv, size_t n, int stored) { return stored ? NULL : carve(cv, n); }

/* Points every tensor of the table (core/model_params.c) at its slice of the arena, in table
 * order: the globals, then each layer's; absent tensors are NULL. */
static void point_weights(eapig_model *m, carver *cv) {
    const eapig_config *c = &m->cfg;
    for (int l = -1; l < c->n_layers; l++)
        for (size_t i = 0; i < eapig_n_tensors; i++) {
            const eapig_tensor_desc *t = &eapig_tensors[i];
            if (t->per_layer != (l >= 0)) continue;
            float **slot = eapig_tensor_slot(&m->w, l >= 0 ? &m->layers[l] : NULL, t);
            size_t rows, cols;
            eapig_tensor_shape(c, t, &rows, &cols);
            if (!eapig_tensor_present(c, t))
                *slot = NULL;
            else if (t->kind == EAPIG_TENSOR_UNEMBED && c->shared_unembed && !m->stored)
                *slot = m->w.wte; /* carved just before: the table lists wte first */
            else
                *slot = t->matrix >= 0 ? carve_matrix(cv, rows * cols, m->stored) : carve(cv, rows * cols);
        }
}

/* The rotary inverse frequencies, in float32 as Hugging Face computes them (the default ones
 * round a double power once, which agrees with torch's float32 power to an ulp). */
static void rope_frequencies(const eapig_config *c, float *inv_freq) {
    size_t half = (size_t)c->rotary_dim / 2;
    for (size_t i = 0; i < half; i++)
        inv_freq[i] = (float)(1.0 / pow((double)c->rope_theta, (double)(2 * i) / (double)c->rotary_dim));
    if (c->rope_type != EAPIG_ROPE_LLAMA3) return;
    /* modeling_rope_utils._compute_llama3_parameters: wavelengths longer than the original
     * context / low_freq_factor are slowed by factor, shorter than context / high_freq_factor kept,
     * and those between blended linearly in context / wavelength. */
    float ctx = (float)c->rope_original_ctx, factor = c->rope_factor;
    float low = c->rope_low_freq_factor, high = c->rope_high_freq_factor;
    float low_wavelen = ctx / low, high_wavelen = ctx / high;
    for (size_t i = 0; i < half; i++) {
        float f = inv_freq[i], wavelen = 2.0f * (float)M_PI / f;
        if (wavelen > low_wavelen) {
            inv_freq[i] = f / factor;
        } else if (!(wavelen < high_wavelen)) {
            float s = (ctx / wavelen - low) / (high - low);
            inv_freq[i] = (1.0f - s) * f / factor + s * f;
        }
    }
}

/* llama.cpp's rope_freqs.weight: frequency i divided by factors[i], over the config's own. */
int eapig_model_set_rope_factors(eapig_model *m, const float *factors, int32_t n) {
    if (!m || !factors)
        return eapig_set_error(EAPIG_ERR_ARG, "eapig_model_set_rope_factors: model or factors is NULL");
    if (m->cfg.pos != EAPIG_POS_ROPE || !m->rope_freq)
        return eapig_set_error(EAPIG_ERR_ARG, "eapig_model_set_rope_factors: the model has no RoPE");
    int32_t half = m->cfg.rotary_dim / 2;
    if (n != half)
        return eapig_set_error(EAPIG_ERR_ARG,
                               "eapig_model_set_rope_factors: %d factors, the model has %d rotary frequencies "
                               "(rotary_dim %d / 2)",
                               n, half, m->cfg.rotary_dim);
    for (int32_t i = 0; i < n; i++)
        if (!isfinite(factors[i]) || !(factors[i] > 0.0f))
            return eapig_set_error(EAPIG_ERR_ARG,
                                   "eapig_model_set_rope_factors: factor %d is %g; factors must be finite and > 0",
                                   i, (double)factors[i]);
    rope_frequencies(&m->cfg, m->rope_freq);
    for (int32_t i = 0; i < n; i++) m->rope_freq[i] /= factors[i];
    return EAPIG_OK;
}

/* Floats of the arena of a model of cfg, f32 or stored. */
static size_t arena_floats(const eapig_config *cfg, int stored) {
    eapig_model tmp = {.cfg = *cfg, .stored = stored};
    eapig_layer_weights one;
    carver count = {NULL, 0};
    /* point_weights walks every layer; they are all the same size, so count one and scale */
    tmp.cfg.n_layers = 1;
    tmp.layers = &one;
    point_weights(&tmp, &count);
    size_t with_one = count.used;
    tmp.cfg.n_layers = 0;
    count.used = 0;
    point_weights(&tmp, &count);
    return count.used + (with_one - count.used) * (size_t)cfg->n_layers;
}

static eapig_model *model_new(const eapig_config *cfg, int stored, const char *fn) {
    if (!cfg) {
        eapig_set_error(EAPIG_ERR_ARG, "%s: cfg is NULL", fn);
        return NULL;
    }
    if (check_config(cfg) != EAPIG_OK) return NULL;
    eapig_model *m = calloc(1, sizeof *m);
    if (!m) goto nomem;
    m->cfg = *cfg;
    m->stored = stored;
    m->layers = calloc((size_t)cfg->n_layers, sizeof *m->layers);
    if (!m->layers) goto nomem;
    if (stored) {
        m->mats = calloc(2 + (size_t)EAPIG_LAYER_MATS * (size_t)cfg->n_layers, sizeof *m->mats);
        if (!m->mats) goto nomem;
    }
    carver count = {NULL, 0};
    point_weights(m, &count);
    m->arena_floats = count.used;
    m->arena = eapig_big_floats(count.used);
    if (!m->arena) goto nomem;
    carver cv = {m->arena, 0};
    point_weights(m, &cv);
    m->w.layers = m->layers;
    if (cfg->pos == EAPIG_POS_ROPE) {
        m->rope_freq = malloc((size_t)cfg->rotary_dim / 2 * sizeof(float));
        if (!m->rope_freq) goto nomem;
        rope_frequencies(cfg, m->rope_freq);
    }
    return m;
nomem:
    eapig_model_free(m);
    eapig_set_error(EAPIG_ERR_NOMEM, "%s: out of memory for the weights", fn);
    return NULL;
}

eapig_model *eapig_model_new(const eapig_config *cfg) { return model_new(cfg, 0, "eapig_model_new"); }
eapig_model *eapig_model_new_stored(const eapig_config *cfg) {
    return model_new(cfg, 1, "eapig_model_new_stored");
}

int64_t eapig_weights_f32_bytes(const eapig_config *cfg) {
    if (!cfg || check_config(cfg) != EAPIG_OK) return -1;
    return (int64_t)(arena_floats(cfg, 0) * sizeof(float));
}

int64_t eapig_weights_stored_bytes(const eapig_config *cfg) {
    if (!cfg || check_config(cfg) != EAPIG_OK) return -1;
    return (int64_t)(arena_floats(cfg, 1) * sizeof(float));
}

void eapig_model_free(eapig_model *m) {
    if (!m) return;
    eapig_model_free_stored(m);
    eapig_big_floats_free(m->arena);
    free(m->layers);
    free(m->rope_freq);
    free(m);
}

const eapig_config *eapig_model_config(const eapig_model *m) {
    if (!m) {
        eapig_set_error(EAPIG_ERR_ARG, "eapig_model_config: model is NULL");
        return NULL;
    }
    return &m->cfg;
}

eapig_weights *eapig_model_weights(eapig_model *m) {
    if (!m) {
        eapig_set_error(EAPIG_ERR_ARG, "eapig_model_weights: model is NULL");
        return NULL;
    }
    return &m->w;
}

/* Subtracts, from each output (a row of a (rows, D) matrix laid out as out-major columns),
 * its mean over d_model. w is (D, cols) row-major: centre every column. Columns go in blocks
 * whose means are summed row by row (each column still in row order, in double), so the pass
 * reads memory in order instead of striding down every column. */
void eapig_centre_columns(float *w, size_t D, size_t cols) {
    enum { BLOCK = 256 };
    double mean[BLOCK];
    for (size_t j0 = 0; j0 < cols; j0 += BLOCK) {
        size_t n = cols - j0 < BLOCK ? cols - j0 : BLOCK;
        for (size_t j = 0; j < n; j++) mean[j] = 0;
        for (size_t i = 0; i < D; i++)
            for (size_t j = 0; j < n; j++) mean[j] += w[i * cols + j0 + j];
        for (size_t j = 0; j < n; j++) mean[j] /= (double)D;
        for (size_t i = 0; i < D; i++)
            for (size_t j = 0; j < n; j++) w[i * cols + j0 + j] -= (float)mean[j];
    }
}

/* w is (rows, D): centre every row. */
static void centre_rows(float *w, size_t rows, size_t D) {
    for (size_t r = 0; r < rows; r++) {
        float *row = w + r * D;
        double mean = 0;
        for (size_t i = 0; i < D; i++) mean += row[i];
        mean /= (double)D;
        for (size_t i = 0; i < D; i++) row[i] -= (float)mean;
    }
}

int eapig_model_finalize(eapig_model *m) {
    if (!m) return eapig_set_error(EAPIG_ERR_ARG, "eapig_model_finalize: model is NULL");
    if (m->finalized) return eapig_set_error(EAPIG_ERR_STATE, "eapig_model_finalize: called twice");
    const eapig_config *c = &m->cfg;
    size_t D = c->d_model, qd = (size_t)c->n_heads * c->d_head;
    int group = c->n_heads / c->n_kv_heads;
    size_t kvd = (size_t)c->n_kv_heads * c->d_head;
    int status = eapig_model_check_bound(m, "eapig_model_finalize");
    if (status != EAPIG_OK) return status;
    float *wo_f32 = NULL; /* stored mode: one layer's W_O, converted to fold its value bias */
    for (int l = 0; l < c->n_layers; l++) {
        eapig_layer_weights *lw = &m->layers[l];
        int any_bv = 0;
        for (size_t i = 0; i < kvd; i++) any_bv |= lw->bv[i] != 0.0f;
        /* Fold value biases: softmax rows sum to one, so b_V reaches the output as W_O b_V.
         * (Skipped when b_V is zero, so stored weights are not read at load.) */
        const float *wo_all = lw->wo;
        if (any_bv && m->stored) {
            if (!wo_f32 && !(wo_f32 = malloc(D * qd * sizeof(float))))
                return eapig_set_error(EAPIG_ERR_NOMEM, "eapig_model_finalize: out of memory");
            status = eapig_stored_convert(m, l, EAPIG_MAT_WO, wo_f32);
            if (status != EAPIG_OK) {
                free(wo_f32);
                return status;
            }
            wo_all = wo_f32;
        }
        for (size_t i = 0; any_bv && i < D; i++) {
            double acc = 0;
            for (int h = 0; h < c->n_heads; h++) {
                const float *bv = lw->bv + (size_t)(h / group) * c->d_head;
                const float *wo = wo_all + i * qd + (size_t)h * c->d_head;
                for (int e = 0; e < c->d_head; e++) acc += (double)wo[e] * bv[e];
            }
            lw->bo[i] += (float)acc;
        }
        memset(lw->bv, 0, sizeof(float) * kvd);
        if (c->norm == EAPIG_NORM_LAYERNORM) {
            /* Every reader normalises away the mean, so centring writes changes no output.
             * Stored matrices are centred each time they are converted. */
            if (!m->stored) {
                eapig_centre_columns(lw->wo, D, qd);
                eapig_centre_columns(lw->w_out, D, (size_t)c->d_mlp);
            }
            eapig_centre_columns(lw->bo, D, 1);
            eapig_centre_columns(lw->b_out, D, 1);
        }
    }
    free(wo_f32);
    if (c->norm == EAPIG_NORM_LAYERNORM) {
        if (m->stored) eapig_stored_centre(m);
        /* wte is centred row by row as tokens read it: a tied unembedding shares the table as stored */
        m->centre_embed = 1;
        if (m->w.wpe) centre_rows(m->w.wpe, (size_t)c->n_ctx, D);
    }
    m->finalized = 1;
    return EAPIG_OK;
}

int eapig_layer_window(const eapig_config *c, int l) {
    if (c->sliding_window <= 0) return 0;
    if (c->sliding_period > 0 && (l + 1) % c->sliding_period == 0) return 0;
    return c->sliding_window;
}

int32_t eapig_model_n_forward(const eapig_model *m) {
    if (!m) {
        eapig_set_error(EAPIG_ERR_ARG, "eapig_model_n_forward: model is NULL");
        return -1;
    }
    return (int32_t)eapig_n_sources((size_t)m->cfg.n_heads, (size_t)m->cfg.n_layers);
}

int32_t eapig_model_n_backward(const eapig_model *m) {
    if (!m) {
        eapig_set_error(EAPIG_ERR_ARG, "eapig_model_n_backward: model is NULL");
        return -1;
    }
    return (int32_t)eapig_n_dests((size_t)m->cfg.n_heads, (size_t)m->cfg.n_layers);
}

int eapig_model_edge_mask(const eapig_model *m, uint8_t *mask) {
    if (!m || !mask) return eapig_set_error(EAPIG_ERR_ARG, "eapig_model_edge_mask: NULL argument");
    const eapig_config *c = &m->cfg;
    int32_t nf = eapig_model_n_forward(m), nb = eapig_model_n_backward(m);
    size_t H = (size_t)c->n_heads;
    for (int32_t u = 0; u < nf; u++) {
        int u_head = eapig_node_is_head(H, (size_t)u), lu = eapig_node_layer(H, (size_t)u);
        for (int32_t v = 0; v < nb; v++) {
            int lv = eapig_dest_layer(H, (size_t)v), v_mlp = lv < c->n_layers && eapig_dest_is_mlp(H, (size_t)v);
            int real = lu < lv || (lu == lv && u_head && v_mlp && !c->parallel_attn_mlp);
            mask[(size_t)u * nb + v] = (uint8_t)real;
        }
    }
    return EAPIG_OK;
}

int64_t eapig_model_n_edges(const eapig_model *m) {
    if (!m) {
        eapig_set_error(EAPIG_ERR_ARG, "eapig_model_n_edges: model is NULL");
        return -1;
    }
    const eapig_config *c = &m->cfg;
    int64_t H = c->n_heads, L = c->n_layers, total = 0;
    for (int64_t l = 0; l < L; l++) {
        int64_t upstream = (int64_t)eapig_first_node((size_t)H, (size_t)l);
        total += upstream * 3 * H; /* q, k, v of layer l */
        total += (int64_t)eapig_mlp_upstream((size_t)H, (size_t)l, c->parallel_attn_mlp); /* MLP of layer l */
    }
    total += (int64_t)eapig_n_sources((size_t)H, (size_t)L); /* logits */
    return total;
}
