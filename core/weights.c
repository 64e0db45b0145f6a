/* weights.c: weights kept in their stored dtype (DESIGN "Memory, dtypes and many machines").
 *
 * A stored model's big matrices stay in the memory-mapped checkpoint; the forward and the
 * backward ask for one layer at a time (eapig_layer_view), which converts that layer's matrices
 * to f32 into a workspace buffer and hands the kernels an eapig_layer_weights that points there
 * (norms and biases are f32 in the model already). In f32 mode the view is the model's own layer,
 * with no copy. The unembedding is converted in vocabulary chunks, the embedding row by row.
 * After a matrix is converted its file pages are dropped from the resident set: the page cache
 * keeps them, so the next conversion reads memory, not the disk, but the process holds only what
 * the current layer needs.
 *
 * L = layers, D = d_model, H = heads, KV = kv heads, Dh = d_head, F = d_mlp, V = vocab,
 * Vc = rows of one unembedding chunk, R = rows of logits.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "ops.h"
#include "run.h"

/* The name of matrix which (EAPIG_MAT_*), from the tensor table. */
static const char *mat_name(int which) { return eapig_matrix_desc(which)->name; }

/* Unembedding rows converted at a time: about 1 M floats (4 MB), whatever D is: small enough
 * to stay in cache-friendly sizes, large enough that each chunk is one efficient GEMM. */
static size_t unembed_chunk(const eapig_config *c) {
    size_t rows = ((size_t)1 << 20) / (size_t)c->d_model;
    if (rows < 1) rows = 1;
    return rows < (size_t)c->vocab ? rows : (size_t)c->vocab;
}

static size_t mat_index(int l, int which) {
    return which <= EAPIG_MAT_UNEMBED ? (size_t)which : 2 + (size_t)l * EAPIG_LAYER_MATS + (size_t)(which - EAPIG_MAT_WQ);
}

/* The f32 shape of a matrix. */
static void mat_shape(const eapig_config *c, int which, size_t *rows, size_t *cols) {
    eapig_tensor_shape(c, eapig_matrix_desc(which), rows, cols);
}

static int has_mat(const eapig_config *c, int which) { return eapig_tensor_present(c, eapig_matrix_desc(which)); }

int32_t eapig_model_is_stored(const eapig_model *m) { return m && m->stored; }

int64_t eapig_weights_view_bytes(const eapig_config *c) {
    if (!c || c->n_layers < 1 || c->d_model < 1) return -1;
    size_t total = 0;
    for (int which = EAPIG_MAT_WQ; which <= EAPIG_MAT_W_OUT; which++) {
        size_t rows, cols;
        mat_shape(c, which, &rows, &cols);
        if (has_mat(c, which)) total += rows * cols;
    }
    return (int64_t)((total + unembed_chunk(c) * (size_t)c->d_model) * sizeof(float));
}

static int keep_file(eapig_model *m, eapig_file *f) {
    for (size_t i = 0; i < m->n_files; i++)
        if (m->files[i] == f) return EAPIG_OK;
    eapig_file **grown = realloc(m->files, (m->n_files + 1) * sizeof *grown);
    if (!grown) return eapig_set_error(EAPIG_ERR_NOMEM, "eapig_model_bind: out of memory");
    m->files = grown;
    m->files[m->n_files++] = f;
    eapig_file_retain(f);
    return EAPIG_OK;
}

int eapig_model_bind(eapig_model *m, int32_t layer, int32_t which, eapig_file *f, uint64_t begin, uint64_t end,
                     int32_t dtype, int64_t stored_rows, int32_t transpose, const int32_t *row_map) {
    if (!m || !f) return eapig_set_error(EAPIG_ERR_ARG, "eapig_model_bind: model and file are required");
    if (!m->stored)
        return eapig_set_error(EAPIG_ERR_STATE, "eapig_model_bind: the model was not made with eapig_model_new_stored");
    if (m->finalized) return eapig_set_error(EAPIG_ERR_STATE, "eapig_model_bind: the model is already finalized");
    const eapig_config *c = &m->cfg;
    if (which < EAPIG_MAT_WTE || which > EAPIG_MAT_W_OUT || !has_mat(c, which))
        return eapig_set_error(EAPIG_ERR_ARG, "eapig_model_bind: matrix %d does not exist in this model", which);
    if (which >= EAPIG_MAT_WQ && (layer < 0 || layer >= c->n_layers))
        return eapig_set_error(EAPIG_ERR_ARG, "eapig_model_bind: layer %d is outside 0..%d", layer, c->n_layers - 1);
    const char *name = mat_name(which), *path = eapig_file_path(f);
    if (dtype != EAPIG_DTYPE_F32 && dtype != EAPIG_DTYPE_F16 && dtype != EAPIG_DTYPE_BF16)
        return eapig_set_error(EAPIG_ERR_ARG, "eapig_model_bind: %s: %s: dtype %d is not F32, F16 or BF16", path,
                               name, dtype);
    size_t rows, cols, esize = eapig_dtype_size(dtype), count, bytes;
    mat_shape(c, which, &rows, &cols);
    if (stored_rows < 1 || !eapig_mul_ok((size_t)stored_rows, cols, &count) || !eapig_mul_ok(count, esize, &bytes))
        return eapig_set_error(EAPIG_ERR_ARG, "eapig_model_bind: %s: %s: bad stored rows %lld", path, name,
                               (long long)stored_rows);
    if (end < begin || end - begin != (uint64_t)bytes || !eapig_file_bytes(f, begin, end))
        return eapig_set_error(EAPIG_ERR_IO,
                               "eapig_model_bind: %s: %s: bytes [%llu, %llu) are not %lld x %zu elements of %zu "
                               "bytes inside the file (%llu bytes)",
                               path, name, (unsigned long long)begin, (unsigned long long)end,
                               (long long)stored_rows, cols, esize, (unsigned long long)eapig_file_size(f));
    /* Stored weights are converted only when used: check them here, once, so a NaN or infinite
     * weight is refused at load with its place, as eapig_file_tensor refuses it for copies. */
    int64_t bad = eapig_stored_first_nonfinite(eapig_file_bytes(f, begin, end), count, dtype);
    if (bad >= 0) {
        float value;
        eapig_convert(&value, eapig_file_bytes(f, begin, end) + (size_t)bad * esize, 1, dtype);
        return eapig_set_error(EAPIG_ERR_IO,
                               "eapig_model_bind: %s: %s: element %lld (byte %llu) is NaN or infinite (this one is %s); "
                               "weights must be finite",
                               path, name, (long long)bad, (unsigned long long)(begin + (uint64_t)bad * esize),
                               isnan(value) ? "NaN" : "infinite");
    }
    /* The scan brought the pages in; hand them back so the resident set stays that of a stored
     * model (the kernel keeps them cached and maps them again at use). */
    {
        long page = sysconf(_SC_PAGESIZE);
        uintptr_t lo = (uintptr_t)eapig_file_bytes(f, begin, end), hi = lo + bytes;
        if (page > 0) {
            uintptr_t a = (lo + (uintptr_t)page - 1) & ~((uintptr_t)page - 1), b = hi & ~((uintptr_t)page - 1);
            if (b > a) madvise((void *)a, b - a, MADV_DONTNEED);
        }
    }
    if (!row_map && (size_t)stored_rows < rows)
        return eapig_set_error(EAPIG_ERR_ARG, "eapig_model_bind: %s: %s: %lld stored rows, the matrix needs %zu", path,
                               name, (long long)stored_rows, rows);
    int32_t *map = NULL;
    if (row_map) {
        for (size_t r = 0; r < rows; r++)
            if (row_map[r] < 0 || row_map[r] >= stored_rows)
                return eapig_set_error(EAPIG_ERR_ARG, "eapig_model_bind: %s: %s: row map entry %zu is %d, outside 0..%lld",
                                       path, name, r, row_map[r], (long long)stored_rows - 1);
        if (!(map = malloc(rows * sizeof *map))) return eapig_set_error(EAPIG_ERR_NOMEM, "eapig_model_bind: out of memory");
        memcpy(map, row_map, rows * sizeof *map);
    }
    int status = keep_file(m, f);
    if (status != EAPIG_OK) {
        free(map);
        return status;
    }
    stored_matrix *s = &m->mats[mat_index(layer, which)];
    free(s->row_map);
    *s = (stored_matrix){.data = eapig_file_bytes(f, begin, end), .dtype = dtype, .transpose = transpose != 0,
                         .rows = rows, .cols = cols, .stored_rows = (size_t)stored_rows, .row_map = map};
    return EAPIG_OK;
}

void eapig_model_free_stored(eapig_model *m) {
    if (m->mats) {
        size_t n = 2 + (size_t)EAPIG_LAYER_MATS * (size_t)m->cfg.n_layers;
        for (size_t i = 0; i < n; i++) free(m->mats[i].row_map);
        free(m->mats);
        m->mats = NULL;
    }
    for (size_t i = 0; i < m->n_files; i++) eapig_file_close(m->files[i]);
    free(m->files);
    m->files = NULL;
    m->n_files = 0;
}

int eapig_model_check_bound(const eapig_model *m, const char *fn) {
    if (!m->stored) return EAPIG_OK;
    const eapig_config *c = &m->cfg;
    for (int l = -1; l < c->n_layers; l++)
        for (int which = l < 0 ? EAPIG_MAT_WTE : EAPIG_MAT_WQ; which <= (l < 0 ? EAPIG_MAT_UNEMBED : EAPIG_MAT_W_OUT);
             which++)
            if (has_mat(c, which) && !m->mats[mat_index(l, which)].data)
                return l < 0 ? eapig_set_error(EAPIG_ERR_STATE, "%s: matrix %s is not bound", fn, mat_name(which))
                             : eapig_set_error(EAPIG_ERR_STATE, "%s: matrix %s of layer %d is not bound", fn,
                                               mat_name(which), l);
    return EAPIG_OK;
}

void eapig_stored_centre(eapig_model *m) {
    for (int l = 0; l < m->cfg.n_layers; l++) {
        m->mats[mat_index(l, EAPIG_MAT_WO)].centre_columns = 1;
        m->mats[mat_index(l, EAPIG_MAT_W_OUT)].centre_columns = 1;
    }
}

static void centre_row(float *row, size_t n) {
    double mean = 0;
    for (size_t i = 0; i < n; i++) mean += row[i];
    mean /= (double)n;
    for (size_t i = 0; i < n; i++) row[i] -= (float)mean;
}

/* Rows [r0, r0 + n) of s into dst (n, cols). */
static int convert_rows(const stored_matrix *s, size_t r0, size_t n, float *dst) {
    size_t esize = eapig_dtype_size(s->dtype), cols = s->cols;
    if (!s->transpose) {
        for (size_t r = r0; r < r0 + n; r++) {
            size_t src = s->row_map ? (size_t)s->row_map[r] : r;
            eapig_convert(dst + (r - r0) * cols, s->data + src * cols * esize, cols, s->dtype);
        }
        return EAPIG_OK;
    }
    /* Stored (cols, stored_rows): convert a band of TILE stored rows, then write each destination
     * row's TILE consecutive elements, so both sides move through memory in order. */
    enum { TILE = 16 };
    float *band = malloc(TILE * s->stored_rows * sizeof(float));
    if (!band) return eapig_set_error(EAPIG_ERR_NOMEM, "eapig: out of memory converting a transposed matrix");
    for (size_t c0 = 0; c0 < cols; c0 += TILE) {
        size_t nc = cols - c0 < TILE ? cols - c0 : TILE;
        for (size_t k = 0; k < nc; k++)
            eapig_convert(band + k * s->stored_rows, s->data + (c0 + k) * s->stored_rows * esize, s->stored_rows,
                          s->dtype);
        for (size_t r = r0; r < r0 + n; r++) {
            size_t src = s->row_map ? (size_t)s->row_map[r] : r;
            float *out = dst + (r - r0) * cols + c0;
            for (size_t k = 0; k < nc; k++) out[k] = band[k * s->stored_rows + src];
        }
    }
    free(band);
    return EAPIG_OK;
}

/* The stored bytes of s that rows [r0, r0 + n) read, when they are one span (not transposed,
 * no row map): released from the resident set after conversion. */
static void release_rows(const stored_matrix *s, size_t r0, size_t n) {
    if (s->transpose || s->row_map) {
        eapig_file_release(s->data, s->stored_rows * s->cols * eapig_dtype_size(s->dtype));
        return;
    }
    size_t row_bytes = s->cols * eapig_dtype_size(s->dtype);
    eapig_file_release(s->data + r0 * row_bytes, n * row_bytes);
}

int eapig_stored_convert(const eapig_model *m, int l, int which, float *dst) {
    const stored_matrix *s = &m->mats[mat_index(l, which)];
    if (!s->data) return eapig_model_check_bound(m, "eapig");
    int status = convert_rows(s, 0, s->rows, dst);
    if (status != EAPIG_OK) return status;
    release_rows(s, 0, s->rows);
    if (s->centre_columns) eapig_centre_columns(dst, s->rows, s->cols);
    return EAPIG_OK;
}

int eapig_layer_view(const eapig_model *m, eapig_workspace *ws, int l, const eapig_layer_weights **out,
                     const char *fn) {
    if (!m->stored) {
        *out = &m->layers[l];
        return EAPIG_OK;
    }
    const eapig_config *c = &m->cfg;
    size_t need = (size_t)eapig_weights_view_bytes(c) / sizeof(float);
    int status = eapig_workspace_grow((void **)&ws->wbuf, &ws->wbuf_cap, need, sizeof(float), fn, "converted weights");
    if (status != EAPIG_OK) return status;
    eapig_layer_weights *v = &ws->view;
    *v = m->layers[l];
    float *p = ws->wbuf;
    for (int which = EAPIG_MAT_WQ; which <= EAPIG_MAT_W_OUT; which++) {
        if (!has_mat(c, which)) continue;
        size_t rows, cols;
        mat_shape(c, which, &rows, &cols);
        if (!m->mats[mat_index(l, which)].data) return eapig_model_check_bound(m, fn);
        status = eapig_stored_convert(m, l, which, p);
        if (status != EAPIG_OK) return status;
        *eapig_tensor_slot(NULL, v, eapig_matrix_desc(which)) = p;
        p += rows * cols;
    }
    *out = v;
    return EAPIG_OK;
}

int eapig_embed_rows(const eapig_model *m, float *out, const int32_t *tokens, size_t N) {
    size_t D = (size_t)m->cfg.d_model;
    const stored_matrix *s = m->stored ? &m->mats[EAPIG_MAT_WTE] : NULL;
    if (s && !s->data) return eapig_model_check_bound(m, "eapig_forward");
    for (size_t n = 0; n < N; n++) {
        if (s) {
            int status = convert_rows(s, (size_t)tokens[n], 1, out + n * D);
            if (status != EAPIG_OK) return status;
        } else {
            memcpy(out + n * D, m->w.wte + (size_t)tokens[n] * D, D * sizeof(float));
        }
        if (m->centre_embed) centre_row(out + n * D, D);
    }
    return EAPIG_OK;
}

/* Converts unembedding rows [v0, v0 + n) into the workspace's chunk (after the layer's part);
 * errors name fn. */
static int unembed_chunk_f32(const eapig_model *m, eapig_workspace *ws, size_t v0, size_t n, const float **out,
                             const char *fn) {
    size_t need = (size_t)eapig_weights_view_bytes(&m->cfg) / sizeof(float);
    int status = eapig_workspace_grow((void **)&ws->wbuf, &ws->wbuf_cap, need, sizeof(float), fn, "converted weights");
    if (status != EAPIG_OK) return status;
    float *chunk = ws->wbuf + need - unembed_chunk(&m->cfg) * (size_t)m->cfg.d_model;
    const stored_matrix *s = &m->mats[EAPIG_MAT_UNEMBED];
    if (!s->data) return eapig_model_check_bound(m, fn);
    status = convert_rows(s, v0, n, chunk);
    if (status != EAPIG_OK) return status;
    release_rows(s, v0, n);
    *out = chunk;
    return EAPIG_OK;
}

int eapig_unembed_forward(const eapig_model *m, eapig_workspace *ws, float *logits, const float *y, size_t R) {
    size_t D = (size_t)m->cfg.d_model, V = (size_t)m->cfg.vocab;
    if (!m->stored) {
        linear_forward(logits, y, m->w.w_unembed, NULL, R, V, D, V);
        return EAPIG_OK;
    }
    size_t chunk = unembed_chunk(&m->cfg);
    for (size_t v0 = 0; v0 < V; v0 += chunk) {
        size_t n = V - v0 < chunk ? V - v0 : chunk;
        const float *w = NULL;
        int status = unembed_chunk_f32(m, ws, v0, n, &w, "eapig_forward");
        if (status != EAPIG_OK) return status;
        linear_forward(logits + v0, y, w, NULL, R, n, D, V);
    }
    return EAPIG_OK;
}

/* A metric that reads a few logits per row (a logit difference, an answer's probability) has
 * a logit gradient of a few non-zeros per row: below one in SPARSE_FROM, dy is the sum of those
 * entries times their unembedding rows, which reads those rows instead of the whole matrix (a
 * product with R rows is bound by that read). */
enum { SPARSE_FROM = 64 };

static int unembed_backward_sparse(const eapig_model *m, eapig_workspace *ws, float *dy, const float *dlogits,
                                   size_t R) {
    size_t D = (size_t)m->cfg.d_model, V = (size_t)m->cfg.vocab;
    memset(dy, 0, R * D * sizeof(float));
    for (size_t r = 0; r < R; r++)
        for (size_t v = 0; v < V; v++) {
            float a = dlogits[r * V + v];
            if (a == 0.0f) continue;
            const float *w = m->w.w_unembed ? m->w.w_unembed + v * D : NULL;
            if (!w) {
                int status = unembed_chunk_f32(m, ws, v, 1, &w, "eapig_backward");
                if (status != EAPIG_OK) return status;
            }
            float *out = dy + r * D;
            for (size_t e = 0; e < D; e++) out[e] += a * w[e];
        }
    return EAPIG_OK;
}

int eapig_unembed_backward(const eapig_model *m, eapig_workspace *ws, float *dy, const float *dlogits, size_t R) {
    size_t D = (size_t)m->cfg.d_model, V = (size_t)m->cfg.vocab, nonzero = 0;
    for (size_t i = 0; i < R * V; i++) nonzero += dlogits[i] != 0.0f;
    if (nonzero * SPARSE_FROM < R * V) return unembed_backward_sparse(m, ws, dy, dlogits, R);
    if (!m->stored) {
        linear_backward_input(dy, dlogits, m->w.w_unembed, R, V, D, V, 0);
        return EAPIG_OK;
    }
    size_t chunk = unembed_chunk(&m->cfg);
    for (size_t v0 = 0; v0 < V; v0 += chunk) {
        size_t n = V - v0 < chunk ? V - v0 : chunk;
        const float *w = NULL;
        int status = unembed_chunk_f32(m, ws, v0, n, &w, "eapig_backward");
        if (status != EAPIG_OK) return status;
        linear_backward_input(dy, dlogits + v0, w, R, n, D, V, v0 > 0);
    }
    return EAPIG_OK;
}
