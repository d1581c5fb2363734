/* policy_test.c — the policy seam from C under ASan/LSan (P1–P3): every fixture, sound
 * or hostile, is loaded, called and freed without a leak or a sanitizer report, and the
 * built-in policy meets its contract. Run by `make test` with detect_leaks=1. */
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "policy/policy.h"
#include "tap.h"

#define FIXTURES "tests/fixtures/policies"

static const sl_label_t zone = {"zone", "a"};

static void make_batch(sl_place_task_t *tasks, char (*ids)[24], size_t ntasks,
                       sl_place_node_t *nodes, size_t nnodes)
{
    static const char *const node_ids[] = {"n1", "n2", "n3", "n4"};
    for (size_t i = 0; i < nnodes; i++)
        nodes[i] = (sl_place_node_t){node_ids[i], 0, 0, 0, &zone, 1};
    for (size_t i = 0; i < ntasks; i++) {
        snprintf(ids[i], sizeof ids[i], "t%zu", i + 1);
        tasks[i] = (sl_place_task_t){ids[i], SL_TASK_MAINTAINER, ids[i], NULL, 1};
    }
}

static void test_builtin(void)
{
    sl_policy_t *p = NULL;
    TAP_CHECK(sl_policy_builtin_new(&p) == 0 && p != NULL, "builtin: created");
    sl_place_task_t tasks[100];
    char ids[100][24];
    sl_place_node_t nodes[4];
    make_batch(tasks, ids, 100, nodes, 4);
    sl_decision_t out[100];
    sl_place_report_t rep;
    sl_place_ctx_t ctx = {SL_REASON_BASIC, NULL, 100, 0};
    TAP_CHECK(p->ops->place(p, tasks, 100, nodes, 4, &ctx, out, &rep) == 0, "builtin: place ok");
    unsigned per[4] = {0};
    for (int i = 0; i < 100; i++)
        for (int n = 0; n < 4; n++)
            if (out[i].node != NULL && strcmp(out[i].node, nodes[n].id) == 0)
                per[n]++;
    TAP_CHECK(per[0] == 25 && per[1] == 25 && per[2] == 25 && per[3] == 25,
              "builtin: 100 tasks over 4 nodes, 25 each");
    ctx.batch_limit = 7;
    p->ops->place(p, tasks, 100, nodes, 4, &ctx, out, &rep);
    size_t placed = 0;
    for (int i = 0; i < 100; i++)
        placed += out[i].node != NULL;
    TAP_CHECK(placed == 7, "builtin: batch_limit respected");
    TAP_CHECK(p->ops->place(p, tasks, 100, nodes, 0, &ctx, out, &rep) == 0 && out[0].node == NULL,
              "builtin: no node, no decision, no failure");
    TAP_CHECK(p->ops->drain_order == NULL, "builtin: no drain_order");
    sl_policy_free(p);
}

static void test_fixture(const char *name)
{
    char path[512], err[SL_ERRMSG_MAX], label[600];
    snprintf(path, sizeof path, "%s/%s", FIXTURES, name);
    sl_policy_limits_t lim = {16u << 20, 30, 200};
    sl_policy_t *p = NULL;
    int rc = sl_policy_lua_load(path, &lim, &p, err, sizeof err);
    if (rc != 0) {
        snprintf(label, sizeof label, "%s: load failed with a message naming the file", name);
        TAP_CHECK(p == NULL && strstr(err, name) != NULL, label);
        return;
    }
    sl_place_task_t tasks[8];
    char ids[8][24];
    sl_place_node_t nodes[4];
    make_batch(tasks, ids, 8, nodes, 4);
    sl_decision_t out[8];
    sl_place_report_t rep;
    sl_place_ctx_t ctx = {SL_REASON_DRAIN, "n5", 8, 0};
    for (int round = 0; round < 3; round++) {
        rc = p->ops->place(p, tasks, 8, nodes, 4, &ctx, out, &rep);
        if (rc != 0) {
            /* the report names no policy (policy.h); framed, it names policy and file once */
            char framed[SL_ERRMSG_MAX + 256], head[SL_ID_MAX + 16];
            sl_policy_message(p, NULL, rep.message, framed, sizeof framed);
            snprintf(head, sizeof head, "policy %s (", p->name);
            const char *first = strstr(framed, head);
            TAP_CHECK(first == framed && strstr(framed, name) != NULL &&
                          strstr(first + 1, head) == NULL &&
                          strncmp(rep.message, "policy ", 7) != 0,
                      "P3: a place failure, framed, names the policy and file once");
        }
    }
    if (p->ops->drain_order != NULL) {
        uint32_t order[8];
        size_t norder = 99;
        rc = p->ops->drain_order(p, tasks, 8, &ctx, order, &norder, &rep);
        TAP_CHECK(rc == 0 ? norder <= 8 : norder == 0, "drain_order result is bounded");
    }
    snprintf(label, sizeof label, "%s: loaded, called, freed", name);
    sl_policy_free(p);
    TAP_CHECK(1, label);
}

static void test_string_load(void)
{
    sl_policy_t *p = NULL;
    char err[SL_ERRMSG_MAX];
    const char bytecode[] = "\x1bLua\x54\x00";
    TAP_CHECK(sl_policy_lua_load_string(bytecode, sizeof bytecode - 1, "bc", NULL, &p, err,
                                        sizeof err) != 0 && p == NULL && strstr(err, "bytecode"),
              "P2: bytecode refused");
    sl_policy_limits_t tiny = {4096, 0, 0};
    TAP_CHECK(sl_policy_lua_load_string("return {}", 9, "tiny", &tiny, &p, err, sizeof err) != 0,
              "P2: a cap too small for the sandbox fails cleanly");
}

/* P3: the one frame a policy's messages are shown in */
static void test_message(void)
{
    sl_policy_t p = {.ops = NULL};
    snprintf(p.name, sizeof p.name, "looper");
    snprintf(p.file, sizeof p.file, "/srv/p/least_loaded.lua");
    char out[SL_ERRMSG_MAX + 256];
    sl_policy_message(&p, NULL, "/srv/p/least_loaded.lua:5: place exceeded its budget of 50 ms",
                      out, sizeof out);
    TAP_CHECK(!strcmp(out, "policy looper (/srv/p/least_loaded.lua:5): place exceeded its "
                           "budget of 50 ms"),
              "P3: sl_policy_message puts the line into the frame");
    sl_policy_message(&p, NULL, "place returned number, expected a table", out, sizeof out);
    TAP_CHECK(!strcmp(out, "policy looper (/srv/p/least_loaded.lua): place returned number, "
                           "expected a table"),
              "P3: sl_policy_message without a position");
    sl_policy_message(&p, "cf-1", "expected a node id (string), got number", out, sizeof out);
    TAP_CHECK(!strcmp(out, "policy looper (/srv/p/least_loaded.lua): task \"cf-1\": expected a "
                           "node id (string), got number"),
              "P3: sl_policy_message names the task");
    sl_policy_message(&p, NULL, "/srv/p/other.lua:5: x", out, sizeof out);
    TAP_CHECK(!strcmp(out, "policy looper (/srv/p/least_loaded.lua): /srv/p/other.lua:5: x"),
              "P3: sl_policy_message leaves a position in another file in the message");
}

int main(void)
{
    test_builtin();
    test_string_load();
    test_message();
    DIR *d = opendir(FIXTURES);
    TAP_CHECK(d != NULL, "fixtures directory");
    if (d != NULL) {
        struct dirent *e;
        while ((e = readdir(d)) != NULL) {
            size_t len = strlen(e->d_name);
            if (len > 4 && strcmp(e->d_name + len - 4, ".lua") == 0)
                test_fixture(e->d_name);
        }
        closedir(d);
    }
    return TAP_DONE();
}
