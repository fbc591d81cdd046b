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
                /* one line per row: a newline or tab inside a cell becomes a space; other
                 * control characters (an escape sequence in a server's text) a '?' */
                for (char *p = s; *p; p++)
                        if (*p == '\n' || *p == '\t' || *p == '\r')
                                *p = ' ';
                        else if ((unsigned char)*p < 0x20 || *p == 0x7f)
                                *p = '?';
                t->cells[t->nrows * t->ncols + i] = s;
        }
        t->nrows++;
        return 0;
}

/* The columns a code point takes on a terminal: 0 for combining marks, 2 for the East
 * Asian wide and fullwidth ranges and emoji, else 1 (no locale needed). */
static unsigned cp_width(uint32_t c)
{
        if ((c >= 0x300 && c <= 0x36f) || (c >= 0x200b && c <= 0x200f) || c == 0xfe0f)
                return 0;
        if ((c >= 0x1100 && c <= 0x115f) || (c >= 0x2e80 && c <= 0xa4cf && c != 0x303f) ||
            (c >= 0xac00 && c <= 0xd7a3) || (c >= 0xf900 && c <= 0xfaff) ||
            (c >= 0xfe30 && c <= 0xfe4f) || (c >= 0xff00 && c <= 0xff60) ||
            (c >= 0xffe0 && c <= 0xffe6) || (c >= 0x1f300 && c <= 0x1f64f) ||
            (c >= 0x1f680 && c <= 0x1f6ff) || (c >= 0x1f900 && c <= 0x1f9ff) ||
            (c >= 0x20000 && c <= 0x3fffd))
                return 2;
        return 1;
}

size_t display_width(const char *s)
{
        const unsigned char *p = (const unsigned char *)s;
        size_t w = 0;

        while (*p) {
                uint32_t c = *p;
                int n = c < 0x80             ? 0
                        : (c & 0xe0) == 0xc0 ? 1
                        : (c & 0xf0) == 0xe0 ? 2
                        : (c & 0xf8) == 0xf0 ? 3
                                             : -1;
                if (n < 0) { /* not a lead byte: one column, as a terminal shows U+FFFD */
                        w++;
                        p++;
                        continue;
                }
                c &= n ? 0x3fu >> n : 0x7fu;
                p++;
                int i;
                for (i = 0; i < n && (*p & 0xc0) == 0x80; i++, p++)
                        c = (c << 6) | (*p & 0x3fu);
                w += i == n ? cp_width(c) : 1;
        }
        return w;
}

void table_print(const struct table *t, FILE *f)
{
        size_t w[32] = { 0 };

        for (size_t r = 0; r < t->nrows; r++)
                for (size_t c = 0; c < t->ncols && c < ELEMENTSOF(w); c++)
                        w[c] = MAX(w[c], display_width(t->cells[r * t->ncols + c]));
        for (size_t r = 0; r < t->nrows; r++) {
                for (size_t c = 0; c < t->ncols; c++) {
                        const char *s = t->cells[r * t->ncols + c];
                        fputs(s, f);
                        if (c + 1 == t->ncols) {
                                fputc('\n', f);
                                continue;
                        }
                        /* padded by display columns, not bytes: UTF-8 cells align */
                        for (size_t k = display_width(s); k < w[MIN(c, ELEMENTSOF(w) - 1)] + 2; k++)
                                fputc(' ', f);
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
