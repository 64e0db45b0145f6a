/* libFuzzer harness: the GGUF reader (core/gguf.c). The input is the file: eapig_gguf_open checks
 * the header, then every key is read back through each accessor that suits its type, every
 * tensor's name and range are looked up, and small tensors are converted to float32. */
#include <stdlib.h>

#include "eapig.h"
#include "fuzz_input.h"

/* Looks a key or tensor up again by the name the file gave it (len bytes, not terminated). */
static void find_by_name(const eapig_gguf *g, const char *name, uint64_t len,
                         int64_t (*find)(const eapig_gguf *, const char *)) {
    if (!name || len >= 256) return;
    char z[256];
    memcpy(z, name, len);
    z[len] = 0;
    find(g, z);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    const char *path = fuzz_file(data, size);
    if (!path) return 0;
    eapig_gguf *g = eapig_gguf_open(path);
    if (!g) return 0;
    eapig_gguf_version(g);
    eapig_gguf_data_offset(g);
    int64_t n_keys = eapig_gguf_n_keys(g), n_tensors = eapig_gguf_n_tensors(g);
    for (int64_t i = 0; i < n_keys && i < 4096; i++) {
        uint64_t len = 0, count = 0;
        find_by_name(g, eapig_gguf_key(g, i, &len), len, eapig_gguf_find_key);
        int32_t elem = -1;
        int32_t type = eapig_gguf_key_type(g, i, &elem, &count);
        if (type < 0) continue;
        uint64_t n = count < 16 ? count : 16, first = count > 16 ? count - 16 : 0;
        double nums[16];
        int64_t ints[16];
        const char *ptrs[16];
        uint64_t lens[16];
        eapig_gguf_key_numbers(g, i, first, n, nums);
        eapig_gguf_key_integers(g, i, 0, n, ints);
        if (eapig_gguf_key_strings(g, i, first, n, ptrs, lens) == EAPIG_OK)
            for (uint64_t j = 0; j < n; j++)
                if (lens[j]) (void)*(volatile const char *)(ptrs[j] + lens[j] - 1); /* inside the mapping */
        eapig_gguf_key_numbers(g, i, count, 1, nums); /* one past the end: an error */
    }
    for (int64_t i = 0; i < n_tensors && i < 4096; i++) {
        uint64_t len = 0, begin = 0, end = 0;
        find_by_name(g, eapig_gguf_tensor_name(g, i, &len), len, eapig_gguf_find_tensor);
        int32_t type = 0, n_dims = 0;
        int64_t ne[4], n_elements = 0;
        if (eapig_gguf_tensor_info(g, i, &type, &n_dims, ne, &n_elements, &begin, &end) != EAPIG_OK) continue;
        eapig_gguf_type_name(type);
        if (n_elements >= 0 && n_elements <= (1 << 16)) {
            float *dst = malloc((size_t)(n_elements ? n_elements : 1) * sizeof(float));
            if (dst) {
                eapig_gguf_tensor_read(g, i, dst, n_elements);
                eapig_gguf_tensor_read(g, i, dst, n_elements ? n_elements - 1 : 1); /* wrong count */
                free(dst);
            }
        }
    }
    uint64_t len = 0;
    eapig_gguf_key(g, n_keys, &len); /* out of range: NULL */
    eapig_gguf_tensor_name(g, -1, &len);
    eapig_gguf_close(g);
    return 0;
}
