/*
 * auth.c: bearer tokens, client certificates and peer credentials mapped to
 * roles (see auth.h).
 */
#include <errno.h>
#include <string.h>

#include "auth.h"
#include "luofleet/macro.h"

static const char *const role_names[_ROLE_MAX] = {
        [ROLE_NONE] = "none",
        [ROLE_VIEWER] = "viewer",
        [ROLE_OPERATOR] = "operator",
        [ROLE_ADMIN] = "admin",
};

const char *auth_role_to_string(enum auth_role r)
{
        return r >= 0 && r < _ROLE_MAX ? role_names[r] : "none";
}

int auth_role_from_string(const char *s)
{
        for (int i = 0; i < _ROLE_MAX; i++)
                if (s && strcmp(s, role_names[i]) == 0)
                        return i;
        return -EINVAL;
}

int auth_token_command(int argc, char **argv)
{
        (void)argc;
        (void)argv;
        return 2; /* filled in by the tokens work */
}
