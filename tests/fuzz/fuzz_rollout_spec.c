/*
 * fuzz_rollout_spec.c: the controller's hostile-input surface behind POST
 * /v1/rollouts: a JSON body through rollout_spec_normalize() (validation,
 * defaults, windows), and, when it is accepted, rollout_plan() over a small
 * fixed inventory, rollout_limits_get() and windows_check() at a few fixed
 * instants.
 *
 * Invariants checked besides "no crash, no leak, no UB": a refusal is a
 * complete problem (status 400 or 422 with a code); an accepted spec plans
 * to waves whose hosts are each selected once, and resolved limits keep
 * batch and max_unavailable at least 1.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "plan.h"
#include "window.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static json_t *inventory(void)
{
        static const char *const zones[] = { "a", "b", "c" };
        json_t *hosts = json_array();

        for (unsigned i = 0; i < 12; i++) {
                char name[16];
                snprintf(name, sizeof(name), "h%02u", i);
                json_array_append_new(hosts, json_pack("{s:s, s:{s:s, s:s}}", "name", name,
                                                       "labels", "zone", zones[i % 3], "group",
                                                       i < 8 ? "hv" : "storage"));
        }
        return hosts;
}

static void check_problem(const struct ctl_problem *p)
{
        if ((p->status != 400 && p->status != 422) || p->code[0] == '\0')
                abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
        static json_t *hosts;
        struct ctl_problem p = { 0 };
        json_t *in, *spec = NULL, *plan = NULL;

        if (!hosts)
                hosts = inventory();
        in = json_loadb((const char *)data, size, JSON_REJECT_DUPLICATES, NULL);
        if (!in)
                return 0;
        if (rollout_spec_normalize(in, &spec, &p) < 0) {
                check_problem(&p);
                json_decref(in);
                return 0;
        }
        memset(&p, 0, sizeof(p));
        if (rollout_plan(spec, hosts, &plan, &p) < 0) {
                check_problem(&p);
        } else {
                json_t *waves = json_object_get(plan, "waves"), *w, *seen = json_object();
                size_t i, j, total = 0;
                struct rollout_limits lim;

                json_array_foreach (waves, i, w) {
                        json_t *h;
                        json_array_foreach (json_object_get(w, "hosts"), j, h) {
                                if (json_object_get(seen, json_string_value(h)))
                                        abort(); /* a host in two waves */
                                json_object_set_new(seen, json_string_value(h), json_true());
                                total++;
                        }
                }
                if (total != (size_t)json_integer_value(json_object_get(plan, "hosts")))
                        abort();
                if (rollout_limits_get(spec, (unsigned)total, &lim) == 0 &&
                    (lim.batch < 1 || lim.max_unavailable < 1))
                        abort();
                json_decref(seen);
        }
        {
                static const time_t instants[] = { 0, 1700000000, 1711846800, 1729990800 };
                for (size_t k = 0; k < sizeof(instants) / sizeof(instants[0]); k++) {
                        time_t next = 0, closes = 0;
                        (void)windows_check(json_object_get(spec, "windows"), instants[k], &next,
                                            &closes);
                }
        }
        json_decref(plan);
        json_decref(spec);
        json_decref(in);
        return 0;
}
