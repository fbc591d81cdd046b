/*
 * secfile.c: the opener of the agent's secret configuration files (see
 * secfile.h).
 */
#include <errno.h>
#include <fcntl.h>

#include "secfile.h"

static secfile_open_fn opener;
static void *opener_data;

void secfile_set_opener(secfile_open_fn fn, void *userdata)
{
        opener = fn;
        opener_data = userdata;
}

int secfile_open(const char *path)
{
        int fd;

        if (opener)
                return opener(path, opener_data);
        fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
        return fd < 0 ? -errno : fd;
}
