/* proto.h — the node protocol's frames (A5): what nodes and the coordinator say to each
 * other over TCP, encoded and decoded without I/O.
 *
 * A frame is a 4-byte big-endian length (of what follows), a 1-byte type, then the type's
 * fields in a fixed order: integers big-endian (u8, u32, u64), strings as a u16 length
 * and bytes (no NUL inside, shorter than SL_ID_MAX unless said otherwise), lists as a u16
 * count and their items. The decoder checks every length against the bytes it has and the
 * frame limit, so a peer that lies gets an error, never a read past the buffer. The
 * handshake carries the protocol version, the token, the node id and the node epoch (its
 * start time). */
#ifndef SL_PROTO_H
#define SL_PROTO_H

#include "../common.h"

#define SL_PROTO_VERSION 2 /* 2: WELCOME bootstrap_ms, LEAVING state, START state */
#define SL_PROTO_FRAME_MAX (1u << 20) /* default limit of one frame */
#define SL_PROTO_LIST_MAX 4096        /* items in one list */
#define SL_PROTO_TOKEN_MAX 256

typedef enum {
    SL_FRAME_HELLO = 1,     /* node → coordinator: version, token, node, node_epoch, addr,
                             * state (1: this process was told it is Stopping; 0 otherwise) */
    SL_FRAME_WELCOME = 2,   /* coordinator → node: version, epoch (of the drain), target,
                             * node_timeout_ms (after which a silent node is declared dead),
                             * bootstrap_ms */
    SL_FRAME_REJECT = 3,    /* coordinator → node: reason (text), then it closes */
    SL_FRAME_HEARTBEAT = 4, /* node → coordinator: node, epoch acknowledged (D5), now; and
                             * coordinator → node every heartbeat interval: it is alive */
    SL_FRAME_START = 5,     /* → node: task, kind, changefeed, weight, op_id, from (sender),
                             * state (1: a deleted changefeed's maintainer, started only to
                             * stop its dispatchers) */
    SL_FRAME_STOP = 6,      /* → node: task, kind, changefeed, op_id, from, state (1: the
                             * changefeed was deleted — a maintainer stops its dispatchers too) */
    SL_FRAME_REPORT = 7,    /* node →: node, task, kind, changefeed, state (working/stopped) */
    SL_FRAME_DRAIN = 8,     /* coordinator → node: target ("" none), epoch (D5) */
    SL_FRAME_CF_STATUS = 9, /* maintainer → coordinator: changefeed, epoch, remaining,
                             * list of {node, count} (D6) */
    SL_FRAME_MEMBERS = 10,  /* coordinator → node: list of {node, liveness} */
    SL_FRAME_AGENT = 11,    /* node ↔ node (through the coordinator) or node → coordinator:
                             * one engine/agent message — amsg (its type), from, to, task,
                             * changefeed, state, node_epoch, epoch, issuer, remaining, items
                             * {id, value} */
    SL_FRAME_VIEW = 12,     /* coordinator → node: the cluster view — version, target,
                             * epoch, items {node, value = liveness, value64 = node epoch}; its version is
                             * view_version */
    SL_FRAME_LEAVING = 13,  /* node → coordinator: node, reason, state — state 0: it is
                             * shutting down and asks to be drained first (L1 graceful
                             * shutdown); state 1: its process ends now and nothing runs
                             * there any more (sent just before it closes the connection) */
} sl_frame_type_t;

typedef struct {
    char id[SL_ID_MAX];
    uint32_t value;   /* a count (CF_STATUS, AGENT) or a liveness (MEMBERS, VIEW) */
    uint64_t value64; /* VIEW: the node's epoch (start time); 0 elsewhere */
} sl_frame_item_t;

/* One decoded frame. Which fields mean something depends on the type (above). */
typedef struct {
    sl_frame_type_t type;
    uint32_t version;
    char token[SL_PROTO_TOKEN_MAX];
    char node[SL_ID_MAX];
    char task[SL_ID_MAX];
    char changefeed[SL_ID_MAX];
    char target[SL_ID_MAX];
    char from[SL_ID_MAX];
    char addr[SL_ID_MAX];
    char reason[SL_ERRMSG_MAX];
    uint64_t node_epoch;
    uint64_t epoch;
    uint64_t op_id;
    uint64_t now_ms;
    uint32_t weight;
    uint32_t remaining;
    uint8_t kind;  /* sl_task_kind_t */
    uint8_t state; /* 0 working, 1 stopped (sl_report_t) */
    uint8_t amsg;  /* AGENT: the sl_agent_msg_type_t */
    char to[SL_ID_MAX]; /* AGENT: the receiving node, "" for the coordinator */
    uint64_t issuer;    /* AGENT: the maintainer incarnation */
    uint64_t view_version; /* VIEW: grows with every view */
    uint64_t node_timeout_ms; /* WELCOME: the coordinator's node timeout */
    uint64_t bootstrap_ms;    /* WELCOME: how long a restarted coordinator waits for the nodes'
                               * reports before it places what they did not report (A5) */
    sl_frame_item_t *items; /* CF_STATUS, MEMBERS: owned by the caller's buffer */
    size_t nitems;
    size_t items_cap; /* how many `items` can hold; the decoder never writes beyond */
} sl_frame_t;

/* Appends the encoded frame to buf (of cap bytes, *len used). SL_ELIMIT if it does not
 * fit; SL_EINVAL if a field is out of range (a string too long). */
int sl_proto_encode(const sl_frame_t *f, uint8_t *buf, size_t cap, size_t *len);

/* Decodes the first frame of buf[0..len). Returns 0 and sets *used to its size; SL_EAGAIN
 * when more bytes are needed; SL_EINVAL (with `why` set) when the bytes are not a valid
 * frame or the length exceeds `frame_max` — the connection should then be closed. */
int sl_proto_decode(const uint8_t *buf, size_t len, size_t frame_max, sl_frame_t *out,
                    size_t *used, char *why, size_t whylen);

const char *sl_proto_type_name(sl_frame_type_t t);

/* A connection's read side: bytes arrive into the free room, whole frames are taken from
 * the front, and what is left of a partial frame moves to the start. */
typedef struct {
    uint8_t *buf;
    size_t len; /* bytes held */
    size_t cap;
    size_t off; /* bytes already taken as frames */
} sl_proto_reader_t;

/* Free room of at least `want` bytes after what is held (for a libuv alloc callback).
 * Returns 0, or SL_ENOMEM with *room 0. */
int sl_proto_reader_room(sl_proto_reader_t *r, size_t want, uint8_t **at, size_t *room);
/* The next whole frame: 0 with *f filled (f->items/items_cap set by the caller) and its
 * bytes in raw and rawlen (valid until the next call); SL_EAGAIN when more bytes are needed
 * (the partial frame is moved to the front then); SL_EINVAL with `why` for a bad frame. */
int sl_proto_reader_next(sl_proto_reader_t *r, sl_frame_t *f, const uint8_t **raw,
                         size_t *rawlen, char *why, size_t whylen);
void sl_proto_reader_free(sl_proto_reader_t *r);

#endif
