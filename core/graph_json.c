/* graph_json.c: EAP-IG's graph JSON layout, written and read in bounded memory.
 *
 *   {"cfg": {...}, "nodes": {"input": {"in_graph": true, ...}, ...},
 *    "edges": {"input->a0.h0<q>": {"score": 0.5, "in_graph": false}, ...}}
 *
 * A Llama-3-8B-sized graph has 1.6 M edges (~100 MB of JSON): a general JSON decoder builds a
 * table per edge. Here the writer formats edges into a caller's buffer, chunk by chunk, and the
 * reader streams the file through a window, parsing one node or edge entry at a time straight
 * into the graph's buffers. Names come from the caller (the Lua graph owns the layout), as one
 * block: n_forward source names then n_backward destination names, each NUL-terminated.
 *
 * NF = n_forward sources, NB = n_backward destinations, D = d_model. Every length read from the
 * file is checked against the window; an entry longer than MAX_WINDOW is an error, not a crash.
 */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

enum { FIRST_WINDOW = 1 << 20, MAX_WINDOW = 1 << 28, MAX_NAME = 512, MAX_NUMBER = 400, MAX_DEPTH = 64 };

/* ---- names -------------------------------------------------------------------------------- */

/* Open-addressing table from a name to its index (FNV-1a hash). */
typedef struct name_table {
    const char **names; /* (n) */
    size_t *lens;       /* (n) */
    int32_t *slots;     /* (mask + 1): index, or -1 */
    size_t mask;
    int32_t n;
} name_table;

static uint64_t fnv1a(const char *s, size_t n) {
    uint64_t h = 1469598103934665603ULL;
    for (size_t i = 0; i < n; i++) h = (h ^ (uint8_t)s[i]) * 1099511628211ULL;
    return h;
}

static void names_free(name_table *t) {
    free(t->names);
    free(t->lens);
    free(t->slots);
    memset(t, 0, sizeof *t);
}

/* Splits `count` NUL-terminated names off the block at *at (checked against its end). */
static int names_init(name_table *t, const char *block, size_t block_len, size_t *at, int32_t count,
                      const char *where) {
    memset(t, 0, sizeof *t);
    if (count < 0) return eapig_set_error(EAPIG_ERR_ARG, "%s: negative name count %d", where, (int)count);
    size_t size = 16;
    while (size < 2 * (size_t)count + 1) size *= 2;
    t->names = malloc(((size_t)count + 1) * sizeof *t->names);
    t->lens = malloc(((size_t)count + 1) * sizeof *t->lens);
    t->slots = malloc(size * sizeof *t->slots);
    if (!t->names || !t->lens || !t->slots) {
        names_free(t);
        return eapig_set_error(EAPIG_ERR_NOMEM, "%s: out of memory for %d names", where, (int)count);
    }
    t->mask = size - 1;
    t->n = count;
    for (size_t i = 0; i < size; i++) t->slots[i] = -1;
    for (int32_t i = 0; i < count; i++) {
        const char *s = block + *at;
        const char *nul = *at < block_len ? memchr(s, '\0', block_len - *at) : NULL;
        if (!nul) {
            names_free(t);
            return eapig_set_error(EAPIG_ERR_ARG, "%s: the name block ends before name %d", where, (int)i);
        }
        t->names[i] = s;
        t->lens[i] = (size_t)(nul - s);
        *at += t->lens[i] + 1;
        size_t h = (size_t)fnv1a(s, t->lens[i]) & t->mask;
        while (t->slots[h] >= 0) h = (h + 1) & t->mask;
        t->slots[h] = i;
    }
    return EAPIG_OK;
}

static int32_t names_find(const name_table *t, const char *s, size_t n) {
    size_t h = (size_t)fnv1a(s, n) & t->mask;
    for (int32_t i; (i = t->slots[h]) >= 0; h = (h + 1) & t->mask) {
        if (t->lens[i] == n && memcmp(t->names[i], s, n) == 0) return i;
    }
    return -1;
}

/* ---- writer ------------------------------------------------------------------------------- */

/* A float as the Lua writer wrote it ("%.9g": 9 significant digits read back to the same
 * float32), NaN and infinities as Python's json module writes them. Returns the length. */
static int format_score(char *out, size_t cap, float x) {
    if (isnan(x)) return snprintf(out, cap, "NaN");
    if (isinf(x)) return snprintf(out, cap, x > 0 ? "Infinity" : "-Infinity");
    return snprintf(out, cap, "%.9g", (double)x);
}

int eapig_graph_json_edges(char *out, size_t cap, size_t *out_len, int64_t *next, const int32_t *order,
                           int64_t n_edges, const float *scores, const uint8_t *in_graph, const char *names,
                           size_t names_len, int32_t n_forward, int32_t n_backward) {
    const char *where = "eapig_graph_json_edges";
    if (!out || !out_len || !next || !order || !scores || !in_graph || !names || n_forward < 1 || n_backward < 1 ||
        *next < 0 || n_edges < 0)
        return eapig_set_error(EAPIG_ERR_ARG, "%s: bad arguments", where);
    name_table src, dst;
    size_t at = 0;
    int rc = names_init(&src, names, names_len, &at, n_forward, where);
    if (rc) return rc;
    rc = names_init(&dst, names, names_len, &at, n_backward, where);
    if (rc) {
        names_free(&src);
        return rc;
    }
    const int64_t cells = (int64_t)n_forward * n_backward;
    size_t len = 0;
    int64_t k = *next;
    for (; k < n_edges; k++) {
        int64_t i = order[k];
        if (i < 0 || i >= cells) {
            rc = eapig_set_error(EAPIG_ERR_ARG, "%s: edge %lld has index %lld outside (%d, %d)", where, (long long)k,
                                 (long long)i, (int)n_forward, (int)n_backward);
            break;
        }
        int32_t u = (int32_t)(i / n_backward), v = (int32_t)(i % n_backward);
        char number[48];
        int nlen = format_score(number, sizeof number, scores[i]);
        /* ,\n"SRC->DST": {"score": N, "in_graph": false} */
        size_t need = 3 + src.lens[u] + 2 + dst.lens[v] + 13 + (size_t)nlen + 15 + 5 + 1;
        if (len + need > cap) {
            if (len == 0) rc = eapig_set_error(EAPIG_ERR_ARG, "%s: buffer of %zu bytes too small", where, cap);
            break;
        }
        char *p = out + len;
        if (k > 0) *p++ = ',';
        *p++ = '\n';
        *p++ = '"';
        memcpy(p, src.names[u], src.lens[u]);
        p += src.lens[u];
        *p++ = '-';
        *p++ = '>';
        memcpy(p, dst.names[v], dst.lens[v]);
        p += dst.lens[v];
        memcpy(p, "\": {\"score\": ", 13);
        p += 13;
        memcpy(p, number, (size_t)nlen);
        p += nlen;
        memcpy(p, ", \"in_graph\": ", 14);
        p += 14;
        if (in_graph[i]) {
            memcpy(p, "true}", 5);
            p += 5;
        } else {
            memcpy(p, "false}", 6);
            p += 6;
        }
        len = (size_t)(p - out);
    }
    names_free(&src);
    names_free(&dst);
    *out_len = len;
    *next = k;
    return rc;
}

int eapig_graph_json_neurons(char *out, size_t cap, size_t *out_len, const uint8_t *flags, const float *scores,
                             int32_t d_model) {
    if (!out || !out_len || !flags || !scores || d_model < 1)
        return eapig_set_error(EAPIG_ERR_ARG, "eapig_graph_json_neurons: bad arguments");
    /* per neuron at most "false, " (7) and a score with its ", " (48 + 2), plus the two keys */
    if (cap / 64 < (size_t)d_model + 1)
        return eapig_set_error(EAPIG_ERR_ARG, "eapig_graph_json_neurons: buffer of %zu bytes too small for %d neurons",
                               cap, (int)d_model);
    char *p = out;
    memcpy(p, "\"neurons\": [", 12);
    p += 12;
    for (int32_t d = 0; d < d_model; d++) {
        const char *word = flags[d] ? "true" : "false";
        size_t n = flags[d] ? 4 : 5;
        if (d > 0) *p++ = ',', *p++ = ' ';
        memcpy(p, word, n);
        p += n;
    }
    memcpy(p, "], \"neurons_scores\": [", 22);
    p += 22;
    for (int32_t d = 0; d < d_model; d++) {
        if (d > 0) *p++ = ',', *p++ = ' ';
        p += format_score(p, 48, scores[d]);
    }
    *p++ = ']';
    *out_len = (size_t)(p - out);
    return EAPIG_OK;
}

/* ---- reader: a window over the file ------------------------------------------------------- */

enum { NEED_MORE = 1 }; /* a parse step ran into the end of the window before the end of file */

typedef struct reader {
    FILE *fh;
    const char *path;
    char *buf;      /* (cap) */
    size_t cap;
    size_t len;     /* bytes of buf that hold file data */
    size_t pos;     /* parse position in buf */
    uint64_t base;  /* file offset of buf[0] */
    int eof;
} reader;

/* Keeps buf[pos..len), reads more after it; grows the window when the unit at pos fills it. */
static int refill(reader *r) {
    if (r->eof) return EAPIG_OK;
    if (r->pos > 0) {
        memmove(r->buf, r->buf + r->pos, r->len - r->pos);
        r->base += r->pos;
        r->len -= r->pos;
        r->pos = 0;
    }
    if (r->len == r->cap) {
        if (r->cap >= MAX_WINDOW)
            return eapig_set_error(EAPIG_ERR_IO, "an entry at byte %llu is longer than %d MiB",
                                   (unsigned long long)r->base, MAX_WINDOW >> 20);
        char *bigger = realloc(r->buf, r->cap * 2);
        if (!bigger) return eapig_set_error(EAPIG_ERR_NOMEM, "out of memory for a %zu-byte window", r->cap * 2);
        r->buf = bigger;
        r->cap *= 2;
    }
    size_t got = fread(r->buf + r->len, 1, r->cap - r->len, r->fh);
    if (got == 0) {
        if (ferror(r->fh)) return eapig_set_error(EAPIG_ERR_IO, "read failed: %s", strerror(errno));
        r->eof = 1;
    }
    r->len += got;
    return EAPIG_OK;
}

static int reader_open(reader *r, const char *path) {
    memset(r, 0, sizeof *r);
    r->path = path;
    r->fh = fopen(path, "rb");
    if (!r->fh) return eapig_set_error(EAPIG_ERR_IO, "cannot open: %s", strerror(errno));
    r->buf = malloc(FIRST_WINDOW);
    if (!r->buf) {
        fclose(r->fh);
        return eapig_set_error(EAPIG_ERR_NOMEM, "out of memory for the read window");
    }
    r->cap = FIRST_WINDOW;
    return EAPIG_OK;
}

static void reader_close(reader *r) {
    if (r->fh) fclose(r->fh);
    free(r->buf);
    memset(r, 0, sizeof *r);
}

/* ---- reader: tokens within the window ----------------------------------------------------- */

/* A cursor over buf[.., end): every step checks `p < end` first; at the end it answers NEED_MORE
 * unless the file ended (then the JSON is truncated). */
typedef struct cursor {
    reader *r;
    const char *p, *end;
} cursor;

static uint64_t offset_of(const cursor *c) { return c->r->base + (uint64_t)(c->p - c->r->buf); }

static int syntax(const cursor *c, const char *what) {
    if (c->p >= c->end && c->r->eof)
        return eapig_set_error(EAPIG_ERR_IO, "not valid JSON: the file ends where %s was expected", what);
    return eapig_set_error(EAPIG_ERR_IO, "not valid JSON: expected %s at byte %llu", what,
                           (unsigned long long)offset_of(c));
}

/* NEED_MORE when the window ends here and the file goes on; else a syntax error naming `what`. */
static int at_end(const cursor *c, const char *what) {
    if (!c->r->eof) return NEED_MORE;
    return syntax(c, what);
}

static void skip_ws(cursor *c) {
    while (c->p < c->end && (*c->p == ' ' || *c->p == '\n' || *c->p == '\r' || *c->p == '\t')) c->p++;
}

static int expect(cursor *c, char ch, const char *what) {
    skip_ws(c);
    if (c->p >= c->end) return at_end(c, what);
    if (*c->p != ch) return syntax(c, what);
    c->p++;
    return EAPIG_OK;
}

static int hex4(const char *s, unsigned *out) {
    unsigned v = 0;
    for (int i = 0; i < 4; i++) {
        char ch = s[i];
        v <<= 4;
        if (ch >= '0' && ch <= '9') v |= (unsigned)(ch - '0');
        else if (ch >= 'a' && ch <= 'f') v |= (unsigned)(ch - 'a' + 10);
        else if (ch >= 'A' && ch <= 'F') v |= (unsigned)(ch - 'A' + 10);
        else return 0;
    }
    *out = v;
    return 1;
}

static size_t put_utf8(char *out, unsigned cp) {
    if (cp < 0x80) { out[0] = (char)cp; return 1; }
    if (cp < 0x800) { out[0] = (char)(0xC0 | (cp >> 6)); out[1] = (char)(0x80 | (cp & 0x3F)); return 2; }
    if (cp < 0x10000) {
        out[0] = (char)(0xE0 | (cp >> 12));
        out[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
        out[2] = (char)(0x80 | (cp & 0x3F));
        return 3;
    }
    out[0] = (char)(0xF0 | (cp >> 18));
    out[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
    out[2] = (char)(0x80 | ((cp >> 6) & 0x3F));
    out[3] = (char)(0x80 | (cp & 0x3F));
    return 4;
}

/* A string at the cursor, escapes decoded into out (cap bytes, NUL-terminated; *n its length).
 * out may be NULL to skip the string. A string longer than cap is cut, *truncated set. */
static int read_string(cursor *c, char *out, size_t cap, size_t *n, int *truncated) {
    skip_ws(c);
    if (c->p >= c->end) return at_end(c, "a string");
    if (*c->p != '"') return syntax(c, "a string");
    const char *p = c->p + 1;
    size_t len = 0;
    if (truncated) *truncated = 0;
    char tmp[4];
    for (;;) {
        if (p >= c->end) return at_end(c, "the end of a string");
        unsigned char ch = (unsigned char)*p;
        size_t k = 0;
        if (ch == '"') {
            p++;
            break;
        }
        if (ch < 0x20) {
            c->p = p;
            return syntax(c, "no control character in a string");
        }
        if (ch == '\\') {
            if (p + 1 >= c->end) return at_end(c, "an escape");
            char e = p[1];
            p += 2;
            switch (e) {
            case '"': case '\\': case '/': tmp[0] = e; k = 1; break;
            case 'b': tmp[0] = '\b'; k = 1; break;
            case 'f': tmp[0] = '\f'; k = 1; break;
            case 'n': tmp[0] = '\n'; k = 1; break;
            case 'r': tmp[0] = '\r'; k = 1; break;
            case 't': tmp[0] = '\t'; k = 1; break;
            case 'u': {
                unsigned cp;
                if (p + 4 > c->end) return at_end(c, "a \\u escape");
                if (!hex4(p, &cp)) {
                    c->p = p;
                    return syntax(c, "four hex digits");
                }
                p += 4;
                if (cp >= 0xD800 && cp < 0xDC00) { /* a surrogate pair */
                    unsigned lo;
                    if (p + 6 > c->end) return at_end(c, "a low surrogate");
                    if (p[0] != '\\' || p[1] != 'u' || !hex4(p + 2, &lo) || lo < 0xDC00 || lo >= 0xE000) {
                        c->p = p;
                        return syntax(c, "a low surrogate");
                    }
                    p += 6;
                    cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
                }
                k = put_utf8(tmp, cp);
                break;
            }
            default:
                c->p = p - 1;
                return syntax(c, "a valid escape");
            }
        } else {
            tmp[0] = (char)ch;
            k = 1;
            p++;
        }
        if (out) {
            for (size_t i = 0; i < k; i++) {
                if (len + 1 < cap) out[len++] = tmp[i];
                else if (truncated) *truncated = 1;
            }
        }
    }
    if (out) out[len] = '\0';
    if (n) *n = len;
    c->p = p;
    return EAPIG_OK;
}

/* A number (JSON's grammar, plus NaN, Infinity and -Infinity as Python writes them). */
static int read_number(cursor *c, double *out) {
    skip_ws(c);
    const char *p = c->p, *e = c->end;
    static const char *const specials[] = { "NaN", "Infinity", "-Infinity" };
    static const double values[] = { NAN, INFINITY, -INFINITY };
    for (int i = 0; i < 3; i++) {
        size_t n = strlen(specials[i]);
        size_t have = (size_t)(e - p);
        if (memcmp(p, specials[i], have < n ? have : n) == 0 && p < e) {
            if (have < n) return at_end(c, "a number");
            c->p = p + n;
            *out = values[i];
            return EAPIG_OK;
        }
    }
    const char *q = p;
    if (q < e && *q == '-') q++;
    if (q >= e) return at_end(c, "a number");
    if (*q == '0') q++;
    else if (*q >= '1' && *q <= '9') while (q < e && *q >= '0' && *q <= '9') q++;
    else return syntax(c, "a number");
    if (q < e && *q == '.') {
        q++;
        if (q >= e) return at_end(c, "a digit");
        if (!(*q >= '0' && *q <= '9')) { c->p = q; return syntax(c, "a digit"); }
        while (q < e && *q >= '0' && *q <= '9') q++;
    }
    if (q < e && (*q == 'e' || *q == 'E')) {
        q++;
        if (q < e && (*q == '+' || *q == '-')) q++;
        if (q >= e) return at_end(c, "an exponent");
        if (!(*q >= '0' && *q <= '9')) { c->p = q; return syntax(c, "an exponent"); }
        while (q < e && *q >= '0' && *q <= '9') q++;
    }
    if (q >= e && !c->r->eof) return NEED_MORE; /* the digits may go on in the next block */
    size_t n = (size_t)(q - p);
    if (n > MAX_NUMBER) return syntax(c, "a number shorter than 400 characters");
    char text[MAX_NUMBER + 1];
    memcpy(text, p, n);
    text[n] = '\0';
    *out = strtod(text, NULL);
    c->p = q;
    return EAPIG_OK;
}

static int match_word(cursor *c, const char *word) {
    size_t n = strlen(word), have = (size_t)(c->end - c->p);
    if (memcmp(c->p, word, have < n ? have : n) != 0) return 0;
    return have < n ? -1 : 1;
}

/* Skips any JSON value strictly (depth-limited). kind gets a word for error messages. */
static int skip_value(cursor *c, int depth, const char **kind) {
    skip_ws(c);
    if (c->p >= c->end) return at_end(c, "a value");
    if (depth > MAX_DEPTH) return syntax(c, "less nesting");
    int rc;
    char ch = *c->p;
    if (ch == '"') {
        if (kind) *kind = "a string";
        return read_string(c, NULL, 0, NULL, NULL);
    }
    if (ch == '{' || ch == '[') {
        if (kind) *kind = ch == '{' ? "an object" : "a list";
        char close = ch == '{' ? '}' : ']';
        c->p++;
        skip_ws(c);
        if (c->p >= c->end) return at_end(c, "a value");
        if (*c->p == close) {
            c->p++;
            return EAPIG_OK;
        }
        for (;;) {
            if (ch == '{') {
                if ((rc = read_string(c, NULL, 0, NULL, NULL)) || (rc = expect(c, ':', "':'"))) return rc;
            }
            if ((rc = skip_value(c, depth + 1, NULL))) return rc;
            skip_ws(c);
            if (c->p >= c->end) return at_end(c, "',' or the end of a list or object");
            if (*c->p == ',') { c->p++; continue; }
            if (*c->p == close) { c->p++; return EAPIG_OK; }
            return syntax(c, "',' or the end of a list or object");
        }
    }
    static const char *const words[] = { "true", "false", "null" };
    for (int i = 0; i < 3; i++) {
        int m = match_word(c, words[i]);
        if (m < 0) return at_end(c, "a value");
        if (m > 0) {
            if (kind) *kind = words[i];
            c->p += strlen(words[i]);
            return EAPIG_OK;
        }
    }
    double x;
    if (kind) *kind = "a number";
    return read_number(c, &x);
}

/* A boolean (or 0 / 1, as the Lua reader accepted). *got names what was there otherwise. */
static int read_flag(cursor *c, int *flag, const char **got) {
    skip_ws(c);
    if (c->p >= c->end) return at_end(c, "a value");
    int m;
    if ((m = match_word(c, "true")) != 0) {
        if (m < 0) return at_end(c, "a value");
        c->p += 4;
        *flag = 1;
        return EAPIG_OK;
    }
    if ((m = match_word(c, "false")) != 0) {
        if (m < 0) return at_end(c, "a value");
        c->p += 5;
        *flag = 0;
        return EAPIG_OK;
    }
    if (*c->p == '-' || (*c->p >= '0' && *c->p <= '9')) {
        double x;
        int rc = read_number(c, &x);
        if (rc) return rc;
        *flag = x == 1.0 ? 1 : x == 0.0 ? 0 : -1;
        if (*flag < 0) *got = "a number other than 0 or 1";
        return EAPIG_OK;
    }
    int rc = skip_value(c, 0, got);
    if (rc) return rc;
    *flag = -1;
    return EAPIG_OK;
}

/* A number value, or *is_number = 0 and *got naming what was there. */
static int read_score(cursor *c, double *x, int *is_number, const char **got) {
    skip_ws(c);
    if (c->p >= c->end) return at_end(c, "a value");
    char ch = *c->p;
    if (ch == '-' || (ch >= '0' && ch <= '9') || ch == 'N' || ch == 'I') {
        *is_number = 1;
        return read_number(c, x);
    }
    *is_number = 0;
    return skip_value(c, 0, got);
}

/* ---- reader: the layout ------------------------------------------------------------------- */

/* Where the graph goes; NULL buffers in the header pass. */
typedef struct graph_out {
    name_table src, dst;
    int32_t nf, nb, d_model;
    const uint8_t *real;
    float *scores;             /* (NF, NB) */
    uint8_t *in_graph;         /* (NF, NB) */
    uint8_t *nodes_in_graph;   /* (NF + 1) */
    float *node_scores;        /* (NF) */
    uint8_t *neurons_in_graph; /* (NF, D) or NULL */
    float *neuron_scores;      /* (NF, D) or NULL */
} graph_out;

typedef struct scan {
    int header_only;
    graph_out *g;
    /* header pass */
    char *cfg;
    size_t cfg_cap, cfg_len;
    int32_t level; /* 0 edge, 1 node (a node has "score"), 2 neuron ("neurons" or "neurons_scores") */
    int seen_cfg, seen_nodes, seen_edges;
} scan;

/* The members of one object value; for each key calls member(). Runs within the window. */
typedef int (*member_fn)(cursor *c, void *ctx, const char *key, size_t key_len);

/* After an object's member or entry, at a non-space byte: past a ',' sets *more = 1 (another one
   follows), past the closing '}' sets *more = 0; anything else is a syntax error expecting what. */
static int member_separator(cursor *c, const char *what, int *more) {
    if (*c->p == ',' || *c->p == '}') {
        *more = *c->p == ',';
        c->p++;
        return EAPIG_OK;
    }
    return syntax(c, what);
}

static int read_object(cursor *c, member_fn member, void *ctx) {
    int rc;
    if ((rc = expect(c, '{', "'{'"))) return rc;
    skip_ws(c);
    if (c->p >= c->end) return at_end(c, "a key or '}'");
    if (*c->p == '}') {
        c->p++;
        return EAPIG_OK;
    }
    for (;;) {
        char key[64];
        size_t n;
        int cut, more = 0;
        if ((rc = read_string(c, key, sizeof key, &n, &cut)) || (rc = expect(c, ':', "':'"))) return rc;
        if (cut) n = sizeof key; /* no known key is this long: treat as unknown */
        if ((rc = member(c, ctx, key, n))) return rc;
        skip_ws(c);
        if (c->p >= c->end) return at_end(c, "',' or '}'");
        if ((rc = member_separator(c, "',' or '}'", &more))) return rc;
        if (!more) return EAPIG_OK;
    }
}

static int key_is(const char *key, size_t n, const char *want) { return n == strlen(want) && memcmp(key, want, n) == 0; }

/* -- an edge entry: {"score": number, "in_graph": bool} -- */
typedef struct edge_entry {
    const char *name;
    double score;
    int has_score, flag;
} edge_entry;

static int edge_member(cursor *c, void *ctx, const char *key, size_t n) {
    edge_entry *e = ctx;
    const char *got = "?";
    int rc;
    if (key_is(key, n, "score")) {
        int is_number;
        if ((rc = read_score(c, &e->score, &is_number, &got))) return rc;
        if (!is_number) return eapig_set_error(EAPIG_ERR_ARG, "edge '%s': score must be a number, got %s", e->name, got);
        e->has_score = 1;
        return EAPIG_OK;
    }
    if (key_is(key, n, "in_graph")) {
        if ((rc = read_flag(c, &e->flag, &got))) return rc;
        if (e->flag < 0) return eapig_set_error(EAPIG_ERR_ARG, "edge '%s': in_graph must be a boolean, got %s", e->name, got);
        return EAPIG_OK;
    }
    return skip_value(c, 1, NULL); /* other keys: ignored, as a dict lookup would */
}

static int read_edge(cursor *c, scan *s) {
    char name[MAX_NAME];
    size_t n;
    int cut, rc;
    if ((rc = read_string(c, name, sizeof name, &n, &cut)) || (rc = expect(c, ':', "':'"))) return rc;
    if (s->header_only) return skip_value(c, 0, NULL); /* the header pass only passes over edges */
    if (cut) memcpy(name + sizeof name - 4, "...", 4);
    graph_out *g = s->g;
    const char *arrow = NULL;
    for (size_t i = 0; i + 1 < n; i++) {
        if (name[i] == '-' && name[i + 1] == '>') { arrow = name + i; break; }
    }
    int32_t u = -1, v = -1;
    if (arrow && !cut) {
        u = names_find(&g->src, name, (size_t)(arrow - name));
        v = names_find(&g->dst, arrow + 2, n - (size_t)(arrow - name) - 2);
    }
    if (u < 0 || v < 0) return eapig_set_error(EAPIG_ERR_ARG, "unknown edge '%s'", name);
    size_t i = (size_t)u * (size_t)g->nb + (size_t)v;
    if (!g->real[i])
        return eapig_set_error(EAPIG_ERR_ARG, "'%s' is not an edge of this graph (its source is not upstream)", name);
    skip_ws(c);
    if (c->p >= c->end) return at_end(c, "an object");
    if (*c->p != '{') {
        const char *got = "?";
        if ((rc = skip_value(c, 0, &got))) return rc;
        return eapig_set_error(EAPIG_ERR_ARG, "edge '%s': expected an object, got %s", name, got);
    }
    edge_entry e = { name, 0, 0, -1 };
    if ((rc = read_object(c, edge_member, &e))) return rc;
    if (!e.has_score) return eapig_set_error(EAPIG_ERR_ARG, "edge '%s': score is missing", name);
    if (e.flag < 0) return eapig_set_error(EAPIG_ERR_ARG, "edge '%s': in_graph is missing", name);
    g->scores[i] = (float)e.score;
    g->in_graph[i] = (uint8_t)e.flag;
    return EAPIG_OK;
}

/* -- a node entry: {"in_graph": bool, "score": number, "neurons": [bool], "neurons_scores": [number]} -- */
typedef struct node_entry {
    scan *s;
    const char *name;
    int32_t u; /* NF for logits */
    int flag;
} node_entry;

static int neuron_list(cursor *c, node_entry *e, int scores) {
    graph_out *g = e->s->g;
    const char *key = scores ? "neurons_scores" : "neurons";
    int32_t D = g->d_model;
    if (e->u == g->nf) return skip_value(c, 1, NULL); /* logits has no neurons */
    if (!g->neurons_in_graph)
        return eapig_set_error(EAPIG_ERR_ARG, "node '%s': %s on a graph without neurons", e->name, key);
    int rc;
    skip_ws(c);
    if (c->p >= c->end) return at_end(c, "a list");
    int32_t count = 0;
    if (*c->p == '[') {
        c->p++;
        skip_ws(c);
        if (c->p >= c->end) return at_end(c, "a value or ']'");
        if (*c->p == ']') c->p++;
        else for (;;) {
            const char *got = "?";
            if (count >= D) return eapig_set_error(EAPIG_ERR_ARG, "node '%s': %s must be a list of d_model (%d) entries", e->name, key, (int)D);
            size_t at = (size_t)e->u * (size_t)D + (size_t)count;
            if (scores) {
                double x;
                int is_number;
                if ((rc = read_score(c, &x, &is_number, &got))) return rc;
                if (!is_number) return eapig_set_error(EAPIG_ERR_ARG, "node '%s': %s[%d] must be a number, got %s", e->name, key, (int)count + 1, got);
                if (!isnan(x)) g->neuron_scores[at] = (float)x; /* NaN: unscored, as already held */
            } else {
                int flag;
                if ((rc = read_flag(c, &flag, &got))) return rc;
                if (flag < 0) return eapig_set_error(EAPIG_ERR_ARG, "node '%s': %s[%d] must be a boolean, got %s", e->name, key, (int)count + 1, got);
                g->neurons_in_graph[at] = (uint8_t)flag;
            }
            count++;
            skip_ws(c);
            if (c->p >= c->end) return at_end(c, "',' or ']'");
            if (*c->p == ',') { c->p++; continue; }
            if (*c->p == ']') { c->p++; break; }
            return syntax(c, "',' or ']'");
        }
    } else {
        if ((rc = skip_value(c, 0, NULL))) return rc;
        count = -1;
    }
    if (count != D) return eapig_set_error(EAPIG_ERR_ARG, "node '%s': %s must be a list of d_model (%d) entries", e->name, key, (int)D);
    return EAPIG_OK;
}

static int node_member(cursor *c, void *ctx, const char *key, size_t n) {
    node_entry *e = ctx;
    scan *s = e->s;
    const char *got = "?";
    int rc;
    if (s->header_only) { /* only which keys appear matters: they decide the graph's level */
        if (key_is(key, n, "neurons") || key_is(key, n, "neurons_scores")) s->level = 2;
        else if (key_is(key, n, "score") && s->level < 1) s->level = 1;
        return skip_value(c, 1, NULL);
    }
    graph_out *g = s->g;
    if (key_is(key, n, "in_graph")) {
        if ((rc = read_flag(c, &e->flag, &got))) return rc;
        if (e->flag < 0) return eapig_set_error(EAPIG_ERR_ARG, "node '%s': in_graph must be a boolean, got %s", e->name, got);
        return EAPIG_OK;
    }
    if (key_is(key, n, "score")) {
        double x;
        int is_number;
        if ((rc = read_score(c, &x, &is_number, &got))) return rc;
        if (!is_number) return eapig_set_error(EAPIG_ERR_ARG, "node '%s': score must be a number, got %s", e->name, got);
        /* NaN is "unscored", which the buffer already holds in the graph's own NaN */
        if (e->u < g->nf && !isnan(x)) g->node_scores[e->u] = (float)x;
        return EAPIG_OK;
    }
    if (key_is(key, n, "neurons")) return neuron_list(c, e, 0);
    if (key_is(key, n, "neurons_scores")) return neuron_list(c, e, 1);
    return skip_value(c, 1, NULL);
}

static int read_node(cursor *c, scan *s) {
    char name[MAX_NAME];
    size_t n;
    int cut, rc;
    if ((rc = read_string(c, name, sizeof name, &n, &cut)) || (rc = expect(c, ':', "':'"))) return rc;
    if (cut) memcpy(name + sizeof name - 4, "...", 4);
    node_entry e = { s, name, -1, -1 };
    if (!s->header_only) {
        graph_out *g = s->g;
        e.u = cut ? -1 : key_is(name, n, "logits") ? g->nf : names_find(&g->src, name, n);
        if (e.u < 0) return eapig_set_error(EAPIG_ERR_ARG, "node '%s': unknown node (this cfg has no such node)", name);
    }
    skip_ws(c);
    if (c->p >= c->end) return at_end(c, "an object");
    if (*c->p != '{') {
        const char *got = "?";
        if ((rc = skip_value(c, 0, &got))) return rc;
        if (s->header_only) return EAPIG_OK; /* reported by the full pass */
        return eapig_set_error(EAPIG_ERR_ARG, "node '%s': expected an object, got %s", name, got);
    }
    if ((rc = read_object(c, node_member, &e))) return rc;
    if (s->header_only) return EAPIG_OK;
    if (e.flag < 0) return eapig_set_error(EAPIG_ERR_ARG, "node '%s': in_graph is missing", name);
    if (e.u < s->g->nf) s->g->nodes_in_graph[e.u] = (uint8_t)e.flag; /* logits is always in */
    return EAPIG_OK;
}

/* ---- reader: the top level, one unit at a time ------------------------------------------- */

/* States between units. A unit (a key and its colon, one node or edge entry, a separator) is
 * parsed whole from the window or not at all: on NEED_MORE the window is refilled (kept from
 * the unit's start) and the unit parsed again. */
enum {
    TOP_OPEN,       /* '{' */
    TOP_KEY_FIRST,  /* a key or '}' */
    TOP_KEY,        /* a key */
    TOP_NEXT,       /* ',' or '}' after a top-level value */
    SECTION_OPEN,   /* '{' of nodes / edges */
    SECTION_FIRST,  /* an entry or '}' */
    SECTION_ENTRY,  /* an entry */
    SECTION_NEXT,   /* ',' or '}' after an entry */
    SKIP_VALUE,     /* a top-level value to pass over */
    TOP_DONE        /* only whitespace until the end */
};

enum { SEC_NONE, SEC_NODES, SEC_EDGES };

static int scan_file(reader *r, scan *s) {
    int state = TOP_OPEN, section = SEC_NONE, rc = EAPIG_OK, more = 0;
    for (;;) {
        cursor c = { r, r->buf + r->pos, r->buf + r->len };
        /* all the header pass needs: the cfg, and the level (neuron needs no more nodes read) */
        if (s->header_only && s->seen_cfg && (s->seen_nodes || s->level == 2)) return EAPIG_OK;
        skip_ws(&c);
        if (c.p >= c.end) {
            r->pos = (size_t)(c.p - r->buf);
            if (r->eof) break;
            if ((rc = refill(r))) return rc;
            continue;
        }
        switch (state) {
        case TOP_OPEN:
            rc = expect(&c, '{', "'{' (a JSON object)");
            if (!rc) state = TOP_KEY_FIRST;
            break;
        case TOP_KEY_FIRST:
            if (*c.p == '}') {
                c.p++;
                state = TOP_DONE;
                break;
            }
            /* fall through */
        case TOP_KEY: {
            char key[16];
            size_t n;
            int cut;
            rc = read_string(&c, key, sizeof key, &n, &cut);
            if (!rc) rc = expect(&c, ':', "':'");
            if (rc) break;
            if (cut) n = sizeof key;
            if (key_is(key, n, "cfg")) {
                s->seen_cfg = 1;
                if (s->header_only) {
                    const char *start;
                    skip_ws(&c);
                    start = c.p;
                    if ((rc = skip_value(&c, 0, NULL))) {
                        if (rc == NEED_MORE) s->seen_cfg = 0;
                        break;
                    }
                    size_t len = (size_t)(c.p - start);
                    if (len + 1 > s->cfg_cap)
                        return eapig_set_error(EAPIG_ERR_ARG, "cfg is longer than %zu bytes", s->cfg_cap - 1);
                    memcpy(s->cfg, start, len);
                    s->cfg[len] = '\0';
                    s->cfg_len = len;
                    state = TOP_NEXT;
                } else {
                    state = SKIP_VALUE;
                }
            } else if (key_is(key, n, "nodes") && !(s->header_only && s->seen_nodes)) {
                section = SEC_NODES;
                state = SECTION_OPEN;
            } else if (key_is(key, n, "edges")) {
                section = SEC_EDGES;
                state = SECTION_OPEN;
            } else {
                state = SKIP_VALUE;
            }
            break;
        }
        case SECTION_OPEN:
            if (*c.p != '{') {
                return eapig_set_error(EAPIG_ERR_ARG, "missing or malformed key '%s'",
                                       section == SEC_NODES ? "nodes" : "edges");
            }
            c.p++;
            state = SECTION_FIRST;
            break;
        case SECTION_FIRST:
            if (*c.p == '}') {
                c.p++;
                goto section_done;
            }
            /* fall through */
        case SECTION_ENTRY:
            rc = section == SEC_NODES ? read_node(&c, s) : read_edge(&c, s);
            if (!rc) state = SECTION_NEXT;
            break;
        case SECTION_NEXT:
            rc = member_separator(&c, "',' or '}' between entries", &more);
            if (rc) break;
            if (more) {
                state = SECTION_ENTRY;
                break;
            }
            goto section_done;
        section_done:
            if (section == SEC_NODES) s->seen_nodes = 1;
            else s->seen_edges = 1;
            section = SEC_NONE;
            state = TOP_NEXT;
            break;
        case SKIP_VALUE:
            rc = skip_value(&c, 0, NULL);
            if (!rc) state = TOP_NEXT;
            break;
        case TOP_NEXT:
            rc = member_separator(&c, "',' or '}'", &more);
            if (!rc) state = more ? TOP_KEY : TOP_DONE;
            break;
        case TOP_DONE:
            return syntax(&c, "the end of the file after the top-level object");
        }
        if (rc == NEED_MORE) { /* parse the unit again from its start with more of the file */
            if ((rc = refill(r))) return rc;
            continue;
        }
        if (rc) return rc;
        r->pos = (size_t)(c.p - r->buf);
    }
    if (state != TOP_DONE) {
        cursor c = { r, r->buf + r->len, r->buf + r->len };
        return syntax(&c, state == TOP_OPEN ? "'{' (a JSON object)" : "the rest of the object");
    }
    if (!s->seen_cfg) return eapig_set_error(EAPIG_ERR_ARG, "missing or malformed key 'cfg'");
    if (!s->header_only && !s->seen_nodes) return eapig_set_error(EAPIG_ERR_ARG, "missing or malformed key 'nodes'");
    if (!s->header_only && !s->seen_edges) return eapig_set_error(EAPIG_ERR_ARG, "missing or malformed key 'edges'");
    return EAPIG_OK;
}

int eapig_graph_json_header(const char *path, char *cfg, size_t cfg_cap, size_t *cfg_len, int32_t *level) {
    if (!path || !cfg || cfg_cap < 2 || !cfg_len || !level)
        return eapig_set_error(EAPIG_ERR_ARG, "eapig_graph_json_header: bad arguments");
    reader r;
    int rc = reader_open(&r, path);
    if (rc) return rc;
    scan s = { 1, NULL, cfg, cfg_cap, 0, 0, 0, 0, 0 };
    rc = scan_file(&r, &s);
    reader_close(&r);
    if (rc) return rc;
    if (!s.seen_nodes && s.level < 2) return eapig_set_error(EAPIG_ERR_ARG, "missing or malformed key 'nodes'");
    *cfg_len = s.cfg_len;
    *level = s.level;
    return EAPIG_OK;
}

int eapig_graph_json_read(const char *path, const char *names, size_t names_len, int32_t n_forward,
                          int32_t n_backward, int32_t d_model, const uint8_t *real, float *scores, uint8_t *in_graph,
                          uint8_t *nodes_in_graph, float *node_scores, uint8_t *neurons_in_graph,
                          float *neuron_scores) {
    const char *where = "eapig_graph_json_read";
    if (!path || !names || n_forward < 1 || n_backward < 1 || d_model < 1 || !real || !scores || !in_graph ||
        !nodes_in_graph || !node_scores || (!neurons_in_graph) != (!neuron_scores))
        return eapig_set_error(EAPIG_ERR_ARG, "%s: bad arguments", where);
    graph_out g = { .nf = n_forward, .nb = n_backward, .d_model = d_model, .real = real, .scores = scores,
                    .in_graph = in_graph, .nodes_in_graph = nodes_in_graph, .node_scores = node_scores,
                    .neurons_in_graph = neurons_in_graph, .neuron_scores = neuron_scores };
    size_t at = 0;
    int rc = names_init(&g.src, names, names_len, &at, n_forward, where);
    if (rc) return rc;
    if ((rc = names_init(&g.dst, names, names_len, &at, n_backward, where))) {
        names_free(&g.src);
        return rc;
    }
    reader r;
    if (!(rc = reader_open(&r, path))) {
        scan s = { 0, &g, NULL, 0, 0, 0, 0, 0, 0 };
        rc = scan_file(&r, &s);
        reader_close(&r);
    }
    names_free(&g.src);
    names_free(&g.dst);
    return rc;
}
