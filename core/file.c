/* file.c: read-only memory-mapped checkpoint files, bounds-checked reads and the dtype
 * conversions (F32, F16, BF16, I32 -> float32) that every loader goes through.
 *
 * Lengths and offsets come from the file's own header, so nothing here trusts them: every
 * range is checked against the mapped size with overflow-safe arithmetic before it is touched.
 * Stored data is little-endian (safetensors, llama2.c); the supported hosts are too.
 * The mapping may start a tensor at any byte, so elements are read with memcpy (no alignment).
 *
 * R = rows and C = cols of the float32 destination; a transposed read takes a stored (C, R).
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "internal.h"

struct eapig_file {
    char *path;          /* owned copy, for error messages */
    const uint8_t *data; /* (size) bytes, mapped read-only; NULL when size is 0 */
    uint64_t size;
    int refs;            /* the opener plus every model that reads weights from the mapping */
};

eapig_file *eapig_file_open(const char *path) {
    if (!path) {
        eapig_set_error(EAPIG_ERR_ARG, "eapig_file_open: path is NULL");
        return NULL;
    }
    /* O_NONBLOCK: opening a FIFO for reading would otherwise wait for a writer forever. */
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
    if (fd < 0) {
        eapig_set_error(EAPIG_ERR_IO, "eapig_file_open: %s: %s", path, strerror(errno));
        return NULL;
    }
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        eapig_set_error(EAPIG_ERR_IO, "eapig_file_open: %s: not a regular file (%s)", path,
                        S_ISDIR(st.st_mode) ? "a folder" : S_ISFIFO(st.st_mode) ? "a FIFO"
                        : S_ISCHR(st.st_mode) ? "a character device" : "a special file");
        close(fd);
        return NULL;
    }
    eapig_file *f = calloc(1, sizeof *f);
    char *copy = strdup(path);
    if (!f || !copy) {
        free(f);
        free(copy);
        close(fd);
        eapig_set_error(EAPIG_ERR_NOMEM, "eapig_file_open: %s: out of memory", path);
        return NULL;
    }
    f->path = copy;
    f->refs = 1;
    f->size = (uint64_t)st.st_size;
    /* mmap rejects a zero length; an empty file simply has no bytes to read. */
    if (f->size > 0) {
        if (f->size > (uint64_t)SIZE_MAX) {
            eapig_set_error(EAPIG_ERR_IO, "eapig_file_open: %s: too large to map", path);
            goto fail;
        }
        void *p = mmap(NULL, (size_t)f->size, PROT_READ, MAP_PRIVATE, fd, 0);
        if (p == MAP_FAILED) {
            eapig_set_error(EAPIG_ERR_IO, "eapig_file_open: %s: mmap failed: %s", path, strerror(errno));
            goto fail;
        }
        f->data = p;
    }
    close(fd); /* the mapping keeps the file alive */
    return f;
fail:
    close(fd);
    free(f->path);
    free(f);
    return NULL;
}

void eapig_file_close(eapig_file *f) {
    if (!f || --f->refs > 0) return;
    if (f->data) munmap((void *)f->data, (size_t)f->size);
    free(f->path);
    free(f);
}

uint64_t eapig_file_size(const eapig_file *f) { return f ? f->size : 0; }

void eapig_file_retain(eapig_file *f) { f->refs++; }

const char *eapig_file_path(const eapig_file *f) { return f->path; }

/* 1 when [offset, offset + n) lies inside the file; written so that nothing can overflow. */
static int in_file(const eapig_file *f, uint64_t offset, uint64_t n) {
    return offset <= f->size && n <= f->size - offset;
}

int eapig_file_read(const eapig_file *f, uint64_t offset, uint64_t n, void *dst) {
    if (!f) return eapig_set_error(EAPIG_ERR_ARG, "eapig_file_read: file is NULL");
    if (!in_file(f, offset, n))
        return eapig_set_error(EAPIG_ERR_IO,
                               "eapig_file_read: %s: bytes [%llu, +%llu) leave the file (%llu bytes): truncated?",
                               f->path, (unsigned long long)offset, (unsigned long long)n,
                               (unsigned long long)f->size);
    if (n > 0) {
        if (!dst) return eapig_set_error(EAPIG_ERR_ARG, "eapig_file_read: %s: dst is NULL", f->path);
        memcpy(dst, f->data + offset, (size_t)n);
    }
    return EAPIG_OK;
}

/* IEEE half -> float, exact for every input: normals rebias the exponent, subnormals are
 * mant * 2^-24 (exact in float), inf and NaN keep their payload. */
static float half_to_float(uint16_t h) {
    uint32_t sign = (uint32_t)(h >> 15) << 31, exp = (h >> 10) & 0x1f, mant = h & 0x3ff;
    uint32_t bits;
    if (exp == 0) {
        float v = (float)mant * 0x1p-24f;
        return sign ? -v : v;
    }
    if (exp == 31)
        bits = sign | 0x7f800000u | (mant << 13);
    else
        bits = sign | ((exp + 127 - 15) << 23) | (mant << 13);
    float v;
    memcpy(&v, &bits, sizeof v);
    return v;
}

/* bfloat16 is the top half of a float32, so widening is a shift (subnormals, inf, NaN included). */
static float bf16_to_float(uint16_t h) {
    uint32_t bits = (uint32_t)h << 16;
    float v;
    memcpy(&v, &bits, sizeof v);
    return v;
}

static float element(const uint8_t *p, int32_t dtype) {
    switch (dtype) {
    case EAPIG_DTYPE_F32: {
        float v;
        memcpy(&v, p, sizeof v);
        return v;
    }
    case EAPIG_DTYPE_I32: {
        int32_t v;
        memcpy(&v, p, sizeof v);
        return (float)v;
    }
    default: {
        uint16_t h;
        memcpy(&h, p, sizeof h);
        return dtype == EAPIG_DTYPE_F16 ? half_to_float(h) : bf16_to_float(h);
    }
    }
}

size_t eapig_dtype_size(int32_t dtype) {
    switch (dtype) {
    case EAPIG_DTYPE_F32:
    case EAPIG_DTYPE_I32: return 4;
    case EAPIG_DTYPE_F16:
    case EAPIG_DTYPE_BF16: return 2;
    default: return 0;
    }
}

#ifdef MADV_POPULATE_READ
static void populate(const uint8_t *p, size_t n) {
    uintptr_t page = (uintptr_t)sysconf(_SC_PAGESIZE);
    uintptr_t lo = (uintptr_t)p / page * page, hi = ((uintptr_t)p + n + page - 1) / page * page;
    madvise((void *)lo, hi - lo, MADV_POPULATE_READ);
}
#endif

/* One tensor's conversion into f32, for eapig_parallel_for: destination rows [b, e) when
 * transposing (stored (C, R): each stored row becomes a destination column, in square tiles so
 * that both the reads and the strided writes stay in cache), else elements [b, e). */
enum { TILE = 32 };
typedef struct {
    const uint8_t *src;
    float *dst;
    size_t R, Cn;
    int32_t dtype;
    size_t esize;
    int32_t transpose;
} convert_job;

static void convert_range(void *ctx, size_t b, size_t e, size_t index) {
    const convert_job *j = ctx;
    const uint8_t *src = j->src;
    float *dst = j->dst;
    size_t R = j->R, Cn = j->Cn, esize = j->esize;
    int32_t dtype = j->dtype;
    (void)index;
    if (!j->transpose) {
        if (dtype == EAPIG_DTYPE_F32)
            memcpy(dst + b, src + b * 4, (e - b) * 4);
        else
            for (size_t i = b; i < e; i++) dst[i] = element(src + i * esize, dtype);
        return;
    }
    for (size_t c0 = 0; c0 < Cn; c0 += TILE)
        for (size_t r0 = b; r0 < e; r0 += TILE) {
            size_t c1 = c0 + TILE < Cn ? c0 + TILE : Cn, r1 = r0 + TILE < e ? r0 + TILE : e;
            if (dtype == EAPIG_DTYPE_F32) { /* the common case without the per-element dtype switch */
                for (size_t r = r0; r < r1; r++)
                    for (size_t c = c0; c < c1; c++) memcpy(dst + r * Cn + c, src + (c * R + r) * 4, 4);
                continue;
            }
            for (size_t c = c0; c < c1; c++)
                for (size_t r = r0; r < r1; r++) dst[r * Cn + c] = element(src + (c * R + r) * esize, dtype);
        }
}

int eapig_file_tensor(const eapig_file *f, uint64_t begin, uint64_t end, int32_t dtype, float *dst,
                      int64_t rows, int64_t cols, int32_t transpose) {
    if (!f) return eapig_set_error(EAPIG_ERR_ARG, "eapig_file_tensor: file is NULL");
    size_t esize = eapig_dtype_size(dtype);
    if (esize == 0) return eapig_set_error(EAPIG_ERR_ARG, "eapig_file_tensor: %s: unknown dtype %d", f->path, dtype);
    size_t count, bytes;
    if (rows < 0 || cols < 0 || !eapig_mul_ok((size_t)rows, (size_t)cols, &count) ||
        !eapig_mul_ok(count, esize, &bytes))
        return eapig_set_error(EAPIG_ERR_ARG, "eapig_file_tensor: %s: bad shape (%lld, %lld)", f->path,
                               (long long)rows, (long long)cols);
    if (end < begin || end > f->size)
        return eapig_set_error(EAPIG_ERR_IO,
                               "eapig_file_tensor: %s: bytes [%llu, %llu) are not a range inside the file "
                               "(%llu bytes)",
                               f->path, (unsigned long long)begin, (unsigned long long)end,
                               (unsigned long long)f->size);
    if (end - begin != (uint64_t)bytes)
        return eapig_set_error(EAPIG_ERR_IO,
                               "eapig_file_tensor: %s: bytes [%llu, %llu) hold %llu bytes, but (%lld, %lld) "
                               "elements of %zu bytes need %zu",
                               f->path, (unsigned long long)begin, (unsigned long long)end,
                               (unsigned long long)(end - begin), (long long)rows, (long long)cols, esize, bytes);
    if (count == 0) return EAPIG_OK;
    if (!dst) return eapig_set_error(EAPIG_ERR_ARG, "eapig_file_tensor: %s: dst is NULL", f->path);
    const uint8_t *src = f->data + begin;
    size_t R = (size_t)rows, Cn = (size_t)cols;
#ifdef MADV_POPULATE_READ
    /* One call maps the whole range (from the page cache) instead of a fault per few pages;
     * advice only: an older kernel refuses it and the reads below fault the pages in as usual. */
    populate(src, bytes);
#endif
    convert_job job = {src, dst, R, Cn, dtype, esize, transpose};
    /* Split over the core's threads: destination rows (in whole tiles) when transposing, else
     * element ranges; each thread also takes its own page faults on dst. */
    if (transpose)
        eapig_parallel_for(R, TILE, convert_range, &job);
    else
        eapig_parallel_for(count, (size_t)1 << 16, convert_range, &job);
    /* The process is done with these file pages (a later read maps them again from the page
     * cache), so a load holds the f32 copy and one tensor of the file, not the whole file. */
    eapig_file_release(src, bytes);
    /* A NaN or infinite weight poisons every activation after it, and a NaN with a payload is
     * not even safe to hand to LuaJIT: refuse the tensor here, naming the stored element. */
    int64_t bad = eapig_floats_first_nonfinite(dst, (int64_t)count);
    if (bad >= 0) {
        size_t stored = (size_t)bad;
        if (transpose) stored = ((size_t)bad % Cn) * R + (size_t)bad / Cn;
        return eapig_set_error(EAPIG_ERR_IO,
                               "eapig_file_tensor: %s: element %zu (byte %llu) is %s; weights must be finite",
                               f->path, stored, (unsigned long long)(begin + stored * esize),
                               isnan(dst[bad]) ? "NaN" : "infinite");
    }
    return EAPIG_OK;
}

/* 1 when element i of count at p (F32, F16 or BF16) has an all-ones exponent: NaN or infinite. */
static int stored_nonfinite(const uint8_t *p, size_t i, int32_t dtype) {
    if (dtype == EAPIG_DTYPE_F32) {
        uint32_t bits;
        memcpy(&bits, p + 4 * i, sizeof bits);
        return (bits & 0x7f800000u) == 0x7f800000u;
    }
    uint16_t h, exp = dtype == EAPIG_DTYPE_F16 ? 0x7c00 : 0x7f80;
    memcpy(&h, p + 2 * i, sizeof h);
    return (h & exp) == exp;
}

int64_t eapig_stored_first_nonfinite(const uint8_t *p, size_t count, int32_t dtype) {
    if (!p || (dtype != EAPIG_DTYPE_F32 && dtype != EAPIG_DTYPE_F16 && dtype != EAPIG_DTYPE_BF16)) return -1;
    /* Blocks without an early exit vectorise; only a block that holds one is searched. */
    enum { BLOCK = 1024 };
    for (size_t b0 = 0; b0 < count; b0 += BLOCK) {
        size_t b1 = b0 + BLOCK < count ? b0 + BLOCK : count;
        int any = 0;
        for (size_t i = b0; i < b1; i++) any |= stored_nonfinite(p, i, dtype);
        if (!any) continue;
        for (size_t i = b0; i < b1; i++)
            if (stored_nonfinite(p, i, dtype)) return (int64_t)i;
    }
    return -1;
}

int64_t eapig_floats_first_nonfinite(const float *x, int64_t n) {
    if (!x) return -1;
    /* Compare bits, not values: -O3 without fast-math keeps isfinite, but a bit test is exact and
     * never raises a floating-point exception on a signalling NaN. */
    /* Blocks without an early exit vectorise; only a block that holds one is searched. */
    enum { BLOCK = 1024 };
    for (int64_t b0 = 0; b0 < n; b0 += BLOCK) {
        int64_t b1 = b0 + BLOCK < n ? b0 + BLOCK : n;
        uint32_t any = 0;
        for (int64_t i = b0; i < b1; i++) {
            uint32_t bits;
            memcpy(&bits, x + i, sizeof bits);
            any |= (uint32_t)((bits & 0x7f800000u) == 0x7f800000u);
        }
        if (!any) continue;
        for (int64_t i = b0; i < b1; i++) {
            uint32_t bits;
            memcpy(&bits, x + i, sizeof bits);
            if ((bits & 0x7f800000u) == 0x7f800000u) return i;
        }
    }
    return -1;
}

int64_t eapig_floats_canonicalize_nan(float *x, int64_t n, int64_t *first_changed) {
    if (first_changed) *first_changed = -1;
    if (!x) return 0;
    int64_t count = 0;
    for (int64_t i = 0; i < n; i++) {
        uint32_t bits;
        memcpy(&bits, x + i, sizeof bits);
        if ((bits & 0x7f800000u) == 0x7f800000u && (bits & 0x007fffffu) != 0) {
            /* keep the sign: -NaN (what 0/0 gives on x86) stays bit-identical through a round trip */
            uint32_t quiet = (bits & 0x80000000u) | 0x7fc00000u;
            if (bits == quiet) continue;
            memcpy(x + i, &quiet, sizeof quiet);
            if (first_changed && count == 0) *first_changed = i;
            count++;
        }
    }
    return count;
}

/* ---- paths -------------------------------------------------------------------------------- */

int32_t eapig_path_kind(const char *path, int32_t follow) {
    struct stat st;
    if (!path || (follow ? stat(path, &st) : lstat(path, &st)) != 0) return EAPIG_PATH_MISSING;
    if (S_ISREG(st.st_mode)) return EAPIG_PATH_FILE;
    if (S_ISDIR(st.st_mode)) return EAPIG_PATH_DIR;
    if (S_ISLNK(st.st_mode)) return EAPIG_PATH_LINK;
    if (S_ISFIFO(st.st_mode)) return EAPIG_PATH_FIFO;
    if (S_ISCHR(st.st_mode)) return EAPIG_PATH_CHAR;
    if (S_ISBLK(st.st_mode)) return EAPIG_PATH_BLOCK;
    if (S_ISSOCK(st.st_mode)) return EAPIG_PATH_SOCKET;
    return EAPIG_PATH_OTHER;
}

int eapig_path_resolve(const char *path, char *out, size_t cap) {
    if (!path || !out) return eapig_set_error(EAPIG_ERR_ARG, "eapig_path_resolve: NULL argument");
    char *real = realpath(path, NULL);
    if (!real) return eapig_set_error(EAPIG_ERR_IO, "%s: cannot resolve: %s", path, strerror(errno));
    size_t n = strlen(real);
    if (n >= cap) {
        free(real);
        return eapig_set_error(EAPIG_ERR_ARG, "%s: the resolved path is longer than %zu bytes", path, cap);
    }
    memcpy(out, real, n + 1);
    free(real);
    return EAPIG_OK;
}

int32_t eapig_process_id(void) { return (int32_t)getpid(); }

int eapig_remove_stale_temps(const char *dir, const char *prefix, int32_t *removed) {
    if (!dir || !prefix || !removed) return eapig_set_error(EAPIG_ERR_ARG, "eapig_remove_stale_temps: NULL argument");
    *removed = 0;
    DIR *d = opendir(dir);
    if (!d) return EAPIG_OK; /* nothing to clean where nothing can be listed */
    size_t plen = strlen(prefix);
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        if (strncmp(e->d_name, prefix, plen) != 0) continue;
        char *end;
        errno = 0;
        long pid = strtol(e->d_name + plen, &end, 10);
        if (errno || end == e->d_name + plen || *end != '-' || pid <= 0 || pid > INT_MAX) continue;
        /* ESRCH: no such process. EPERM means it runs under another user: leave its file. */
        if (kill((pid_t)pid, 0) == 0 || errno != ESRCH) continue;
        char full[PATH_MAX];
        struct stat st;
        if (snprintf(full, sizeof full, "%s/%s", dir, e->d_name) >= (int)sizeof full) continue;
        if (lstat(full, &st) != 0 || !S_ISREG(st.st_mode)) continue;
        if (unlink(full) == 0) (*removed)++;
    }
    closedir(d);
    return EAPIG_OK;
}

const uint8_t *eapig_file_bytes(const eapig_file *f, uint64_t begin, uint64_t end) {
    if (!f || end < begin || end > f->size || !f->data) return NULL;
    return f->data + begin;
}

/* The loops are written per dtype so that the compiler vectorises the common ones (bf16 is a
 * shift; f32 a copy). */
void eapig_convert(float *dst, const uint8_t *src, size_t n, int32_t dtype) {
    switch (dtype) {
    case EAPIG_DTYPE_F32: memcpy(dst, src, n * sizeof(float)); return;
    case EAPIG_DTYPE_BF16:
        for (size_t i = 0; i < n; i++) {
            uint16_t h;
            memcpy(&h, src + 2 * i, sizeof h);
            uint32_t bits = (uint32_t)h << 16;
            memcpy(dst + i, &bits, sizeof bits);
        }
        return;
    case EAPIG_DTYPE_F16:
        for (size_t i = 0; i < n; i++) {
            uint16_t h;
            memcpy(&h, src + 2 * i, sizeof h);
            dst[i] = half_to_float(h);
        }
        return;
    default:
        for (size_t i = 0; i < n; i++) dst[i] = element(src + 4 * i, dtype);
    }
}

void eapig_file_release(const uint8_t *p, size_t n) {
    /* Only whole pages inside [p, p + n): neighbours' bytes stay mapped. */
    uintptr_t page = (uintptr_t)sysconf(_SC_PAGESIZE);
    uintptr_t lo = ((uintptr_t)p + page - 1) / page * page, hi = ((uintptr_t)p + n) / page * page;
    if (hi > lo) madvise((void *)lo, hi - lo, MADV_DONTNEED);
}

int eapig_rope_permute_rows(float *w, int32_t n_heads, int32_t d_head, int32_t d_in) {
    if (!w || n_heads < 1 || d_head < 2 || d_head % 2 || d_in < 1)
        return eapig_set_error(EAPIG_ERR_ARG,
                               "eapig_rope_permute_rows: need a matrix, n_heads >= 1, an even d_head >= 2 and "
                               "d_in >= 1 (got n_heads %d, d_head %d, d_in %d)",
                               n_heads, d_head, d_in);
    size_t Dh = (size_t)d_head, Din = (size_t)d_in, half = Dh / 2, head_floats;
    if (!eapig_mul_ok(Dh, Din, &head_floats) || head_floats > SIZE_MAX / sizeof(float))
        return eapig_set_error(EAPIG_ERR_ARG, "eapig_rope_permute_rows: head of %d x %d is too large", d_head, d_in);
    float *tmp = malloc(head_floats * sizeof(float));
    if (!tmp) return eapig_set_error(EAPIG_ERR_NOMEM, "eapig_rope_permute_rows: out of memory");
    /* Interleaved pair i is rows (2i, 2i+1); half-split puts them at (i, i + Dh/2). This is
     * the row order Hugging Face's llama conversion script produces. */
    for (size_t h = 0; h < (size_t)n_heads; h++) {
        float *head = w + h * head_floats;
        memcpy(tmp, head, head_floats * sizeof(float));
        for (size_t i = 0; i < half; i++) {
            memcpy(head + i * Din, tmp + (2 * i) * Din, Din * sizeof(float));
            memcpy(head + (i + half) * Din, tmp + (2 * i + 1) * Din, Din * sizeof(float));
        }
    }
    free(tmp);
    return EAPIG_OK;
}
