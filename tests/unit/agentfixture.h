/*
 * agentfixture.h: a whole agent (simulated kernel, journal, reconciliation)
 * in a private temporary directory, for the suites that drive agent.c and
 * ops.c directly (test_agent, test_audit). Header only; one agent per suite
 * process, single-threaded test code. The suite's setup() makes tmpdir
 * (testutil_mkdtemp), zeroes cfg and calls open_all(); teardown calls
 * close_all() and removes tmpdir.
 */
#pragma once

#include <fcntl.h>
#include <stdio.h>
#include <unistd.h>

#include "agent.h"
#include "config.h"
#include "journal.h"
#include "luofleet/backend.h"
#include "testutil.h"

static char tmpdir[256];
static struct agent_config cfg;
static struct backend *backend;
static struct journal *journal;
static struct agent *agent;
static int dir_fd = -1;

/* Open the backend, the journal and the agent on tmpdir, and reconcile. */
static inline void open_all(void)
{
        char msg[256];

        cfg.backend.kind = BACKEND_SIM;
        cfg.backend.state_dir = tmpdir;
        cfg.backend.sim_release = "6.1.0-test";
        cfg.max_wait_ms = 600000;
        snprintf(cfg.hostname, sizeof(cfg.hostname), "unit-host");
        ck_assert_int_eq(backend_open(&cfg.backend, &backend, msg, sizeof(msg)), 0);
        dir_fd = open(tmpdir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        ck_assert_int_ge(dir_fd, 0);
        ck_assert_int_eq(journal_open(dir_fd, "journal", 0, &journal, NULL), 0);
        ck_assert_int_eq(agent_new(&cfg, backend, journal, dir_fd, &agent), 0);
        ck_assert_int_eq(agent_reconcile(agent), 0);
}

static inline void close_all(void)
{
        agent = agent_free(agent);
        journal = journal_free(journal);
        backend = backend_free(backend);
        if (dir_fd >= 0)
                close(dir_fd);
        dir_fd = -1;
}
