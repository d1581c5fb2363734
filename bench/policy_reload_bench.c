/* policy_reload_bench.c — B7: a policy file saved → the new policy live at the coordinator.
 *
 *   policy_reload_bench HTTP_ADDR TOKEN POLICY_DIR POLICY_FILE SAVES
 *
 * Against a running `sluice serve` whose --policy-dir is POLICY_DIR: SAVES times, the file
 * is saved the way editors save (the new content written to a temporary file in the same
 * directory, then renamed over the old one), and GET /api/v2/policies is polled (every
 * millisecond, over one kept-alive connection) until its `version` has grown. The time
 * from rename() to the first answer showing the new version is the save-to-live latency.
 * Each save changes the content (a comment with the save's number), as an edit does.
 *
 * Baseline, same run: POST /api/v2/policies/reload — the same load and swap started
 * directly, without the directory watcher and its debounce — timed SAVES times.
 *
 * Prints `saves=N median_ms=M max_ms=X direct_median_ms=D direct_max_ms=Y`. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "net/client.h"

static double now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

static void die(const char *what)
{
    fprintf(stderr, "policy_reload_bench: %s\n", what);
    exit(1);
}

static long long policy_version(sl_client_t *cl)
{
    char err[1024];
    sl_client_response_t res;
    if (sl_client_request(cl, "GET", "/api/v2/policies", NULL, &res, err, sizeof err)) die(err);
    if (res.status != 200 || !res.json) die("GET /api/v2/policies did not answer 200 with JSON");
    json_t *item = json_array_get(json_object_get(res.json, "items"), 0);
    json_t *v = json_object_get(item, "version");
    json_t *e = json_object_get(item, "last_error");
    if (json_is_string(e)) {
        fprintf(stderr, "policy_reload_bench: the policy did not load: %s\n", json_string_value(e));
        exit(1);
    }
    long long version = json_is_integer(v) ? (long long)json_integer_value(v) : -1;
    sl_client_response_free(&res);
    if (version < 0) die("no version in GET /api/v2/policies");
    return version;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static double median(double *v, int n)
{
    qsort(v, (size_t)n, sizeof *v, cmp_double);
    return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

int main(int argc, char **argv)
{
    if (argc != 6) {
        fprintf(stderr, "usage: policy_reload_bench HTTP_ADDR TOKEN POLICY_DIR POLICY_FILE SAVES\n");
        return 2;
    }
    const char *dir = argv[3], *file = argv[4];
    int saves = atoi(argv[5]);
    if (saves < 1 || saves > 1000) die("SAVES wants 1..1000");
    char path[1024], tmp[1100];
    snprintf(path, sizeof path, "%s/%s", dir, file);
    snprintf(tmp, sizeof tmp, "%s/.%s.swp", dir, file);

    /* the policy as it is now: each save appends a different comment to it */
    FILE *f = fopen(path, "rb");
    if (!f) die("cannot read the policy file");
    static char source[1 << 20];
    size_t len = fread(source, 1, sizeof source - 1, f);
    fclose(f);
    source[len] = 0;

    sl_client_t cl;
    char err[1024];
    if (sl_client_init(&cl, argv[1], argv[2], err, sizeof err)) die(err);
    double *live = calloc((size_t)saves, sizeof *live);
    double *direct = calloc((size_t)saves, sizeof *direct);
    if (!live || !direct) die("out of memory");

    for (int i = 0; i < saves; i++) {
        long long before = policy_version(&cl);
        FILE *t = fopen(tmp, "wb");
        if (!t) die("cannot write the temporary file");
        fprintf(t, "%s\n-- saved by policy_reload_bench, save %d\n", source, i + 1);
        if (fclose(t)) die("cannot write the temporary file");
        double t0 = now_ms();
        if (rename(tmp, path)) die("rename failed");
        long long v;
        while ((v = policy_version(&cl)) <= before) {
            if (now_ms() - t0 > 10000) die("the saved policy was not live within 10 s");
            usleep(1000);
        }
        live[i] = now_ms() - t0;
        usleep(200 * 1000); /* a person saves again later; also lets late fs events settle */
    }

    for (int i = 0; i < saves; i++) {
        sl_client_response_t res;
        double t0 = now_ms();
        if (sl_client_request(&cl, "POST", "/api/v2/policies/reload", NULL, &res, err, sizeof err))
            die(err);
        direct[i] = now_ms() - t0;
        if (res.status != 200) die("POST /api/v2/policies/reload did not answer 200");
        sl_client_response_free(&res);
    }
    sl_client_close(&cl);

    double live_max = 0, direct_max = 0;
    for (int i = 0; i < saves; i++) {
        if (live[i] > live_max) live_max = live[i];
        if (direct[i] > direct_max) direct_max = direct[i];
    }
    printf("saves=%d median_ms=%.1f max_ms=%.1f direct_median_ms=%.2f direct_max_ms=%.2f\n", saves,
           median(live, saves), live_max, median(direct, saves), direct_max);
    return 0;
}
