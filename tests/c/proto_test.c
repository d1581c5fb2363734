/* proto_test.c — node-protocol frames (A5): every type round-trips, partial input asks for
 * more, and lying or broken input is an error, never a read past the buffer. */
#include <stdlib.h>
#include <string.h>

#include "net/proto.h"
#include "tap.h"

static int roundtrip(const sl_frame_t *f, sl_frame_t *back, sl_frame_item_t *items, size_t cap)
{
    uint8_t buf[8192];
    size_t len = 0, used = 0;
    char why[SL_ERRMSG_MAX];
    if (sl_proto_encode(f, buf, sizeof buf, &len) != 0) return -1;
    /* every proper prefix needs more bytes */
    for (size_t i = 0; i < len; i++) {
        back->items = items;
        back->items_cap = cap;
        if (sl_proto_decode(buf, i, 0, back, &used, why, sizeof why) != SL_EAGAIN) return -2;
    }
    back->items = items;
    back->items_cap = cap;
    if (sl_proto_decode(buf, len, 0, back, &used, why, sizeof why) != 0) return -3;
    return used == len ? 0 : -4;
}

int main(void)
{
    sl_frame_item_t items[8], back_items[8];
    sl_frame_t f = {.type = SL_FRAME_HELLO, .version = SL_PROTO_VERSION, .node_epoch = 1234567890123ull};
    strcpy(f.token, "s3cret");
    strcpy(f.node, "n1");
    strcpy(f.addr, "127.0.0.1:9000");
    sl_frame_t b;
    TAP_CHECK(roundtrip(&f, &b, back_items, 8) == 0 && !strcmp(b.token, "s3cret") &&
                  !strcmp(b.node, "n1") && b.node_epoch == 1234567890123ull &&
                  b.version == SL_PROTO_VERSION && !strcmp(b.addr, "127.0.0.1:9000"),
              "A5: hello round-trips with version, token, node id and node epoch");

    sl_frame_t st = {.type = SL_FRAME_START, .kind = 1, .weight = 7, .op_id = 42};
    strcpy(st.node, "n2");
    strcpy(st.task, "cf-1/t3");
    strcpy(st.changefeed, "cf-1");
    strcpy(st.from, "n1");
    TAP_CHECK(roundtrip(&st, &b, back_items, 8) == 0 && b.type == SL_FRAME_START && b.kind == 1 &&
                  b.weight == 7 && b.op_id == 42 && !strcmp(b.task, "cf-1/t3") &&
                  !strcmp(b.from, "n1"),
              "A5: start round-trips");

    sl_frame_t cs = {.type = SL_FRAME_CF_STATUS, .epoch = 3, .remaining = 5, .items = items, .nitems = 2};
    strcpy(cs.changefeed, "cf-1");
    strcpy(items[0].id, "n1");
    items[0].value = 5;
    strcpy(items[1].id, "n2");
    items[1].value = 11;
    TAP_CHECK(roundtrip(&cs, &b, back_items, 8) == 0 && b.nitems == 2 && b.remaining == 5 &&
                  !strcmp(back_items[1].id, "n2") && back_items[1].value == 11,
              "D6: a changefeed status with its dispatchers by node round-trips");
    TAP_CHECK(roundtrip(&cs, &b, back_items, 1) == -3,
              "a list longer than the receiver's room is an error, not an overflow");

    sl_frame_t ag = {.type = SL_FRAME_AGENT, .amsg = 6, .issuer = 99, .epoch = 4, .node_epoch = 5,
                     .remaining = 3, .state = 1, .items = items, .nitems = 1};
    strcpy(ag.from, "n1");
    strcpy(ag.to, "n2");
    strcpy(ag.changefeed, "cf-9");
    TAP_CHECK(roundtrip(&ag, &b, back_items, 8) == 0 && b.amsg == 6 && b.issuer == 99 &&
                  !strcmp(b.to, "n2") && b.state == 1 && b.nitems == 1,
              "an agent message round-trips with its issuer and items");
    sl_frame_t vw = {.type = SL_FRAME_VIEW, .view_version = 12, .epoch = 2, .items = items, .nitems = 2};
    strcpy(vw.target, "n3");
    items[0].value64 = 1700000000000ull;
    TAP_CHECK(roundtrip(&vw, &b, back_items, 8) == 0 && b.view_version == 12 &&
                  back_items[0].value64 == 1700000000000ull && !strcmp(b.target, "n3"),
              "a cluster view round-trips with node epochs");
    sl_frame_t lv = {.type = SL_FRAME_LEAVING};
    strcpy(lv.node, "n2");
    strcpy(lv.reason, "SIGTERM");
    lv.state = 1;
    TAP_CHECK(roundtrip(&lv, &b, back_items, 8) == 0 && b.type == SL_FRAME_LEAVING &&
                  !strcmp(b.node, "n2") && !strcmp(b.reason, "SIGTERM") && b.state == 1 &&
                  !strcmp(sl_proto_type_name(SL_FRAME_LEAVING), "leaving"),
              "a node's LEAVING frame round-trips with its reason and state (L1)");

    uint8_t buf[256];
    size_t len = 0, used;
    char why[SL_ERRMSG_MAX];
    sl_frame_t hb = {.type = SL_FRAME_HEARTBEAT, .epoch = 9, .now_ms = 77};
    strcpy(hb.node, "n3");
    sl_proto_encode(&hb, buf, sizeof buf, &len);
    size_t one = len;
    sl_proto_encode(&hb, buf, sizeof buf, &len);
    sl_frame_t out = {0};
    TAP_CHECK(sl_proto_decode(buf, len, 0, &out, &used, why, sizeof why) == 0 && used == one &&
                  sl_proto_decode(buf + used, len - used, 0, &out, &used, why, sizeof why) == 0,
              "two frames in one buffer decode one after the other");

    /* lies */
    uint8_t huge[8] = {0x7f, 0xff, 0xff, 0xff, SL_FRAME_HELLO, 0, 0, 0};
    TAP_CHECK(sl_proto_decode(huge, sizeof huge, 0, &out, &used, why, sizeof why) == SL_EINVAL &&
                  strstr(why, "limit"),
              "A5: a frame over the size limit is refused before it is read");
    uint8_t unknown[5] = {0, 0, 0, 1, 99};
    TAP_CHECK(sl_proto_decode(unknown, sizeof unknown, 0, &out, &used, why, sizeof why) == SL_EINVAL,
              "an unknown frame type is refused");
    uint8_t zero[4] = {0, 0, 0, 0};
    TAP_CHECK(sl_proto_decode(zero, sizeof zero, 0, &out, &used, why, sizeof why) == SL_EINVAL,
              "an empty frame is refused");
    /* a string length that points past the frame */
    uint8_t cut[] = {0, 0, 0, 5, SL_FRAME_DRAIN, 0, 200, 'a', 'b'};
    TAP_CHECK(sl_proto_decode(cut, sizeof cut, 0, &out, &used, why, sizeof why) == SL_EINVAL &&
                  strstr(why, "target"),
              "a string longer than its frame is refused, naming the field");
    uint8_t nul[] = {0, 0, 0, 13, SL_FRAME_DRAIN, 0, 2, 'a', 0, 0, 0, 0, 0, 0, 0, 0, 1};
    TAP_CHECK(sl_proto_decode(nul, sizeof nul, 0, &out, &used, why, sizeof why) == SL_EINVAL,
              "a NUL inside a string is refused");
    uint8_t extra[] = {0, 0, 0, 14, SL_FRAME_DRAIN, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 9, 9, 9};
    TAP_CHECK(sl_proto_decode(extra, sizeof extra, 0, &out, &used, why, sizeof why) == SL_EINVAL,
              "bytes left over in a frame are refused");
    uint8_t kind[] = {0, 0, 0, 12, SL_FRAME_REPORT, 0, 0, 0, 0, 7, 0, 0, 0, 0, 0, 0};
    TAP_CHECK(sl_proto_decode(kind, sizeof kind, 0, &out, &used, why, sizeof why) == SL_EINVAL,
              "an out-of-range kind is refused");

    /* random garbage never crashes the decoder (ASan watches) */
    unsigned s = 7;
    int crashes = 0;
    for (int i = 0; i < 20000; i++) {
        uint8_t g[64];
        size_t n = 5 + (s = s * 1103515245u + 12345u) % 59;
        for (size_t k = 0; k < n; k++) g[k] = (uint8_t)((s = s * 1103515245u + 12345u) >> 16);
        g[0] = g[1] = 0;
        out.items = back_items;
        out.items_cap = 8;
        int rc = sl_proto_decode(g, n, 0, &out, &used, why, sizeof why);
        if (rc != 0 && rc != SL_EAGAIN && rc != SL_EINVAL) crashes++;
    }
    TAP_CHECK(crashes == 0, "20000 random buffers decode to a frame, a request for more, or an error");

    /* the reader: frames arriving 7 bytes at a time come out whole, in order */
    {
        uint8_t stream[512];
        size_t slen = 0;
        for (int i = 0; i < 3; i++) {
            hb.epoch = (uint64_t)i;
            sl_proto_encode(&hb, stream, sizeof stream, &slen);
        }
        sl_proto_reader_t rd = {0};
        int got = 0, order_ok = 1;
        for (size_t pos = 0; pos < slen; pos += 7) {
            uint8_t *at;
            size_t room, n = slen - pos < 7 ? slen - pos : 7;
            if (sl_proto_reader_room(&rd, 16, &at, &room) != 0 || room < n) break;
            memcpy(at, stream + pos, n);
            rd.len += n;
            const uint8_t *raw;
            size_t rawlen;
            sl_frame_t fr = {.items = back_items, .items_cap = 8};
            while (sl_proto_reader_next(&rd, &fr, &raw, &rawlen, why, sizeof why) == 0) {
                if (fr.epoch != (uint64_t)got || rawlen != one) order_ok = 0;
                got++;
            }
        }
        TAP_CHECK(got == 3 && order_ok && rd.len == 0,
                  "A5: frames split across reads come out whole and in order");
        sl_proto_reader_free(&rd);
    }

    sl_frame_t longstr = {.type = SL_FRAME_DRAIN};
    memset(longstr.target, 'x', sizeof longstr.target); /* no NUL */
    len = 0;
    TAP_CHECK(sl_proto_encode(&longstr, buf, sizeof buf, &len) == SL_EINVAL && len == 0,
              "an unterminated string is not encoded");
    len = 0;
    TAP_CHECK(sl_proto_encode(&f, buf, 8, &len) == SL_ELIMIT && len == 0,
              "a frame that does not fit the buffer is not half-written");
    return TAP_DONE();
}
