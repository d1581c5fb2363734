/* proto.c — encoding and decoding of node-protocol frames (A5). One schema table says
 * which fields each frame type carries, in order; the encoder and the decoder both walk it,
 * so the two cannot disagree. The decoder trusts nothing: every length is checked against
 * the bytes present, the frame limit, and the field's own limit. */
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "proto.h"

typedef enum { F_U8, F_U32, F_U64, F_STR, F_ITEMS } field_kind_t;

typedef struct {
    field_kind_t kind;
    size_t offset;
    size_t max; /* F_STR: the buffer size, including the NUL */
    const char *name;
} field_t;

#define U8(m) {F_U8, offsetof(sl_frame_t, m), 0, #m}
#define U32(m) {F_U32, offsetof(sl_frame_t, m), 0, #m}
#define U64(m) {F_U64, offsetof(sl_frame_t, m), 0, #m}
#define STR(m) {F_STR, offsetof(sl_frame_t, m), sizeof(((sl_frame_t *)0)->m), #m}
#define ITEMS {F_ITEMS, 0, 0, "items"}
#define END {F_U8, 0, 0, NULL}

static const field_t schema_hello[] = {U32(version), STR(token), STR(node), U64(node_epoch),
                                       STR(addr), U8(state), END};
static const field_t schema_welcome[] = {U32(version), U64(epoch), STR(target),
                                         U64(node_timeout_ms), U64(bootstrap_ms), END};
static const field_t schema_reject[] = {STR(reason), END};
static const field_t schema_heartbeat[] = {STR(node), U64(epoch), U64(now_ms), END};
static const field_t schema_start[] = {STR(node), STR(task), U8(kind),   STR(changefeed),
                                       U32(weight), U64(op_id), STR(from), U8(state), END};
static const field_t schema_stop[] = {STR(node), STR(task), U8(kind), STR(changefeed),
                                      U64(op_id), STR(from), U8(state), END};
static const field_t schema_report[] = {STR(node), STR(task), U8(kind), STR(changefeed),
                                        U8(state), END};
static const field_t schema_drain[] = {STR(target), U64(epoch), END};
static const field_t schema_cf_status[] = {STR(changefeed), U64(epoch), U32(remaining), ITEMS, END};
static const field_t schema_members[] = {ITEMS, END};
static const field_t schema_agent[] = {U8(amsg),        STR(from),  STR(to),      STR(task),
                                       STR(changefeed), U8(state),  U64(node_epoch),
                                       U64(epoch),      U64(issuer), U32(remaining), ITEMS, END};
static const field_t schema_view[] = {U64(view_version), STR(target), U64(epoch), ITEMS, END};
static const field_t schema_leaving[] = {STR(node), STR(reason), U8(state), END};

static const field_t *schema_of(int type)
{
    switch (type) {
    case SL_FRAME_HELLO: return schema_hello;
    case SL_FRAME_WELCOME: return schema_welcome;
    case SL_FRAME_REJECT: return schema_reject;
    case SL_FRAME_HEARTBEAT: return schema_heartbeat;
    case SL_FRAME_START: return schema_start;
    case SL_FRAME_STOP: return schema_stop;
    case SL_FRAME_REPORT: return schema_report;
    case SL_FRAME_DRAIN: return schema_drain;
    case SL_FRAME_CF_STATUS: return schema_cf_status;
    case SL_FRAME_MEMBERS: return schema_members;
    case SL_FRAME_AGENT: return schema_agent;
    case SL_FRAME_VIEW: return schema_view;
    case SL_FRAME_LEAVING: return schema_leaving;
    default: return NULL;
    }
}

const char *sl_proto_type_name(sl_frame_type_t t)
{
    static const char *const names[] = {"?",         "hello",   "welcome", "reject", "heartbeat",
                                        "start",     "stop",    "report",  "drain",  "cf_status",
                                        "members",   "agent",   "view",   "leaving"};
    return (unsigned)t < sizeof names / sizeof *names ? names[t] : "?";
}

/* ---- encoding ---------------------------------------------------------------------------- */

typedef struct {
    uint8_t *buf;
    size_t cap, len;
    int rc;
} writer_t;

static void put(writer_t *w, const void *p, size_t n)
{
    if (w->rc) return;
    if (w->cap - w->len < n) {
        w->rc = SL_ELIMIT;
        return;
    }
    memcpy(w->buf + w->len, p, n);
    w->len += n;
}

static void put_uint(writer_t *w, uint64_t v, int bytes)
{
    uint8_t b[8];
    for (int i = 0; i < bytes; i++) b[i] = (uint8_t)(v >> (8 * (bytes - 1 - i)));
    put(w, b, (size_t)bytes);
}

static void put_str(writer_t *w, const char *s, size_t max)
{
    size_t n = strnlen(s, max);
    if (n >= max) {
        if (!w->rc) w->rc = SL_EINVAL;
        return;
    }
    put_uint(w, n, 2);
    put(w, s, n);
}

int sl_proto_encode(const sl_frame_t *f, uint8_t *buf, size_t cap, size_t *len)
{
    const field_t *schema = schema_of(f->type);
    if (!schema) return SL_EINVAL;
    writer_t w = {.buf = buf, .cap = cap, .len = *len};
    size_t start = w.len;
    put_uint(&w, 0, 4); /* the length, filled in below */
    put_uint(&w, (uint64_t)f->type, 1);
    const char *base = (const char *)f;
    for (const field_t *fd = schema; fd->name; fd++) {
        const void *p = base + fd->offset;
        switch (fd->kind) {
        case F_U8: put_uint(&w, *(const uint8_t *)p, 1); break;
        case F_U32: put_uint(&w, *(const uint32_t *)p, 4); break;
        case F_U64: put_uint(&w, *(const uint64_t *)p, 8); break;
        case F_STR: put_str(&w, (const char *)p, fd->max); break;
        case F_ITEMS:
            if (f->nitems > SL_PROTO_LIST_MAX || (f->nitems && !f->items)) return SL_EINVAL;
            put_uint(&w, f->nitems, 2);
            for (size_t i = 0; i < f->nitems; i++) {
                put_str(&w, f->items[i].id, sizeof f->items[i].id);
                put_uint(&w, f->items[i].value, 4);
                put_uint(&w, f->items[i].value64, 8);
            }
            break;
        }
    }
    if (w.rc) return w.rc;
    size_t body = w.len - start - 4;
    if (body > SL_PROTO_FRAME_MAX) return SL_ELIMIT;
    for (int i = 0; i < 4; i++) buf[start + (size_t)i] = (uint8_t)(body >> (8 * (3 - i)));
    *len = w.len;
    return 0;
}

/* ---- decoding ---------------------------------------------------------------------------- */

typedef struct {
    const uint8_t *p;
    size_t left;
    const char *bad; /* the field that did not fit, or NULL */
} reader_t;

static uint64_t get_uint(reader_t *r, int bytes, const char *name)
{
    if (r->bad) return 0;
    if (r->left < (size_t)bytes) {
        r->bad = name;
        return 0;
    }
    uint64_t v = 0;
    for (int i = 0; i < bytes; i++) v = (v << 8) | r->p[i];
    r->p += bytes;
    r->left -= (size_t)bytes;
    return v;
}

static void get_str(reader_t *r, char *dst, size_t max, const char *name)
{
    size_t n = (size_t)get_uint(r, 2, name);
    if (r->bad) return;
    if (n >= max || n > r->left || memchr(r->p, 0, n)) {
        r->bad = name;
        return;
    }
    memcpy(dst, r->p, n);
    dst[n] = 0;
    r->p += n;
    r->left -= n;
}

int sl_proto_decode(const uint8_t *buf, size_t len, size_t frame_max, sl_frame_t *out,
                    size_t *used, char *why, size_t whylen)
{
    *used = 0;
    if (len < 4) return SL_EAGAIN;
    uint32_t body = (uint32_t)buf[0] << 24 | (uint32_t)buf[1] << 16 | (uint32_t)buf[2] << 8 | buf[3];
    if (!frame_max) frame_max = SL_PROTO_FRAME_MAX;
    if (body == 0 || body > frame_max) {
        snprintf(why, whylen, "frame of %u bytes (limit %zu)", body, frame_max);
        return SL_EINVAL;
    }
    if (len - 4 < body) return SL_EAGAIN;
    const field_t *schema = schema_of(buf[4]);
    if (!schema) {
        snprintf(why, whylen, "unknown frame type %u", buf[4]);
        return SL_EINVAL;
    }
    sl_frame_item_t *items = out->items;
    size_t items_cap = out->items_cap;
    memset(out, 0, sizeof *out);
    out->items = items;
    out->items_cap = items_cap;
    out->type = (sl_frame_type_t)buf[4];
    reader_t r = {.p = buf + 5, .left = body - 1};
    char *base = (char *)out;
    for (const field_t *fd = schema; fd->name && !r.bad; fd++) {
        void *p = base + fd->offset;
        switch (fd->kind) {
        case F_U8: *(uint8_t *)p = (uint8_t)get_uint(&r, 1, fd->name); break;
        case F_U32: *(uint32_t *)p = (uint32_t)get_uint(&r, 4, fd->name); break;
        case F_U64: *(uint64_t *)p = get_uint(&r, 8, fd->name); break;
        case F_STR: get_str(&r, (char *)p, fd->max, fd->name); break;
        case F_ITEMS: {
            size_t n = (size_t)get_uint(&r, 2, "items");
            if (r.bad) break;
            if (n > items_cap || n > SL_PROTO_LIST_MAX) {
                snprintf(why, whylen, "%s frame with %zu items (room for %zu)",
                         sl_proto_type_name(out->type), n, items_cap);
                return SL_EINVAL;
            }
            for (size_t i = 0; i < n && !r.bad; i++) {
                get_str(&r, items[i].id, sizeof items[i].id, "item id");
                items[i].value = (uint32_t)get_uint(&r, 4, "item value");
                items[i].value64 = get_uint(&r, 8, "item value64");
            }
            out->nitems = n;
            break;
        }
        }
    }
    if (r.bad) {
        snprintf(why, whylen, "%s frame: field %s is cut short or too long",
                 sl_proto_type_name(out->type), r.bad);
        return SL_EINVAL;
    }
    if (r.left) {
        snprintf(why, whylen, "%s frame: %zu bytes left over", sl_proto_type_name(out->type), r.left);
        return SL_EINVAL;
    }
    if (out->kind > 1 || out->state > 1) {
        snprintf(why, whylen, "%s frame: kind or state out of range", sl_proto_type_name(out->type));
        return SL_EINVAL;
    }
    *used = 4 + (size_t)body;
    return 0;
}

/* ---- the read side of a connection ---------------------------------------------------- */

int sl_proto_reader_room(sl_proto_reader_t *r, size_t want, uint8_t **at, size_t *room)
{
    if (r->cap - r->len < want) {
        size_t cap = r->cap ? r->cap : want;
        while (cap - r->len < want) cap *= 2;
        uint8_t *b = realloc(r->buf, cap);
        if (!b) {
            *at = NULL;
            *room = 0;
            return SL_ENOMEM;
        }
        r->buf = b;
        r->cap = cap;
    }
    *at = r->buf + r->len;
    *room = r->cap - r->len;
    return 0;
}

int sl_proto_reader_next(sl_proto_reader_t *r, sl_frame_t *f, const uint8_t **raw,
                         size_t *rawlen, char *why, size_t whylen)
{
    size_t used = 0;
    int rc = sl_proto_decode(r->buf + r->off, r->len - r->off, SL_PROTO_FRAME_MAX, f, &used, why,
                             whylen);
    if (rc == 0) {
        *raw = r->buf + r->off;
        *rawlen = used;
        r->off += used;
    } else if (rc == SL_EAGAIN && r->off) {
        memmove(r->buf, r->buf + r->off, r->len - r->off);
        r->len -= r->off;
        r->off = 0;
    }
    return rc;
}

void sl_proto_reader_free(sl_proto_reader_t *r)
{
    free(r->buf);
    *r = (sl_proto_reader_t){0};
}
