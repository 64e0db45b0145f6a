/* run.h: the workspace that carries one forward run's saved activations to its backward.
 *
 * B = batch rows, P = positions, N = B*P, D = d_model, H = heads, Dh = d_head, F = d_mlp,
 * L = layers, NF = source nodes, NB = destinations, J = 3H+1 destinations per layer.
 */
#ifndef EAPIG_RUN_H
#define EAPIG_RUN_H
#include "internal.h"

/* What the backward needs of one layer. */
typedef struct layer_state {
    float *attn_hat, *attn_rstd; /* (N,D), (N): shared normalised attention input */
    float *mlp_hat, *mlp_rstd;   /* (N,D), (N): shared normalised MLP input */
    float *own_hat, *own_rstd;   /* (J,N,D), (J,N): destinations with their own (patched) input */
    uint8_t *own_flags;          /* (J) 1 where destination j read its own input */
    float *q, *k, *v;            /* (N, H*Dh) after RoPE, one k and v per query head */
    float *att;                  /* (B, H, P, P) attention probabilities */
    float *mlp_pre, *mlp_up;     /* (N,F) pre-activation; up projection (gated only) */
    /* Post-norm blocks (SANDWICH, POST) and q/k norms only, else NULL. */
    float *attn_post_hat, *attn_post_rstd; /* (N,D), (N): norm of the summed attention output */
    float *mlp_post_hat, *mlp_post_rstd;   /* (N,D), (N): norm of the MLP output */
    float *q_hat, *q_rstd, *k_hat, *k_rstd; /* (N,H*Dh), (N): q and k norms over all heads */
    /* Kept only for weight gradients (keep_for_weights), else NULL. */
    float *z;                    /* (N, H*Dh) attention values before W_O */
    float *hidden;               /* (N,F) MLP activation before w_out */
} layer_state;

struct eapig_workspace {
    /* Forward arena: saved state plus scratch, regrown when a run needs more. */
    float *fwd;
    size_t fwd_cap;
    uint8_t *flags;  /* (L*J) own-input flags */
    size_t flags_cap;
    layer_state *layers; /* (L) when keeping for backward, else one shared slot */
    size_t layers_cap;
    /* Backward arena. */
    float *bwd;
    size_t bwd_cap;
    /* The run kept for backward. */
    int kept;
    const eapig_model *model;
    int32_t B, P;
    int32_t *lengths;   /* (B) copy */
    int32_t *logit_pos; /* (B) copy, or NULL when every position was unembedded */
    int override_group;
    int patched;        /* the run had any patched destination */
    float *final_hat, *final_rstd; /* (rows, D), (rows) */
    float *final_capped; /* (rows, V) soft-capped logits (final_softcap only), else NULL */
    size_t len_cap;
    /* Weight gradients: the run kept z and hidden, and its token ids. */
    int kept_weights;
    int32_t *tokens;    /* (B, P) copy */
    size_t tok_cap;
    /* Stored weights (core/weights.c): one layer converted to f32, then an unembedding chunk. */
    float *wbuf;
    size_t wbuf_cap;
    eapig_layer_weights view; /* layer pointers into wbuf (matrices) and the model (the rest) */
    /* Edge-score accumulation since the last reset (eapig_workspace_score_stats): wall seconds of
     * its GEMMs and step reductions, and the GEMMs' floating-point operations. */
    double score_seconds, score_flops;
};

/* Floats of eapig_backward's arena for B rows of P positions, `rows` rows of logits, `steps`
 * batched integrated-gradient steps (B = steps * diff_B), edge scores and node scores asked for,
 * the score gather's budget (eapig_backward_opts.score_memory) and weight gradients. */
size_t eapig_backward_floats(const eapig_config *c, size_t B, size_t P, size_t rows, size_t steps, int scores,
                             int nodes, int64_t score_memory, int weight_grads);

/* Grows *buf (freeing the old contents) to hold n elements of elem bytes; keeps it when already
 * big enough (core/workspace.c). An error names fn, the entry point that asked, and what. */
int eapig_workspace_grow(void **buf, size_t *cap, size_t n, size_t elem, const char *fn, const char *what);

/* The f32 weights of layer l for the kernels: the model's own layer (f32 mode), or its stored
 * matrices converted into ws (valid until the next call on ws). Errors name fn. */
int eapig_layer_view(const eapig_model *m, eapig_workspace *ws, int l, const eapig_layer_weights **out,
                     const char *fn);
/* out (N,D) = embedding rows of tokens (N). */
int eapig_embed_rows(const eapig_model *m, float *out, const int32_t *tokens, size_t N);
/* logits (R,V) = y (R,D) @ W_U^T, and dy (R,D) = dlogits (R,V) @ W_U: by vocabulary chunks when
 * the unembedding is stored. */
int eapig_unembed_forward(const eapig_model *m, eapig_workspace *ws, float *logits, const float *y, size_t R);
int eapig_unembed_backward(const eapig_model *m, eapig_workspace *ws, float *dy, const float *dlogits, size_t R);

/* Weight-gradient kernels (core/train.c), accumulating (+=) as every backward does.
 * dw (N,K) += dout^T @ inp for dout (M,N) with row stride ld_dout and inp (M,K) with row stride
 * ld_inp; db (N) += column sums of dout when not NULL. */
void linear_backward_weight(float *dw, float *db, const float *dout, const float *inp, size_t M, size_t N,
                            size_t K, size_t ld_dout, size_t ld_inp);
/* dw (D) += sum_n dout*xhat, db (D) += sum_n dout (db NULL for RMSNorm). */
void norm_backward_weight(float *dw, float *db, const float *dout, const float *xhat, size_t N, size_t D);
/* y (N,D) = xhat*w + b (b NULL for RMSNorm): a norm's output again, from its saved xhat. */
void norm_output(float *y, const float *xhat, const float *w, const float *b, size_t N, size_t D);
/* dwte[tokens[n]] += dout[n] (dwte NULL: skipped), dwpe[n % P] += dout[n] (dwpe NULL: skipped). */
void embedding_backward(float *dwte, float *dwpe, const float *dout, const int32_t *tokens, size_t N, size_t P,
                        size_t D);

#endif
