/*
 * problem.h: RFC 9457 problem documents, stable codes, errno -> HTTP map.
 */
#pragma once

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>

struct problem_errno_map {
        int err;
        int status;
        const char *code;
};

json_t *problem_new(int status, const char *code, const char *detail);
const char *problem_title(const char *code);
bool problem_code_known(const char *code);
size_t problem_codes(const char *const **ret);
struct problem_errno_map problem_from_errno(int err);
