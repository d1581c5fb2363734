/* log.c — logfmt lines on stderr (A8). Each line is built in one buffer and written with
 * one write(2), so lines of several processes sharing a terminal do not interleave. */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include "log.h"

static int threshold = -2; /* -2: not read from the environment yet */
static char prefix[128];

static const char *const level_names[] = {"debug", "info", "warn", "error"};

int sl_log_level_parse(const char *name)
{
    for (int i = 0; i < 4; i++)
        if (name && !strcmp(name, level_names[i])) return i;
    if (name && !strcmp(name, "warning")) return SL_LOG_WARN;
    return -1;
}

void sl_log_set_level(int level)
{
    threshold = level;
}

void sl_log_set_prefix(const char *p)
{
    snprintf(prefix, sizeof prefix, "%s", p ? p : "");
}

int sl_log_enabled(int level)
{
    if (threshold == -2) {
        int l = sl_log_level_parse(getenv("SLUICE_LOG"));
        threshold = l < 0 ? SL_LOG_INFO : l;
    }
    return level >= threshold;
}

typedef struct {
    char buf[2048];
    size_t len;
} line_t;

static void put(line_t *l, const char *s, size_t n)
{
    if (n > sizeof l->buf - 2 - l->len) n = sizeof l->buf - 2 - l->len;
    memcpy(l->buf + l->len, s, n);
    l->len += n;
}

static void put_value(line_t *l, const char *v)
{
    if (!v) v = "";
    int quote = !*v;
    for (const char *p = v; *p && !quote; p++)
        if (*p <= ' ' || *p == '"' || *p == '=' || *p == '\\' || *p == 0x7f) quote = 1;
    if (!quote) {
        put(l, v, strlen(v));
        return;
    }
    put(l, "\"", 1);
    for (const char *p = v; *p; p++) {
        unsigned char c = (unsigned char)*p;
        if (c == '"' || c == '\\') {
            char e[2] = {'\\', (char)c};
            put(l, e, 2);
        } else if (c == '\n') {
            put(l, "\\n", 2);
        } else if (c < ' ' || c == 0x7f) {
            char e[8];
            snprintf(e, sizeof e, "\\x%02x", c);
            put(l, e, 4);
        } else {
            put(l, (const char *)p, 1);
        }
    }
    put(l, "\"", 1);
}

static void begin(line_t *l, int level, const char *msg)
{
    struct timeval tv;
    gettimeofday(&tv, NULL);
    struct tm tm;
    gmtime_r(&tv.tv_sec, &tm);
    char ts[64];
    size_t n = strftime(ts, sizeof ts, "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(ts + n, sizeof ts - n, ".%03dZ", (int)(tv.tv_usec / 1000));
    l->len = 0;
    put(l, "ts=", 3);
    put(l, ts, strlen(ts));
    put(l, " level=", 7);
    put(l, level_names[level < 0 ? 0 : level > 3 ? 3 : level], strlen(level_names[level < 0 ? 0 : level > 3 ? 3 : level]));
    put(l, " msg=", 5);
    put_value(l, msg);
    if (prefix[0]) {
        put(l, " ", 1);
        put(l, prefix, strlen(prefix));
    }
}

static void end(line_t *l)
{
    l->buf[l->len++] = '\n';
    ssize_t w = write(2, l->buf, l->len);
    (void)w;
}

void sl_log(int level, const char *msg, ...)
{
    if (!sl_log_enabled(level)) return;
    line_t l;
    begin(&l, level, msg);
    va_list ap;
    va_start(ap, msg);
    for (;;) {
        const char *k = va_arg(ap, const char *);
        if (!k) break;
        const char *v = va_arg(ap, const char *);
        put(&l, " ", 1);
        put(&l, k, strlen(k));
        put(&l, "=", 1);
        put_value(&l, v);
    }
    va_end(ap);
    end(&l);
}

void sl_logf(int level, const char *msg, const char *fmt, ...)
{
    if (!sl_log_enabled(level)) return;
    line_t l;
    begin(&l, level, msg);
    char kv[1536];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(kv, sizeof kv, fmt, ap);
    va_end(ap);
    if (kv[0]) {
        put(&l, " ", 1);
        put(&l, kv, strlen(kv));
    }
    end(&l);
}
