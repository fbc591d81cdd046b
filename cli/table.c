/*
 * table.c: aligned text tables (columns padded to their widest cell, two
 * spaces apart, the last column unpadded) and the small formatting helpers
 * every command's human output uses. Single-threaded; a table owns copies of
 * its cells.
 */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"

#include "luofleet/macro.h"

struct table {
        size_t ncols, nrows, cap;
        char **cells; /* nrows * ncols, row 0 the headers */
};

struct table *table_new(size_t ncols, const char *const *headers)
{
        struct table *t = calloc(1, sizeof(*t));

        if (!t)
                return NULL;
        t->ncols = ncols;
        if (table_add(t, headers) < 0)
                return table_free(t);
        return t;
}

int table_add(struct table *t, const char *const *cells)
{
        if (t->nrows == t->cap) {
                size_t cap = t->cap ? t->cap * 2 : 8;
                char **c = reallocarray(t->cells, cap * t->ncols, sizeof(char *));
                if (!c)
                        return -ENOMEM;
                t->cells = c;
                t->cap = cap;
        }
        for (size_t i = 0; i < t->ncols; i++) {
                char *s = strdup(cells[i] && *cells[i] ? cells[i] : "-");
                if (!s) {
                        while (i-- > 0)
                                free(t->cells[t->nrows * t->ncols + i]);
                        return -ENOMEM;
                }
                /* one line per row: a newline or tab inside a cell becomes a space */
                for (char *p = s; *p; p++)
                        if (*p == '\n' || *p == '\t' || *p == '\r')
                                *p = ' ';
                t->cells[t->nrows * t->ncols + i] = s;
        }
        t->nrows++;
        return 0;
}

void table_print(const struct table *t, FILE *f)
{
        size_t w[32] = { 0 };

        for (size_t r = 0; r < t->nrows; r++)
                for (size_t c = 0; c < t->ncols && c < ELEMENTSOF(w); c++)
                        w[c] = MAX(w[c], strlen(t->cells[r * t->ncols + c]));
        for (size_t r = 0; r < t->nrows; r++) {
                for (size_t c = 0; c < t->ncols; c++) {
                        const char *s = t->cells[r * t->ncols + c];
                        if (c + 1 == t->ncols)
                                fprintf(f, "%s\n", s);
                        else
                                fprintf(f, "%-*s  ", (int)w[MIN(c, ELEMENTSOF(w) - 1)], s);
                }
        }
}

struct table *table_free(struct table *t)
{
        if (!t)
                return NULL;
        for (size_t i = 0; i < t->nrows * t->ncols; i++)
                free(t->cells[i]);
        free(t->cells);
        free(t);
        return NULL;
}

char *fmt_ms(json_t *ms, char *buf, size_t size)
{
        if (json_is_integer(ms))
                snprintf(buf, size, "%lldms", (long long)json_integer_value(ms));
        else if (json_is_real(ms))
                snprintf(buf, size, "%.0fms", json_real_value(ms));
        else
                snprintf(buf, size, "-");
        return buf;
}

char *fmt_duration_s(double s, char *buf, size_t size)
{
        long long t = (long long)llround(s);

        if (!(s >= 0) || s > 1e12)
                snprintf(buf, size, "-");
        else if (t >= 3600)
                snprintf(buf, size, "%lldh%02lldm%02llds", t / 3600, t / 60 % 60, t % 60);
        else if (t >= 60)
                snprintf(buf, size, "%lldm%02llds", t / 60, t % 60);
        else
                snprintf(buf, size, "%llds", t);
        return buf;
}

char *fmt_bytes(uint64_t bytes, char *buf, size_t size)
{
        static const char *const units[] = { "B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB" };
        size_t u = 0;
        uint64_t tenths;
        double v = (double)bytes;

        while (v >= 1024.0 && u + 1 < ELEMENTSOF(units)) {
                v /= 1024.0;
                u++;
        }
        /* Rounding may reach the next unit: 1023.96 KiB is 1 MiB, not 1024 KiB. */
        if (u > 0 && u + 1 < ELEMENTSOF(units) && llround(v) >= 1024) {
                v /= 1024.0;
                u++;
        }
        tenths = (uint64_t)llround(v * 10.0);
        if (u == 0 || v >= 100.0 || tenths % 10 == 0)
                snprintf(buf, size, "%llu %s", (unsigned long long)llround(v), units[u]);
        else
                snprintf(buf, size, "%llu.%llu %s", (unsigned long long)(tenths / 10),
                         (unsigned long long)(tenths % 10), units[u]);
        return buf;
}

const char *json_str(const json_t *o, const char *key)
{
        return json_string_value(json_object_get(o, key));
}

void print_json_line(const json_t *doc)
{
        char *s = json_dumps(doc, JSON_COMPACT | JSON_PRESERVE_ORDER | JSON_ENCODE_ANY);

        if (s) {
                puts(s);
                free(s);
        }
        fflush(stdout);
}
