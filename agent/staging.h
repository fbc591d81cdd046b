/*
 * staging.h: take a local kernel (and initrd) by path, check the SHA-256
 * digests the caller promised, and hand the very same file descriptors to
 * the backend's kexec_file_load, so what was checked is what gets loaded.
 * Worker thread only (it reads whole files).
 */
#pragma once

#include <jansson.h>

#include "agent.h"

#define STAGING_MAX_FILE (1024ull * 1024 * 1024) /* 1 GiB per file */

struct stage_result {
        int status;       /* HTTP status of a failure, 0 on success */
        const char *code; /* problem code of a failure */
        char detail[512];
        json_t *extra;  /* extension members for the problem, owned */
        json_t *staged; /* on success: the Staged object, owned */
        int err;        /* errno of a kernel failure, 0 otherwise */
};

int staging_run(struct backend *b, const struct op_request *rq, struct stage_result *res);
void stage_result_done(struct stage_result *res);

/*
 * The directories staged files must lie in (canonical paths are compared;
 * see staging.c). The array is borrowed (the configuration's) and must
 * outlive every staging_run(). Set once, before any request; none set
 * refuses every path.
 */
void staging_set_allowed_dirs(char *const *dirs, unsigned n);

/* Path rules for a staging request: absolute, no "." or ".." components,
 * no empty ones ("//"), no control characters. */
bool staging_path_valid(const char *path);
/* 64 hex digits (any case). */
bool staging_sha256_valid(const char *hex);
