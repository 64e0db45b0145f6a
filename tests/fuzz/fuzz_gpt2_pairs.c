/* libFuzzer harness: GPT-2's vocab.json + merges.txt as the loader feeds them to the core: a
 * byte-level tokenizer with GPT-2's split, pieces spelled in GPT-2's byte alphabet (one per
 * line of the vocabulary part), then merge lines "left right" (the second part), then
 * <|endoftext|> as an added token; then encoding (heap against reference) and decoding.
 * Input: vocabulary lines, a NUL byte, merge lines, a NUL byte, the text. */
#include <stdlib.h>

#include "eapig.h"
#include "fuzz_input.h"

/* The next line of [p, end) up to '\n' or the section end; advances *p past it. */
static size_t next_line(const uint8_t **p, const uint8_t *end, const uint8_t **line) {
    const uint8_t *s = *p, *q = s;
    while (q < end && *q != '\n') q++;
    *line = s;
    *p = q < end ? q + 1 : q;
    return (size_t)(q - s);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    const uint8_t *end = data + size;
    const uint8_t *vocab_end = memchr(data, 0, size);
    if (!vocab_end) return 0;
    const uint8_t *merges = vocab_end + 1;
    const uint8_t *merges_end = memchr(merges, 0, (size_t)(end - merges));
    if (!merges_end) return 0;
    eapig_tokenizer_config cfg = {
        .n_vocab = 300, .symbols = EAPIG_TOK_BYTE_LEVEL, .split = EAPIG_TOK_SPLIT_GPT2, .pattern = NULL,
        .space = NULL, .prefix = EAPIG_TOK_PREFIX_NONE, .byte_fallback = 0, .ignore_merges = 0, .fuse_unk = 0,
        .unk_id = -1, .strip_prefix = 0,
    };
    eapig_tokenizer *t = eapig_tokenizer_new(&cfg);
    if (!t) return 0;
    const uint8_t *p = data, *line;
    int32_t id = 0;
    while (p < vocab_end && id < 299) {
        size_t n = next_line(&p, vocab_end, &line);
        if (n) eapig_tokenizer_set_token(t, id, (const char *)line, n, 0.0f);
        id++;
    }
    eapig_tokenizer_set_special(t, 299, "<|endoftext|>", 13, EAPIG_TOKEN_CONTROL | EAPIG_TOKEN_MATCH);
    p = merges;
    while (p < merges_end) {
        size_t n = next_line(&p, merges_end, &line);
        const uint8_t *sp = memchr(line, ' ', n);
        if (!sp) continue; /* "#version" lines and blanks */
        eapig_tokenizer_add_merge(t, (const char *)line, (size_t)(sp - line), (const char *)sp + 1,
                                  n - (size_t)(sp - line) - 1);
    }
    const char *text = (const char *)merges_end + 1;
    size_t len = (size_t)(end - (merges_end + 1));
    int32_t ids[2048], ref[2048];
    size_t n = 0, n_ref = 0;
    if (eapig_tokenizer_encode(t, text, len, EAPIG_ENCODE_SPECIAL, ids, 2048, &n) == EAPIG_OK) {
        if (eapig_tokenizer_encode(t, text, len, EAPIG_ENCODE_SPECIAL | EAPIG_ENCODE_REFERENCE, ref, 2048, &n_ref) !=
                EAPIG_OK ||
            n != n_ref || (n <= 2048 && memcmp(ids, ref, n * sizeof *ids) != 0))
            abort();
        char out[16384];
        size_t nb;
        if (n <= 2048) eapig_tokenizer_decode(t, ids, n, 0, out, sizeof out, &nb);
    }
    eapig_tokenizer_free(t);
    return 0;
}
