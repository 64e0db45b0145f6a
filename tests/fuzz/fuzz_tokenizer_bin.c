/* libFuzzer harness: llama2.c's tokenizer.bin reader (eapig_tokenizer_load_llama2c), then
 * encoding and decoding with whatever it accepted. Input: one byte choosing n_vocab (0 = read to
 * the end), a length byte and that much text, then the file. */
#include <stdlib.h>

#include "eapig.h"
#include "fuzz_input.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    fuzz_reader r = {data, size};
    int32_t n_vocab = fuzz_u8(&r) % 8; /* 0: to the end of the file; else a few records */
    const uint8_t *text;
    size_t text_len = fuzz_bytes(&r, &text);
    const char *path = fuzz_file(r.p, r.n);
    if (!path) return 0;
    eapig_tokenizer *t = eapig_tokenizer_load_llama2c(path, n_vocab);
    if (!t) return 0;
    int32_t ids[512], ref[512];
    size_t n = 0, n_ref = 0;
    for (int special = 0; special < 2; special++) {
        int32_t flags = special ? EAPIG_ENCODE_SPECIAL : 0;
        if (eapig_tokenizer_encode(t, (const char *)text, text_len, flags, ids, 512, &n) == EAPIG_OK &&
            eapig_tokenizer_encode(t, (const char *)text, text_len, flags | EAPIG_ENCODE_REFERENCE, ref, 512,
                                   &n_ref) == EAPIG_OK) {
            /* the heap merge loop and the quadratic reference must agree exactly */
            if (n != n_ref || (n <= 512 && memcmp(ids, ref, n * sizeof *ids) != 0)) abort();
            char out[4096];
            size_t nb;
            if (n <= 512) eapig_tokenizer_decode(t, ids, n, special ? EAPIG_DECODE_SKIP_SPECIAL : 0, out, sizeof out, &nb);
        }
    }
    eapig_tokenizer_find(t, (const char *)text, text_len);
    eapig_tokenizer_free(t);
    return 0;
}
