/*
 * c-max: an Isthmus resolver written in C against the ABI alone (no SDK).
 *
 * The merge keeps the greatest value: the longest bytes, ties broken by
 * the greater bytes (unsigned, lexicographic). Tombstones lose to any
 * value; siblings that are all tombstones merge into a delete. Taking a
 * maximum under a total order is a join (commutative, associative,
 * idempotent), as the laws require.
 *
 * The ABI (isthmus-sdk-wasm's crate docs, "The ABI (version 1)"): a core
 * module with no imports that exports `memory`, `isthmus_abi_version`,
 * `isthmus_alloc` and `isthmus_merge`. The input is a postcard-encoded
 * MergeInput { key: bytes, siblings: [Sibling] } with
 * Sibling { payload: enum { Value(bytes), Tombstone }, timestamp_ms: u64,
 * origin_dc: string, clock: { vector: [(u64, u64)], dots: [(u64, u64)] } };
 * the output a postcard MergeOutput: enum { Value(bytes), Delete,
 * Error { code: u32, message: string } }.
 *
 * Build: build.sh (clang for wasm32, wasm-ld, a 16 KiB stack).
 */

typedef unsigned char u8;
typedef unsigned int u32;
typedef unsigned long long u64;

/* The guest's own error: the input does not decode. */
#define ERR_MALFORMED 1u

/* ---- memory: a bump allocator over the heap wasm-ld leaves free ---- */

extern u8 __heap_base;
static u32 next_free = 0;

u32 isthmus_alloc(u32 len) {
    if (next_free == 0) {
        next_free = (u32)&__heap_base;
    }
    u32 start = next_free;
    u64 end = (u64)start + len;
    u64 have = (u64)__builtin_wasm_memory_size(0) * 65536u;
    if (end > have) {
        u64 pages = (end - have + 65535u) / 65536u;
        if (__builtin_wasm_memory_grow(0, (unsigned long)pages) == (unsigned long)-1) {
            return 0;
        }
    }
    next_free = (u32)end;
    return start;
}

u32 isthmus_abi_version(void) { return 1; }

/* ---- postcard decoding ---- */

typedef struct {
    const u8 *at;
    const u8 *end;
    int failed;
} reader;

static u64 varint(reader *r) {
    u64 out = 0;
    for (int shift = 0; shift < 70; shift += 7) {
        if (r->at >= r->end) {
            r->failed = 1;
            return 0;
        }
        u8 b = *r->at++;
        out |= (u64)(b & 0x7f) << shift;
        if (!(b & 0x80)) {
            return out;
        }
    }
    r->failed = 1;
    return 0;
}

/* A length-prefixed byte string: its start and length, or failure. */
static const u8 *bytes(reader *r, u32 *len) {
    u64 n = varint(r);
    if (r->failed || n > (u64)(r->end - r->at)) {
        r->failed = 1;
        return 0;
    }
    const u8 *start = r->at;
    r->at += n;
    *len = (u32)n;
    return start;
}

static void skip_pairs(reader *r) {
    u64 n = varint(r);
    for (u64 i = 0; i < n && !r->failed; i++) {
        varint(r);
        varint(r);
    }
}

/* ---- output ---- */

static u8 *out_at;

static void put_varint(u64 v) {
    while (v >= 0x80) {
        *out_at++ = (u8)(v | 0x80);
        v >>= 7;
    }
    *out_at++ = (u8)v;
}

static void put_bytes(const u8 *p, u32 len) {
    put_varint(len);
    __builtin_memcpy(out_at, p, len);
    out_at += len;
}

static u64 packed(u8 *start) { return ((u64)(u32)start << 32) | (u32)(out_at - start); }

static u64 refuse(const char *message) {
    u32 len = 0;
    while (message[len]) {
        len++;
    }
    u8 *start = (u8 *)isthmus_alloc(len + 16);
    if (!start) {
        __builtin_trap();
    }
    out_at = start;
    put_varint(2); /* MergeOutput::Error */
    put_varint(ERR_MALFORMED);
    put_bytes((const u8 *)message, len);
    return packed(start);
}

/* Whether value a (len la) is greater than b (len lb): longer, then greater bytes. */
static int greater(const u8 *a, u32 la, const u8 *b, u32 lb) {
    if (la != lb) {
        return la > lb;
    }
    for (u32 i = 0; i < la; i++) {
        if (a[i] != b[i]) {
            return a[i] > b[i];
        }
    }
    return 0;
}

u64 isthmus_merge(u32 ptr, u32 len) {
    reader r = {(const u8 *)ptr, (const u8 *)ptr + len, 0};
    u32 key_len;
    bytes(&r, &key_len); /* the key: not needed */
    u64 siblings = varint(&r);
    const u8 *best = 0;
    u32 best_len = 0;
    for (u64 i = 0; i < siblings && !r.failed; i++) {
        u64 payload = varint(&r);
        if (payload == 0) {
            u32 vlen;
            const u8 *v = bytes(&r, &vlen);
            if (!r.failed && (!best || greater(v, vlen, best, best_len))) {
                best = v;
                best_len = vlen;
            }
        } else if (payload != 1) {
            r.failed = 1;
        }
        varint(&r);                 /* timestamp_ms */
        u32 dc_len;
        bytes(&r, &dc_len);         /* origin_dc */
        skip_pairs(&r);             /* clock.vector */
        skip_pairs(&r);             /* clock.dots */
    }
    if (r.failed || r.at != r.end) {
        return refuse("the input is not a MergeInput");
    }
    u8 *start = (u8 *)isthmus_alloc(best_len + 16);
    if (!start) {
        __builtin_trap();
    }
    out_at = start;
    if (best) {
        put_varint(0); /* MergeOutput::Value */
        put_bytes(best, best_len);
    } else {
        put_varint(1); /* MergeOutput::Delete */
    }
    return packed(start);
}
