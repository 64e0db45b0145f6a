/* activations.c: per-batch arithmetic on node-major activation buffers (NF, B, P, D): the
 * integrated-gradient override values, the means of mean ablations, and the proximities of
 * information-flow routes. Attribution calls these between engine runs instead of looping over
 * activations in Lua.
 *
 * NF = source nodes, B = batch rows, P = positions, D = d_model, S = integrated-gradient steps,
 * blk = B*P*D floats per node.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

static int dims_ok(const char *who, int32_t NF, int32_t B, int32_t P, int32_t D) {
    if (NF < 1 || B < 1 || P < 1 || D < 1)
        return eapig_set_error(EAPIG_ERR_ARG, "%s: shape (NF %d, B %d, P %d, D %d) must be positive", who, NF, B, P,
                               D);
    return EAPIG_OK;
}

static int lengths_ok(const char *who, const int32_t *lengths, int32_t B, int32_t P) {
    for (int32_t b = 0; b < B; b++)
        if (lengths[b] < 1 || lengths[b] > P)
            return eapig_set_error(EAPIG_ERR_ARG, "%s: row %d has length %d, outside 1..%d", who, b + 1, lengths[b], P);
    return EAPIG_OK;
}

int eapig_interpolate(float *out, const float *base, const float *delta, const float *alphas, int32_t n_steps,
                      int64_t n_nodes, int64_t blk) {
    if (!out || !base || !delta || !alphas)
        return eapig_set_error(EAPIG_ERR_ARG, "eapig_interpolate: NULL argument");
    if (n_steps < 1 || n_nodes < 1 || blk < 1)
        return eapig_set_error(EAPIG_ERR_ARG, "eapig_interpolate: steps %d, nodes %lld, block %lld must be positive",
                               n_steps, (long long)n_nodes, (long long)blk);
    size_t n = (size_t)blk;
    for (size_t j = 0; j < (size_t)n_nodes; j++) {
        const float *b = base + j * n, *d = delta + j * n;
        for (size_t s = 0; s < (size_t)n_steps; s++) {
            float a = alphas[s], *o = out + (j * (size_t)n_steps + s) * n;
            for (size_t i = 0; i < n; i++) o[i] = b[i] + a * d[i];
        }
    }
    return EAPIG_OK;
}

int eapig_node_sums(double *sums, const float *capture, const int32_t *lengths, int32_t NF, int32_t B, int32_t P,
                    int32_t D, int32_t per_position) {
    static const char who[] = "eapig_node_sums";
    if (!sums || !capture || !lengths) return eapig_set_error(EAPIG_ERR_ARG, "%s: NULL argument", who);
    int st = dims_ok(who, NF, B, P, D);
    if (st == EAPIG_OK) st = lengths_ok(who, lengths, B, P);
    if (st != EAPIG_OK) return st;
    size_t nD = (size_t)D, nP = (size_t)P, width = per_position ? nP * nD : nD, blk = (size_t)B * nP * nD;
    for (size_t u = 0; u < (size_t)NF; u++)
        for (size_t b = 0; b < (size_t)B; b++)
            for (size_t p = 0; p < (size_t)lengths[b]; p++) {
                const float *src = capture + u * blk + (b * nP + p) * nD;
                double *dst = sums + u * width + (per_position ? p * nD : 0);
                for (size_t d = 0; d < nD; d++) dst[d] += src[d];
            }
    return EAPIG_OK;
}

int eapig_broadcast_means(float *R, const float *means, int32_t NF, int32_t B, int32_t P, int32_t D,
                          int32_t per_position, int32_t means_P) {
    static const char who[] = "eapig_broadcast_means";
    if (!R || !means) return eapig_set_error(EAPIG_ERR_ARG, "%s: NULL argument", who);
    int st = dims_ok(who, NF, B, P, D);
    if (st != EAPIG_OK) return st;
    if (per_position && P > means_P)
        return eapig_set_error(EAPIG_ERR_ARG, "%s: %d positions but the means have %d", who, P, means_P);
    size_t nD = (size_t)D, nP = (size_t)P, width = per_position ? (size_t)means_P * nD : nD;
    for (size_t u = 0; u < (size_t)NF; u++)
        for (size_t b = 0; b < (size_t)B; b++)
            for (size_t p = 0; p < nP; p++)
                memcpy(R + ((u * (size_t)B + b) * nP + p) * nD, means + u * width + (per_position ? p * nD : 0),
                       nD * sizeof(float));
    return EAPIG_OK;
}

int eapig_flow_importance(double *imp, const float *x, const float *capture, int32_t n_up, const int32_t *lengths,
                          int32_t B, int32_t P, int32_t D) {
    static const char who[] = "eapig_flow_importance";
    if (!imp || !x || !capture || !lengths) return eapig_set_error(EAPIG_ERR_ARG, "%s: NULL argument", who);
    int st = dims_ok(who, n_up, B, P, D);
    if (st == EAPIG_OK) st = lengths_ok(who, lengths, B, P);
    if (st != EAPIG_OK) return st;
    size_t nD = (size_t)D, nP = (size_t)P, blk = (size_t)B * nP * nD, nu = (size_t)n_up;
    double *prox = malloc(nu * sizeof(double));
    if (!prox) return eapig_set_error(EAPIG_ERR_NOMEM, "%s: out of memory", who);
    for (size_t b = 0; b < (size_t)B; b++) {
        double len = lengths[b];
        for (size_t p = 0; p < (size_t)lengths[b]; p++) {
            const float *xp = x + (b * nP + p) * nD;
            double xn = 0, total = 0;
            for (size_t d = 0; d < nD; d++) xn += fabs((double)xp[d]);
            for (size_t u = 0; u < nu; u++) {
                const float *o = capture + u * blk + (b * nP + p) * nD;
                double dist = 0;
                for (size_t d = 0; d < nD; d++) dist += fabs((double)o[d] - (double)xp[d]);
                double pr = xn - dist;
                prox[u] = pr < 0 ? 0 : pr;
                total += prox[u];
            }
            for (size_t u = 0; u < nu; u++) imp[u] += prox[u] / total / len;
        }
    }
    free(prox);
    return EAPIG_OK;
}
