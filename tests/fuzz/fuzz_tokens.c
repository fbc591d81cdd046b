/*
 * fuzz_tokens.c: the tokens file parser (auth_tokens_parse) on arbitrary
 * bytes, and when it accepts, a lookup of the input's first line as a
 * token, and the bearer parsing and decision path of auth_check() with the
 * input as the Authorization header (Unix-socket path: the header is parsed
 * and looked up whatever the policy). A file the
 * parser accepts must give back what it holds: every entry's count is
 * bounded and a lookup never reads outside the table.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "auth.h"
#include "config.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
        struct auth_tokens *t = NULL;
        char err[256];
        const char *name;
        enum auth_role role;

        if (auth_tokens_parse((const char *)data, size, &t, err, sizeof(err)) == 0) {
                if (auth_tokens_count(t) > AUTH_TOKENS_MAX)
                        abort();
                const char *nl = memchr(data, '\n', size);
                size_t len = nl ? (size_t)(nl - (const char *)data) : size;
                if (auth_tokens_find(t, (const char *)data, len, &name, &role) == 0 &&
                    (role <= ROLE_NONE || role >= _ROLE_MAX || strlen(name) > AUTH_TOKEN_NAME_MAX))
                        abort();
                auth_tokens_unref(t);
        } else if (!err[0]) {
                abort(); /* every refusal says why */
        }

        /* The header path: NUL-terminated copy as MHD hands it over. */
        char *hdr = malloc(size + 1);
        if (!hdr)
                return 0;
        memcpy(hdr, data, size);
        hdr[size] = 0;
        struct auth_request rq = { .is_unix = true,
                                   .is_read = size & 1,
                                   .path = "/v1/prepare",
                                   .authorization = hdr,
                                   .fd = -1 };
        struct auth_identity who;
        const char *code;
        char detail[256];
        enum auth_verdict v = auth_check(&rq, &who, &code, detail, sizeof(detail));
        if (v != AUTH_ALLOW && !code)
                abort();
        free(hdr);
        return 0;
}
