/* model_params.c: the one list of a model's weight tensors (llm.c's param_sizes[] and its
 * pointer array). The weight arena (core/model.c), training's per-tensor loops (core/train.c)
 * and stored matrices (core/weights.c) all walk this table, so a new tensor is one row here.
 *
 * D = d_model, F = d_mlp, V = vocab, C = context length, QD = H*Dh, KVD = KV*Dh.
 */
#include <stddef.h>

#include "internal.h"

#define G(field) 0, offsetof(eapig_weights, field)
#define L(field) 1, offsetof(eapig_layer_weights, field)

/* Arena order: the globals, then each layer's tensors in this order. */
const eapig_tensor_desc eapig_tensors[] = {
    {"wte", G(wte), EAPIG_DIM_V, EAPIG_DIM_D, EAPIG_TENSOR_WTE, EAPIG_MAT_WTE, EAPIG_IF_ALWAYS},
    {"wpe", G(wpe), EAPIG_DIM_CTX, EAPIG_DIM_D, EAPIG_TENSOR_WPE, -1, EAPIG_IF_LEARNED_POS},
    {"lnf_w", G(lnf_w), EAPIG_DIM_D, EAPIG_DIM_1, EAPIG_TENSOR_GAIN, -1, EAPIG_IF_ALWAYS},
    {"lnf_b", G(lnf_b), EAPIG_DIM_D, EAPIG_DIM_1, EAPIG_TENSOR_BIAS, -1, EAPIG_IF_ALWAYS},
    {"w_unembed", G(w_unembed), EAPIG_DIM_V, EAPIG_DIM_D, EAPIG_TENSOR_UNEMBED, EAPIG_MAT_UNEMBED, EAPIG_IF_ALWAYS},
    {"ln1_w", L(ln1_w), EAPIG_DIM_D, EAPIG_DIM_1, EAPIG_TENSOR_GAIN, -1, EAPIG_IF_ALWAYS},
    {"ln1_b", L(ln1_b), EAPIG_DIM_D, EAPIG_DIM_1, EAPIG_TENSOR_BIAS, -1, EAPIG_IF_ALWAYS},
    {"wq", L(wq), EAPIG_DIM_QD, EAPIG_DIM_D, EAPIG_TENSOR_MATRIX, EAPIG_MAT_WQ, EAPIG_IF_ALWAYS},
    {"bq", L(bq), EAPIG_DIM_QD, EAPIG_DIM_1, EAPIG_TENSOR_BIAS, -1, EAPIG_IF_ALWAYS},
    {"wk", L(wk), EAPIG_DIM_KVD, EAPIG_DIM_D, EAPIG_TENSOR_MATRIX, EAPIG_MAT_WK, EAPIG_IF_ALWAYS},
    {"bk", L(bk), EAPIG_DIM_KVD, EAPIG_DIM_1, EAPIG_TENSOR_BIAS, -1, EAPIG_IF_ALWAYS},
    {"wv", L(wv), EAPIG_DIM_KVD, EAPIG_DIM_D, EAPIG_TENSOR_MATRIX, EAPIG_MAT_WV, EAPIG_IF_ALWAYS},
    {"bv", L(bv), EAPIG_DIM_KVD, EAPIG_DIM_1, EAPIG_TENSOR_BIAS, -1, EAPIG_IF_ALWAYS},
    {"wo", L(wo), EAPIG_DIM_D, EAPIG_DIM_QD, EAPIG_TENSOR_WRITER, EAPIG_MAT_WO, EAPIG_IF_ALWAYS},
    {"bo", L(bo), EAPIG_DIM_D, EAPIG_DIM_1, EAPIG_TENSOR_BIAS, -1, EAPIG_IF_ALWAYS},
    {"ln2_w", L(ln2_w), EAPIG_DIM_D, EAPIG_DIM_1, EAPIG_TENSOR_GAIN, -1, EAPIG_IF_ALWAYS},
    {"ln2_b", L(ln2_b), EAPIG_DIM_D, EAPIG_DIM_1, EAPIG_TENSOR_BIAS, -1, EAPIG_IF_ALWAYS},
    {"w_in", L(w_in), EAPIG_DIM_F, EAPIG_DIM_D, EAPIG_TENSOR_MATRIX, EAPIG_MAT_W_IN, EAPIG_IF_ALWAYS},
    {"b_in", L(b_in), EAPIG_DIM_F, EAPIG_DIM_1, EAPIG_TENSOR_BIAS, -1, EAPIG_IF_ALWAYS},
    {"w_gate", L(w_gate), EAPIG_DIM_F, EAPIG_DIM_D, EAPIG_TENSOR_MATRIX, EAPIG_MAT_W_GATE, EAPIG_IF_GATED},
    {"w_out", L(w_out), EAPIG_DIM_D, EAPIG_DIM_F, EAPIG_TENSOR_WRITER, EAPIG_MAT_W_OUT, EAPIG_IF_ALWAYS},
    {"b_out", L(b_out), EAPIG_DIM_D, EAPIG_DIM_1, EAPIG_TENSOR_BIAS, -1, EAPIG_IF_ALWAYS},
    {"attn_post_w", L(attn_post_w), EAPIG_DIM_D, EAPIG_DIM_1, EAPIG_TENSOR_GAIN, -1, EAPIG_IF_POST_NORM},
    {"mlp_post_w", L(mlp_post_w), EAPIG_DIM_D, EAPIG_DIM_1, EAPIG_TENSOR_GAIN, -1, EAPIG_IF_POST_NORM},
    {"q_norm_w", L(q_norm_w), EAPIG_DIM_QD, EAPIG_DIM_1, EAPIG_TENSOR_GAIN, -1, EAPIG_IF_QK_NORM},
    {"k_norm_w", L(k_norm_w), EAPIG_DIM_KVD, EAPIG_DIM_1, EAPIG_TENSOR_GAIN, -1, EAPIG_IF_QK_NORM},
};
const size_t eapig_n_tensors = sizeof eapig_tensors / sizeof eapig_tensors[0];

#undef G
#undef L

static size_t dim(const eapig_config *c, int d) {
    switch (d) {
    case EAPIG_DIM_D: return (size_t)c->d_model;
    case EAPIG_DIM_F: return (size_t)c->d_mlp;
    case EAPIG_DIM_V: return (size_t)c->vocab;
    case EAPIG_DIM_CTX: return (size_t)c->n_ctx;
    case EAPIG_DIM_QD: return (size_t)c->n_heads * (size_t)c->d_head;
    case EAPIG_DIM_KVD: return (size_t)c->n_kv_heads * (size_t)c->d_head;
    default: return 1;
    }
}

int eapig_tensor_present(const eapig_config *c, const eapig_tensor_desc *t) {
    switch (t->present) {
    case EAPIG_IF_LEARNED_POS: return c->pos == EAPIG_POS_LEARNED;
    case EAPIG_IF_GATED: return eapig_act_gated(c->act);
    case EAPIG_IF_POST_NORM: return c->block_norms != EAPIG_BLOCK_PRE_NORM;
    case EAPIG_IF_QK_NORM: return c->qk_norm != 0;
    default: return 1;
    }
}

void eapig_tensor_shape(const eapig_config *c, const eapig_tensor_desc *t, size_t *rows, size_t *cols) {
    *rows = dim(c, t->rows);
    *cols = dim(c, t->cols);
}

float **eapig_tensor_slot(eapig_weights *w, eapig_layer_weights *lw, const eapig_tensor_desc *t) {
    return (float **)(t->per_layer ? (char *)lw + t->offset : (char *)w + t->offset);
}

const eapig_tensor_desc *eapig_matrix_desc(int which) {
    for (size_t i = 0; i < eapig_n_tensors; i++)
        if (eapig_tensors[i].matrix == which) return &eapig_tensors[i];
    return NULL;
}
