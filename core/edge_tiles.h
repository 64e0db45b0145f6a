/* edge_tiles.h: the register tiles of the edge-score product (core/edge_product.c), written once
 * and compiled once per instruction set. Before each inclusion the including file defines
 *   TILE(x)    this instance's name for x (TILE(vec), TILE(full), TILE(edge), TILE(lanes)),
 *   TILE_ATTR  the instance's function attributes (its target; empty: the compiler's default),
 *   TILE_W     floats per vector, and TILE_MR x TILE_NR, the dot products kept in registers,
 * and the file undefines them at its end.
 *
 * A tile adds c[i*ldc + j] += sum over k < kc of a[i*lda + k] * b[j*ldb + k]: rows of a and of b
 * are both contiguous in k, so each of the MR x NR results is a dot product along k, accumulated
 * in one vector of partial sums and summed across its lanes once at the end. Each step of k loads
 * MR + NR vectors for MR * NR multiply-adds, so the tile is bound by the multiply-adds, not the
 * loads, and nothing is packed or copied first. kc is a multiple of TILE_W. */

typedef float TILE(vec) __attribute__((vector_size(TILE_W * sizeof(float))));

/* The sum of a vector's lanes, as a tree in a fixed order (the same bits on every call). */
TILE_ATTR static inline float TILE(lanes)(TILE(vec) v) {
    float s[TILE_W];
    memcpy(s, &v, sizeof s);
    for (int half = TILE_W / 2; half > 0; half /= 2)
        for (int q = 0; q < half; q++) s[q] += s[q + half];
    return s[0];
}

/* Loads TILE_W floats from p (any alignment). */
TILE_ATTR static inline TILE(vec) TILE(load)(const float *p) {
    TILE(vec) v;
    memcpy(&v, p, sizeof v);
    return v;
}

/* A whole TILE_MR x TILE_NR tile: the accumulators stay in registers for all of kc. */
TILE_ATTR static void TILE(full)(size_t kc, const float *a, size_t lda, const float *b, size_t ldb, float *c,
                                 size_t ldc) {
    TILE(vec) acc[TILE_MR][TILE_NR];
    for (int i = 0; i < TILE_MR; i++)
        for (int j = 0; j < TILE_NR; j++) acc[i][j] = (TILE(vec)){0};
    for (size_t k = 0; k < kc; k += TILE_W) {
        TILE(vec) av[TILE_MR];
        for (int i = 0; i < TILE_MR; i++) av[i] = TILE(load)(a + i * lda + k);
        for (int j = 0; j < TILE_NR; j++) {
            TILE(vec) bv = TILE(load)(b + j * ldb + k);
            for (int i = 0; i < TILE_MR; i++) acc[i][j] += av[i] * bv;
        }
    }
    for (int i = 0; i < TILE_MR; i++)
        for (int j = 0; j < TILE_NR; j++) c[i * ldc + j] += TILE(lanes)(acc[i][j]);
}

/* A partial tile at the staircase's and the output's edges: mr <= TILE_MR rows, nr <= TILE_NR
 * columns, a row at a time (a few percent of the work). */
TILE_ATTR static void TILE(edge)(size_t mr, size_t nr, size_t kc, const float *a, size_t lda, const float *b,
                                 size_t ldb, float *c, size_t ldc) {
    for (size_t i = 0; i < mr; i++) {
        TILE(vec) acc[TILE_NR];
        for (size_t j = 0; j < nr; j++) acc[j] = (TILE(vec)){0};
        for (size_t k = 0; k < kc; k += TILE_W) {
            TILE(vec) av = TILE(load)(a + i * lda + k);
            for (size_t j = 0; j < nr; j++) acc[j] += av * TILE(load)(b + j * ldb + k);
        }
        for (size_t j = 0; j < nr; j++) c[i * ldc + j] += TILE(lanes)(acc[j]);
    }
}

#undef TILE
#undef TILE_ATTR
#undef TILE_W
#undef TILE_MR
#undef TILE_NR
