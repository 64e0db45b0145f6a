/* libFuzzer harness: core/file.c, the bounds-checked reads and dtype conversions that the
 * safetensors and llama2.c loaders send every tensor through (their headers are parsed on the
 * Lua side, see tests/fuzz/lua_mutate.lua). The input is 24 bytes of request (offsets, dtype,
 * shape, transpose) followed by the file's content; offsets are taken modulo a little past the
 * file so that both in-range and out-of-range requests are common. */
#include <stdlib.h>

#include "eapig.h"
#include "fuzz_input.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    fuzz_reader r = {data, size};
    uint32_t a = fuzz_u32(&r), b = fuzz_u32(&r), dtype = fuzz_u32(&r) % 5, rows = fuzz_u32(&r),
             cols = fuzz_u32(&r), flags = fuzz_u32(&r);
    const char *path = fuzz_file(r.p, r.n);
    if (!path) return 0;
    eapig_file *f = eapig_file_open(path);
    if (!f) return 0;
    uint64_t fsize = eapig_file_size(f);
    uint64_t begin = (flags & 1) ? a : a % (fsize + 9), end = (flags & 2) ? b : begin + b % (fsize + 9);
    int64_t R = (flags & 4) ? (int32_t)rows : rows % 64, Cn = (flags & 8) ? (int32_t)cols : cols % 64;
    /* the destination is sized from the shape only when that is small; the core must refuse
     * any shape that does not match the byte range before writing anything */
    size_t count = (R >= 0 && Cn >= 0 && R <= 4096 && Cn <= 4096) ? (size_t)(R * Cn) : 0;
    float *dst = calloc(count ? count : 1, sizeof(float));
    if (dst) {
        int32_t d = dtype == 4 ? 7 : (int32_t)dtype; /* 4 -> an unknown dtype code */
        if (count || R == 0 || Cn == 0)
            eapig_file_tensor(f, begin, end, d, dst, R, Cn, (int32_t)((flags >> 4) & 1));
        if (eapig_file_read(f, begin, end - begin < 4096 ? end - begin : 0, NULL) == EAPIG_OK && end > begin &&
            end - begin < 4096) {
            uint8_t *buf = malloc(end - begin);
            if (buf) {
                eapig_file_read(f, begin, end - begin, buf);
                eapig_floats_first_nonfinite((const float *)(void *)buf, (int64_t)((end - begin) / 4));
                free(buf);
            }
        }
        if (count) {
            int64_t first;
            eapig_floats_canonicalize_nan(dst, (int64_t)count, &first);
        }
        free(dst);
    }
    eapig_file_close(f);
    return 0;
}
