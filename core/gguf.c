/* gguf.c: reader for GGUF, llama.cpp's checkpoint format (versions 2 and 3), and the conversion
 * of its F32, F16, BF16 and Q8_0 tensors to float32. The layout is described in eapig.h.
 *
 * Every count, length, dimension and offset in a GGUF header comes from the file, so nothing
 * here trusts one: the header is walked with a cursor whose every read is checked against the
 * bytes left, counts are checked against the smallest size their entries can take before any
 * allocation, and the tensor table is checked as a whole (names unique, ranges inside the data
 * section, aligned and disjoint) before eapig_gguf_open returns. Errors name the file and the
 * field ("key 3 'general.alignment'", "tensor 'blk.0.attn_q.weight'").
 *
 * Dimension glossary: ne[0] = elements of a stored row (varies fastest), ne[1..3] = rows.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

enum { MAX_DIMS = 4, DEFAULT_ALIGNMENT = 32, NAME_SHOWN = 120 };

/* ggml's tensor types: name, elements per block, bytes per block (ggml-common.h). Numbers that
 * ggml removed or never used have no name, and a file using them is refused. */
static const struct {
    const char *name;
    uint32_t block, bytes;
} GGML_TYPES[] = {
    [0] = {"F32", 1, 4},          [1] = {"F16", 1, 2},          [2] = {"Q4_0", 32, 18},
    [3] = {"Q4_1", 32, 20},       [6] = {"Q5_0", 32, 22},       [7] = {"Q5_1", 32, 24},
    [8] = {"Q8_0", 32, 34},       [9] = {"Q8_1", 32, 36},       [10] = {"Q2_K", 256, 84},
    [11] = {"Q3_K", 256, 110},    [12] = {"Q4_K", 256, 144},    [13] = {"Q5_K", 256, 176},
    [14] = {"Q6_K", 256, 210},    [15] = {"Q8_K", 256, 292},    [16] = {"IQ2_XXS", 256, 66},
    [17] = {"IQ2_XS", 256, 74},   [18] = {"IQ3_XXS", 256, 98},  [19] = {"IQ1_S", 256, 50},
    [20] = {"IQ4_NL", 32, 18},    [21] = {"IQ3_S", 256, 110},   [22] = {"IQ2_S", 256, 82},
    [23] = {"IQ4_XS", 256, 136},  [24] = {"I8", 1, 1},          [25] = {"I16", 1, 2},
    [26] = {"I32", 1, 4},         [27] = {"I64", 1, 8},         [28] = {"F64", 1, 8},
    [29] = {"IQ1_M", 256, 56},    [30] = {"BF16", 1, 2},        [34] = {"TQ1_0", 256, 54},
    [35] = {"TQ2_0", 256, 66},    [39] = {"MXFP4", 32, 17},
};
enum { N_GGML_TYPES = sizeof GGML_TYPES / sizeof GGML_TYPES[0] };

/* Bytes of one scalar of each metadata type; 0 for strings and arrays (variable). */
static const uint8_t VALUE_SIZE[] = {1, 1, 2, 2, 4, 4, 4, 1, 0, 0, 8, 8, 8};
static const char *const VALUE_NAME[] = {"uint8", "int8",  "uint16", "int16",  "uint32", "int32", "float32",
                                         "bool",  "string", "array", "uint64", "int64",  "float64"};
enum { N_VALUE_TYPES = sizeof VALUE_SIZE };

typedef struct {
    uint64_t name_at, name_len;
    int32_t type, elem_type; /* elem_type = type for a scalar */
    uint64_t count;          /* 1 for a scalar */
    uint64_t value_at;       /* the scalar, or the array's first element */
    uint64_t *string_at;     /* string arrays: where each element's length field is (owned) */
} gguf_key;

typedef struct {
    uint64_t name_at, name_len;
    int32_t type, n_dims;
    int64_t ne[MAX_DIMS];
    int64_t n_elements;
    uint64_t begin, end; /* absolute byte range */
} gguf_tensor;

struct eapig_gguf {
    eapig_file *file;
    const uint8_t *bytes;
    uint64_t size;
    char *path;
    uint32_t version;
    uint64_t n_keys, n_tensors, alignment, data_offset;
    gguf_key *keys;
    gguf_tensor *tensors;
    int64_t *tensor_order; /* tensor indices sorted by name (lookup, duplicate check) */
    int64_t *key_order;    /* key indices sorted by name */
};

/* ---- the cursor: every read checked against the bytes left ---------------------------------- */

typedef struct {
    const eapig_gguf *g;
    uint64_t at;
} cursor;

static int truncated(const cursor *c, uint64_t need, const char *field) {
    return eapig_set_error(EAPIG_ERR_IO,
                           "eapig_gguf_open: %s: %s: needs %llu bytes at byte %llu, past the end of the file "
                           "(%llu bytes): truncated or not GGUF",
                           c->g->path, field, (unsigned long long)need, (unsigned long long)c->at,
                           (unsigned long long)c->g->size);
}

static uint64_t left(const cursor *c) { return c->g->size - c->at; }

static int read_bytes(cursor *c, void *dst, uint64_t n, const char *field) {
    if (n > left(c)) return truncated(c, n, field);
    memcpy(dst, c->g->bytes + c->at, (size_t)n);
    c->at += n;
    return EAPIG_OK;
}

static int read_u32(cursor *c, uint32_t *v, const char *field) { return read_bytes(c, v, 4, field); }
static int read_u64(cursor *c, uint64_t *v, const char *field) { return read_bytes(c, v, 8, field); }

/* A string: uint64 length, then the bytes, which must lie inside the file. */
static int read_string(cursor *c, uint64_t *at, uint64_t *len, const char *field) {
    *len = 0;
    int s = read_u64(c, len, field);
    if (s) return s;
    *at = c->at;
    if (*len > left(c))
        return eapig_set_error(EAPIG_ERR_IO,
                               "eapig_gguf_open: %s: %s: string length %llu at byte %llu runs past the end of the "
                               "file (%llu bytes)",
                               c->g->path, field, (unsigned long long)*len, (unsigned long long)(c->at - 8),
                               (unsigned long long)c->g->size);
    c->at += *len;
    return EAPIG_OK;
}

/* A name for messages: at most NAME_SHOWN bytes of it. */
static int shown_len(uint64_t len) { return len > NAME_SHOWN ? NAME_SHOWN : (int)len; }
#define SHOW(g, at, len) shown_len(len), (const char *)(g)->bytes + (at)

/* ---- sorting names ------------------------------------------------------------------------- */

static int compare_bytes(const uint8_t *a, uint64_t alen, const uint8_t *b, uint64_t blen) {
    uint64_t n = alen < blen ? alen : blen;
    int r = n ? memcmp(a, b, (size_t)n) : 0;
    if (r) return r;
    return alen < blen ? -1 : alen > blen;
}

/* qsort has no context argument: the table being sorted is passed through this (one sort at a
 * time per thread). */
static _Thread_local const eapig_gguf *sorting;

static int compare_tensor_names(const void *x, const void *y) {
    const gguf_tensor *a = &sorting->tensors[*(const int64_t *)x], *b = &sorting->tensors[*(const int64_t *)y];
    return compare_bytes(sorting->bytes + a->name_at, a->name_len, sorting->bytes + b->name_at, b->name_len);
}

static int compare_key_names(const void *x, const void *y) {
    const gguf_key *a = &sorting->keys[*(const int64_t *)x], *b = &sorting->keys[*(const int64_t *)y];
    return compare_bytes(sorting->bytes + a->name_at, a->name_len, sorting->bytes + b->name_at, b->name_len);
}

static int compare_tensor_begins(const void *x, const void *y) {
    const gguf_tensor *a = &sorting->tensors[*(const int64_t *)x], *b = &sorting->tensors[*(const int64_t *)y];
    if (a->begin != b->begin) return a->begin < b->begin ? -1 : 1;
    if (a->end != b->end) return a->end < b->end ? -1 : 1;
    return 0;
}

static int64_t *sorted_indices(const eapig_gguf *g, uint64_t n, int (*cmp)(const void *, const void *)) {
    int64_t *order = malloc((n ? n : 1) * sizeof *order);
    if (!order) return NULL;
    for (uint64_t i = 0; i < n; i++) order[i] = (int64_t)i;
    sorting = g;
    qsort(order, (size_t)n, sizeof *order, cmp);
    sorting = NULL;
    return order;
}

/* ---- metadata ------------------------------------------------------------------------------ */

static int read_key(cursor *c, eapig_gguf *g, uint64_t i) {
    gguf_key *k = &g->keys[i];
    char field[64];
    snprintf(field, sizeof field, "key %llu", (unsigned long long)i);
    int s = read_string(c, &k->name_at, &k->name_len, field);
    uint32_t type = 0;
    if (!s) s = read_u32(c, &type, field);
    if (s) return s;
    if (type >= N_VALUE_TYPES)
        return eapig_set_error(EAPIG_ERR_IO, "eapig_gguf_open: %s: key %llu '%.*s': unknown value type %u", g->path,
                               (unsigned long long)i, SHOW(g, k->name_at, k->name_len), type);
    k->type = k->elem_type = (int32_t)type;
    k->count = 1;
    if (type == EAPIG_GGUF_ARRAY) {
        uint32_t elem = 0;
        s = read_u32(c, &elem, field);
        if (!s) s = read_u64(c, &k->count, field);
        if (s) return s;
        if (elem >= N_VALUE_TYPES || elem == EAPIG_GGUF_ARRAY)
            return eapig_set_error(EAPIG_ERR_IO,
                                   "eapig_gguf_open: %s: key %llu '%.*s': array element type %u is not supported "
                                   "(scalars and strings only)",
                                   g->path, (unsigned long long)i, SHOW(g, k->name_at, k->name_len), elem);
        k->elem_type = (int32_t)elem;
    }
    k->value_at = c->at;
    if (k->elem_type != EAPIG_GGUF_STRING) {
        uint64_t size = VALUE_SIZE[k->elem_type];
        if (k->count > left(c) / size)
            return eapig_set_error(EAPIG_ERR_IO,
                                   "eapig_gguf_open: %s: key %llu '%.*s': %llu values of %llu bytes run past the end "
                                   "of the file (%llu bytes)",
                                   g->path, (unsigned long long)i, SHOW(g, k->name_at, k->name_len),
                                   (unsigned long long)k->count, (unsigned long long)size,
                                   (unsigned long long)g->size);
        c->at += k->count * size;
        return EAPIG_OK;
    }
    /* Strings: each takes at least its 8-byte length, which bounds the index allocation. */
    if (k->count > left(c) / 8)
        return eapig_set_error(EAPIG_ERR_IO,
                               "eapig_gguf_open: %s: key %llu '%.*s': %llu strings cannot fit in the %llu bytes left",
                               g->path, (unsigned long long)i, SHOW(g, k->name_at, k->name_len),
                               (unsigned long long)k->count, (unsigned long long)left(c));
    k->string_at = malloc((k->count ? k->count : 1) * sizeof *k->string_at);
    if (!k->string_at) return eapig_set_error(EAPIG_ERR_NOMEM, "eapig_gguf_open: %s: out of memory", g->path);
    for (uint64_t j = 0; j < k->count; j++) {
        uint64_t at, len = 0;
        k->string_at[j] = c->at;
        if (k->type == EAPIG_GGUF_ARRAY)
            snprintf(field, sizeof field, "key %llu, string %llu", (unsigned long long)i, (unsigned long long)j);
        if ((s = read_string(c, &at, &len, field))) return s;
    }
    return EAPIG_OK;
}

/* general.alignment, when present: a uint32 power of two. */
static int find_alignment(eapig_gguf *g) {
    g->alignment = DEFAULT_ALIGNMENT;
    int64_t i = eapig_gguf_find_key(g, "general.alignment");
    if (i < 0) return EAPIG_OK;
    const gguf_key *k = &g->keys[i];
    uint32_t a = 0;
    if (k->type == EAPIG_GGUF_UINT32) memcpy(&a, g->bytes + k->value_at, 4);
    if (k->type != EAPIG_GGUF_UINT32 || a == 0 || (a & (a - 1)))
        return eapig_set_error(EAPIG_ERR_IO,
                               "eapig_gguf_open: %s: key 'general.alignment' must be a uint32 power of two (type %s, "
                               "value %u)",
                               g->path, VALUE_NAME[k->type], a);
    g->alignment = a;
    return EAPIG_OK;
}

/* ---- tensor table -------------------------------------------------------------------------- */

static int read_tensor_info(cursor *c, eapig_gguf *g, uint64_t i, uint64_t *offset) {
    gguf_tensor *t = &g->tensors[i];
    char field[64];
    snprintf(field, sizeof field, "tensor %llu", (unsigned long long)i);
    uint32_t n_dims = 0, type = 0;
    int s = read_string(c, &t->name_at, &t->name_len, field);
    if (!s) s = read_u32(c, &n_dims, field);
    if (s) return s;
    if (n_dims > MAX_DIMS)
        return eapig_set_error(EAPIG_ERR_IO, "eapig_gguf_open: %s: tensor '%.*s': n_dims %u is more than %d", g->path,
                               SHOW(g, t->name_at, t->name_len), n_dims, MAX_DIMS);
    t->n_dims = (int32_t)n_dims;
    for (int d = 0; d < MAX_DIMS; d++) t->ne[d] = 1;
    for (uint32_t d = 0; d < n_dims; d++) {
        uint64_t ne = 0;
        if ((s = read_u64(c, &ne, field))) return s;
        if (ne > (uint64_t)INT64_MAX)
            return eapig_set_error(EAPIG_ERR_IO, "eapig_gguf_open: %s: tensor '%.*s': ne[%u] = %llu is negative",
                                   g->path, SHOW(g, t->name_at, t->name_len), d, (unsigned long long)ne);
        t->ne[d] = (int64_t)ne;
    }
    if ((s = read_u32(c, &type, field)) || (s = read_u64(c, offset, field))) return s;
    if (type >= N_GGML_TYPES || !GGML_TYPES[type].name)
        return eapig_set_error(EAPIG_ERR_IO, "eapig_gguf_open: %s: tensor '%.*s': unknown tensor type %u", g->path,
                               SHOW(g, t->name_at, t->name_len), type);
    t->type = (int32_t)type;
    return EAPIG_OK;
}

/* Checks tensor i's shape and places it in the data section (needs data_offset). */
static int place_tensor(eapig_gguf *g, uint64_t i, uint64_t offset) {
    gguf_tensor *t = &g->tensors[i];
    uint64_t block = GGML_TYPES[t->type].block, bytes = GGML_TYPES[t->type].bytes;
    int64_t n = 1;
    for (int d = 0; d < MAX_DIMS; d++)
        if (__builtin_mul_overflow(n, t->ne[d], &n))
            return eapig_set_error(EAPIG_ERR_IO, "eapig_gguf_open: %s: tensor '%.*s': element count overflows",
                                   g->path, SHOW(g, t->name_at, t->name_len));
    t->n_elements = n;
    if ((uint64_t)t->ne[0] % block)
        return eapig_set_error(EAPIG_ERR_IO,
                               "eapig_gguf_open: %s: tensor '%.*s': ne[0] = %lld is not a multiple of type %s's block "
                               "of %llu",
                               g->path, SHOW(g, t->name_at, t->name_len), (long long)t->ne[0],
                               GGML_TYPES[t->type].name, (unsigned long long)block);
    if (offset % g->alignment)
        return eapig_set_error(EAPIG_ERR_IO,
                               "eapig_gguf_open: %s: tensor '%.*s': offset %llu is not a multiple of the alignment %llu",
                               g->path, SHOW(g, t->name_at, t->name_len), (unsigned long long)offset,
                               (unsigned long long)g->alignment);
    /* n is a multiple of block (ne[0] is), and n / block * bytes is checked before it is used. */
    uint64_t blocks = (uint64_t)n / block, size;
    uint64_t data_size = g->size - g->data_offset; /* data_offset <= size when there are tensors */
    if (__builtin_mul_overflow(blocks, bytes, &size) || offset > data_size || size > data_size - offset)
        return eapig_set_error(EAPIG_ERR_IO,
                               "eapig_gguf_open: %s: tensor '%.*s': data [%llu, +%llu elements of type %s) leaves the "
                               "data section (%llu bytes from byte %llu): truncated file or bad offset",
                               g->path, SHOW(g, t->name_at, t->name_len), (unsigned long long)offset,
                               (unsigned long long)n, GGML_TYPES[t->type].name, (unsigned long long)data_size,
                               (unsigned long long)g->data_offset);
    t->begin = g->data_offset + offset;
    t->end = t->begin + size;
    return EAPIG_OK;
}

static int check_tables(eapig_gguf *g) {
    /* Sorted by name, a repeated name sits next to itself. */
    int status = EAPIG_OK;
    sorting = g;
    for (uint64_t j = 1; j < g->n_keys && !status; j++)
        if (!compare_key_names(&g->key_order[j - 1], &g->key_order[j])) {
            const gguf_key *k = &g->keys[g->key_order[j]];
            status = eapig_set_error(EAPIG_ERR_IO, "eapig_gguf_open: %s: key '%.*s' appears twice", g->path,
                                     SHOW(g, k->name_at, k->name_len));
        }
    for (uint64_t j = 1; j < g->n_tensors && !status; j++)
        if (!compare_tensor_names(&g->tensor_order[j - 1], &g->tensor_order[j])) {
            const gguf_tensor *t = &g->tensors[g->tensor_order[j]];
            status = eapig_set_error(EAPIG_ERR_IO, "eapig_gguf_open: %s: tensor '%.*s' appears twice", g->path,
                                     SHOW(g, t->name_at, t->name_len));
        }
    sorting = NULL;
    if (status) return status;
    /* Two tensors may not share a byte: sorted by start, each must begin after the furthest end. */
    int64_t *by_begin = sorted_indices(g, g->n_tensors, compare_tensor_begins);
    if (!by_begin) return eapig_set_error(EAPIG_ERR_NOMEM, "eapig_gguf_open: %s: out of memory", g->path);
    const gguf_tensor *last = NULL;
    for (uint64_t j = 0; j < g->n_tensors; j++) {
        const gguf_tensor *t = &g->tensors[by_begin[j]];
        if (t->end == t->begin) continue; /* empty tensors hold no bytes */
        if (last && t->begin < last->end) {
            int s = eapig_set_error(EAPIG_ERR_IO, "eapig_gguf_open: %s: tensors '%.*s' and '%.*s' overlap", g->path,
                                    SHOW(g, last->name_at, last->name_len), SHOW(g, t->name_at, t->name_len));
            free(by_begin);
            return s;
        }
        if (!last || t->end > last->end) last = t;
    }
    free(by_begin);
    return EAPIG_OK;
}

/* ---- open and close ------------------------------------------------------------------------ */

static int parse(eapig_gguf *g) {
    cursor c = {g, 0};
    uint8_t magic[4];
    uint32_t version = 0;
    int s = read_bytes(&c, magic, 4, "magic");
    if (s) return s;
    if (memcmp(magic, "GGUF", 4))
        return eapig_set_error(EAPIG_ERR_IO, "eapig_gguf_open: %s: magic: the file does not start with \"GGUF\"",
                               g->path);
    if ((s = read_u32(&c, &version, "version"))) return s;
    if (version == 1)
        return eapig_set_error(EAPIG_ERR_IO,
                               "eapig_gguf_open: %s: version: GGUF version 1 (32-bit lengths, before August 2023) is "
                               "not supported; convert the model again with a current llama.cpp",
                               g->path);
    if (version != 2 && version != 3) {
        uint32_t swapped = __builtin_bswap32(version);
        if (swapped == 2 || swapped == 3)
            return eapig_set_error(EAPIG_ERR_IO, "eapig_gguf_open: %s: version: big-endian GGUF is not supported",
                                   g->path);
        return eapig_set_error(EAPIG_ERR_IO, "eapig_gguf_open: %s: version: unknown GGUF version %u (2 and 3 are read)",
                               g->path, version);
    }
    g->version = version;
    if ((s = read_u64(&c, &g->n_tensors, "tensor count")) || (s = read_u64(&c, &g->n_keys, "key count"))) return s;
    /* A key takes at least 12 bytes (name length, type), a tensor at least 24 (name length,
     * n_dims, type, offset): larger counts cannot be true, and are refused before allocating. */
    if (g->n_keys > left(&c) / 12)
        return eapig_set_error(EAPIG_ERR_IO, "eapig_gguf_open: %s: key count %llu cannot fit in the %llu bytes left",
                               g->path, (unsigned long long)g->n_keys, (unsigned long long)left(&c));
    if (g->n_tensors > left(&c) / 24)
        return eapig_set_error(EAPIG_ERR_IO,
                               "eapig_gguf_open: %s: tensor count %llu cannot fit in the %llu bytes left", g->path,
                               (unsigned long long)g->n_tensors, (unsigned long long)left(&c));
    g->keys = calloc(g->n_keys ? g->n_keys : 1, sizeof *g->keys);
    g->tensors = calloc(g->n_tensors ? g->n_tensors : 1, sizeof *g->tensors);
    uint64_t *offsets = calloc(g->n_tensors ? g->n_tensors : 1, sizeof *offsets);
    if (!g->keys || !g->tensors || !offsets) {
        free(offsets);
        return eapig_set_error(EAPIG_ERR_NOMEM, "eapig_gguf_open: %s: out of memory", g->path);
    }
    for (uint64_t i = 0; i < g->n_keys && !s; i++) s = read_key(&c, g, i);
    if (!s && !(g->key_order = sorted_indices(g, g->n_keys, compare_key_names)))
        s = eapig_set_error(EAPIG_ERR_NOMEM, "eapig_gguf_open: %s: out of memory", g->path);
    if (!s) s = find_alignment(g);
    for (uint64_t i = 0; i < g->n_tensors && !s; i++) s = read_tensor_info(&c, g, i, &offsets[i]);
    if (!s) {
        /* The data section starts at the next multiple of the alignment. */
        uint64_t pad = (g->alignment - c.at % g->alignment) % g->alignment;
        g->data_offset = c.at + pad;
        if (g->n_tensors > 0 && pad > left(&c))
            s = eapig_set_error(EAPIG_ERR_IO,
                                "eapig_gguf_open: %s: data section: it would start at byte %llu, past the end of the "
                                "file (%llu bytes)",
                                g->path, (unsigned long long)g->data_offset, (unsigned long long)g->size);
    }
    for (uint64_t i = 0; i < g->n_tensors && !s; i++) s = place_tensor(g, i, offsets[i]);
    free(offsets);
    if (!s && !(g->tensor_order = sorted_indices(g, g->n_tensors, compare_tensor_names)))
        s = eapig_set_error(EAPIG_ERR_NOMEM, "eapig_gguf_open: %s: out of memory", g->path);
    if (!s) s = check_tables(g);
    return s;
}

eapig_gguf *eapig_gguf_open(const char *path) {
    if (!path) {
        eapig_set_error(EAPIG_ERR_ARG, "eapig_gguf_open: path is NULL");
        return NULL;
    }
    eapig_gguf *g = calloc(1, sizeof *g);
    if (!g || !(g->path = strdup(path))) {
        free(g);
        eapig_set_error(EAPIG_ERR_NOMEM, "eapig_gguf_open: %s: out of memory", path);
        return NULL;
    }
    if (!(g->file = eapig_file_open(path))) { /* the message names the file */
        eapig_gguf_close(g);
        return NULL;
    }
    g->size = eapig_file_size(g->file);
    g->bytes = eapig_file_bytes(g->file, 0, g->size);
    if (parse(g) != EAPIG_OK) {
        eapig_gguf_close(g);
        return NULL;
    }
    return g;
}

void eapig_gguf_close(eapig_gguf *g) {
    if (!g) return;
    if (g->keys)
        for (uint64_t i = 0; i < g->n_keys; i++) free(g->keys[i].string_at);
    free(g->keys);
    free(g->tensors);
    free(g->key_order);
    free(g->tensor_order);
    eapig_file_close(g->file);
    free(g->path);
    free(g);
}

uint32_t eapig_gguf_version(const eapig_gguf *g) { return g ? g->version : 0; }
int64_t eapig_gguf_n_keys(const eapig_gguf *g) { return g ? (int64_t)g->n_keys : 0; }
int64_t eapig_gguf_n_tensors(const eapig_gguf *g) { return g ? (int64_t)g->n_tensors : 0; }
uint64_t eapig_gguf_data_offset(const eapig_gguf *g) { return g ? g->data_offset : 0; }

/* ---- metadata access ----------------------------------------------------------------------- */

/* Binary search of a name-sorted index; name_of gives entry i's name. */
static int64_t find_sorted(const eapig_gguf *g, const int64_t *order, uint64_t n, const char *name, int tensors) {
    if (!g || !name || !order) return -1;
    uint64_t len = strlen(name), lo = 0, hi = n;
    while (lo < hi) {
        uint64_t mid = lo + (hi - lo) / 2;
        int64_t i = order[mid];
        uint64_t at = tensors ? g->tensors[i].name_at : g->keys[i].name_at;
        uint64_t ilen = tensors ? g->tensors[i].name_len : g->keys[i].name_len;
        int r = compare_bytes(g->bytes + at, ilen, (const uint8_t *)name, len);
        if (r == 0) return i;
        if (r < 0) lo = mid + 1;
        else hi = mid;
    }
    return -1;
}

int64_t eapig_gguf_find_key(const eapig_gguf *g, const char *name) {
    return g ? find_sorted(g, g->key_order, g->n_keys, name, 0) : -1;
}

static const gguf_key *key_at(const eapig_gguf *g, int64_t i, const char *fn) {
    if (!g || i < 0 || (uint64_t)i >= g->n_keys) {
        eapig_set_error(EAPIG_ERR_ARG, "%s: key index %lld is out of range", fn, (long long)i);
        return NULL;
    }
    return &g->keys[i];
}

const char *eapig_gguf_key(const eapig_gguf *g, int64_t i, uint64_t *len) {
    const gguf_key *k = key_at(g, i, "eapig_gguf_key");
    if (!k) return NULL;
    if (len) *len = k->name_len;
    return (const char *)g->bytes + k->name_at;
}

int32_t eapig_gguf_key_type(const eapig_gguf *g, int64_t i, int32_t *elem_type, uint64_t *count) {
    const gguf_key *k = key_at(g, i, "eapig_gguf_key_type");
    if (!k) return -1;
    if (elem_type) *elem_type = k->elem_type;
    if (count) *count = k->count;
    return k->type;
}

/* Checks [first, first + n) against key k's elements. */
static const gguf_key *key_range(const eapig_gguf *g, int64_t i, uint64_t first, uint64_t n, const void *out,
                                 const char *fn) {
    const gguf_key *k = key_at(g, i, fn);
    if (!k) return NULL;
    if (first > k->count || n > k->count - first) {
        eapig_set_error(EAPIG_ERR_ARG, "%s: %s: key '%.*s': elements [%llu, +%llu) leave its %llu", fn, g->path,
                        SHOW(g, k->name_at, k->name_len), (unsigned long long)first, (unsigned long long)n,
                        (unsigned long long)k->count);
        return NULL;
    }
    if (n > 0 && !out) {
        eapig_set_error(EAPIG_ERR_ARG, "%s: output is NULL", fn);
        return NULL;
    }
    return k;
}

/* Element j of a numeric key, as the widest type of its kind. */
static void number_at(const eapig_gguf *g, const gguf_key *k, uint64_t j, int64_t *iv, uint64_t *uv, double *fv,
                      int *kind /* 0 signed, 1 unsigned, 2 float */) {
    const uint8_t *p = g->bytes + k->value_at + j * VALUE_SIZE[k->elem_type];
    switch (k->elem_type) {
    case EAPIG_GGUF_UINT8: *uv = p[0], *kind = 1; break;
    case EAPIG_GGUF_BOOL: *uv = p[0] != 0, *kind = 1; break;
    case EAPIG_GGUF_INT8: *iv = (int8_t)p[0], *kind = 0; break;
    case EAPIG_GGUF_UINT16: { uint16_t v; memcpy(&v, p, 2); *uv = v, *kind = 1; break; }
    case EAPIG_GGUF_INT16: { int16_t v; memcpy(&v, p, 2); *iv = v, *kind = 0; break; }
    case EAPIG_GGUF_UINT32: { uint32_t v; memcpy(&v, p, 4); *uv = v, *kind = 1; break; }
    case EAPIG_GGUF_INT32: { int32_t v; memcpy(&v, p, 4); *iv = v, *kind = 0; break; }
    case EAPIG_GGUF_UINT64: { uint64_t v; memcpy(&v, p, 8); *uv = v, *kind = 1; break; }
    case EAPIG_GGUF_INT64: { int64_t v; memcpy(&v, p, 8); *iv = v, *kind = 0; break; }
    case EAPIG_GGUF_FLOAT32: { float v; memcpy(&v, p, 4); *fv = v, *kind = 2; break; }
    default: { double v; memcpy(&v, p, 8); *fv = v, *kind = 2; break; }
    }
}

int eapig_gguf_key_numbers(const eapig_gguf *g, int64_t i, uint64_t first, uint64_t n, double *out) {
    const gguf_key *k = key_range(g, i, first, n, out, "eapig_gguf_key_numbers");
    if (!k) return EAPIG_ERR_ARG;
    if (k->elem_type == EAPIG_GGUF_STRING)
        return eapig_set_error(EAPIG_ERR_ARG, "eapig_gguf_key_numbers: %s: key '%.*s' holds strings, not numbers",
                               g->path, SHOW(g, k->name_at, k->name_len));
    for (uint64_t j = 0; j < n; j++) {
        int64_t iv = 0;
        uint64_t uv = 0;
        double fv = 0;
        int kind;
        number_at(g, k, first + j, &iv, &uv, &fv, &kind);
        out[j] = kind == 0 ? (double)iv : kind == 1 ? (double)uv : fv;
        /* a NaN read from the file may carry a payload LuaJIT takes for another value: only the
         * plain quiet NaN leaves the core */
        if (isnan(out[j])) out[j] = NAN;
    }
    return EAPIG_OK;
}

int eapig_gguf_key_integers(const eapig_gguf *g, int64_t i, uint64_t first, uint64_t n, int64_t *out) {
    const gguf_key *k = key_range(g, i, first, n, out, "eapig_gguf_key_integers");
    if (!k) return EAPIG_ERR_ARG;
    int et = k->elem_type;
    if (et == EAPIG_GGUF_STRING || et == EAPIG_GGUF_FLOAT32 || et == EAPIG_GGUF_FLOAT64)
        return eapig_set_error(EAPIG_ERR_ARG, "eapig_gguf_key_integers: %s: key '%.*s' holds %s values, not integers",
                               g->path, SHOW(g, k->name_at, k->name_len), VALUE_NAME[et]);
    for (uint64_t j = 0; j < n; j++) {
        int64_t iv = 0;
        uint64_t uv = 0;
        double fv = 0;
        int kind;
        number_at(g, k, first + j, &iv, &uv, &fv, &kind);
        if (kind == 1 && uv > (uint64_t)INT64_MAX)
            return eapig_set_error(EAPIG_ERR_ARG, "eapig_gguf_key_integers: %s: key '%.*s': element %llu is above "
                                   "INT64_MAX", g->path, SHOW(g, k->name_at, k->name_len),
                                   (unsigned long long)(first + j));
        out[j] = kind == 0 ? iv : (int64_t)uv;
    }
    return EAPIG_OK;
}

int eapig_gguf_key_strings(const eapig_gguf *g, int64_t i, uint64_t first, uint64_t n, const char **ptrs,
                           uint64_t *lens) {
    const gguf_key *k = key_range(g, i, first, n, ptrs, "eapig_gguf_key_strings");
    if (!k) return EAPIG_ERR_ARG;
    if (n > 0 && !lens) return eapig_set_error(EAPIG_ERR_ARG, "eapig_gguf_key_strings: lens is NULL");
    if (k->elem_type != EAPIG_GGUF_STRING)
        return eapig_set_error(EAPIG_ERR_ARG, "eapig_gguf_key_strings: %s: key '%.*s' holds %s values, not strings",
                               g->path, SHOW(g, k->name_at, k->name_len), VALUE_NAME[k->elem_type]);
    for (uint64_t j = 0; j < n; j++) {
        /* Checked at open: the length field and the bytes it counts lie inside the file. */
        uint64_t at = k->string_at[first + j], len;
        memcpy(&len, g->bytes + at, 8);
        ptrs[j] = (const char *)g->bytes + at + 8;
        lens[j] = len;
    }
    return EAPIG_OK;
}

/* ---- tensors ------------------------------------------------------------------------------- */

int64_t eapig_gguf_find_tensor(const eapig_gguf *g, const char *name) {
    return g ? find_sorted(g, g->tensor_order, g->n_tensors, name, 1) : -1;
}

static const gguf_tensor *tensor_at(const eapig_gguf *g, int64_t i, const char *fn) {
    if (!g || i < 0 || (uint64_t)i >= g->n_tensors) {
        eapig_set_error(EAPIG_ERR_ARG, "%s: tensor index %lld is out of range", fn, (long long)i);
        return NULL;
    }
    return &g->tensors[i];
}

const char *eapig_gguf_tensor_name(const eapig_gguf *g, int64_t i, uint64_t *len) {
    const gguf_tensor *t = tensor_at(g, i, "eapig_gguf_tensor_name");
    if (!t) return NULL;
    if (len) *len = t->name_len;
    return (const char *)g->bytes + t->name_at;
}

int eapig_gguf_tensor_info(const eapig_gguf *g, int64_t i, int32_t *type, int32_t *n_dims, int64_t *ne,
                           int64_t *n_elements, uint64_t *begin, uint64_t *end) {
    const gguf_tensor *t = tensor_at(g, i, "eapig_gguf_tensor_info");
    if (!t) return EAPIG_ERR_ARG;
    if (type) *type = t->type;
    if (n_dims) *n_dims = t->n_dims;
    if (ne) memcpy(ne, t->ne, sizeof t->ne);
    if (n_elements) *n_elements = t->n_elements;
    if (begin) *begin = t->begin;
    if (end) *end = t->end;
    return EAPIG_OK;
}

const char *eapig_gguf_type_name(int32_t type) {
    if (type < 0 || type >= N_GGML_TYPES) return NULL;
    return GGML_TYPES[type].name;
}

/* Q8_0: blocks of 32 values, each an f16 scale d then 32 int8 q; the value is d * q. */
static void dequantize_q8_0(const uint8_t *src, float *dst, uint64_t n) {
    for (uint64_t b = 0; b < n / 32; b++, src += 34, dst += 32) {
        float d;
        eapig_convert(&d, src, 1, EAPIG_DTYPE_F16);
        for (int j = 0; j < 32; j++) dst[j] = d * (float)(int8_t)src[2 + j];
    }
}

int eapig_gguf_tensor_read(const eapig_gguf *g, int64_t i, float *dst, int64_t n) {
    const gguf_tensor *t = tensor_at(g, i, "eapig_gguf_tensor_read");
    if (!t) return EAPIG_ERR_ARG;
    if (n != t->n_elements)
        return eapig_set_error(EAPIG_ERR_ARG, "eapig_gguf_tensor_read: %s: tensor '%.*s' has %lld elements, not %lld",
                               g->path, SHOW(g, t->name_at, t->name_len), (long long)t->n_elements, (long long)n);
    if (n == 0) return EAPIG_OK;
    if (!dst) return eapig_set_error(EAPIG_ERR_ARG, "eapig_gguf_tensor_read: dst is NULL");
    int32_t dtype;
    switch (t->type) {
    case EAPIG_GGML_F32: dtype = EAPIG_DTYPE_F32; break;
    case EAPIG_GGML_F16: dtype = EAPIG_DTYPE_F16; break;
    case EAPIG_GGML_BF16: dtype = EAPIG_DTYPE_BF16; break;
    case EAPIG_GGML_Q8_0: {
        dequantize_q8_0(g->bytes + t->begin, dst, (uint64_t)n);
        /* a block scale may be an f16 inf or NaN: refuse the tensor as eapig_file_tensor would */
        int64_t bad = eapig_floats_first_nonfinite(dst, n);
        if (bad >= 0)
            return eapig_set_error(EAPIG_ERR_IO,
                                   "eapig_gguf_tensor_read: %s: tensor '%.*s': element %lld is NaN or infinite "
                                   "(its Q8_0 block scale); weights must be finite",
                                   g->path, SHOW(g, t->name_at, t->name_len), (long long)bad);
        return EAPIG_OK;
    }
    default:
        return eapig_set_error(EAPIG_ERR_ARG,
                               "eapig_gguf_tensor_read: %s: tensor '%.*s' has type %s; eapig reads F32, F16, BF16 "
                               "and Q8_0 (requantize the file to one of those)",
                               g->path, SHOW(g, t->name_at, t->name_len), GGML_TYPES[t->type].name);
    }
    /* One stored row per ne[0] elements; the file layer checks the byte count again. */
    int64_t cols = t->ne[0], rows = n / cols;
    int s = eapig_file_tensor(g->file, t->begin, t->end, dtype, dst, rows, cols, 0);
    if (s) {
        char msg[512];
        snprintf(msg, sizeof msg, "%s", eapig_last_error());
        return eapig_set_error(s, "eapig_gguf_tensor_read: tensor '%.*s': %s", SHOW(g, t->name_at, t->name_len), msg);
    }
    return EAPIG_OK;
}
