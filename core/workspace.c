/* workspace.c: the workspace that carries a forward run's saved activations to its backward
 * (core/run.h): creation, release, and the growth of its buffers for whichever entry point
 * needs them (eapig_forward's activations, eapig_backward's gradients, converted weights).
 */
#include <stdlib.h>

#include "run.h"

eapig_workspace *eapig_workspace_new(void) {
    eapig_workspace *ws = calloc(1, sizeof *ws);
    if (!ws) eapig_set_error(EAPIG_ERR_NOMEM, "eapig_workspace_new: out of memory");
    return ws;
}

void eapig_workspace_free(eapig_workspace *ws) {
    if (!ws) return;
    free(ws->fwd);
    free(ws->bwd);
    free(ws->flags);
    free(ws->layers);
    free(ws->lengths);
    free(ws->logit_pos);
    free(ws->tokens);
    free(ws->wbuf);
    free(ws);
}

int eapig_workspace_grow(void **buf, size_t *cap, size_t n, size_t elem, const char *fn, const char *what) {
    if (n <= *cap) return EAPIG_OK;
    size_t bytes;
    if (!eapig_mul_ok(n, elem, &bytes)) return eapig_set_error(EAPIG_ERR_NOMEM, "%s: %s size overflows", fn, what);
    void *p = malloc(bytes ? bytes : 1);
    if (!p) return eapig_set_error(EAPIG_ERR_NOMEM, "%s: out of memory for %s (%zu bytes)", fn, what, bytes);
    free(*buf);
    *buf = p;
    *cap = n;
    return EAPIG_OK;
}
