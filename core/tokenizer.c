/* tokenizer.c: byte-pair encoding for the tokenizers of GPT-2, Llama-2/3, Qwen2, Mistral and
 * llama2.c: pieces and their lookup table, merge ranks in a pair hash table, pre-tokenization
 * (PCRE2 patterns, metaspace), added-token matching, the merge loop, decoding, and the reader of
 * llama2.c's tokenizer.bin.
 *
 * Glossary: V = vocabulary size; a "piece" is a vocabulary string in its internal form (raw bytes
 * for byte-level tokenizers, the file's text otherwise); a "word" is one pre-tokenized stretch
 * of text that merges never cross; a "symbol" is a token id inside a word during merging.
 *
 * Byte-level vocabularies spell bytes in GPT-2's printable alphabet; pieces are decoded to raw
 * bytes on the way in, so the text never has to be mapped into that alphabet and back.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include "internal.h"

/* The pre-tokenizer patterns (Hugging Face's, in PCRE2 syntax, which these need no change for). */
static const char *const PATTERN_GPT2 =
    "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";
static const char *const PATTERN_LLAMA3 =
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}"
    "| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
static const char *const PATTERN_QWEN2 =
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}"
    "| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";

/* Per-id facts. */
enum {
    TOK_PIECE = 1,   /* has a vocabulary piece */
    TOK_BYTE = 2,    /* the piece is "<0xHH>": it stands for one raw byte */
    TOK_CONTROL = 4, /* EAPIG_TOKEN_CONTROL */
    TOK_ADDED = 8,   /* has added-token content (decoded as that content) */
    TOK_MATCH = 16   /* EAPIG_TOKEN_MATCH */
};

/* Merge rule: (left, right) -> merged, applied lowest rank first. */
typedef struct pair_slot {
    uint64_t key; /* left << 32 | right; EMPTY_KEY when free */
    int32_t rank;
    int32_t merged;
} pair_slot;
#define EMPTY_KEY UINT64_MAX

/* Added-token trie edge: key = node << 8 | byte. */
typedef struct trie_edge {
    uint64_t key; /* EMPTY_KEY when free */
    int32_t child;
} trie_edge;

/* A pre-tokenizer pattern may backtrack this much in one match before the text is refused: a
 * hostile pattern from tokenizer.json cannot make encoding take exponential time. The patterns
 * that ship (GPT-2, Llama-3, Qwen2) stay orders of magnitude below it on any text. */
#define MATCH_LIMIT 10000000u
#define MATCH_DEPTH_LIMIT 100000u

/* The match limit bounds one start position; a pattern can still be quadratic by design (`a+b|.`
 * on a run of letters: every start position scans to the end of the run). So each match looks
 * only at a window of the text ahead of its start, PRETOK_WINDOW bytes at first, doubled while
 * PCRE2 reports that it needed the bytes past the window (PCRE2_PARTIAL_HARD); the bytes every
 * window spans are charged to a budget of PRETOK_BUDGET_PER_BYTE per text byte plus
 * PRETOK_BUDGET_BASE, and a text that exhausts it is refused. The shipped patterns need about
 * one window per word (a few dozen bytes per text byte at most). */
#ifndef PRETOK_WINDOW
#define PRETOK_WINDOW 64
#endif
#define PRETOK_BUDGET_PER_BYTE 128
#define PRETOK_BUDGET_BASE ((size_t)1 << 20)
/* The same for the added-token trie walks of encoding (plus PRETOK_BUDGET_BASE): see there. */
#define ADDED_WALK_PER_BYTE 64

struct eapig_tokenizer {
    eapig_tokenizer_config cfg; /* pattern and space point at the copies below */
    char *pattern;
    char *space;
    size_t space_len;
    int32_t V;
    uint8_t *flags;      /* (V) TOK_* */
    float *score;        /* (V) */
    uint32_t *piece_off; /* (V) into arena */
    uint32_t *piece_len; /* (V) */
    uint32_t *added_off; /* (V) into arena, for TOK_ADDED */
    uint32_t *added_len; /* (V) */
    uint8_t *byte_value; /* (V) the byte a TOK_BYTE token stands for */
    char *arena;         /* every piece's and added token's bytes */
    size_t arena_len, arena_cap;
    int32_t *piece_table; /* (piece_cap) open addressing over piece bytes -> id, -1 = free */
    size_t piece_cap, n_pieces;
    pair_slot *pairs;     /* (pair_cap) open addressing */
    size_t pair_cap, n_pairs;
    int32_t n_merges;
    int32_t byte_id[256]; /* the symbol that starts a word for each raw byte, or -1 */
    /* Added tokens in a byte trie, so loading is linear in their total length and matching at
     * a text position costs at most the longest token's length, however many there are. */
    trie_edge *trie;          /* (trie_cap) open addressing: (node, byte) -> child node */
    size_t trie_cap, trie_edges;
    int32_t *node_added;      /* (n_nodes) the first added token whose content ends here, or -1 */
    int32_t *node_match;      /* (n_nodes) the lowest TOK_MATCH id whose content ends here, or -1 */
    size_t n_nodes, nodes_cap;
    int32_t n_match;
    pcre2_code *re;
    pcre2_match_context *match_ctx; /* bounds the backtracking of one pre-tokenizer match */
    int jit_partial;                /* the pattern is JIT-compiled for PCRE2_PARTIAL_HARD too */
};

/* ---- small helpers ------------------------------------------------------------------------ */

/* Piece hashes are polynomial (h = h * HASH_BASE + byte + 1, mod 2^64) so that the hash of any
 * prefix or suffix of a piece follows from running sums in O(1) (rank_by_score cuts every piece
 * at every byte), then mixed so the low bits (the table index) depend on every byte. */
#define HASH_BASE 0x100000001b3ull
static uint64_t hash_raw(const char *s, size_t n) {
    uint64_t h = 0;
    for (size_t i = 0; i < n; i++) h = h * HASH_BASE + (uint8_t)s[i] + 1;
    return h;
}

static uint64_t hash_mix(uint64_t h) {
    h ^= h >> 29;
    h *= 0xbf58476d1ce4e5b9ull;
    h ^= h >> 32;
    return h;
}

static uint64_t hash_bytes(const char *s, size_t n) { return hash_mix(hash_raw(s, n)); }

static uint64_t hash_pair(uint64_t key) {
    key ^= key >> 31;
    key *= 0x9e3779b97f4a7c15ull;
    key ^= key >> 29;
    return key;
}

/* Length of the UTF-8 character at s (n bytes left): 1..4, or 1 for a byte that does not start
 * a valid character, so invalid text still splits into symbols one byte each. */
static size_t utf8_char_len(const uint8_t *s, size_t n) {
    uint8_t c = s[0];
    size_t len;
    uint8_t lo = 0x80, hi = 0xbf; /* allowed range of the second byte */
    if (c < 0x80) return 1;
    if (c >= 0xc2 && c <= 0xdf) len = 2;
    else if (c >= 0xe0 && c <= 0xef) {
        len = 3;
        if (c == 0xe0) lo = 0xa0;       /* no overlong forms */
        else if (c == 0xed) hi = 0x9f;  /* no surrogates */
    } else if (c >= 0xf0 && c <= 0xf4) {
        len = 4;
        if (c == 0xf0) lo = 0x90;
        else if (c == 0xf4) hi = 0x8f;  /* nothing above U+10FFFF */
    } else return 1;
    if (n < len || s[1] < lo || s[1] > hi) return 1;
    for (size_t i = 2; i < len; i++)
        if ((s[i] & 0xc0) != 0x80) return 1;
    return len;
}

/* GPT-2's byte-to-unicode alphabet: printable Latin-1 bytes (0x21-0x7E, 0xA1-0xAC, 0xAE-0xFF)
 * stand for themselves; the other 68 bytes (0x00-0x20, 0x7F-0xA0, 0xAD), in byte order, for
 * U+0100 .. U+0143. Returns the byte for code point cp, or -1. */
static int byte_of_codepoint(uint32_t cp) {
    if (cp < 256) return (cp >= 0x21 && cp <= 0x7e) || (cp >= 0xa1 && cp <= 0xac) || cp >= 0xae ? (int)cp : -1;
    if (cp >= 256 + 68) return -1;
    uint32_t k = cp - 256;
    return k < 33 ? (int)k : k < 67 ? (int)(0x7f + k - 33) : 0xad;
}

/* Decodes a piece spelled in the byte-level alphabet into raw bytes (out has room for len bytes:
 * the raw form is never longer). Returns the raw length, or -1 when a character is outside the
 * alphabet (then the piece is kept as written). */
static long bytelevel_decode(const char *piece, size_t len, char *out) {
    const uint8_t *s = (const uint8_t *)piece;
    size_t i = 0, o = 0;
    while (i < len) {
        size_t cl = utf8_char_len(s + i, len - i);
        uint32_t cp;
        if (cl == 1) {
            if (s[i] >= 0x80) return -1;
            cp = s[i];
        } else if (cl == 2) {
            cp = ((uint32_t)(s[i] & 0x1f) << 6) | (s[i + 1] & 0x3f);
        } else {
            return -1; /* the alphabet ends at U+0143 */
        }
        int b = byte_of_codepoint(cp);
        if (b < 0) return -1;
        out[o++] = (char)b;
        i += cl;
    }
    return (long)o;
}

static int parse_byte_piece(const char *p, size_t len) {
    /* "<0xHH>" -> HH, else -1 */
    if (len != 6 || p[0] != '<' || p[1] != '0' || p[2] != 'x' || p[5] != '>') return -1;
    int v = 0;
    for (int i = 3; i < 5; i++) {
        char c = p[i];
        int d = (c >= '0' && c <= '9') ? c - '0'
              : (c >= 'A' && c <= 'F') ? c - 'A' + 10
              : (c >= 'a' && c <= 'f') ? c - 'a' + 10 : -1;
        if (d < 0) return -1;
        v = v * 16 + d;
    }
    return v;
}

static int arena_put(eapig_tokenizer *t, const char *s, size_t n, uint32_t *off) {
    if (t->arena_len + n > UINT32_MAX)
        return eapig_set_error(EAPIG_ERR_NOMEM, "eapig_tokenizer: pieces exceed 4 GiB");
    if (t->arena_len + n > t->arena_cap) {
        size_t cap = t->arena_cap ? t->arena_cap : 4096;
        while (cap < t->arena_len + n) cap *= 2;
        char *p = realloc(t->arena, cap);
        if (!p) return eapig_set_error(EAPIG_ERR_NOMEM, "eapig_tokenizer: out of memory for pieces");
        t->arena = p;
        t->arena_cap = cap;
    }
    if (n) memcpy(t->arena + t->arena_len, s, n);
    *off = (uint32_t)t->arena_len;
    t->arena_len += n;
    return EAPIG_OK;
}

/* ---- the piece table: piece bytes -> id ------------------------------------------------- */

/* The id of piece s (n bytes) whose hash_raw is raw, or -1. */
static int32_t piece_lookup_raw(const eapig_tokenizer *t, const char *s, size_t n, uint64_t raw) {
    size_t mask = t->piece_cap - 1;
    for (size_t i = hash_mix(raw) & mask;; i = (i + 1) & mask) {
        int32_t id = t->piece_table[i];
        if (id < 0) return -1;
        if (t->piece_len[id] == n && memcmp(t->arena + t->piece_off[id], s, n) == 0) return id;
    }
}

static int32_t piece_lookup(const eapig_tokenizer *t, const char *s, size_t n) {
    return piece_lookup_raw(t, s, n, hash_raw(s, n));
}

static void piece_insert_slot(int32_t *table, size_t cap, const eapig_tokenizer *t, int32_t id) {
    size_t mask = cap - 1;
    size_t i = hash_bytes(t->arena + t->piece_off[id], t->piece_len[id]) & mask;
    while (table[i] >= 0) i = (i + 1) & mask;
    table[i] = id;
}

static int piece_insert(eapig_tokenizer *t, int32_t id) {
    if (2 * (t->n_pieces + 1) > t->piece_cap) {
        size_t cap = t->piece_cap * 2;
        int32_t *table = malloc(cap * sizeof *table);
        if (!table) return eapig_set_error(EAPIG_ERR_NOMEM, "eapig_tokenizer: out of memory for the piece table");
        for (size_t i = 0; i < cap; i++) table[i] = -1;
        for (size_t i = 0; i < t->piece_cap; i++)
            if (t->piece_table[i] >= 0) piece_insert_slot(table, cap, t, t->piece_table[i]);
        free(t->piece_table);
        t->piece_table = table;
        t->piece_cap = cap;
    }
    piece_insert_slot(t->piece_table, t->piece_cap, t, id);
    t->n_pieces++;
    return EAPIG_OK;
}

/* ---- the pair table: (left, right) -> (rank, merged) ------------------------------------ */

static const pair_slot *pair_lookup(const eapig_tokenizer *t, int32_t left, int32_t right) {
    if (!t->n_pairs) return NULL;
    uint64_t key = ((uint64_t)(uint32_t)left << 32) | (uint32_t)right;
    size_t mask = t->pair_cap - 1;
    for (size_t i = hash_pair(key) & mask;; i = (i + 1) & mask) {
        const pair_slot *s = &t->pairs[i];
        if (s->key == key) return s;
        if (s->key == EMPTY_KEY) return NULL;
    }
}

/* Adds a rule unless the pair already has one (the first, best-ranked rule wins). */
static int pair_insert(eapig_tokenizer *t, int32_t left, int32_t right, int32_t rank, int32_t merged) {
    if (2 * (t->n_pairs + 1) > t->pair_cap) {
        size_t cap = t->pair_cap ? t->pair_cap * 2 : 1024;
        pair_slot *p = malloc(cap * sizeof *p);
        if (!p) return eapig_set_error(EAPIG_ERR_NOMEM, "eapig_tokenizer: out of memory for merges");
        for (size_t i = 0; i < cap; i++) p[i].key = EMPTY_KEY;
        for (size_t i = 0; i < t->pair_cap; i++) {
            if (t->pairs[i].key == EMPTY_KEY) continue;
            size_t j = hash_pair(t->pairs[i].key) & (cap - 1);
            while (p[j].key != EMPTY_KEY) j = (j + 1) & (cap - 1);
            p[j] = t->pairs[i];
        }
        free(t->pairs);
        t->pairs = p;
        t->pair_cap = cap;
    }
    uint64_t key = ((uint64_t)(uint32_t)left << 32) | (uint32_t)right;
    size_t mask = t->pair_cap - 1;
    size_t i = hash_pair(key) & mask;
    for (; t->pairs[i].key != EMPTY_KEY; i = (i + 1) & mask)
        if (t->pairs[i].key == key) return EAPIG_OK;
    t->pairs[i].key = key;
    t->pairs[i].rank = rank;
    t->pairs[i].merged = merged;
    t->n_pairs++;
    return EAPIG_OK;
}

/* ---- the added-token trie --------------------------------------------------------------- */

static int32_t trie_child(const eapig_tokenizer *t, int32_t node, uint8_t byte) {
    if (!t->trie_edges) return -1;
    uint64_t key = ((uint64_t)(uint32_t)node << 8) | byte;
    size_t mask = t->trie_cap - 1;
    for (size_t i = hash_pair(key) & mask;; i = (i + 1) & mask) {
        if (t->trie[i].key == key) return t->trie[i].child;
        if (t->trie[i].key == EMPTY_KEY) return -1;
    }
}

static void trie_put(trie_edge *table, size_t cap, uint64_t key, int32_t child) {
    size_t i = hash_pair(key) & (cap - 1);
    while (table[i].key != EMPTY_KEY) i = (i + 1) & (cap - 1);
    table[i].key = key;
    table[i].child = child;
}

/* The trie node where content ends, creating the missing nodes on the way; -1 out of memory. */
static int32_t trie_insert(eapig_tokenizer *t, const char *content, size_t len) {
    int32_t node = 0;
    for (size_t k = 0; k < len; k++) {
        uint8_t byte = (uint8_t)content[k];
        int32_t child = trie_child(t, node, byte);
        if (child >= 0) {
            node = child;
            continue;
        }
        if (t->n_nodes == t->nodes_cap) {
            size_t cap = t->nodes_cap * 2;
            if (cap > INT32_MAX) return -1;
            int32_t *a = realloc(t->node_added, cap * sizeof *a);
            if (!a) return -1;
            t->node_added = a;
            int32_t *m = realloc(t->node_match, cap * sizeof *m);
            if (!m) return -1;
            t->node_match = m;
            t->nodes_cap = cap;
        }
        if (2 * (t->trie_edges + 1) > t->trie_cap) {
            size_t cap = t->trie_cap ? t->trie_cap * 2 : 256;
            trie_edge *table = malloc(cap * sizeof *table);
            if (!table) return -1;
            for (size_t i = 0; i < cap; i++) table[i].key = EMPTY_KEY;
            for (size_t i = 0; i < t->trie_cap; i++)
                if (t->trie[i].key != EMPTY_KEY) trie_put(table, cap, t->trie[i].key, t->trie[i].child);
            free(t->trie);
            t->trie = table;
            t->trie_cap = cap;
        }
        child = (int32_t)t->n_nodes++;
        t->node_added[child] = t->node_match[child] = -1;
        trie_put(t->trie, t->trie_cap, ((uint64_t)(uint32_t)node << 8) | byte, child);
        t->trie_edges++;
        node = child;
    }
    return node;
}

/* The added token whose content is exactly text, or -1. */
static int32_t trie_find(const eapig_tokenizer *t, const char *text, size_t len) {
    int32_t node = 0;
    for (size_t k = 0; k < len && node >= 0; k++) node = trie_child(t, node, (uint8_t)text[k]);
    return node >= 0 ? t->node_added[node] : -1;
}

/* ---- construction ----------------------------------------------------------------------- */

static char *dup_string(const char *s) {
    size_t n = strlen(s) + 1;
    char *p = malloc(n);
    if (p) memcpy(p, s, n);
    return p;
}

static int compile_pattern(eapig_tokenizer *t, const char *pattern) {
    int err = 0;
    PCRE2_SIZE where = 0;
    /* MATCH_INVALID_UTF: text may hold any bytes; invalid sequences are never part of a match, so
     * they fall between matches and are still kept as words. */
    t->re = pcre2_compile((PCRE2_SPTR)pattern, PCRE2_ZERO_TERMINATED,
                          PCRE2_UTF | PCRE2_UCP | PCRE2_MATCH_INVALID_UTF, &err, &where, NULL);
    if (!t->re) {
        PCRE2_UCHAR msg[256];
        pcre2_get_error_message(err, msg, sizeof msg);
        return eapig_set_error(EAPIG_ERR_ARG, "eapig_tokenizer_new: pre-tokenizer pattern: %s at offset %zu",
                               (const char *)msg, (size_t)where);
    }
    /* JIT is an optimisation only: without it (unsupported CPU) the interpreter runs the same
     * (split_words windows the text differently for it: see match_windowed). */
    t->jit_partial = pcre2_jit_compile(t->re, PCRE2_JIT_COMPLETE | PCRE2_JIT_PARTIAL_HARD) == 0;
    if (!(t->match_ctx = pcre2_match_context_create(NULL)))
        return eapig_set_error(EAPIG_ERR_NOMEM, "eapig_tokenizer_new: out of memory");
    pcre2_set_match_limit(t->match_ctx, MATCH_LIMIT);
    pcre2_set_depth_limit(t->match_ctx, MATCH_DEPTH_LIMIT);
    return EAPIG_OK;
}

eapig_tokenizer *eapig_tokenizer_new(const eapig_tokenizer_config *cfg) {
    if (!cfg) {
        eapig_set_error(EAPIG_ERR_ARG, "eapig_tokenizer_new: config is NULL");
        return NULL;
    }
    if (cfg->n_vocab <= 0) {
        eapig_set_error(EAPIG_ERR_ARG, "eapig_tokenizer_new: n_vocab %d must be positive", cfg->n_vocab);
        return NULL;
    }
    if (cfg->symbols != EAPIG_TOK_BYTE_LEVEL && cfg->symbols != EAPIG_TOK_CHARS) {
        eapig_set_error(EAPIG_ERR_ARG, "eapig_tokenizer_new: unknown symbols %d", cfg->symbols);
        return NULL;
    }
    if (cfg->split < EAPIG_TOK_SPLIT_NONE || cfg->split > EAPIG_TOK_SPLIT_METASPACE) {
        eapig_set_error(EAPIG_ERR_ARG, "eapig_tokenizer_new: unknown split %d", cfg->split);
        return NULL;
    }
    if (cfg->prefix < EAPIG_TOK_PREFIX_NONE || cfg->prefix > EAPIG_TOK_PREFIX_FIRST) {
        eapig_set_error(EAPIG_ERR_ARG, "eapig_tokenizer_new: unknown prefix %d", cfg->prefix);
        return NULL;
    }
    if (cfg->split == EAPIG_TOK_SPLIT_REGEX && (!cfg->pattern || !cfg->pattern[0])) {
        eapig_set_error(EAPIG_ERR_ARG, "eapig_tokenizer_new: split REGEX needs a pattern");
        return NULL;
    }
    if (cfg->unk_id < -1 || cfg->unk_id >= cfg->n_vocab) {
        eapig_set_error(EAPIG_ERR_ARG, "eapig_tokenizer_new: unk_id %d outside -1 .. %d", cfg->unk_id,
                        cfg->n_vocab - 1);
        return NULL;
    }
    eapig_tokenizer *t = calloc(1, sizeof *t);
    if (!t) goto nomem;
    t->cfg = *cfg;
    t->cfg.pattern = NULL;
    t->cfg.space = NULL;
    t->V = cfg->n_vocab;
    size_t V = (size_t)cfg->n_vocab;
    t->flags = calloc(V, 1);
    t->score = calloc(V, sizeof *t->score);
    t->piece_off = calloc(V, sizeof *t->piece_off);
    t->piece_len = calloc(V, sizeof *t->piece_len);
    t->added_off = calloc(V, sizeof *t->added_off);
    t->added_len = calloc(V, sizeof *t->added_len);
    t->byte_value = calloc(V, 1);
    t->piece_cap = 1024;
    t->piece_table = malloc(t->piece_cap * sizeof *t->piece_table);
    t->nodes_cap = 64;
    t->n_nodes = 1; /* the root */
    t->node_added = malloc(t->nodes_cap * sizeof *t->node_added);
    t->node_match = malloc(t->nodes_cap * sizeof *t->node_match);
    if (!t->flags || !t->score || !t->piece_off || !t->piece_len || !t->added_off || !t->added_len ||
        !t->byte_value || !t->piece_table || !t->node_added || !t->node_match)
        goto nomem;
    t->node_added[0] = t->node_match[0] = -1;
    for (size_t i = 0; i < t->piece_cap; i++) t->piece_table[i] = -1;
    for (int b = 0; b < 256; b++) t->byte_id[b] = -1;
    if (cfg->space && cfg->space[0]) {
        if (!(t->space = dup_string(cfg->space))) goto nomem;
        t->space_len = strlen(t->space);
        t->cfg.space = t->space;
    }
    const char *pattern = cfg->split == EAPIG_TOK_SPLIT_GPT2     ? PATTERN_GPT2
                        : cfg->split == EAPIG_TOK_SPLIT_LLAMA3   ? PATTERN_LLAMA3
                        : cfg->split == EAPIG_TOK_SPLIT_QWEN2    ? PATTERN_QWEN2
                        : cfg->split == EAPIG_TOK_SPLIT_REGEX    ? cfg->pattern : NULL;
    if (pattern) {
        if (!(t->pattern = dup_string(pattern))) goto nomem;
        t->cfg.pattern = t->pattern;
        if (compile_pattern(t, pattern) != EAPIG_OK) {
            eapig_tokenizer_free(t);
            return NULL;
        }
    }
    return t;
nomem:
    eapig_tokenizer_free(t);
    eapig_set_error(EAPIG_ERR_NOMEM, "eapig_tokenizer_new: out of memory (n_vocab %d)", cfg->n_vocab);
    return NULL;
}

void eapig_tokenizer_free(eapig_tokenizer *t) {
    if (!t) return;
    free(t->pattern);
    free(t->space);
    free(t->flags);
    free(t->score);
    free(t->piece_off);
    free(t->piece_len);
    free(t->added_off);
    free(t->added_len);
    free(t->byte_value);
    free(t->arena);
    free(t->piece_table);
    free(t->pairs);
    free(t->trie);
    free(t->node_added);
    free(t->node_match);
    if (t->match_ctx) pcre2_match_context_free(t->match_ctx);
    if (t->re) pcre2_code_free(t->re);
    free(t);
}

int32_t eapig_tokenizer_n_vocab(const eapig_tokenizer *t) { return t ? t->V : 0; }
int32_t eapig_tokenizer_n_merges(const eapig_tokenizer *t) { return t ? t->n_merges : 0; }

/* The internal form of a piece written in the file's spelling: raw bytes for byte-level
 * vocabularies. Writes into buf (len bytes of room) and returns the length. */
static size_t internal_form(const eapig_tokenizer *t, const char *piece, size_t len, char *buf,
                            const char **out) {
    if (t->cfg.symbols == EAPIG_TOK_BYTE_LEVEL) {
        long n = bytelevel_decode(piece, len, buf);
        if (n >= 0) {
            *out = buf;
            return (size_t)n;
        }
    }
    *out = piece;
    return len;
}

int eapig_tokenizer_set_token(eapig_tokenizer *t, int32_t id, const char *piece, size_t len, float score) {
    if (!t || (!piece && len))
        return eapig_set_error(EAPIG_ERR_ARG, "eapig_tokenizer_set_token: NULL argument");
    if (id < 0 || id >= t->V)
        return eapig_set_error(EAPIG_ERR_ARG, "eapig_tokenizer_set_token: id %d outside 0 .. %d", id, t->V - 1);
    if (t->flags[id] & TOK_PIECE)
        return eapig_set_error(EAPIG_ERR_ARG, "eapig_tokenizer_set_token: id %d is given to two pieces", id);
    if (len == 0)
        return eapig_set_error(EAPIG_ERR_ARG, "eapig_tokenizer_set_token: id %d has an empty piece", id);
    if (!isfinite(score))
        return eapig_set_error(EAPIG_ERR_ARG, "eapig_tokenizer_set_token: id %d has a score that is not finite", id);
    char small[256];
    char *buf = len <= sizeof small ? small : malloc(len);
    if (!buf) return eapig_set_error(EAPIG_ERR_NOMEM, "eapig_tokenizer_set_token: out of memory");
    const char *p;
    size_t n = internal_form(t, piece, len, buf, &p); /* >= 1: each character is at least one byte */
    int status = arena_put(t, p, n, &t->piece_off[id]);
    if (buf != small) free(buf);
    if (status != EAPIG_OK) return status;
    t->piece_len[id] = (uint32_t)n;
    t->score[id] = score;
    /* A piece that repeats an earlier one stays out of the table: the first id wins. */
    if (piece_lookup(t, t->arena + t->piece_off[id], n) < 0 && (status = piece_insert(t, id)) != EAPIG_OK)
        return status;
    t->flags[id] |= TOK_PIECE;
    const char *stored = t->arena + t->piece_off[id];
    if (t->cfg.symbols == EAPIG_TOK_BYTE_LEVEL) {
        if (n == 1 && t->byte_id[(uint8_t)stored[0]] < 0) t->byte_id[(uint8_t)stored[0]] = id;
    } else {
        int b = parse_byte_piece(stored, n);
        if (b >= 0) {
            t->flags[id] |= TOK_BYTE;
            t->byte_value[id] = (uint8_t)b;
            if (t->byte_id[b] < 0) t->byte_id[b] = id;
        }
    }
    return EAPIG_OK;
}

int eapig_tokenizer_set_special(eapig_tokenizer *t, int32_t id, const char *content, size_t len, int32_t flags) {
    if (!t || !content)
        return eapig_set_error(EAPIG_ERR_ARG, "eapig_tokenizer_set_special: NULL argument");
    if (id < 0 || id >= t->V)
        return eapig_set_error(EAPIG_ERR_ARG, "eapig_tokenizer_set_special: id %d outside 0 .. %d", id, t->V - 1);
    if (len == 0)
        return eapig_set_error(EAPIG_ERR_ARG, "eapig_tokenizer_set_special: id %d has empty content", id);
    if (flags & ~(EAPIG_TOKEN_CONTROL | EAPIG_TOKEN_MATCH))
        return eapig_set_error(EAPIG_ERR_ARG, "eapig_tokenizer_set_special: unknown flags %d", flags);
    if (t->flags[id] & TOK_ADDED)
        return eapig_set_error(EAPIG_ERR_ARG, "eapig_tokenizer_set_special: id %d is added twice", id);
    int status = arena_put(t, content, len, &t->added_off[id]);
    if (status != EAPIG_OK) return status;
    int32_t node = trie_insert(t, content, len);
    if (node < 0) return eapig_set_error(EAPIG_ERR_NOMEM, "eapig_tokenizer_set_special: out of memory");
    t->added_len[id] = (uint32_t)len;
    t->flags[id] |= TOK_ADDED;
    if (t->node_added[node] < 0) t->node_added[node] = id; /* the first added wins a lookup */
    if (flags & EAPIG_TOKEN_CONTROL) t->flags[id] |= TOK_CONTROL;
    if (flags & EAPIG_TOKEN_MATCH) {
        /* of two matchable tokens with the same text, the lower id is the one found */
        if (t->node_match[node] < 0 || id < t->node_match[node]) t->node_match[node] = id;
        t->flags[id] |= TOK_MATCH;
        t->n_match++;
    }
    return EAPIG_OK;
}

int eapig_tokenizer_add_merge(eapig_tokenizer *t, const char *left, size_t left_len, const char *right,
                              size_t right_len) {
    if (!t || !left || !right)
        return eapig_set_error(EAPIG_ERR_ARG, "eapig_tokenizer_add_merge: NULL argument");
    int32_t rank = t->n_merges;
    size_t total = left_len + right_len;
    char small[512];
    char *buf = total <= sizeof small ? small : malloc(total);
    if (!buf) return eapig_set_error(EAPIG_ERR_NOMEM, "eapig_tokenizer_add_merge: out of memory");
    const char *l, *r;
    size_t ln = internal_form(t, left, left_len, buf, &l);
    /* Build the concatenation in buf: the left part is already there when it was converted. */
    if (l != buf) memcpy(buf, l, ln);
    size_t rn = internal_form(t, right, right_len, buf + ln, &r);
    if (r != buf + ln) memcpy(buf + ln, r, rn);
    int32_t lid = piece_lookup(t, buf, ln);
    int32_t rid = piece_lookup(t, buf + ln, rn);
    int32_t mid = piece_lookup(t, buf, ln + rn);
    int status = EAPIG_OK;
    if (lid < 0)
        status = eapig_set_error(EAPIG_ERR_ARG, "merge %d: left part '%.*s' is not in the vocabulary", rank + 1,
                                 (int)left_len, left);
    else if (rid < 0)
        status = eapig_set_error(EAPIG_ERR_ARG, "merge %d: right part '%.*s' is not in the vocabulary", rank + 1,
                                 (int)right_len, right);
    else if (mid < 0)
        status = eapig_set_error(EAPIG_ERR_ARG, "merge %d: '%.*s' + '%.*s' is not in the vocabulary", rank + 1,
                                 (int)left_len, left, (int)right_len, right);
    else
        status = pair_insert(t, lid, rid, rank, mid);
    if (buf != small) free(buf);
    if (status == EAPIG_OK) t->n_merges++;
    return status;
}

int eapig_tokenizer_rank_by_score(eapig_tokenizer *t) {
    if (!t) return eapig_set_error(EAPIG_ERR_ARG, "eapig_tokenizer_rank_by_score: NULL tokenizer");
    /* Only plain pieces merge: byte pieces and control tokens never come out of a merge. */
    int32_t n = 0;
    size_t V = (size_t)t->V;
    int32_t *order = malloc(V * sizeof *order), *tmp = malloc(V * sizeof *tmp), *rank = malloc(V * sizeof *rank);
    if (!order || !tmp || !rank) {
        free(order);
        free(tmp);
        free(rank);
        return eapig_set_error(EAPIG_ERR_NOMEM, "eapig_tokenizer_rank_by_score: out of memory");
    }
    for (int32_t id = 0; id < t->V; id++)
        if ((t->flags[id] & (TOK_PIECE | TOK_BYTE | TOK_CONTROL)) == TOK_PIECE) order[n++] = id;
    /* Stable merge sort, highest score first (ids ascending among equals). */
    for (int32_t width = 1; width < n; width *= 2) {
        for (int32_t lo = 0; lo < n; lo += 2 * width) {
            int32_t mid = lo + width < n ? lo + width : n;
            int32_t hi = lo + 2 * width < n ? lo + 2 * width : n;
            int32_t a = lo, b = mid, k = lo;
            while (a < mid && b < hi) tmp[k++] = t->score[order[b]] > t->score[order[a]] ? order[b++] : order[a++];
            while (a < mid) tmp[k++] = order[a++];
            while (b < hi) tmp[k++] = order[b++];
        }
        memcpy(order, tmp, (size_t)n * sizeof *order);
    }
    free(tmp);
    /* Equal scores share a rank so that, as in llama2.c, the leftmost of equally scored pairs
     * merges first. */
    for (int32_t i = 0, r = 0; i < n; i++) {
        if (i > 0 && t->score[order[i]] != t->score[order[i - 1]]) r++;
        rank[order[i]] = r;
    }
    int status = EAPIG_OK;
    /* Every way to cut a piece into two pieces is a pair that merges into it. The hashes of all
     * its prefixes and suffixes come from running sums, so a piece costs O(len) lookups rather
     * than O(len^2) bytes hashed (a 1 MB piece in a tokenizer.bin must not take hours). */
    uint64_t *suffix = NULL; /* (len + 1) hash_raw of s + k */
    size_t suffix_cap = 0;
    for (int32_t i = 0; i < n && status == EAPIG_OK; i++) {
        int32_t id = order[i];
        const char *s = t->arena + t->piece_off[id];
        size_t len = t->piece_len[id];
        if (len < 2) continue;
        if (len + 1 > suffix_cap) {
            uint64_t *p = realloc(suffix, (len + 1) * sizeof *p);
            if (!p) {
                status = eapig_set_error(EAPIG_ERR_NOMEM, "eapig_tokenizer_rank_by_score: out of memory");
                break;
            }
            suffix = p;
            suffix_cap = len + 1;
        }
        suffix[len] = 0;
        uint64_t power = 1;
        for (size_t k = len; k-- > 0;) {
            suffix[k] = suffix[k + 1] + ((uint64_t)(uint8_t)s[k] + 1) * power;
            power *= HASH_BASE;
        }
        uint64_t prefix = 0;
        for (size_t cut = 1; cut < len && status == EAPIG_OK; cut++) {
            prefix = prefix * HASH_BASE + (uint8_t)s[cut - 1] + 1;
            int32_t l = piece_lookup_raw(t, s, cut, prefix);
            if (l < 0) continue;
            int32_t r = piece_lookup_raw(t, s + cut, len - cut, suffix[cut]);
            if (r < 0) continue;
            if ((t->flags[l] & (TOK_BYTE | TOK_CONTROL)) || (t->flags[r] & (TOK_BYTE | TOK_CONTROL))) continue;
            status = pair_insert(t, l, r, rank[id], id);
        }
    }
    free(suffix);
    free(order);
    free(rank);
    if (status == EAPIG_OK) t->n_merges = (int32_t)t->n_pairs;
    return status;
}

/* ---- encoding ----------------------------------------------------------------------------- */

typedef struct heap_entry {
    int32_t rank, pos; /* order: rank, then leftmost */
    int32_t right, left_id, right_id, merged;
} heap_entry;

/* Scratch for one encode call (the tokenizer itself stays read-only and shareable). */
typedef struct encoder {
    const eapig_tokenizer *t;
    int32_t *ids; /* (cap) caller's output */
    size_t cap, n;
    char *buf; /* transformed stretch of text */
    size_t buf_cap;
    int32_t *sym;               /* (sym_cap) symbols of the current word */
    size_t sym_cap;
    int32_t *prev, *next;       /* (link_cap) neighbours of each symbol, -1 at the ends */
    size_t link_cap;
    heap_entry *heap;
    size_t heap_cap, heap_n;
    pcre2_match_data *md;
    int whole_matches; /* EAPIG_ENCODE_WHOLE_MATCHES */
    size_t budget; /* bytes the pre-tokenizer's windows may still span (PRETOK_BUDGET_*) */
    int reference;
} encoder;

static int grow(void **p, size_t *cap, size_t need, size_t elem) {
    if (need <= *cap) return EAPIG_OK;
    size_t c = *cap ? *cap : 64;
    while (c < need) c *= 2;
    void *q = realloc(*p, c * elem);
    if (!q) return eapig_set_error(EAPIG_ERR_NOMEM, "eapig_tokenizer_encode: out of memory");
    *p = q;
    *cap = c;
    return EAPIG_OK;
}

static void emit(encoder *e, int32_t id) {
    if (e->n < e->cap) e->ids[e->n] = id;
    e->n++;
}

static int heap_less(const heap_entry *a, const heap_entry *b) {
    return a->rank < b->rank || (a->rank == b->rank && a->pos < b->pos);
}

static int heap_push(encoder *e, heap_entry x) {
    int s = grow((void **)&e->heap, &e->heap_cap, e->heap_n + 1, sizeof *e->heap);
    if (s != EAPIG_OK) return s;
    size_t i = e->heap_n++;
    while (i > 0) {
        size_t p = (i - 1) / 2;
        if (!heap_less(&x, &e->heap[p])) break;
        e->heap[i] = e->heap[p];
        i = p;
    }
    e->heap[i] = x;
    return EAPIG_OK;
}

static heap_entry heap_pop(encoder *e) {
    heap_entry top = e->heap[0], x = e->heap[--e->heap_n];
    size_t i = 0, n = e->heap_n;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= n) break;
        if (c + 1 < n && heap_less(&e->heap[c + 1], &e->heap[c])) c++;
        if (!heap_less(&e->heap[c], &x)) break;
        e->heap[i] = e->heap[c];
        i = c;
    }
    if (n) e->heap[i] = x;
    return top;
}

/* Queues the pair starting at symbol i, if a rule merges it. */
static int push_pair(encoder *e, int32_t i) {
    int32_t j = e->next[i];
    if (j < 0) return EAPIG_OK;
    const pair_slot *r = pair_lookup(e->t, e->sym[i], e->sym[j]);
    if (!r) return EAPIG_OK;
    heap_entry x = {r->rank, i, j, e->sym[i], e->sym[j], r->merged};
    return heap_push(e, x);
}

static void merge_at(encoder *e, int32_t i, int32_t j, int32_t merged) {
    e->sym[i] = merged;
    e->next[i] = e->next[j];
    if (e->next[j] >= 0) e->prev[e->next[j]] = i;
    e->sym[j] = -1;
}

/* Merges the n symbols in e->sym: lowest rank first, leftmost first among equal ranks; a queue
 * entry is stale once either of its symbols has changed. O(n log n). */
static int merge_heap(encoder *e, int32_t n) {
    e->heap_n = 0;
    int s;
    for (int32_t i = 0; i + 1 < n; i++)
        if ((s = push_pair(e, i)) != EAPIG_OK) return s;
    while (e->heap_n) {
        heap_entry x = heap_pop(e);
        if (e->sym[x.pos] != x.left_id || e->next[x.pos] != x.right || e->sym[x.right] != x.right_id) continue;
        merge_at(e, x.pos, x.right, x.merged);
        if (e->prev[x.pos] >= 0 && (s = push_pair(e, e->prev[x.pos])) != EAPIG_OK) return s;
        if ((s = push_pair(e, x.pos)) != EAPIG_OK) return s;
    }
    return EAPIG_OK;
}

/* The reference: rescan the whole word for the best pair before every merge. O(n^2). */
static int merge_reference(encoder *e, int32_t n) {
    (void)n;
    for (;;) {
        int32_t best = -1, best_rank = 0, merged = 0;
        for (int32_t i = 0; i >= 0 && e->next[i] >= 0; i = e->next[i]) {
            const pair_slot *r = pair_lookup(e->t, e->sym[i], e->sym[e->next[i]]);
            if (r && (best < 0 || r->rank < best_rank)) {
                best = i;
                best_rank = r->rank;
                merged = r->merged;
            }
        }
        if (best < 0) return EAPIG_OK;
        merge_at(e, best, e->next[best], merged);
    }
}

static int push_symbol(encoder *e, int32_t *n, int32_t id) {
    const eapig_tokenizer *t = e->t;
    /* fuse_unk: a run of unknown symbols is one unk */
    if (id == t->cfg.unk_id && t->cfg.fuse_unk && *n > 0 && e->sym[*n - 1] == id) return EAPIG_OK;
    int s = grow((void **)&e->sym, &e->sym_cap, (size_t)*n + 1, sizeof *e->sym);
    if (s != EAPIG_OK) return s;
    e->sym[(*n)++] = id;
    return EAPIG_OK;
}

/* Encodes one word: its symbols, then merges. */
static int encode_word(encoder *e, const char *w, size_t len) {
    const eapig_tokenizer *t = e->t;
    if (len == 0) return EAPIG_OK;
    if (t->cfg.ignore_merges) {
        int32_t id = piece_lookup(t, w, len);
        if (id >= 0) {
            emit(e, id);
            return EAPIG_OK;
        }
    }
    int32_t n = 0;
    int s;
    const uint8_t *u = (const uint8_t *)w;
    if (t->cfg.symbols == EAPIG_TOK_BYTE_LEVEL) {
        if ((s = grow((void **)&e->sym, &e->sym_cap, len, sizeof *e->sym)) != EAPIG_OK) return s;
        for (size_t i = 0; i < len; i++) {
            int32_t id = t->byte_id[u[i]];
            if (id < 0) id = t->cfg.unk_id;
            if (id >= 0 && (s = push_symbol(e, &n, id)) != EAPIG_OK) return s;
        }
    } else {
        for (size_t i = 0; i < len;) {
            size_t cl = utf8_char_len(u + i, len - i);
            int32_t id = piece_lookup(t, w + i, cl);
            if (id >= 0) {
                if ((s = push_symbol(e, &n, id)) != EAPIG_OK) return s;
            } else {
                int all = t->cfg.byte_fallback;
                for (size_t k = 0; k < cl && all; k++) all = t->byte_id[u[i + k]] >= 0;
                if (all) {
                    for (size_t k = 0; k < cl; k++)
                        if ((s = push_symbol(e, &n, t->byte_id[u[i + k]])) != EAPIG_OK) return s;
                } else if (t->cfg.unk_id >= 0) {
                    if ((s = push_symbol(e, &n, t->cfg.unk_id)) != EAPIG_OK) return s;
                }
            }
            i += cl;
        }
    }
    if (n == 0) return EAPIG_OK;
    if (n == 1) {
        emit(e, e->sym[0]);
        return EAPIG_OK;
    }
    size_t prev_cap = e->link_cap;
    if ((s = grow((void **)&e->prev, &prev_cap, (size_t)n, sizeof *e->prev)) != EAPIG_OK) return s;
    if ((s = grow((void **)&e->next, &e->link_cap, (size_t)n, sizeof *e->next)) != EAPIG_OK) return s;
    for (int32_t i = 0; i < n; i++) {
        e->prev[i] = i - 1;
        e->next[i] = i + 1 < n ? i + 1 : -1;
    }
    s = e->reference ? merge_reference(e, n) : merge_heap(e, n);
    if (s != EAPIG_OK) return s;
    for (int32_t i = 0; i >= 0; i = e->next[i]) emit(e, e->sym[i]);
    return EAPIG_OK;
}

static int utf8_valid(const char *s, size_t len) {
    const uint8_t *u = (const uint8_t *)s;
    for (size_t i = 0; i < len;) {
        if (u[i] < 0x80) {
            i++;
            continue;
        }
        size_t cl = utf8_char_len(u + i, len - i);
        if (cl == 1) return 0;
        i += cl;
    }
    return 1;
}

#define PRETOK_OVER_BUDGET (-1000000) /* match_windowed: the budget ran out (not a PCRE2 code) */

/* The pre-tokenizer's match in s[0, len) at or after from, as pcre2_match with that length
 * would give it, but looking only at s[0, end) for a window end that doubles from
 * from + PRETOK_WINDOW. With PCRE2_PARTIAL_HARD, PCRE2 returns PCRE2_ERROR_PARTIAL the moment
 * any path of the search reaches the window's end (reads past it, or tests $, \z, \Z, \b or a
 * lookahead there), so a complete match it returns never depended on the bytes past the window
 * and is the unwindowed match. Two results still did: an empty match at the window's end (the
 * attempts that start there see an empty text) and no match (a match may start at the end);
 * both widen the window, as PCRE2_ERROR_PARTIAL does. Windows end on a character boundary.
 *
 * windowed == 0 matches the whole length at once (EAPIG_ENCODE_WHOLE_MATCHES, and the interpreter on text
 * with invalid UTF-8: PCRE2 interprets such text in valid fragments, and a partial match at a
 * fragment's end abandons the fragment, where the full text would go on to a later
 * alternative; the JIT reads invalid bytes as characters that match nothing and has no
 * fragments). Returns pcre2_match's code or PRETOK_OVER_BUDGET. */
static int match_windowed(encoder *e, const char *s, size_t len, size_t from, int windowed) {
    const eapig_tokenizer *t = e->t;
    if (!windowed) return pcre2_match(t->re, (PCRE2_SPTR)s, len, from, 0, e->md, t->match_ctx);
    for (size_t w = PRETOK_WINDOW;; w *= 2) {
        size_t end = len;
        if (len - from > w) {
            end = from + w;
            for (int k = 0; k < 3 && end < len && ((uint8_t)s[end] & 0xc0) == 0x80; k++) end++;
        }
        size_t cost = end - from + 1;
        if (cost > e->budget) return PRETOK_OVER_BUDGET;
        e->budget -= cost;
        if (end == len) return pcre2_match(t->re, (PCRE2_SPTR)s, len, from, 0, e->md, t->match_ctx);
        int rc = pcre2_match(t->re, (PCRE2_SPTR)s, end, from, PCRE2_PARTIAL_HARD, e->md, t->match_ctx);
        if (rc >= 0 && pcre2_get_ovector_pointer(e->md)[0] < end) return rc;
        if (rc >= 0 || rc == PCRE2_ERROR_PARTIAL || rc == PCRE2_ERROR_NOMATCH) continue;
        return rc;
    }
}

/* Splits a transformed stretch into words. */
static int split_words(encoder *e, const char *s, size_t len) {
    const eapig_tokenizer *t = e->t;
    int st;
    if (t->re) {
        size_t gap = 0, from = 0; /* text before a match (gap) is a word of its own */
        int windowed = !e->whole_matches && (t->jit_partial || utf8_valid(s, len));
        e->budget = len <= (SIZE_MAX - e->budget) / PRETOK_BUDGET_PER_BYTE ? e->budget + len * PRETOK_BUDGET_PER_BYTE
                                                                            : SIZE_MAX;
        while (from < len) {
            int rc = match_windowed(e, s, len, from, windowed);
            if (rc == PCRE2_ERROR_NOMATCH) break;
            if (rc == PRETOK_OVER_BUDGET)
                return eapig_set_error(EAPIG_ERR_ARG,
                                       "eapig_tokenizer_encode: the pre-tokenizer pattern needs more than linear "
                                       "work on this input (a pathological pattern: its matches would scan more "
                                       "than %d bytes per byte of text; stopped at byte %zu of %zu)",
                                       PRETOK_BUDGET_PER_BYTE, from, len);
            if (rc == PCRE2_ERROR_MATCHLIMIT || rc == PCRE2_ERROR_DEPTHLIMIT)
                return eapig_set_error(EAPIG_ERR_ARG,
                                       "eapig_tokenizer_encode: the pre-tokenizer pattern backtracks too much on "
                                       "this text (a pathological pattern; limit %u steps per match)",
                                       MATCH_LIMIT);
            if (rc < 0) {
                PCRE2_UCHAR msg[256];
                pcre2_get_error_message(rc, msg, sizeof msg);
                return eapig_set_error(EAPIG_ERR_ARG, "eapig_tokenizer_encode: pre-tokenizer match failed: %s",
                                       (const char *)msg);
            }
            PCRE2_SIZE *ov = pcre2_get_ovector_pointer(e->md);
            size_t a = ov[0], b = ov[1];
            if (b < a || b > len)
                return eapig_set_error(EAPIG_ERR_ARG, "eapig_tokenizer_encode: the pre-tokenizer pattern gave a "
                                       "match that ends before it starts");
            if (a == len) break; /* an empty match at the very end: nothing left to step over */
            if (b == a) { /* an empty match: step over one character, it joins the gap */
                from = a + utf8_char_len((const uint8_t *)s + a, len - a);
                continue;
            }
            if (a > gap && (st = encode_word(e, s + gap, a - gap)) != EAPIG_OK) return st;
            if ((st = encode_word(e, s + a, b - a)) != EAPIG_OK) return st;
            gap = from = b;
        }
        return gap < len ? encode_word(e, s + gap, len - gap) : EAPIG_OK;
    }
    if (t->cfg.split == EAPIG_TOK_SPLIT_METASPACE) {
        const char *sp = t->space ? t->space : " ";
        size_t sl = t->space ? t->space_len : 1;
        size_t start = 0;
        for (size_t i = 1; i + sl <= len; i++) {
            if (memcmp(s + i, sp, sl) == 0) {
                if ((st = encode_word(e, s + start, i - start)) != EAPIG_OK) return st;
                start = i;
                i += sl - 1;
            }
        }
        return encode_word(e, s + start, len - start);
    }
    return encode_word(e, s, len);
}

/* One stretch of text between added tokens: the prefix space, spaces as the meta symbol, words. */
static int encode_stretch(encoder *e, const char *s, size_t len, int at_start) {
    const eapig_tokenizer *t = e->t;
    if (len == 0) return EAPIG_OK;
    int starts_with_space = s[0] == ' ' || (t->space && len >= t->space_len && !memcmp(s, t->space, t->space_len));
    int prefix = t->cfg.prefix == EAPIG_TOK_PREFIX_ALWAYS ||
                 (t->cfg.prefix == EAPIG_TOK_PREFIX_MISSING && !starts_with_space) ||
                 (t->cfg.prefix == EAPIG_TOK_PREFIX_FIRST && at_start && !starts_with_space);
    if (!prefix && !t->space) return split_words(e, s, len);
    size_t sl = t->space ? t->space_len : 1;
    const char *sp = t->space ? t->space : " ";
    size_t spaces = prefix;
    if (t->space)
        for (size_t i = 0; i < len; i++) spaces += s[i] == ' ';
    size_t need = len + spaces * sl;
    int st = grow((void **)&e->buf, &e->buf_cap, need, 1);
    if (st != EAPIG_OK) return st;
    size_t o = 0;
    if (prefix) {
        memcpy(e->buf, sp, sl);
        o = sl;
    }
    for (size_t i = 0; i < len; i++) {
        if (s[i] == ' ' && t->space) {
            memcpy(e->buf + o, sp, sl);
            o += sl;
        } else {
            e->buf[o++] = s[i];
        }
    }
    return split_words(e, e->buf, o);
}

int eapig_tokenizer_encode(const eapig_tokenizer *t, const char *text, size_t len, int32_t flags, int32_t *ids,
                           size_t cap, size_t *n_ids) {
    if (!t || (!text && len) || (!ids && cap) || !n_ids)
        return eapig_set_error(EAPIG_ERR_ARG, "eapig_tokenizer_encode: NULL argument");
    *n_ids = 0;
    encoder e = {0};
    e.t = t;
    e.ids = ids;
    e.cap = cap;
    e.reference = (flags & EAPIG_ENCODE_REFERENCE) != 0;
    e.whole_matches = (flags & (EAPIG_ENCODE_REFERENCE | EAPIG_ENCODE_WHOLE_MATCHES)) != 0;
    e.budget = PRETOK_BUDGET_BASE;
    if (t->re && !(e.md = pcre2_match_data_create_from_pattern(t->re, NULL)))
        return eapig_set_error(EAPIG_ERR_NOMEM, "eapig_tokenizer_encode: out of memory");
    int st = EAPIG_OK;
    size_t start = 0;
    if ((flags & EAPIG_ENCODE_SPECIAL) && t->n_match) {
        /* Added tokens are cut out first, leftmost then longest; the text between is tokenized.
         * The trie walk at each position costs the longest prefix of a token found there: tokens
         * of up to ADDED_WALK_PER_BYTE bytes (every real tokenizer's) always fit the budget; a
         * long one whose prefixes the text repeats ("aaa...ab" on a run of a) would make the
         * scan quadratic, and is refused instead. */
        size_t walk_budget = len <= (SIZE_MAX - PRETOK_BUDGET_BASE) / ADDED_WALK_PER_BYTE
                                 ? len * ADDED_WALK_PER_BYTE + PRETOK_BUDGET_BASE
                                 : SIZE_MAX;
        for (size_t i = 0; i < len && st == EAPIG_OK;) {
            int32_t hit = -1; /* the longest matchable token starting at i */
            size_t j = i;
            for (size_t node = 0; j < len; j++) {
                int32_t child = trie_child(t, (int32_t)node, (uint8_t)text[j]);
                if (child < 0) break;
                node = (size_t)child;
                if (t->node_match[node] >= 0) hit = t->node_match[node];
            }
            if (j - i > walk_budget) {
                st = eapig_set_error(EAPIG_ERR_ARG,
                                     "eapig_tokenizer_encode: the added tokens need more than linear work on this "
                                     "input (a long added token whose prefixes the text repeats: more than %d bytes "
                                     "compared per byte of text; stopped at byte %zu of %zu)",
                                     ADDED_WALK_PER_BYTE, i, len);
                break;
            }
            walk_budget -= j - i;
            if (hit < 0) {
                i++;
                continue;
            }
            st = encode_stretch(&e, text + start, i - start, start == 0);
            emit(&e, hit);
            i += t->added_len[hit];
            start = i;
        }
    }
    if (st == EAPIG_OK) st = encode_stretch(&e, text + start, len - start, start == 0);
    free(e.buf);
    free(e.sym);
    free(e.prev);
    free(e.next);
    free(e.heap);
    if (e.md) pcre2_match_data_free(e.md);
    if (st == EAPIG_OK) *n_ids = e.n;
    return st;
}

/* ---- decoding, lookup --------------------------------------------------------------------- */

typedef struct writer {
    char *out;
    size_t cap, n;
} writer;

static void put(writer *w, const char *s, size_t n) {
    if (w->n < w->cap) memcpy(w->out + w->n, s, n <= w->cap - w->n ? n : w->cap - w->n);
    w->n += n;
}

int eapig_tokenizer_decode(const eapig_tokenizer *t, const int32_t *ids, size_t n, int32_t flags, char *out,
                           size_t cap, size_t *n_bytes) {
    if (!t || (!ids && n) || (!out && cap) || !n_bytes)
        return eapig_set_error(EAPIG_ERR_ARG, "eapig_tokenizer_decode: NULL argument");
    *n_bytes = 0;
    writer w = {out, cap, 0};
    int strip = t->cfg.strip_prefix && !(flags & EAPIG_DECODE_KEEP_PREFIX);
    for (size_t k = 0; k < n; k++) {
        int32_t id = ids[k];
        if (id < 0 || id >= t->V)
            return eapig_set_error(EAPIG_ERR_ARG, "eapig_tokenizer_decode: id %d at position %zu outside 0 .. %d",
                                   id, k + 1, t->V - 1);
        uint8_t f = t->flags[id];
        if (!(f & (TOK_PIECE | TOK_ADDED)))
            return eapig_set_error(EAPIG_ERR_ARG, "eapig_tokenizer_decode: id %d at position %zu has no token", id,
                                   k + 1);
        if (f & TOK_CONTROL) {
            /* Control tokens do not count as text: the prefix space after BOS is still stripped. */
            if (!(flags & EAPIG_DECODE_SKIP_SPECIAL)) {
                if (f & TOK_ADDED) put(&w, t->arena + t->added_off[id], t->added_len[id]);
                else put(&w, t->arena + t->piece_off[id], t->piece_len[id]);
            }
            continue;
        }
        if (f & TOK_ADDED) {
            put(&w, t->arena + t->added_off[id], t->added_len[id]);
            strip = 0;
            continue;
        }
        if (f & TOK_BYTE) {
            char c = (char)t->byte_value[id];
            if (!(strip && c == ' ')) put(&w, &c, 1);
            strip = 0;
            continue;
        }
        const char *p = t->arena + t->piece_off[id];
        size_t len = t->piece_len[id], i = 0, run = 0;
        if (!t->space) {
            if (strip && len && p[0] == ' ') i = run = 1;
        } else {
            /* the meta symbol becomes a space again */
            size_t sl = t->space_len;
            while (i < len) {
                if (len - i >= sl && memcmp(p + i, t->space, sl) == 0) {
                    put(&w, p + run, i - run);
                    if (!(strip && i == 0)) put(&w, " ", 1);
                    i += sl;
                    run = i;
                } else {
                    i++;
                }
            }
            i = run;
        }
        put(&w, p + i, len - i);
        strip = 0;
    }
    *n_bytes = w.n;
    return EAPIG_OK;
}

int32_t eapig_tokenizer_find(const eapig_tokenizer *t, const char *text, size_t len) {
    if (!t || !text || len == 0) return -1;
    int32_t added = trie_find(t, text, len); /* added tokens first: their text is literal */
    if (added >= 0) return added;
    int32_t id = piece_lookup(t, text, len);
    if (id >= 0 && !(t->flags[id] & TOK_CONTROL)) return id;
    if (t->space && memchr(text, ' ', len)) {
        size_t spaces = 0;
        for (size_t i = 0; i < len; i++) spaces += text[i] == ' ';
        char *buf = malloc(len + spaces * t->space_len);
        if (buf) {
            size_t o = 0;
            for (size_t i = 0; i < len; i++) {
                if (text[i] == ' ') {
                    memcpy(buf + o, t->space, t->space_len);
                    o += t->space_len;
                } else {
                    buf[o++] = text[i];
                }
            }
            int32_t sid = piece_lookup(t, buf, o);
            free(buf);
            if (sid >= 0) return sid;
        }
    }
    if (len == 1 && t->byte_id[(uint8_t)text[0]] >= 0) return t->byte_id[(uint8_t)text[0]];
    return id;
}

/* ---- llama2.c tokenizer.bin --------------------------------------------------------------- */

eapig_tokenizer *eapig_tokenizer_load_llama2c(const char *path, int32_t n_vocab) {
    if (!path) {
        eapig_set_error(EAPIG_ERR_ARG, "eapig_tokenizer_load_llama2c: path is NULL");
        return NULL;
    }
    if (n_vocab < 0) {
        eapig_set_error(EAPIG_ERR_ARG, "eapig_tokenizer_load_llama2c: %s: n_vocab %d is negative", path, n_vocab);
        return NULL;
    }
    eapig_file *f = eapig_file_open(path);
    if (!f) return NULL; /* the message names the file */
    eapig_tokenizer *t = NULL;
    uint64_t size = eapig_file_size(f);
    int32_t max_len = 0;
    if (size < 4) {
        eapig_set_error(EAPIG_ERR_IO, "%s: max_token_length: file is %llu bytes, too short for the header", path,
                        (unsigned long long)size);
        goto fail;
    }
    eapig_file_read(f, 0, 4, &max_len);
    if (max_len <= 0 || max_len > (1 << 20)) {
        eapig_set_error(EAPIG_ERR_IO, "%s: max_token_length: %d is not in 1 .. 1048576", path, max_len);
        goto fail;
    }
    /* First pass: check every record against the file size and count them. */
    int32_t count = 0;
    uint64_t off = 4;
    while (n_vocab ? count < n_vocab : off < size) {
        struct {
            float score;
            int32_t len;
        } head;
        if (size - off < 8) {
            eapig_set_error(EAPIG_ERR_IO, "%s: token %d: record header at byte %llu runs past the end (%llu bytes)",
                            path, count, (unsigned long long)off, (unsigned long long)size);
            goto fail;
        }
        eapig_file_read(f, off, 4, &head.score);
        eapig_file_read(f, off + 4, 4, &head.len);
        if (!isfinite(head.score)) {
            eapig_set_error(EAPIG_ERR_IO, "%s: token %d: score is not finite", path, count);
            goto fail;
        }
        if (head.len < 0 || head.len > max_len) {
            eapig_set_error(EAPIG_ERR_IO, "%s: token %d: length %d is not in 0 .. max_token_length %d", path, count,
                            head.len, max_len);
            goto fail;
        }
        if ((uint64_t)head.len > size - off - 8) {
            eapig_set_error(EAPIG_ERR_IO, "%s: token %d: length %d runs past the end of the file (%llu bytes)", path,
                            count, head.len, (unsigned long long)size);
            goto fail;
        }
        off += 8 + (uint64_t)head.len;
        if (count == INT32_MAX) {
            eapig_set_error(EAPIG_ERR_IO, "%s: too many tokens", path);
            goto fail;
        }
        count++;
    }
    if (count < 3) {
        eapig_set_error(EAPIG_ERR_IO, "%s: %d tokens; need at least <unk>, BOS and EOS", path, count);
        goto fail;
    }
    eapig_tokenizer_config cfg = {
        .n_vocab = count, .symbols = EAPIG_TOK_CHARS, .split = EAPIG_TOK_SPLIT_NONE, .pattern = NULL,
        .space = NULL, /* pieces already use ' ' */
        .prefix = EAPIG_TOK_PREFIX_ALWAYS, /* run.c's dummy prefix before any non-empty text */
        .byte_fallback = 1, .ignore_merges = 0, .fuse_unk = 0, .unk_id = 0, .strip_prefix = 1,
    };
    if (!(t = eapig_tokenizer_new(&cfg))) goto fail;
    char piece[1 << 12];
    char *big = max_len > (int32_t)sizeof piece ? malloc((size_t)max_len) : NULL;
    char *buf = big ? big : piece;
    if (max_len > (int32_t)sizeof piece && !big) {
        eapig_set_error(EAPIG_ERR_NOMEM, "%s: out of memory", path);
        goto fail;
    }
    off = 4;
    int status = EAPIG_OK;
    for (int32_t id = 0; id < count && status == EAPIG_OK; id++) {
        float score;
        int32_t len;
        eapig_file_read(f, off, 4, &score);
        eapig_file_read(f, off + 4, 4, &len);
        eapig_file_read(f, off + 8, (uint64_t)len, buf);
        off += 8 + (uint64_t)len;
        if (len == 0) continue; /* an empty piece is a hole: never produced, an error to decode */
        status = eapig_tokenizer_set_token(t, id, buf, (size_t)len, score);
        if (status == EAPIG_OK && id < 3) status = eapig_tokenizer_set_special(t, id, buf, (size_t)len, EAPIG_TOKEN_CONTROL);
        if (status != EAPIG_OK) {
            char msg[512];
            snprintf(msg, sizeof msg, "%s", eapig_last_error());
            eapig_set_error(status, "%s: token %d: %s", path, id, msg);
        }
    }
    free(big);
    if (status == EAPIG_OK && eapig_tokenizer_rank_by_score(t) != EAPIG_OK) status = EAPIG_ERR_NOMEM;
    if (status != EAPIG_OK) goto fail;
    eapig_file_close(f);
    return t;
fail:
    eapig_tokenizer_free(t);
    eapig_file_close(f);
    return NULL;
}
