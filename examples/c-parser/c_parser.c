/*
 * c-parser: a busd parser plugin written in C, with libzmq and msgpack-c only.
 *
 * It follows docs/protocol.md ("Parsers: the input socket"):
 *
 *   1. connect a DEALER to $BUS_INPUT and send {op: "hello", plugin: $BUS_PLUGIN, window: N};
 *   2. receive deliveries {op: "events", upto: U, events: [raw event, ...]};
 *   3. for each event whose "msg" contains the configured word, build one synthetic event
 *      (system "example", event_type "C_MATCH", severity "warn", msg copied);
 *   4. answer {op: "ack", upto: U, events: [outputs]}: outputs and acknowledgement in one message.
 *
 * Output ids are derived from the input's id exactly as the Python SDK's bus.plugin.derive_id()
 * does (BLAKE2b-128 of "<parent id>/<plugin>/<index>", printed as a UUID with version nibble 5),
 * so when busd delivers an unacknowledged event again to a restarted parser, the broker
 * recognises the outputs as duplicates: each output is published exactly once.
 *
 * Option (in the plugin's table, read from $BUS_PLUGIN_CONFIG): word = "error" (the default).
 * Logs are JSON lines on stderr, which busd merges into its own log.
 * SIGTERM or SIGINT: exit 0. A malformed message is logged and skipped, never fatal.
 */
#define _GNU_SOURCE /* memmem */

#include <errno.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <msgpack.h>
#include <zmq.h>

#include "blake2b.h"

#define WINDOW 1000 /* most events the broker may send before an acknowledgement */
#define WORD_MAX 256

static volatile sig_atomic_t stopping;
static const char *plugin_name;
static const char *hostname;
static char word[WORD_MAX] = "error";
static size_t word_len = 5;

/* -- logging: one JSON object per line on stderr ------------------------------------------- */

static void json_string(FILE *f, const char *s, size_t n)
{
    size_t i;

    fputc('"', f);
    for (i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)s[i];
        if (ch == '"' || ch == '\\')
            fprintf(f, "\\%c", ch);
        else if (ch < 0x20 || ch == 0x7f)
            fprintf(f, "\\u%04x", ch);
        else
            fputc(ch, f);
    }
    fputc('"', f);
}

/* log_json("info", "message", "key", "value", ..., NULL): string values only. */
static void log_json(const char *level, const char *event, ...)
{
    va_list ap;
    const char *key;

    fputs("{\"event\":", stderr);
    json_string(stderr, event, strlen(event));
    fputs(",\"level\":", stderr);
    json_string(stderr, level, strlen(level));
    va_start(ap, event);
    while ((key = va_arg(ap, const char *)) != NULL) {
        const char *value = va_arg(ap, const char *);
        fputc(',', stderr);
        json_string(stderr, key, strlen(key));
        fputc(':', stderr);
        json_string(stderr, value ? value : "", value ? strlen(value) : 0);
    }
    va_end(ap);
    fputs("}\n", stderr);
    fflush(stderr);
}

/* -- configuration: the "word" key of $BUS_PLUGIN_CONFIG ----------------------------------- */

static int hexval(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

static int hex4(const char *p, unsigned *out)
{
    unsigned v = 0;
    int i;

    for (i = 0; i < 4; i++) {
        int h = hexval(p[i]);
        if (h < 0)
            return -1;
        v = (v << 4) | (unsigned)h;
    }
    *out = v;
    return 0;
}

static size_t put_utf8(char *out, unsigned cp)
{
    if (cp < 0x80) {
        out[0] = (char)cp;
        return 1;
    }
    if (cp < 0x800) {
        out[0] = (char)(0xC0 | (cp >> 6));
        out[1] = (char)(0x80 | (cp & 0x3F));
        return 2;
    }
    if (cp < 0x10000) {
        out[0] = (char)(0xE0 | (cp >> 12));
        out[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
        out[2] = (char)(0x80 | (cp & 0x3F));
        return 3;
    }
    out[0] = (char)(0xF0 | (cp >> 18));
    out[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
    out[2] = (char)(0x80 | ((cp >> 6) & 0x3F));
    out[3] = (char)(0x80 | (cp & 0x3F));
    return 4;
}

/* Decode the JSON string starting at p (just after its opening quote) into out; -1 if bad. */
static long json_unquote(const char *p, char *out, size_t cap)
{
    size_t n = 0;

    while (*p && *p != '"') {
        char buf[4];
        size_t len = 1;
        if (*p != '\\') {
            buf[0] = *p++;
        } else {
            p++;
            switch (*p) {
            case '"': case '\\': case '/': buf[0] = *p; break;
            case 'b': buf[0] = '\b'; break;
            case 'f': buf[0] = '\f'; break;
            case 'n': buf[0] = '\n'; break;
            case 'r': buf[0] = '\r'; break;
            case 't': buf[0] = '\t'; break;
            case 'u': {
                unsigned cp, lo;
                if (hex4(p + 1, &cp) < 0)
                    return -1;
                p += 4;
                if (cp >= 0xD800 && cp <= 0xDBFF) { /* a surrogate pair: \uD83D\uDE00 */
                    if (p[1] != '\\' || p[2] != 'u' || hex4(p + 3, &lo) < 0 || lo < 0xDC00 || lo > 0xDFFF)
                        return -1;
                    cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
                    p += 6;
                } else if (cp >= 0xDC00 && cp <= 0xDFFF) {
                    return -1;
                }
                len = put_utf8(buf, cp);
                break;
            }
            default:
                return -1;
            }
            p++;
        }
        if (n + len >= cap)
            return -1;
        memcpy(out + n, buf, len);
        n += len;
    }
    if (*p != '"')
        return -1;
    out[n] = '\0';
    return (long)n;
}

/*
 * Find "word": "..." in the configuration JSON. A deliberately small reader, not a JSON parser:
 * it takes the first "word" that is followed by a colon (i.e. is a key) and whose value is a string.
 */
static void read_config(void)
{
    const char *json = getenv("BUS_PLUGIN_CONFIG");
    const char *p = json;

    while (p && (p = strstr(p, "\"word\"")) != NULL) {
        const char *q = p + 6;
        p = q;
        while (*q == ' ' || *q == '\t' || *q == '\n' || *q == '\r')
            q++;
        if (*q != ':')
            continue; /* "word" as a value, not a key */
        q++;
        while (*q == ' ' || *q == '\t' || *q == '\n' || *q == '\r')
            q++;
        if (*q == '"') {
            char buf[WORD_MAX];
            long n = json_unquote(q + 1, buf, sizeof buf);
            if (n >= 0) {
                memcpy(word, buf, (size_t)n + 1);
                word_len = (size_t)n;
                return;
            }
        }
        log_json("warning", "bad_option", "key", "word",
                 "reason", "must be a JSON string shorter than 256 bytes; using \"error\"", NULL);
        return;
    }
}

/* -- msgpack helpers ----------------------------------------------------------------------- */

/* Return the value of a string key of a map, or NULL. */
static const msgpack_object *map_get(const msgpack_object *map, const char *key)
{
    size_t klen = strlen(key);
    uint32_t i;

    if (map->type != MSGPACK_OBJECT_MAP)
        return NULL;
    for (i = 0; i < map->via.map.size; i++) {
        const msgpack_object_kv *kv = &map->via.map.ptr[i];
        if (kv->key.type == MSGPACK_OBJECT_STR && kv->key.via.str.size == klen &&
            memcmp(kv->key.via.str.ptr, key, klen) == 0)
            return &kv->val;
    }
    return NULL;
}

/* Point *s and *n at a string value of a map; 0 if found, -1 if missing or not a string. */
static int map_str(const msgpack_object *map, const char *key, const char **s, size_t *n)
{
    const msgpack_object *v = map_get(map, key);

    if (v == NULL || v->type != MSGPACK_OBJECT_STR)
        return -1;
    *s = v->via.str.ptr;
    *n = v->via.str.size;
    return 0;
}

static int is_int(const msgpack_object *o)
{
    return o != NULL && (o->type == MSGPACK_OBJECT_POSITIVE_INTEGER || o->type == MSGPACK_OBJECT_NEGATIVE_INTEGER);
}

static void pack_strn(msgpack_packer *pk, const char *s, size_t n)
{
    msgpack_pack_str(pk, n);
    msgpack_pack_str_body(pk, s, n);
}

static void pack_str(msgpack_packer *pk, const char *s)
{
    pack_strn(pk, s, strlen(s));
}

/* Pack "key": <the input's string value of key, or ""> */
static void pack_copied_str(msgpack_packer *pk, const msgpack_object *event, const char *key)
{
    const char *s = "";
    size_t n = 0;

    pack_str(pk, key);
    if (map_str(event, key, &s, &n) < 0) {
        s = "";
        n = 0;
    }
    pack_strn(pk, s, n);
}

/* -- the parser ------------------------------------------------------------------------------ */

/* The SDK's derive_id(parent, plugin, index): the same input gives the same UUID-formatted id. */
static void derive_id(const char *parent, size_t parent_len, unsigned index, char out[37])
{
    static const char hex[] = "0123456789abcdef";
    blake2b_ctx ctx;
    uint8_t digest[16];
    char x[33], idx[16];
    int i, n;

    blake2b_init(&ctx, sizeof digest);
    blake2b_update(&ctx, parent, parent_len);
    blake2b_update(&ctx, "/", 1);
    blake2b_update(&ctx, plugin_name, strlen(plugin_name));
    blake2b_update(&ctx, "/", 1);
    n = snprintf(idx, sizeof idx, "%u", index);
    blake2b_update(&ctx, idx, (size_t)n);
    blake2b_final(&ctx, digest);
    for (i = 0; i < 16; i++) {
        x[2 * i] = hex[digest[i] >> 4];
        x[2 * i + 1] = hex[digest[i] & 15];
    }
    x[32] = '\0';
    x[12] = '5';
    snprintf(out, 37, "%.8s-%.4s-%.4s-%.4s-%.12s", x, x + 8, x + 12, x + 16, x + 20);
}

/* Append the synthetic event for one raw event to pk; return 1 if one was made, else 0. */
static int handle_event(msgpack_packer *pk, const msgpack_object *event)
{
    const char *msg, *parent = "", *source = "";
    size_t msg_len, parent_len = 0, source_len = 0;
    const msgpack_object *ts;
    double timestamp;
    char id[37];

    if (event->type != MSGPACK_OBJECT_MAP) {
        log_json("warning", "event_skipped", "reason", "not a map", NULL);
        return 0;
    }
    if (map_str(event, "msg", &msg, &msg_len) < 0) {
        log_json("warning", "event_skipped", "reason", "no string 'msg'", NULL);
        return 0;
    }
    if (memmem(msg, msg_len, word, word_len) == NULL)
        return 0;
    map_str(event, "event_id", &parent, &parent_len);
    map_str(event, "source", &source, &source_len);
    ts = map_get(event, "timestamp");
    if (ts != NULL && (ts->type == MSGPACK_OBJECT_FLOAT64 || ts->type == MSGPACK_OBJECT_FLOAT32)) {
        timestamp = ts->via.f64;
    } else {
        struct timespec now;
        clock_gettime(CLOCK_REALTIME, &now);
        timestamp = (double)now.tv_sec + (double)now.tv_nsec / 1e9;
    }
    derive_id(parent, parent_len, 0, id);

    msgpack_pack_map(pk, 12);
    pack_str(pk, "v");
    msgpack_pack_int(pk, 1);
    pack_str(pk, "event_id");
    pack_str(pk, id);
    pack_str(pk, "timestamp");
    msgpack_pack_double(pk, timestamp);
    pack_str(pk, "hostname");
    pack_str(pk, hostname); /* "" lets the broker fill in its own */
    pack_str(pk, "severity");
    pack_str(pk, "warn");
    pack_str(pk, "system");
    pack_str(pk, "example");
    pack_str(pk, "kind");
    pack_str(pk, "synthetic");
    pack_str(pk, "event_type");
    pack_str(pk, "C_MATCH");
    pack_copied_str(pk, event, "dev_wwid");
    pack_copied_str(pk, event, "dev_name");
    pack_str(pk, "msg");
    pack_strn(pk, msg, msg_len);
    pack_str(pk, "extensions");
    msgpack_pack_map(pk, 3);
    pack_str(pk, "raw_event_id");
    pack_strn(pk, parent, parent_len);
    pack_str(pk, "raw_source");
    pack_strn(pk, source, source_len);
    pack_str(pk, "word");
    pack_strn(pk, word, word_len);
    return 1;
}

/* Handle one delivery {op: "events", upto, events}: send its acknowledgement with the outputs. */
static void handle_delivery(void *sock, const msgpack_object *msg)
{
    const msgpack_object *upto = map_get(msg, "upto");
    const msgpack_object *events = map_get(msg, "events");
    msgpack_sbuffer outputs, reply;
    msgpack_packer pk;
    uint32_t i, made = 0;

    if (!is_int(upto) || events == NULL || events->type != MSGPACK_OBJECT_ARRAY) {
        log_json("warning", "malformed_delivery", "reason", "needs an integer 'upto' and an array 'events'", NULL);
        return;
    }
    msgpack_sbuffer_init(&outputs);
    msgpack_packer_init(&pk, &outputs, msgpack_sbuffer_write);
    for (i = 0; i < events->via.array.size; i++)
        made += (uint32_t)handle_event(&pk, &events->via.array.ptr[i]);

    msgpack_sbuffer_init(&reply);
    msgpack_packer_init(&pk, &reply, msgpack_sbuffer_write);
    msgpack_pack_map(&pk, 3);
    pack_str(&pk, "op");
    pack_str(&pk, "ack");
    pack_str(&pk, "upto");
    msgpack_pack_object(&pk, *upto);
    pack_str(&pk, "events");
    msgpack_pack_array(&pk, made);
    msgpack_sbuffer_write(&reply, outputs.data, outputs.size); /* the outputs, already encoded */

    if (zmq_send(sock, reply.data, reply.size, 0) < 0 && errno != EINTR)
        log_json("error", "send_failed", "error", zmq_strerror(errno), NULL);
    msgpack_sbuffer_destroy(&outputs);
    msgpack_sbuffer_destroy(&reply);
}

/* Handle one frame from the broker; return -1 when the parser must stop. */
static int handle_frame(void *sock, const char *data, size_t size)
{
    msgpack_unpacked unpacked;
    msgpack_unpack_return ret;
    const char *op;
    size_t off = 0, op_len;
    int rc = 0;

    msgpack_unpacked_init(&unpacked);
    ret = msgpack_unpack_next(&unpacked, data, size, &off);
    if (ret != MSGPACK_UNPACK_SUCCESS || off != size) {
        log_json("warning", "malformed_frame", "reason", "not exactly one msgpack object", NULL);
    } else if (map_str(&unpacked.data, "op", &op, &op_len) < 0) {
        log_json("warning", "malformed_frame", "reason", "not a map with a string 'op'", NULL);
    } else if (op_len == 6 && memcmp(op, "events", 6) == 0) {
        handle_delivery(sock, &unpacked.data);
    } else if (op_len == 5 && memcmp(op, "error", 5) == 0) {
        const char *err = "";
        size_t err_len = 0;
        char buf[512];
        map_str(&unpacked.data, "error", &err, &err_len);
        snprintf(buf, sizeof buf, "%.*s", (int)(err_len < 511 ? err_len : 511), err);
        log_json("error", "broker_refused", "error", buf, NULL);
        rc = -1;
    } else {
        log_json("warning", "malformed_frame", "reason", "unknown op", NULL);
    }
    msgpack_unpacked_destroy(&unpacked);
    return rc;
}

static int send_hello(void *sock)
{
    msgpack_sbuffer buf;
    msgpack_packer pk;
    int rc;

    msgpack_sbuffer_init(&buf);
    msgpack_packer_init(&pk, &buf, msgpack_sbuffer_write);
    msgpack_pack_map(&pk, 3);
    pack_str(&pk, "op");
    pack_str(&pk, "hello");
    pack_str(&pk, "plugin");
    pack_str(&pk, plugin_name);
    pack_str(&pk, "window");
    msgpack_pack_int(&pk, WINDOW);
    rc = zmq_send(sock, buf.data, buf.size, 0);
    msgpack_sbuffer_destroy(&buf);
    return rc < 0 ? -1 : 0;
}

static void on_signal(int sig)
{
    (void)sig;
    stopping = 1;
}

int main(void)
{
    const char *input = getenv("BUS_INPUT");
    struct sigaction sa;
    void *ctx, *sock;
    int linger = 1000, status = 0;

    plugin_name = getenv("BUS_PLUGIN");
    hostname = getenv("BUS_HOSTNAME");
    if (hostname == NULL)
        hostname = "";
    if (plugin_name == NULL || *plugin_name == '\0' || input == NULL || *input == '\0') {
        log_json("error", "missing_environment", "reason",
                 "BUS_PLUGIN and BUS_INPUT must be set (busd sets them for a parser)", NULL);
        return 2;
    }
    read_config();

    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal; /* no SA_RESTART: a blocking zmq_msg_recv() returns EINTR */
    sigemptyset(&sa.sa_mask);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);

    ctx = zmq_ctx_new();
    sock = zmq_socket(ctx, ZMQ_DEALER);
    zmq_setsockopt(sock, ZMQ_LINGER, &linger, sizeof linger);
    if (zmq_connect(sock, input) < 0 || send_hello(sock) < 0) {
        log_json("error", "connect_failed", "endpoint", input, "error", zmq_strerror(errno), NULL);
        zmq_close(sock);
        zmq_ctx_term(ctx);
        return 1;
    }
    log_json("info", "c_parser_started", "input", input, "word", word, NULL);

    while (!stopping) {
        zmq_msg_t frame;
        int more;

        zmq_msg_init(&frame);
        if (zmq_msg_recv(&frame, sock, 0) < 0) {
            int err = errno;
            zmq_msg_close(&frame);
            if (err == EINTR)
                continue;
            log_json("error", "receive_failed", "error", zmq_strerror(err), NULL);
            status = 1;
            break;
        }
        more = zmq_msg_more(&frame);
        if (more) {
            /* the broker sends single frames; drain and skip anything else */
            log_json("warning", "malformed_frame", "reason", "multipart message", NULL);
            while (more) {
                zmq_msg_close(&frame);
                zmq_msg_init(&frame);
                if (zmq_msg_recv(&frame, sock, 0) < 0)
                    break;
                more = zmq_msg_more(&frame);
            }
        } else if (handle_frame(sock, zmq_msg_data(&frame), zmq_msg_size(&frame)) < 0) {
            status = 1;
            zmq_msg_close(&frame);
            break;
        }
        zmq_msg_close(&frame);
    }
    if (stopping)
        log_json("info", "c_parser_stopping", NULL);
    zmq_close(sock);
    zmq_ctx_term(ctx);
    return status;
}
