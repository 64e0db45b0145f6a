/* eapig_mpi.c: libeapig_mpi, the MPI calls data-parallel runs need (see eapig_mpi.h). Kept out of
 * libeapig so that eapig builds and runs where MPI is not installed. */
#include <limits.h>
#include <mpi.h>
#include <stdarg.h>
#include <stdio.h>

#include "eapig_mpi.h"

static _Thread_local char last_error[1024];

const char *eapig_mpi_last_error(void) { return last_error; }

static int fail(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static int fail(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(last_error, sizeof last_error, fmt, ap);
    va_end(ap);
    return EAPIG_MPI_ERR;
}

/* An MPI status as an error naming the call. */
static int mpi_failed(const char *call, int code) {
    char text[MPI_MAX_ERROR_STRING];
    int len = 0;
    if (MPI_Error_string(code, text, &len) != MPI_SUCCESS) len = snprintf(text, sizeof text, "error %d", code);
    return fail("%s failed: %.*s", call, len, text);
}

int eapig_mpi_library_version(char *out, int32_t cap) {
    char text[MPI_MAX_LIBRARY_VERSION_STRING];
    int len = 0;
    if (!out || cap < 1) return fail("eapig_mpi_library_version: bad arguments");
    int rc = MPI_Get_library_version(text, &len);
    if (rc != MPI_SUCCESS) return mpi_failed("MPI_Get_library_version", rc);
    int line = 0; /* the first line says it all ("Open MPI v4.1.4, package: ...") */
    while (line < len && text[line] != '\n' && text[line] != '\0') line++;
    snprintf(out, (size_t)cap, "%.*s", line, text);
    return EAPIG_MPI_OK;
}

int eapig_mpi_init(int32_t *rank, int32_t *size) {
    int initialized = 0, finalized = 0, r = 0, s = 0, rc;
    if (!rank || !size) return fail("eapig_mpi_init: bad arguments");
    MPI_Finalized(&finalized);
    if (finalized) return fail("eapig_mpi_init: MPI was already finalized");
    MPI_Initialized(&initialized);
    if (!initialized) {
        if ((rc = MPI_Init(NULL, NULL)) != MPI_SUCCESS) return mpi_failed("MPI_Init", rc);
        MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
    }
    if ((rc = MPI_Comm_rank(MPI_COMM_WORLD, &r)) != MPI_SUCCESS) return mpi_failed("MPI_Comm_rank", rc);
    if ((rc = MPI_Comm_size(MPI_COMM_WORLD, &s)) != MPI_SUCCESS) return mpi_failed("MPI_Comm_size", rc);
    *rank = r;
    *size = s;
    return EAPIG_MPI_OK;
}

int eapig_mpi_allreduce(void *buf, int64_t n, int32_t dtype, int32_t op) {
    if (!buf || n < 0) return fail("eapig_mpi_allreduce: bad arguments (n = %lld)", (long long)n);
    MPI_Datatype type;
    size_t width;
    if (dtype == EAPIG_MPI_FLOAT) type = MPI_FLOAT, width = sizeof(float);
    else if (dtype == EAPIG_MPI_DOUBLE) type = MPI_DOUBLE, width = sizeof(double);
    else return fail("eapig_mpi_allreduce: unknown dtype %d", (int)dtype);
    MPI_Op mop;
    if (op == EAPIG_MPI_SUM) mop = MPI_SUM;
    else if (op == EAPIG_MPI_MAX) mop = MPI_MAX;
    else return fail("eapig_mpi_allreduce: unknown op %d", (int)op);
    /* MPI counts are int: large buffers go in pieces */
    for (int64_t done = 0; done < n;) {
        int count = n - done > INT_MAX / 2 ? INT_MAX / 2 : (int)(n - done);
        int rc = MPI_Allreduce(MPI_IN_PLACE, (char *)buf + (size_t)done * width, count, type, mop, MPI_COMM_WORLD);
        if (rc != MPI_SUCCESS) return mpi_failed("MPI_Allreduce", rc);
        done += count;
    }
    return EAPIG_MPI_OK;
}

int eapig_mpi_finalize(void) {
    int initialized = 0, finalized = 0;
    MPI_Initialized(&initialized);
    MPI_Finalized(&finalized);
    if (!initialized || finalized) return EAPIG_MPI_OK;
    int rc = MPI_Finalize();
    return rc == MPI_SUCCESS ? EAPIG_MPI_OK : mpi_failed("MPI_Finalize", rc);
}

int eapig_mpi_abort(int32_t code) {
    int initialized = 0;
    MPI_Initialized(&initialized);
    if (!initialized) return fail("eapig_mpi_abort: MPI is not initialized");
    int rc = MPI_Abort(MPI_COMM_WORLD, code);
    return rc == MPI_SUCCESS ? EAPIG_MPI_OK : mpi_failed("MPI_Abort", rc);
}
