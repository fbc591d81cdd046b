/*
 * luo_state.c: strings and SET_EVENT transition rules of the kernel's
 * live-update state machine. Pure functions; any thread.
 */
#include <errno.h>
#include <string.h>

#include "luofleet/luo_state.h"
#include "luofleet/macro.h"

static const char *const state_names[_LUO_STATE_MAX] = {
        [LUO_STATE_UNDEFINED] = "undefined", [LUO_STATE_NORMAL] = "normal",
        [LUO_STATE_PREPARED] = "prepared",   [LUO_STATE_FROZEN] = "frozen",
        [LUO_STATE_UPDATED] = "updated",
};

static const char *const event_names[_LUO_EVENT_MAX] = {
        [LUO_EVENT_PREPARE] = "prepare",
        [LUO_EVENT_FREEZE] = "freeze",
        [LUO_EVENT_FINISH] = "finish",
        [LUO_EVENT_CANCEL] = "cancel",
};

const char *luo_state_to_string(enum luo_state s)
{
        if ((unsigned)s >= _LUO_STATE_MAX)
                return NULL;
        return state_names[s];
}

int luo_state_from_buf(const char *buf, unsigned long len)
{
        if (!buf)
                return -EINVAL;
        /* sysfs attributes end in one newline; accept exactly that much slack. */
        if (len > 0 && buf[len - 1] == '\n')
                len--;
        for (int i = 0; i < _LUO_STATE_MAX; i++)
                if (strlen(state_names[i]) == len && memcmp(state_names[i], buf, len) == 0)
                        return i;
        return -EINVAL;
}

int luo_state_from_string(const char *s)
{
        if (!s)
                return -EINVAL;
        return luo_state_from_buf(s, strlen(s));
}

const char *luo_event_to_string(enum luo_event e)
{
        if ((unsigned)e >= _LUO_EVENT_MAX)
                return NULL;
        return event_names[e];
}

int luo_event_from_string(const char *s)
{
        if (!s)
                return -EINVAL;
        for (int i = 0; i < _LUO_EVENT_MAX; i++)
                if (strcmp(event_names[i], s) == 0)
                        return i;
        return -EINVAL;
}

int luo_state_apply_event(enum luo_state from, enum luo_event ev, enum luo_state *ret_to)
{
        enum luo_state to;

        switch (ev) {
        case LUO_EVENT_PREPARE:
                if (from != LUO_STATE_NORMAL)
                        return -EINVAL;
                to = LUO_STATE_PREPARED;
                break;
        case LUO_EVENT_FINISH:
                if (from != LUO_STATE_UPDATED)
                        return -EINVAL;
                to = LUO_STATE_NORMAL;
                break;
        case LUO_EVENT_CANCEL:
                if (from != LUO_STATE_PREPARED && from != LUO_STATE_FROZEN)
                        return -EINVAL;
                to = LUO_STATE_NORMAL;
                break;
        case LUO_EVENT_FREEZE: /* only reboot(KEXEC) freezes */
        default:
                return -EINVAL;
        }
        if (ret_to)
                *ret_to = to;
        return 0;
}
