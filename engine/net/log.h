/* log.h — structured, levelled logs on stderr for the daemon processes (A8).
 *
 * One line per event, logfmt: `ts=2026-01-02T03:04:05.678Z level=info msg="drain started"
 * target=n2 epoch=3`. Values with spaces, quotes or '=' are quoted and escaped, so every
 * line parses. The level threshold comes from sl_log_set_level or SLUICE_LOG
 * (debug|info|warn|error); the default is info. */
#ifndef SL_NET_LOG_H
#define SL_NET_LOG_H

enum { SL_LOG_DEBUG = 0, SL_LOG_INFO = 1, SL_LOG_WARN = 2, SL_LOG_ERROR = 3 };

void sl_log_set_level(int level);
/* Parses "debug" | "info" | "warn" | "error"; -1 when unknown. */
int sl_log_level_parse(const char *name);
int sl_log_enabled(int level);
/* Adds `key=value` to every line this process writes (e.g. proc=agent node=n1). */
void sl_log_set_prefix(const char *prefix);

/* `kv` is a list of "key", value pairs of C strings, ended by NULL:
 *   sl_log(SL_LOG_INFO, "drain started", "target", id, "epoch", buf, NULL); */
void sl_log(int level, const char *msg, ...) __attribute__((sentinel));
/* The same with printf-built key=value text appended as is (the caller quotes). */
void sl_logf(int level, const char *msg, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

#endif
