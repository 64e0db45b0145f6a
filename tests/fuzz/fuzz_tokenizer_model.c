/* libFuzzer harness: building a tokenizer the way tokenizer.json (and vocab.json + merges.txt)
 * loading does, through the same calls (eapig_tokenizer_new with any configuration, including
 * a pre-tokenizer pattern from the input; pieces, added tokens, merges or score ranking), then
 * encoding a text with the heap merge loop and pre-tokenizer matches in windows (4 bytes at first
 * in the fuzz build) and with the reference loop and matches over the whole text, which must
 * agree, decoding and looking tokens up. Input: a configuration block, then operations, each an opcode byte and
 * its fields; the last field is the text. */
#include <stdlib.h>

#include "eapig.h"
#include "fuzz_input.h"

static const char *const PATTERNS[] = {
    "\\s+|\\S+", "(a+)+b", "\\p{L}+|\\p{N}{1,3}|[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+", "(?:x*)*y", "[[:alpha:]]+",
    "\\p{L}+\\d|.",                     /* quadratic by design: every start scans the run */
    "a\\Z|(?<=a)b|\\b\\w|$|\\s+(?!\\S)", /* assertions at a window's end */
};
#define N_PATTERNS (sizeof PATTERNS / sizeof *PATTERNS)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    fuzz_reader r = {data, size};
    uint8_t c0 = fuzz_u8(&r), c1 = fuzz_u8(&r), c2 = fuzz_u8(&r);
    char pattern[260];
    const uint8_t *pat;
    size_t pat_len = fuzz_bytes(&r, &pat);
    eapig_tokenizer_config cfg = {
        .n_vocab = 1 + c0 % 96,
        .symbols = (c1 & 1) ? EAPIG_TOK_CHARS : EAPIG_TOK_BYTE_LEVEL,
        .split = (c1 >> 1) % 6,
        .pattern = NULL,
        .space = (c1 & 16) ? "\xe2\x96\x81" : NULL,
        .prefix = (c1 >> 5) % 4,
        .byte_fallback = c2 & 1,
        .ignore_merges = (c2 >> 1) & 1,
        .fuse_unk = (c2 >> 2) & 1,
        .unk_id = (c2 & 8) ? (int32_t)((c2 >> 4) % (1 + c0 % 96)) : -1,
        .strip_prefix = (c1 >> 7) & 1,
    };
    if (cfg.split == EAPIG_TOK_SPLIT_REGEX) {
        /* a pattern from the input half the time, a known hard one otherwise */
        if (pat_len && (pat[0] & 1)) {
            memcpy(pattern, pat + 1, pat_len - 1);
            pattern[pat_len - 1] = 0;
        } else {
            snprintf(pattern, sizeof pattern, "%s", PATTERNS[pat_len % N_PATTERNS]);
        }
        cfg.pattern = pattern;
    }
    eapig_tokenizer *t = eapig_tokenizer_new(&cfg);
    if (!t) return 0;
    int ops = 0;
    while (r.n > 1 && ops++ < 300) {
        uint8_t op = fuzz_u8(&r) % 5;
        int32_t id = (int32_t)(fuzz_u8(&r) % (cfg.n_vocab + 2)) - 1; /* -1 and V are out of range */
        const uint8_t *a, *b;
        size_t na = fuzz_bytes(&r, &a);
        if (op == 0) {
            eapig_tokenizer_set_token(t, id, (const char *)a, na, (float)(int8_t)fuzz_u8(&r));
        } else if (op == 1) {
            eapig_tokenizer_set_special(t, id, (const char *)a, na, fuzz_u8(&r) % 4);
        } else if (op == 2) {
            size_t nb = fuzz_bytes(&r, &b);
            eapig_tokenizer_add_merge(t, (const char *)a, na, (const char *)b, nb);
        } else if (op == 3) {
            eapig_tokenizer_rank_by_score(t);
        } else {
            break; /* the rest is the text */
        }
    }
    const char *text = (const char *)r.p;
    size_t len = r.n;
    int32_t ids[1024], ref[1024];
    size_t n = 0, n_ref = 0;
    for (int special = 0; special < 2; special++) {
        int32_t flags = special ? EAPIG_ENCODE_SPECIAL : 0;
        if (eapig_tokenizer_encode(t, text, len, flags, ids, 1024, &n) != EAPIG_OK) continue;
        if (eapig_tokenizer_encode(t, text, len, flags | EAPIG_ENCODE_REFERENCE, ref, 1024, &n_ref) != EAPIG_OK)
            abort(); /* the same input cannot fail one way only */
        if (n != n_ref || (n <= 1024 && memcmp(ids, ref, n * sizeof *ids) != 0)) abort();
        if (n <= 1024) {
            char out[8192];
            size_t nb;
            eapig_tokenizer_decode(t, ids, n, special ? EAPIG_DECODE_SKIP_SPECIAL : EAPIG_DECODE_KEEP_PREFIX, out,
                                   sizeof out, &nb);
        }
    }
    eapig_tokenizer_find(t, text, len < 64 ? len : 64);
    eapig_tokenizer_free(t);
    return 0;
}
