/* fuzz_input.h: what every libFuzzer harness here shares. The parsers under test take a path
 * (they memory-map it), so the input bytes go into an in-memory file (memfd) reached through
 * /proc/self/fd; a reader consumes parameters from the front of the input. */
#ifndef EAPIG_FUZZ_INPUT_H
#define EAPIG_FUZZ_INPUT_H
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

/* The path of an in-memory file holding exactly n bytes of data (the same file every call). */
static inline const char *fuzz_file(const uint8_t *data, size_t n) {
    static int fd = -1;
    static char path[64];
    if (fd < 0) {
        fd = memfd_create("eapig-fuzz", 0);
        if (fd < 0) return NULL;
        snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
    }
    if (ftruncate(fd, 0) != 0 || (n && pwrite(fd, data, n, 0) != (ssize_t)n)) return NULL;
    return path;
}

typedef struct {
    const uint8_t *p;
    size_t n;
} fuzz_reader;

static inline uint32_t fuzz_u32(fuzz_reader *r) {
    uint32_t v = 0;
    size_t k = r->n < 4 ? r->n : 4;
    memcpy(&v, r->p, k);
    r->p += k;
    r->n -= k;
    return v;
}

static inline uint8_t fuzz_u8(fuzz_reader *r) {
    if (!r->n) return 0;
    r->n--;
    return *r->p++;
}

/* The next field: a length byte, then up to that many bytes. */
static inline size_t fuzz_bytes(fuzz_reader *r, const uint8_t **out) {
    size_t len = fuzz_u8(r);
    if (len > r->n) len = r->n;
    *out = r->p;
    r->p += len;
    r->n -= len;
    return len;
}
#endif
