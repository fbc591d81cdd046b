/*
 * staging.h: take a local kernel (and initrd) by path, or download it from a
 * URL into STATE_DIR/kernels first (download.c), check the SHA-256 digests
 * the caller promised, and hand the very same file descriptors to the
 * backend's kexec_file_load, so what was checked is what gets loaded.
 * Worker thread only (it reads whole files), except the request checks.
 */
#pragma once

#include <jansson.h>

#include "agent.h"

#define STAGING_MAX_FILE (1024ull * 1024 * 1024) /* 1 GiB per file */

struct stage_result {
        int status;        /* HTTP status of a failure, 0 on success */
        const char *code;  /* problem code of a failure */
        char detail[2048]; /* names paths: the file and the allowed directories */
        json_t *extra;     /* extension members for the problem, owned */
        json_t *staged;    /* on success: the Staged object, owned */
        int err;           /* errno of a kernel failure, 0 otherwise */
};

int staging_run(struct backend *b, const struct op_request *rq, struct stage_result *res);

/*
 * The whole OP_STAGE job: with URLs, download both files into
 * STATE_DIR/kernels (temporary name, fsync, rename; progress into the
 * running operation, throttled), fill rq's paths, then staging_run(). On
 * any failure nothing is staged, no temporary file is left, and a file this
 * call downloaded that is not staged is removed. On success a superseded
 * download (the earlier staged record's files, when they came from a URL)
 * is removed. Returns like staging_run().
 */
int staging_execute(struct agent *a, struct op_request *rq, struct stage_result *res);

/*
 * The signature check of a staging request (MHD thread; reads the key
 * file). sig: the request's "signature" object or NULL. 1 accepted (sets
 * rq->signed_by when signed), 0 refused with *ret_code/detail filled.
 */
int staging_check_signature(const struct agent_config *cfg, json_t *sig, struct op_request *rq,
                            const char **ret_code, char *detail, size_t detail_size);
void stage_result_done(struct stage_result *res);
/*
 * The rollback target from what the agent booted (docs/staging.md): when
 * staged's "previous" has no image (no readable /boot/vmlinuz-<release>),
 * take the kernel (and initrd) files of booted, the staged record the last
 * reboot booted into with a matching verification. Under agent.lock.
 */
void staging_previous_from_booted(json_t *staged, json_t *booted);

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
