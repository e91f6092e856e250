/* The StatsD receive path's hot loop, in C: split lines, look up their head, convert the value,
 * accumulate. Everything else stays in Python (agent/statsd/receive.py).
 *
 * A `Table` maps the head of a line (`name` and `tail` of `name:value|tail`) to what the receive side's
 * slow path decided for it (a Python `Slot` and its `Context`). `run(data, pos, interval)` walks the
 * lines of `data` from `pos` and handles, in order, every line whose head is a counter's, a histogram's
 * or a gauge's in the table and whose value is a plain decimal number, and every line of a set's head
 * whose member fits the set limits. It stops at the first line it
 * cannot handle and returns that line's offset, so that Python parses it fully and calls `run` again
 * after it: lines are applied in the order they were sent, whichever side handles them.
 *
 * A line whose head is not in the table and whose context is not live is handled here too when its head
 * is simple (`read_head`): below the cap its context is made here (`make`), within the room Python gave
 * for it, and the Python objects of all such contexts are made at once when `run` returns (`adopt`, in
 * C too); at the cap it is refused here, without a Python object (`new_head`). Python keeps the set of
 * live contexts up to date.
 *
 * Counters and histogram values accumulate here, per entry, until `harvest()` hands them to Python
 * (at the end of each interval); gauges and set members are written to the open interval's dicts
 * directly (`Open`). The heads of gauges with Etsy deltas and of errors are in the table too, as
 * Python's: their lines go to Python at once, without a second look.
 * Memory comes from malloc, so that it goes back to the system (malloc_trim) once freed.
 *
 * `drain(fd, limit)` reads up to `limit` datagrams from a non-blocking socket in one call, joined by
 * newlines, without releasing the GIL between them (each `recv` returns at once): a Python `recv`
 * loop releases it at every call and, while another thread runs Python code, waits up to the switch
 * interval (5 ms) to get it back, which starves the receive thread when the event loop is busy.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>
#include <errno.h>
#include <math.h>
#include <stdint.h>
#include <string.h>
#include <sys/socket.h>

/* The slot codes: what to do with a line's value. Exported to Python (interval.py checks its own copy
 * against these at import), so that the two sides cannot drift apart. */
enum { COUNTER = 0, HISTOGRAM = 1, GAUGE = 2, GAUGE_DELTA = 3, SET = 4, ERROR = 5, DROPPED = 6 };

typedef struct {
    char *key;                 /* name, then tail, without separator */
    Py_ssize_t name_len, tail_len;
    uint64_t hash;
    PyObject *slot, *ctx;      /* strong references; NULL while pending: made here, not yet adopted */
    unsigned char code;
    unsigned char touched;     /* in `touched` since the last harvest */
    unsigned char has_gauge;   /* pending gauge: its last value is `sum` */
    double sum;                /* counters */
    double *values;            /* histograms */
    Py_ssize_t n, cap;
} Entry;

/* A set of 64-bit hashes (open addressing; 0 empty, 1 deleted): contexts by the hash of their key,
 * refused heads by the hash of their text (stamped: `rs_find`). Keyed SipHash: a new head shares the hash
 * of a refused one (and is counted as refused without a look) with odds of 2**-56 per pair, and a client
 * cannot steer it. */
typedef struct {
    uint64_t *buckets;
    size_t mask;
    Py_ssize_t used, deleted;
    uint64_t stamp;  /* of the refused heads' set: see `rs_find` */
} HashSet;

/* A bucket holds its entry's hash: a lookup that misses (a new head) compares hashes in one array
 * and never touches the entries. */
typedef struct {
    uint64_t hash;
    Py_ssize_t at;             /* entry index + 1, 0 when empty */
} Bucket;

#define MAX_SHARED 16           /* tag positions whose last pair `head_items` remembers */

typedef struct {
    PyObject_HEAD
    Entry *entries;
    Py_ssize_t count, room;
    Bucket *slots;             /* open addressing */
    size_t mask;
    Py_ssize_t *touched;
    Py_ssize_t ntouched;
    uint64_t key[2];           /* SipHash key, random per table */
    long long lines;           /* lines handled since the last take_counts() */
    /* New contexts, made or refused here (see `new_head`) */
    HashSet live;              /* hashes of the live contexts' keys (`context_key`): Python's and pending */
    Py_ssize_t contexts, max_contexts;
    int decide;                /* may make and refuse new contexts itself: no mapping rules (they rename) */
    int gauge_deltas;          /* `+N`/`-N` change a gauge: its contexts are Python's to make */
    Py_ssize_t context_cost, tag_ref_cost, pair_cost;  /* interval.py's charges (`configure`) */
    /* the room Python gives before each `run` (Limits.context_bytes, the head cache's bounds), taken
     * by each context made here: charged as if every tag pair were new, never more than Python charges */
    Py_ssize_t bytes_left, heads_left, head_bytes_left;
    Py_ssize_t *pending, npending, pending_cap;  /* entries made here, in order, until `adopt` */
    /* the strings and tag pairs `head_items` made last (new references): a storm's lines share their
     * name, type, container and most tags, and Python's TagPool keeps the first objects it sees */
    PyObject *last_text[3], *last_pair[MAX_SHARED], *last_rate;
    HashSet refused;           /* heads refused at the cap: their lines are counted without a parse */
    Py_ssize_t refused_bytes, refused_limit, refused_max_bytes, head_cost;
    long long refused_lines, refused_heads;  /* since the last take_counts() */
    struct Shape *shapes;      /* the last head read per name (`read_shaped`), NULL until one is kept */
    char *scratch;             /* a context's key, built for hashing */
    size_t scratch_cap;
    /* histogram values this interval may still take, here or in Python (Limits.histogram_values):
     * set by Python at each interval, taken by both; at 0 a histogram line is left to Python, which
     * refuses it (`value_limit`) */
    Py_ssize_t values_left;
    /* Limits.set_members, set_bytes, set_members_per_context, set_bytes_per_context (`configure`) */
    Py_ssize_t set_limits[4];
} Table;

/* SipHash-1-3, keyed: a client that cannot read the key cannot choose heads that collide (the
 * table's worst case, a long probe sequence under the GIL). Little-endian reads, as the reference. */
#define ROTL(x, b) (uint64_t)(((x) << (b)) | ((x) >> (64 - (b))))
#define SIPROUND                                                                      \
    do {                                                                              \
        v0 += v1; v1 = ROTL(v1, 13); v1 ^= v0; v0 = ROTL(v0, 32);                     \
        v2 += v3; v3 = ROTL(v3, 16); v3 ^= v2;                                        \
        v0 += v3; v3 = ROTL(v3, 21); v3 ^= v0;                                        \
        v2 += v1; v1 = ROTL(v1, 17); v1 ^= v2; v2 = ROTL(v2, 32);                     \
    } while (0)

typedef struct {
    uint64_t v0, v1, v2, v3;
} Sip;

static inline Sip sip_start(uint64_t k0, uint64_t k1) {
    return (Sip){0x736f6d6570736575ULL ^ k0, 0x646f72616e646f6dULL ^ k1, 0x6c7967656e657261ULL ^ k0,
                 0x7465646279746573ULL ^ k1};
}

/* The whole 8-byte blocks of [p, p + n) into s. */
static inline void sip_blocks(Sip *s, const char *p, Py_ssize_t n) {
    uint64_t v0 = s->v0, v1 = s->v1, v2 = s->v2, v3 = s->v3, m;
    for (; n >= 8; p += 8, n -= 8) {
        memcpy(&m, p, 8);
        v3 ^= m;
        SIPROUND;
        v0 ^= m;
    }
    *s = (Sip){v0, v1, v2, v3};
}

/* The hash of a text of `total` bytes whose first total - n bytes (whole blocks) are in s and whose
 * last n are at p. */
static inline __attribute__((always_inline)) uint64_t sip_finish(Sip s, const char *p, Py_ssize_t n,
                                                                 Py_ssize_t total) {
    uint64_t v0 = s.v0, v1 = s.v1, v2 = s.v2, v3 = s.v3;
    uint64_t last = (uint64_t)total << 56, m;
    int longer = n >= 8;
    for (; n >= 8; p += 8, n -= 8) {
        memcpy(&m, p, 8);
        v3 ^= m;
        SIPROUND;
        v0 ^= m;
    }
    if (longer && n > 0) {  /* the last 1-7 bytes: the 8 that end the text, shifted (no call to memcpy) */
        memcpy(&m, p + n - 8, 8);
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
        m = __builtin_bswap64(m);  /* as the loop below reads them */
#endif
        last |= m >> (8 * (8 - n));
    } else {
        for (int i = 0; i < n; i++)  /* a short text: a loop */
            last |= (uint64_t)(unsigned char)p[i] << (8 * i);
    }
    v3 ^= last;
    SIPROUND;
    v0 ^= last;
    v2 ^= 0xff;
    SIPROUND;
    SIPROUND;
    SIPROUND;
    return v0 ^ v1 ^ v2 ^ v3;
}

static uint64_t siphash13(uint64_t k0, uint64_t k1, const char *p, Py_ssize_t n) {
    return sip_finish(sip_start(k0, k1), p, n, n);
}

/* A head's hash: its tail's, keyed with its name's (`name_hash`). A line's context key has the line's
 * name: its hash reuses the name's. */
static uint64_t name_hash(const Table *t, const char *name, Py_ssize_t nlen) {
    return siphash13(t->key[0], t->key[1], name, nlen);
}

static uint64_t tail_hash(const Table *t, uint64_t name, const char *tail, Py_ssize_t tlen) {
    return siphash13(t->key[0] ^ name, t->key[1], tail, tlen);
}

static uint64_t head_hash(const Table *t, const char *name, Py_ssize_t nlen, const char *tail, Py_ssize_t tlen) {
    return tail_hash(t, name_hash(t, name, nlen), tail, tlen);
}

/* a head further than this from its bucket is left to Python: at the load factor of 1/2 the longest
 * run expected among 400,000 heads is about 70 buckets: practically never, but under a flood of collisions */
#define MAX_PROBES 256

/* The entry for a head, or NULL. */
static Entry *find(const Table *t, uint64_t h, const char *name, Py_ssize_t nlen, const char *tail, Py_ssize_t tlen) {
    if (t->slots == NULL)
        return NULL;
    size_t i = h & t->mask;
    for (int probe = 0; probe < MAX_PROBES; probe++, i = (i + 1) & t->mask) {
        Py_ssize_t at = t->slots[i].at;
        if (at == 0)
            return NULL;
        if (t->slots[i].hash != h)
            continue;
        Entry *e = &t->entries[at - 1];
        if (e->name_len == nlen && e->tail_len == tlen
                && memcmp(e->key, name, (size_t)nlen) == 0 && memcmp(e->key + nlen, tail, (size_t)tlen) == 0)
            return e;
    }
    return NULL;
}

/* The first free bucket for hash h within MAX_PROBES, or -1. */
static Py_ssize_t free_bucket(Bucket *slots, size_t mask, uint64_t h) {
    size_t i = h & mask;
    for (int probe = 0; probe < MAX_PROBES; probe++, i = (i + 1) & mask)
        if (slots[i].at == 0)
            return (Py_ssize_t)i;
    return -1;
}

static const double POW10[] = {1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11,
                               1e12, 1e13, 1e14, 1e15, 1e16, 1e17, 1e18, 1e19, 1e20, 1e21, 1e22};

/* A plain decimal `-?digits[.digits]` whose digits fit in 2**53 and whose fraction has at most 22
 * digits: the quotient of two exact doubles, so rounded exactly as Python's float() rounds it.
 * Anything else (exponents, `+`, `_`, `inf`, packing, more digits) returns 0: Python decides. */
static int plain_number(const char *p, const char *end, double *out) {
    int negative = 0, dot = 0, digits = 0, fraction = 0;
    uint64_t m = 0;
    if (p < end && *p == '-') {
        negative = 1;
        p++;
    }
    for (; p < end; p++) {
        char c = *p;
        if (c >= '0' && c <= '9') {
            if (++digits > 16)
                return 0;
            m = m * 10 + (uint64_t)(c - '0');
            fraction += dot;
        } else if (c == '.' && !dot) {
            dot = 1;
        } else {
            return 0;
        }
    }
    if (digits == 0 || m > (1ULL << 53) || fraction > 22)
        return 0;
    double v = (double)m / POW10[fraction];
    *out = negative ? -v : v;
    return 1;
}

static int append(Entry *e, double v) {
    if (e->n == e->cap) {
        Py_ssize_t cap = e->cap ? 2 * e->cap : 8;
        double *grown = PyMem_RawRealloc(e->values, (size_t)cap * sizeof(double));
        if (grown == NULL)
            return -1;
        e->values = grown;
        e->cap = cap;
    }
    e->values[e->n++] = v;
    return 0;
}

static void touch(Table *t, Entry *e) {
    if (!e->touched) {
        e->touched = 1;
        t->touched[t->ntouched++] = e - t->entries;
    }
}

/* -- hash sets ------------------------------------------------------------------------------- */

static uint64_t hs_norm(uint64_t h) {
    return h < 2 ? h + 2 : h;  /* 0 and 1 mark empty and deleted buckets */
}

static int hs_find(const HashSet *s, uint64_t h) {
    if (s->buckets == NULL)
        return 0;
    h = hs_norm(h);
    for (size_t i = h & s->mask;; i = (i + 1) & s->mask) {  /* at most half full: ends at an empty bucket */
        if (s->buckets[i] == h)
            return 1;
        if (s->buckets[i] == 0)
            return 0;
    }
}

#define STAMP 0xFFULL  /* the stamp's bits in a refused head's bucket: see `rs_find` */

/* Rehash into a table a quarter full: to grow, or to shrink after many removals. `shift`: 0 for a set of
 * plain hashes (placed by their bits, 0 and 1 not hashes), 8 for the stamped one (placed by the bits above
 * the stamp, only those of its stamp kept). */
static int hs_rebuild(HashSet *s, int shift) {
    size_t size = s->buckets ? s->mask + 1 : 0, want = 1024;
    while (want < 4 * (size_t)(s->used + 1))
        want *= 2;
    uint64_t *buckets = PyMem_RawCalloc(want, sizeof(uint64_t));
    if (buckets == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    for (size_t k = 0; k < size; k++) {
        uint64_t b = s->buckets[k];
        if (shift ? (b & STAMP) == s->stamp : b > 1) {
            size_t i = (b >> shift) & (want - 1);
            while (buckets[i])
                i = (i + 1) & (want - 1);
            buckets[i] = b;
        }
    }
    PyMem_RawFree(s->buckets);
    s->buckets = buckets;
    s->mask = want - 1;
    s->deleted = 0;
    return 0;
}

static int hs_add(HashSet *s, uint64_t h) {
    size_t size = s->buckets ? s->mask + 1 : 0;
    if (2 * (size_t)(s->used + s->deleted + 1) > size && hs_rebuild(s, 0) < 0)
        return -1;
    h = hs_norm(h);
    size_t i = h & s->mask;
    while (s->buckets[i] > 1)
        i = (i + 1) & s->mask;
    if (s->buckets[i] == 1)
        s->deleted--;
    s->buckets[i] = h;
    s->used++;
    return 0;
}

static void hs_remove(HashSet *s, uint64_t h) {
    if (s->buckets == NULL)
        return;
    h = hs_norm(h);
    for (size_t i = h & s->mask; s->buckets[i] != 0; i = (i + 1) & s->mask) {
        if (s->buckets[i] == h) {
            s->buckets[i] = 1;
            s->used--;
            s->deleted++;
            return;
        }
    }
}

/* The refused heads: each bucket holds a hash with its low byte replaced by the set's stamp (1 to 255),
 * placed by the bits above that byte; a bucket of another stamp is empty. Emptying the set, when it is full
 * (a storm of new contexts at the cap fills it at once again), is a new stamp: neither a write to every
 * bucket nor, freed, the doublings of growing it again, each a calloc and a rehash (37 instructions a
 * line of such a storm). No removal. */
static int rs_find(const HashSet *s, uint64_t h) {
    if (s->buckets == NULL)
        return 0;
    uint64_t v = (h & ~STAMP) | s->stamp;
    for (size_t i = (h >> 8) & s->mask;; i = (i + 1) & s->mask) {  /* at most half full: ends at another stamp */
        uint64_t b = s->buckets[i];
        if (b == v)
            return 1;
        if ((b & STAMP) != s->stamp)
            return 0;
    }
}

/* Add a hash not in the set (`rs_find` said so). */
static int rs_add(HashSet *s, uint64_t h) {
    if (s->stamp == 0)  /* a set never used: 0 is no stamp (calloc's buckets) */
        s->stamp = 1;
    if (2 * (size_t)(s->used + 1) > (s->buckets ? s->mask + 1 : 0) && hs_rebuild(s, 8) < 0)
        return -1;
    size_t i = (h >> 8) & s->mask;
    while ((s->buckets[i] & STAMP) == s->stamp)
        i = (i + 1) & s->mask;
    s->buckets[i] = (h & ~STAMP) | s->stamp;
    s->used++;
    return 0;
}

/* Every hash forgotten, the buckets kept: a new stamp (once in 255 emptyings, the buckets zeroed). */
static void rs_empty(HashSet *s) {
    s->used = 0;
    if (s->buckets != NULL && ++s->stamp > STAMP) {
        memset(s->buckets, 0, (s->mask + 1) * sizeof(uint64_t));
        s->stamp = 1;
    }
}

static void hs_clear(HashSet *s) {
    PyMem_RawFree(s->buckets);
    s->buckets = NULL;
    s->mask = 0;
    s->used = s->deleted = 0;
}

/* -- context keys ----------------------------------------------------------------------------- */

/* A context's key, hashed: `head_hash` of its name and of its tail written the one way its strings give
 * it, `type|#key:value,key:value|c:container` (no `#` field without tags, no `c:` field without a
 * container), in UTF-8. A line whose tail is written that way (the usual case) has its head's hash for
 * its context's: nothing more to hash. Built from a line (`line_context`) or from a Context's strings
 * (`Table.live_add`), the same bytes for the same context. Two contexts whose texts hold the separators
 * may share a key: the set then says "maybe live" for a context that is not, and Python decides; it
 * never says "not live" for a live one. */
#define MAX_NAME 200           /* as in parser.py (checked at import: receive.py) */
#define MAX_TAG 200
#define MAX_TAGS 100
#define MAX_TAGS_BYTES 4096
#define MAX_TAIL 8192

static char *reserve(Table *t, size_t n) {
    if (n > t->scratch_cap) {
        char *grown = PyMem_RawRealloc(t->scratch, n);
        if (grown == NULL) {
            PyErr_NoMemory();
            return NULL;
        }
        t->scratch = grown;
        t->scratch_cap = n;
    }
    return t->scratch;
}

/* -- reading a head, eight bytes at a time ---------------------------------------------------- */

#define ONES 0x0101010101010101ULL
#define HIGH 0x8080808080808080ULL
#define LOW7 0x7f7f7f7f7f7f7f7fULL

static inline uint64_t load8(const char *p) {  /* the first byte lowest, on every machine */
    uint64_t w;
    memcpy(&w, p, 8);
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
    w = __builtin_bswap64(w);
#endif
    return w;
}

/* The n (0-8) bytes at p as load8 reads them, the bytes above zero, read within [lo, p + n) only: the
 * 8 bytes that end at p + n, shifted, when there are 8 from lo (a short tail: one byte at a time). */
static inline uint64_t load_last(const char *p, Py_ssize_t n, const char *lo) {
    if ((p - lo) + n >= 8)
        return n == 0 ? 0 : load8(p + n - 8) >> (8 * (8 - n));
    uint64_t w = 0;
    for (Py_ssize_t i = 0; i < n; i++)
        w |= (uint64_t)(unsigned char)p[i] << (8 * i);
    return w;
}

/* Bit 7 of each byte of w that is c: exact (no borrow from one byte into the next, as `x - ONES` has). */
static inline uint64_t bytes_equal(uint64_t w, unsigned char c) {
    uint64_t x = w ^ (c * ONES);
    return ~(((x & LOW7) + LOW7) | x) & HIGH;
}

/* Where a tail's `|`, `,` and `:` are: a bit per byte of the text (bit i of word i / 64 at byte i),
 * marked in one pass (`mark`), which checks that the text is ASCII too: fields, items and colons are then
 * found by a bit scan (`next_mark`) instead of a memchr each, and no span is checked for ASCII apart. */
#define MARK_WORDS (MAX_TAIL / 64 + 1)
typedef struct {
    uint64_t bar[MARK_WORDS], comma[MARK_WORDS], colon[MARK_WORDS];
} Marks;

static inline void put_marks(Marks *mk, Py_ssize_t off, unsigned bar, unsigned comma, unsigned colon) {
    Py_ssize_t w = off >> 6;  /* off: a multiple of 16 (SSE2) or 8: its bits stay in one word */
    int at = (int)(off & 63);
    if (at == 0)
        mk->bar[w] = mk->comma[w] = mk->colon[w] = 0;
    mk->bar[w] |= (uint64_t)bar << at;
    mk->comma[w] |= (uint64_t)comma << at;
    mk->colon[w] |= (uint64_t)colon << at;
}

/* 0 when a byte of [p, end) is not ASCII; 16 bytes at a time with SSE2 (any x86-64), else 8 */
#ifdef __SSE2__
#include <emmintrin.h>
static int mark(const char *p, const char *end, Marks *mk) {
    Py_ssize_t len = end - p;
    const __m128i bar = _mm_set1_epi8('|'), comma = _mm_set1_epi8(','), colon = _mm_set1_epi8(':');
    int high = 0;
    for (Py_ssize_t off = 0; off < len; off += 16) {
        __m128i v;
        int skip = 0;  /* the last 16 bytes of a longer text are read at once: those before off, skipped */
        if (len - off >= 16) {
            v = _mm_loadu_si128((const __m128i *)(p + off));
        } else if (len >= 16) {
            skip = (int)(16 - (len - off));
            v = _mm_loadu_si128((const __m128i *)(end - 16));
        } else {
            char part[16] = {0};  /* zeros: no mark, ASCII */
            memcpy(part, p, (size_t)len);
            v = _mm_loadu_si128((const __m128i *)part);
        }
        high |= _mm_movemask_epi8(v);
        put_marks(mk, off, (unsigned)_mm_movemask_epi8(_mm_cmpeq_epi8(v, bar)) >> skip,
                  (unsigned)_mm_movemask_epi8(_mm_cmpeq_epi8(v, comma)) >> skip,
                  (unsigned)_mm_movemask_epi8(_mm_cmpeq_epi8(v, colon)) >> skip);
    }
    return high == 0;
}
#else
static inline unsigned movemask8(uint64_t m) {  /* bit 7 of byte i -> bit i */
    return (unsigned)(((m & HIGH) * 0x02040810204081ULL) >> 56);
}

static int mark(const char *p, const char *end, Marks *mk) {
    Py_ssize_t len = end - p;
    uint64_t seen = 0;
    for (Py_ssize_t off = 0; off < len; off += 8) {
        uint64_t w = len - off >= 8 ? load8(p + off) : load_last(p + off, len - off, p);
        seen |= w;
        put_marks(mk, off, movemask8(bytes_equal(w, '|')), movemask8(bytes_equal(w, ',')),
                  movemask8(bytes_equal(w, ':')));
    }
    return (seen & HIGH) == 0;
}
#endif

/* The first marked byte in [from, to) (to: at most the text's length), or to. */
static inline Py_ssize_t next_mark(const uint64_t *m, Py_ssize_t from, Py_ssize_t to) {
    if (from >= to)
        return to;
    Py_ssize_t w = from >> 6;
    uint64_t bits = m[w] & (~0ULL << (from & 63));
    while (bits == 0) {
        if (++w << 6 >= to)
            return to;
        bits = m[w];
    }
    Py_ssize_t at = (w << 6) + __builtin_ctzll(bits);
    return at < to ? at : to;
}

/* A head read as parser.parse_head reads it, when that is simple (`read_head`): spans of the text. */
typedef struct {
    const char *type;
    Py_ssize_t type_len;
    double rate;
    const char *container, *container_end;
    int ntags;                         /* tags kept: no empty key, no key given twice */
    Py_ssize_t tags_len;               /* the `#` field's length, without the `#` */
    const char *keys[MAX_TAGS], *values[MAX_TAGS];
    Py_ssize_t key_lens[MAX_TAGS], value_lens[MAX_TAGS];
    uint64_t prefix[MAX_TAGS];         /* a key's first 8 bytes (0 after its end), to compare as a number */
    int order[MAX_TAGS];               /* the tags' indices by key, as `Aggregator._slot` sorts them */
    int sorted;                        /* in that order in the text */
} Head;

/* How Python orders two of a head's tags: by key (unique in a head), as str; ASCII here, so as bytes.
 * The first 8 bytes at once: most keys differ there. */
static int key_order(const Head *hd, int a, int b) {
    if (hd->prefix[a] != hd->prefix[b])
        return hd->prefix[a] < hd->prefix[b] ? -1 : 1;
    Py_ssize_t la = hd->key_lens[a], lb = hd->key_lens[b], m = la < lb ? la : lb;
    int c = m > 8 ? memcmp(hd->keys[a] + 8, hd->keys[b] + 8, (size_t)(m - 8)) : 0;
    return c != 0 ? c : (la > lb) - (la < lb);
}

/* Sort a head's tags by key (`order`, `sorted`): 0 when a key is given twice (the last value at the first
 * position: Python's dict does it, Python reads it). An insertion sort: few tags, usually in order; a key
 * equal to one before it meets it, as the largest key not above it. */
static int sort_tags(Head *hd) {
    hd->sorted = 1;
    for (int k = 0; k < hd->ntags; k++) {
        int j = k, c = 1;
        for (; j > 0 && (c = key_order(hd, hd->order[j - 1], k)) > 0; j--)
            hd->order[j] = hd->order[j - 1];
        if (j > 0 && c == 0)
            return 0;
        hd->order[j] = k;
        hd->sorted &= j == k;
    }
    return 1;
}

/* 1 and *hd filled when the head is plain ASCII, has no `T` field, no trailing `\r`, at most one `#`
 * field and one `c:` field, no tag key given twice, and parse_head would accept it; else 0 (Python
 * reads it, and says which error). The tail's separators are found first, in one pass (`mark`). */
static int read_head(const char *name, Py_ssize_t nlen, const char *tail, const char *end, Head *hd) {
    Py_ssize_t tlen = end - tail;
    if (nlen < 1 || nlen > MAX_NAME || tlen > MAX_TAIL || (nlen >= 3 && memcmp(name, "_e{", 3) == 0)
            || (tlen > 0 && end[-1] == '\r'))
        return 0;
    uint64_t seen = 0, bars = 0;  /* the name: ASCII, without `|` */
    for (Py_ssize_t off = 0; off < nlen; off += 8) {
        uint64_t w = nlen - off >= 8 ? load8(name + off) : load_last(name + off, nlen - off, name);
        seen |= w;
        bars |= bytes_equal(w, '|');
    }
    Marks mk;
    if ((seen & HIGH) || bars || !mark(tail, end, &mk))
        return 0;
    hd->type = tail;
    hd->type_len = next_mark(mk.bar, 0, tlen);
    int known_type = hd->type_len == 2 ? tail[0] == 'm' && tail[1] == 's' : hd->type_len == 1
        && (tail[0] == 'c' || tail[0] == 'g' || tail[0] == 'h' || tail[0] == 's' || tail[0] == 'd');
    if (!known_type)
        return 0;
    int tags = 0, items = 0, ntags = 0;  /* items: non-empty ones, as parse_tags counts them */
    hd->container = hd->container_end = NULL;
    hd->rate = 1.0;
    hd->tags_len = 0;
    for (Py_ssize_t f = hd->type_len; f < tlen;) {  /* f: the `|` before a field */
        Py_ssize_t start = f + 1, fe = next_mark(mk.bar, start, tlen);
        if (fe > start) {
            char kind = tail[start];
            if (kind == '@') {
                double rate;
                if (!plain_number(tail + start + 1, tail + fe, &rate))
                    return 0;
                /* 0, out of range, or so small that 1/rate overflows: unsampled, as parse_head */
                hd->rate = rate > 0.0 && rate <= 1.0 && isfinite(1.0 / rate) ? rate : 1.0;
            } else if (kind == 'T') {
                return 0;
            } else if (kind == '#') {
                if (tags++ || fe - start - 1 > MAX_TAGS_BYTES)
                    return 0;
                hd->tags_len = fe - start - 1;
                for (Py_ssize_t item = start + 1; item < fe;) {  /* items between `,` */
                    Py_ssize_t ie = next_mark(mk.comma, item, fe);
                    if (ie > item) {
                        if (ie - item > MAX_TAG || items++ == MAX_TAGS)
                            return 0;
                        Py_ssize_t colon = next_mark(mk.colon, item, ie), klen = colon - item;
                        if (klen > 0) {  /* a key up to the item's first `:`, its value after it */
                            if (colon == ie - 1)
                                return 0;  /* `key:`, no tag: Python's to leave out */
                            int q = ntags++;
                            hd->keys[q] = tail + item;
                            hd->key_lens[q] = klen;
                            hd->values[q] = tail + (colon < ie ? colon + 1 : ie);
                            hd->value_lens[q] = colon < ie ? ie - colon - 1 : 0;
                            /* 8 bytes from the key when the tail has them, else the 8 that end it */
                            uint64_t w = tlen - item >= 8 ? load8(tail + item) : load_last(tail + item, tlen - item, tail);
                            if (klen < 8)
                                w &= (1ULL << (8 * klen)) - 1;
                            /* load8 puts the first byte lowest on every machine: swapped, it is the most
                             * significant, and the numbers compare as the bytes do */
                            hd->prefix[q] = __builtin_bswap64(w);
                        }
                    }
                    item = ie + 1;
                }
            } else if (fe - start >= 2 && kind == 'c' && tail[start + 1] == ':') {
                if (hd->container != NULL)
                    return 0;
                hd->container = tail + start + 2;
                hd->container_end = tail + fe;
            }
        }
        f = fe;
    }
    hd->ntags = ntags;
    if (hd->container == NULL)
        hd->container = hd->container_end = end;
    return sort_tags(hd);
}

static char *put(char *w, const char *text, Py_ssize_t len) {
    memcpy(w, text, (size_t)len);
    return w + len;
}

/* Whether a tail read by `read_head` is written the one way of the context's key: its spans follow each
 * other in the text with exactly the separators that way writes (`|#`, `:`, `,`, `|c:`). */
static int written_one_way(const Head *hd, const char *tail, const char *end) {
    const char *p = tail + hd->type_len;
    if (hd->ntags > 0) {
        if (end - p < 2 || p[0] != '|' || p[1] != '#')
            return 0;
        p += 2;
        for (int k = 0; k < hd->ntags; k++) {
            if (hd->keys[k] - p != (k > 0) || hd->values[k] - hd->keys[k] != hd->key_lens[k] + 1)
                return 0;  /* an item skipped or without `:` */
            p = hd->values[k] + hd->value_lens[k];
        }
    }
    if (hd->container == hd->container_end)
        return p == end;
    return hd->container - p == 3 && memcmp(p, "|c:", 3) == 0 && hd->container_end == end;
}

/* Whether `sep` is the line's own text from `to` to `next`: a tag (or the container) that follows the
 * key written so far in the text, separator included, extends the run of text copied at once. */
static inline int follows(const char *to, const char *next, const char *sep, int n) {
    if (next - to != n)
        return 0;
    for (int k = 0; k < n; k++)  /* (1-3 bytes: compared here, not by a call) */
        if (to[k] != sep[k])
            return 0;
    return 1;
}

/* -- the shapes of a storm's heads ------------------------------------------------------------ */

/* A storm's lines differ in one tag's value (a request id): their heads read alike but for that value.
 * The last head read for a name is kept (`Shape`, one per bucket of the name's hash), its spans as
 * offsets into a copy of its text. A head of that name whose tail differs from the copy only inside one
 * tag's value (after its `:`), by ASCII bytes that are neither `|` nor `,`, reads as the copy does with
 * that value in its place: the same fields, keys and key order, the spans after the value moved by the
 * difference in length (`fits`, `unshape`), and its context's key is the shape's with that value in
 * its place. Any other head is read (`read_head`) and becomes its name's shape. A shape depends on text
 * alone: it never goes stale. */
#define SHAPES 32
#define SHAPE_TEXT 256
#define SHAPE_TAGS 16

typedef struct Shape {
    uint64_t named;                    /* the name's hash */
    int16_t nlen, tlen;                /* 0 and 0: empty */
    int16_t type_len, container, container_end, tags_len, ntags, sorted;  /* offsets in the tail */
    int16_t key[SHAPE_TAGS], key_len[SHAPE_TAGS], value[SHAPE_TAGS], value_len[SHAPE_TAGS];
    int16_t value_end[SHAPE_TAGS];     /* of a value after a `:`; else -1: the tag never changes (`fits`) */
    int8_t order[SHAPE_TAGS];
    int8_t last_changed;               /* the tag that changed last, tried first */
    double rate;
    uint64_t prefix[SHAPE_TAGS];
    char text[SHAPE_TEXT];             /* the name, then the tail */
    uint8_t skip, backoff;             /* heads of the name not compared to the shape (`fitting_shape`) */
    int16_t one_way;                   /* the tail is its context's key (`written_one_way`) */
    int16_t context_len, value_at[SHAPE_TAGS];  /* else the key, and where each tag's value is in it */
    int8_t hashed_for;                 /* the tag `hashed` is for, -1: none */
    Sip hashed;                        /* the key's hash over its whole blocks before that tag's value */
    char context[SHAPE_TEXT + SHAPE_TAGS];
} Shape;

/* How many bytes a and b have in common from their start, at most n. */
static inline Py_ssize_t same_start(const char *a, const char *b, Py_ssize_t n) {
    Py_ssize_t k = 0;
    for (; k + 8 <= n; k += 8) {
        uint64_t x = load8(a + k) ^ load8(b + k);
        if (x)
            return k + (__builtin_ctzll(x) >> 3);  /* load8: the first byte lowest */
    }
    if (k == n)
        return n;
    if (n >= 8) {  /* the last 8 bytes: those before k are equal */
        uint64_t x = load8(a + n - 8) ^ load8(b + n - 8);
        return x ? n - 8 + (__builtin_ctzll(x) >> 3) : n;
    }
    while (k < n && a[k] == b[k])
        k++;
    return k;
}

/* How many bytes the texts that end at a and at b have in common at their end, at most n. */
static inline Py_ssize_t same_end(const char *a, const char *b, Py_ssize_t n) {
    Py_ssize_t k = 0;
    for (; k + 8 <= n; k += 8) {
        uint64_t x = load8(a - k - 8) ^ load8(b - k - 8);
        if (x)
            return k + (__builtin_clzll(x) >> 3);  /* the last byte highest */
    }
    if (k == n)
        return n;
    if (n >= 8) {  /* the first 8 of the n bytes: those after the k last are equal */
        uint64_t x = load8(a - n) ^ load8(b - n);
        return x ? n - 8 + (__builtin_clzll(x) >> 3) : n;
    }
    while (k < n && a[-k - 1] == b[-k - 1])
        k++;
    return k;
}

/* Whether the n bytes at p, within a text that starts at lo, are ASCII and none is `|` or `,`. */
static inline int plain_value(const char *p, Py_ssize_t n, const char *lo) {
    uint64_t bad = 0;
    for (; n > 0; p += 8, n -= 8) {
        uint64_t w = n >= 8 ? load8(p) : load_last(p, n, lo);  /* the bytes above the n: zero */
        bad |= (w & HIGH) | bytes_equal(w, '|') | bytes_equal(w, ',');
    }
    return bad == 0;
}

/* The context key of a head `read_head` read, written at buf (room for the tail and one `:` per tag):
 * its length. value_at (or NULL): where each tag's value is in the key. */
static Py_ssize_t write_key(const Head *hd, char *buf, int16_t *value_at) {
    /* the key is written in runs of the line's text (`from` to `to`, copied when the key leaves it):
     * tags in the order of the text are one copy, not one per key, `:`, value and `,` */
    const char *from = hd->type, *to = hd->type + hd->type_len;
    char *w = buf;
    for (int k = 0; k < hd->ntags; k++) {
        int i = hd->order[k];
        const char *key = hd->keys[i];
        if (!follows(to, key, k == 0 ? "|#" : ",", k == 0 ? 2 : 1)) {
            w = put(put(w, from, to - from), k == 0 ? "|#" : ",", k == 0 ? 2 : 1);
            from = key;
        }
        to = key + hd->key_lens[i];
        if (hd->values[i] - to != 1) {  /* no `:` in the text (read_head: a value is after its key's `:`) */
            w = put(put(w, from, to - from), ":", 1);
            from = to = hd->values[i];
        }
        if (value_at != NULL)
            value_at[i] = (int16_t)((w - buf) + (hd->values[i] - from));
        to = hd->values[i] + hd->value_lens[i];
    }
    if (hd->container_end > hd->container) {
        if (!follows(to, hd->container, "|c:", 3)) {
            w = put(put(w, from, to - from), "|c:", 3);
            from = hd->container;
        }
        to = hd->container_end;
    }
    return put(w, from, to - from) - buf;
}

/* The shape of a name, or NULL. */
static Shape *shape_of(Table *t, uint64_t named, const char *name, Py_ssize_t nlen) {
    Shape *s = t->shapes != NULL ? &t->shapes[named & (SHAPES - 1)] : NULL;
    return s != NULL && s->named == named && s->nlen == nlen && same_start(s->text, name, nlen) == nlen ? s : NULL;
}

/* Whether the tail [tail, tail + tlen) of the name of shape s reads as the shape does but for one tag's
 * value, which stays non-empty (*changed, read only when it does: that tag's index, -1 when the tail is the
 * shape's). */
static int fits(const Shape *s, const char *tail, Py_ssize_t tlen, int *changed) {
    const char *x = s->text + s->nlen;
    Py_ssize_t xlen = s->tlen, least = xlen < tlen ? xlen : tlen;
    Py_ssize_t from = same_start(x, tail, least);
    Py_ssize_t to = xlen - same_end(x + xlen, tail + tlen, least - from);  /* the shape's [from, to) differs */
    Py_ssize_t delta = tlen - xlen;
    *changed = -1;
    if (from == xlen && delta == 0)
        return 1;
    int k = s->last_changed;
    if (!(s->value[k] <= from && to <= s->value_end[k]))
        for (k = 0; k < s->ntags && !(s->value[k] <= from && to <= s->value_end[k]); k++)
            ;
    *changed = k < s->ntags ? k : -1;
    return *changed >= 0 && tlen <= MAX_TAIL && s->tags_len + delta <= MAX_TAGS_BYTES
        && s->key_len[*changed] + 1 + s->value_len[*changed] + delta <= MAX_TAG && s->value_len[*changed] + delta > 0
        && tail[tlen - 1] != '\r'
        && plain_value(tail + from, tlen - (xlen - to) - from, tail);  /* the new bytes */
}

/* The name's shape when the tail fits it (*changed: see `fits`), else NULL; *keep: whether the head, read
 * instead, is to be the name's shape. A name whose heads keep missing its shape (two values change at
 * once, ...) is neither compared to it nor its shape replaced for 1, 2, 4, ... up to 64 reads in turn (a
 * head made below the cap is read up to three times: for its context, by `make`, by `adopt`). Two names
 * whose shapes share a bucket replace each other at each head, without a pause. */
static Shape *fitting_shape(Table *t, uint64_t named, const char *name, Py_ssize_t nlen, const char *tail,
                            Py_ssize_t tlen, int *changed, int *keep) {
    Shape *s = shape_of(t, named, name, nlen);
    *keep = 1;
    if (s == NULL)
        return NULL;
    if (s->skip > 0) {
        s->skip--;
        *keep = 0;
        return NULL;
    }
    if (fits(s, tail, tlen, changed)) {
        s->last_changed = (int8_t)(*changed < 0 ? 0 : *changed);
        s->backoff = 0;
        return s;
    }
    s->skip = s->backoff = s->backoff == 0 ? 1 : s->backoff < 64 ? 2 * s->backoff : 64;
    return NULL;
}

/* *hd for a tail that `fits` shape s. */
static void unshape(const Shape *s, const char *tail, Py_ssize_t tlen, int changed, Head *hd) {
    Py_ssize_t delta = tlen - s->tlen;  /* the spans from `moved` on move by delta */
    Py_ssize_t moved = changed < 0 ? SHAPE_TEXT : s->value[changed] + s->value_len[changed];
    hd->type = tail;
    hd->type_len = s->type_len;
    hd->rate = s->rate;
    hd->ntags = s->ntags;
    hd->sorted = s->sorted;
    hd->tags_len = s->tags_len + delta;
    for (int k = 0; k < s->ntags; k++) {
        Py_ssize_t key = s->key[k], value = s->value[k], value_len = s->value_len[k];
        if (k == changed) {
            value_len += delta;
        } else {
            key += key >= moved ? delta : 0;
            value += value >= moved ? delta : 0;
        }
        hd->keys[k] = tail + key;
        hd->key_lens[k] = s->key_len[k];
        hd->values[k] = tail + value;
        hd->value_lens[k] = value_len;
        hd->prefix[k] = s->prefix[k];
        hd->order[k] = s->order[k];
    }
    hd->container = tail + s->container + (s->container >= moved ? delta : 0);
    hd->container_end = tail + s->container_end + (s->container_end >= moved ? delta : 0);
}

/* Keep *hd, just read, as its name's shape when it fits one: the shape, or NULL (none kept). */
static Shape *keep_shape(Table *t, uint64_t named, const char *name, Py_ssize_t nlen, const char *tail,
                         Py_ssize_t tlen, const Head *hd) {
    if (nlen + tlen > SHAPE_TEXT || hd->ntags > SHAPE_TAGS)
        return NULL;
    if (t->shapes == NULL && (t->shapes = PyMem_RawCalloc(SHAPES, sizeof(Shape))) == NULL)
        return NULL;
    Shape *s = &t->shapes[named & (SHAPES - 1)];
    if (s->named != named)
        s->skip = s->backoff = 0;
    s->named = named;
    s->nlen = (int16_t)nlen;
    s->tlen = (int16_t)tlen;
    memcpy(s->text, name, (size_t)nlen);
    memcpy(s->text + nlen, tail, (size_t)tlen);
    s->type_len = (int16_t)hd->type_len;
    s->container = (int16_t)(hd->container - tail);
    s->container_end = (int16_t)(hd->container_end - tail);
    s->tags_len = (int16_t)hd->tags_len;
    s->ntags = (int16_t)hd->ntags;
    s->sorted = (int16_t)hd->sorted;
    s->rate = hd->rate;
    for (int k = 0; k < hd->ntags; k++) {
        s->key[k] = (int16_t)(hd->keys[k] - tail);
        s->key_len[k] = (int16_t)hd->key_lens[k];
        s->value[k] = (int16_t)(hd->values[k] - tail);
        s->value_len[k] = (int16_t)hd->value_lens[k];
        s->value_end[k] = (int16_t)(hd->values[k] == hd->keys[k] + hd->key_lens[k] + 1 ? s->value[k] + s->value_len[k] : -1);
        s->order[k] = (int8_t)hd->order[k];
        s->prefix[k] = hd->prefix[k];
    }
    s->last_changed = 0;
    s->hashed_for = -1;
    s->one_way = (int16_t)(hd->sorted && written_one_way(hd, tail, tail + tlen));
    s->context_len = s->one_way ? 0 : (int16_t)write_key(hd, s->context, s->value_at);
    return s;
}

/* `read_head`, from the name's shape when the head fits it (`named`: the name's hash). */
static int read_shaped(Table *t, uint64_t named, const char *name, Py_ssize_t nlen, const char *tail,
                       const char *end, Head *hd) {
    int changed, keep;
    const Shape *s = fitting_shape(t, named, name, nlen, tail, end - tail, &changed, &keep);
    if (s != NULL) {
        unshape(s, tail, end - tail, changed, hd);
        return 1;
    }
    if (!read_head(name, nlen, tail, end, hd))
        return 0;
    if (keep)
        keep_shape(t, named, name, nlen, tail, end - tail, hd);
    return 1;
}

/* Whether Python would accept the value [value, bar) of a line of this type. */
static int value_ok(const char *type, Py_ssize_t type_len, const char *value, const char *bar) {
    double v;
    return type_len == 1 && type[0] == 's' ? value < bar : plain_number(value, bar, &v);
}

/* The hash of the context a line names, when `read_head` reads its head and its value is one Python
 * would accept (else that error comes first): 1 and *h set; 0 when Python must look; -1 on an error.
 * `named`, `head`: the line's name_hash and head_hash. A context's tags are sorted by key
 * (`Aggregator._slot`): `#b:2,a:1` names the context of `#a:1,b:2`. */
static int line_context(Table *t, const char *name, Py_ssize_t nlen, const char *value, const char *bar,
                        const char *end, uint64_t named, uint64_t head, uint64_t *h) {
    const char *tail = bar + 1;
    Py_ssize_t tlen = end - tail;
    int changed, keep;
    Shape *s = fitting_shape(t, named, name, nlen, tail, tlen, &changed, &keep);
    if (s == NULL) {
        Head hd;
        if (!read_head(name, nlen, tail, end, &hd))
            return 0;
        changed = -1;
        if (!keep || (s = keep_shape(t, named, name, nlen, tail, tlen, &hd)) == NULL) {  /* the head alone */
            if (!value_ok(hd.type, hd.type_len, value, bar))
                return 0;
            if (hd.sorted && written_one_way(&hd, tail, end)) {
                *h = head;
                return 1;
            }
            char *buf = reserve(t, (size_t)(tlen + hd.ntags) + 8);
            if (buf == NULL)
                return -1;
            *h = tail_hash(t, named, buf, write_key(&hd, buf, NULL));
            return 1;
        }
    }
    if (!value_ok(tail, s->type_len, value, bar))  /* the type: the tail's first field, as the shape's */
        return 0;
    if (s->one_way) {  /* and so is this tail */
        *h = head;
        return 1;
    }
    if (changed < 0) {
        *h = tail_hash(t, named, s->context, s->context_len);
        return 1;
    }
    /* the shape's key, the changed value in its place: hashed on from the blocks before the value */
    Py_ssize_t at = s->value_at[changed], old = s->value_len[changed], delta = tlen - s->tlen;
    Py_ssize_t same = at & ~(Py_ssize_t)7;
    if (s->hashed_for != changed) {
        s->hashed = sip_start(t->key[0] ^ named, t->key[1]);  /* as `tail_hash` starts */
        sip_blocks(&s->hashed, s->context, same);
        s->hashed_for = (int8_t)changed;
    }
    char *buf = reserve(t, (size_t)(s->context_len + delta - same) + 8);
    if (buf == NULL)
        return -1;
    char *w = put(buf, s->context + same, at - same);
    w = put(w, tail + s->value[changed], old + delta);
    w = put(w, s->context + at + old, s->context_len - at - old);
    *h = sip_finish(s->hashed, buf, w - buf, s->context_len + delta);
    return 1;
}

/* The same hash from a Context's strings (name, type, tags as pairs of str, container). */
static int object_context(Table *t, PyObject *name, PyObject *type, PyObject *tags, PyObject *container,
                          uint64_t *h) {
    if (!PyTuple_Check(tags)) {
        PyErr_SetString(PyExc_TypeError, "tags must be a tuple of (key, value) pairs");
        return -1;
    }
    Py_ssize_t n = PyTuple_GET_SIZE(tags), lens[3];
    const char *texts[3];
    PyObject *parts[3] = {name, type, container};
    size_t size = 5;
    for (int k = 0; k < 3; k++) {
        if ((texts[k] = PyUnicode_AsUTF8AndSize(parts[k], &lens[k])) == NULL)
            return -1;
        size += (size_t)lens[k];
    }
    for (Py_ssize_t k = 0; k < n; k++) {
        PyObject *pair = PyTuple_GET_ITEM(tags, k);
        Py_ssize_t klen, vlen;
        if (!PyTuple_Check(pair) || PyTuple_GET_SIZE(pair) != 2) {
            PyErr_SetString(PyExc_TypeError, "tags must be a tuple of (key, value) pairs");
            return -1;
        }
        if (PyUnicode_AsUTF8AndSize(PyTuple_GET_ITEM(pair, 0), &klen) == NULL
                || PyUnicode_AsUTF8AndSize(PyTuple_GET_ITEM(pair, 1), &vlen) == NULL)
            return -1;
        size += (size_t)(klen + vlen) + 2;
    }
    char *w = reserve(t, size), *buf = w;
    if (buf == NULL)
        return -1;
    w = put(w, texts[1], lens[1]);
    for (Py_ssize_t k = 0; k < n; k++) {
        PyObject *pair = PyTuple_GET_ITEM(tags, k);
        w = put(w, k == 0 ? "|#" : ",", k == 0 ? 2 : 1);
        for (int j = 0; j < 2; j++) {
            Py_ssize_t len;
            const char *text = PyUnicode_AsUTF8AndSize(PyTuple_GET_ITEM(pair, j), &len);  /* cached above */
            w = put(w, text, len);
            if (j == 0)
                *w++ = ':';
        }
    }
    if (lens[2] > 0)
        w = put(put(w, "|c:", 3), texts[2], lens[2]);
    *h = head_hash(t, texts[0], lens[0], buf, w - buf);
    return 1;
}

/* Remember a head refused at the cap, within the bounds of Python's head cache: emptied when full. */
static int remember_refused(Table *t, uint64_t head, Py_ssize_t size) {
    size += t->head_cost;
    if (t->refused.used >= t->refused_limit || t->refused_bytes + size > t->refused_max_bytes) {
        rs_empty(&t->refused);
        t->refused_bytes = 0;
    }
    if (rs_add(&t->refused, head) < 0)
        return -1;
    t->refused_bytes += size;
    return 0;
}

/* A line cut as `handle` reads it (`name:value|tail`), with the hash of its head. `Table_run` cuts each
 * line one ahead of the line it handles and asks the CPU for the buckets that line will read: when the
 * tables outgrow the caches (a storm, many live contexts), those reads wait on memory, and the wait
 * overlaps the work on the line before. */
typedef struct {
    const char *line, *end, *after;    /* the line, its end, where the next one starts; line NULL: none left */
    const char *value, *bar;           /* NULL when a `:` or the `|` after it is missing: Python's */
    uint64_t named, head;              /* name_hash, head_hash */
    int context;                       /* line_context's answer when worked out ahead, else UNKNOWN */
    uint64_t context_hash;
} Cut;

#define UNKNOWN 2

/* What the line before the one being handled was: a storm's lines come in runs. */
enum { CALM, REFUSED_AGAIN, REFUSED_NEW };

/* Cut the first line at or after p that is not empty, and prefetch what handling it reads: its bucket in
 * the head table; after a refused line, its bucket in the refused heads; and after a new head refused,
 * its context's key, hashed ahead, in the live contexts. */
static void cut(Table *t, const char *p, const char *end, int storm, Cut *c) {
    c->line = NULL;
    while (p < end) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        const char *eol = nl ? nl : end;
        if (eol > p && !(eol - p == 1 && *p == '\r')) {  /* an empty line is not a line */
            c->line = p;
            c->end = eol;
            c->after = nl ? nl + 1 : end;
            break;
        }
        p = nl ? nl + 1 : end;
    }
    if (c->line == NULL)
        return;
    c->value = c->bar = NULL;
    c->context = UNKNOWN;
    const char *colon = memchr(c->line, ':', (size_t)(c->end - c->line));
    if (colon == NULL)
        return;
    const char *bar = memchr(colon + 1, '|', (size_t)(c->end - colon - 1));
    if (bar == NULL)
        return;
    c->value = colon + 1;
    c->bar = bar;
    Py_ssize_t nlen = colon - c->line;
    c->named = name_hash(t, c->line, nlen);
    c->head = tail_hash(t, c->named, bar + 1, c->end - bar - 1);
    if (t->slots != NULL)
        __builtin_prefetch(&t->slots[c->head & t->mask]);
    if (storm == CALM)
        return;
    if (t->refused.buckets != NULL)
        __builtin_prefetch(&t->refused.buckets[(c->head >> 8) & t->refused.mask]);
    if (storm == REFUSED_NEW && t->decide && t->contexts >= t->max_contexts) {
        c->context = line_context(t, c->line, nlen, c->value, bar, c->end, c->named, c->head, &c->context_hash);
        if (c->context < 0) {  /* out of memory: worked out again, and raised, if the line needs it */
            PyErr_Clear();
            c->context = UNKNOWN;
        } else if (c->context == 1 && t->live.buckets != NULL) {
            __builtin_prefetch(&t->live.buckets[hs_norm(c->context_hash) & t->live.mask]);
        }
    }
}

static int grow(Table *t);

/* A new entry for head h (not in the table), or NULL: with *failed 0 when it has no bucket near its hash
 * (Python keeps handling it then), 1 with MemoryError set. `slot` and `ctx` are new references or NULL
 * (pending: see `make`). */
static Entry *insert(Table *t, uint64_t h, const char *name, Py_ssize_t nlen, const char *tail, Py_ssize_t tlen,
                     int code, int *failed) {
    Py_ssize_t bucket;
    char *key;
    *failed = 0;
    if (t->count == t->room && grow(t) != 0) {
        *failed = 1;
        return NULL;
    }
    if ((bucket = free_bucket(t->slots, t->mask, h)) < 0)
        return NULL;
    if ((key = PyMem_RawMalloc((size_t)(nlen + tlen) + 1)) == NULL) {
        PyErr_NoMemory();
        *failed = 1;
        return NULL;
    }
    memcpy(key, name, (size_t)nlen);
    memcpy(key + nlen, tail, (size_t)tlen);
    Entry *e = &t->entries[t->count];
    memset(e, 0, sizeof(*e));
    e->key = key;
    e->name_len = nlen;
    e->tail_len = tlen;
    e->hash = h;
    e->code = code;
    t->slots[bucket] = (Bucket){h, ++t->count};
    return e;
}

/* The open interval, as `run` writes to it: its dicts (borrowed: the Interval holds them), and its set
 * counts, read at the start of `run` and written back when it returns. */
typedef struct {
    PyObject *gauges, *sets, *set_bytes_of;
    Py_ssize_t set_members, set_bytes;
    int set_counts_changed;
} Open;

/* Account value v to entry e: 1, or -1 on a Python error. Room for a histogram value was checked.
 * Inlined: it is most of the work on a known line. */
static inline __attribute__((always_inline)) int accumulate(Table *t, Entry *e, double v, Open *o) {
    if (e->code == COUNTER) {
        e->sum += v;
        touch(t, e);
        return 1;
    }
    if (e->code == HISTOGRAM) {
        if (append(e, v)) {
            PyErr_NoMemory();
            return -1;
        }
        t->values_left--;
        touch(t, e);
        return 1;
    }
    if (e->ctx == NULL) {  /* a pending gauge: its value goes to the interval when it is adopted */
        e->sum = v;
        e->has_gauge = 1;
        return 1;
    }
    PyObject *f = PyFloat_FromDouble(v);  /* GAUGE: the last value wins, in order */
    if (f == NULL)
        return -1;
    int failed = PyDict_SetItem(o->gauges, e->ctx, f);
    Py_DECREF(f);
    return failed ? -1 : 1;
}

/* Make the context of a line whose head is simple, whose context is not live and below the cap, as
 * Python would (`Aggregator._slot`): a pending entry for its head, its hash in the live set, its value
 * accounted. 1 when made, 0 when Python must (a set, a gauge with deltas, no room left, no bucket), -1 on
 * a Python error. */
static int make(Table *t, Cut *c, Open *o) {
    Head hd;
    double v;
    const char *tail = c->bar + 1;
    Py_ssize_t nlen = c->value - 1 - c->line, tlen = c->end - tail;
    if (!read_shaped(t, c->named, c->line, nlen, tail, c->end, &hd) || !plain_number(c->value, c->bar, &v))
        return 0;  /* (line_context read both already: not reached; the head is read again, from its shape) */
    char type = hd.type[0];
    int code = type == 'c' ? COUNTER : type == 'g' ? GAUGE : type == 's' ? SET : HISTOGRAM;
    if (code == SET || (code == GAUGE && t->gauge_deltas) || (code == HISTOGRAM && t->values_left <= 0))
        return 0;
    Py_ssize_t charge = nlen + (hd.container_end - hd.container) + t->context_cost;
    for (int k = 0; k < hd.ntags; k++)
        charge += t->tag_ref_cost + hd.key_lens[k] + hd.value_lens[k] + t->pair_cost;
    Py_ssize_t head_size = nlen + tlen + t->head_cost;
    if (charge > t->bytes_left || t->heads_left <= 0 || head_size > t->head_bytes_left)
        return 0;
    if (t->npending == t->pending_cap) {
        Py_ssize_t cap = t->pending_cap ? 2 * t->pending_cap : 256;
        Py_ssize_t *grown = PyMem_RawRealloc(t->pending, (size_t)cap * sizeof(Py_ssize_t));
        if (grown == NULL) {
            PyErr_NoMemory();
            return -1;
        }
        t->pending = grown;
        t->pending_cap = cap;
    }
    if (hs_add(&t->live, c->context_hash) < 0)
        return -1;
    int failed;
    Entry *e = insert(t, c->head, c->line, nlen, tail, tlen, code, &failed);
    if (e == NULL) {
        hs_remove(&t->live, c->context_hash);
        return failed ? -1 : 0;
    }
    t->pending[t->npending++] = e - t->entries;
    t->contexts++;
    t->bytes_left -= charge;
    t->heads_left--;
    t->head_bytes_left -= head_size;
    return accumulate(t, e, v, o);
}

/* A line whose head is not in the table: counted here when its head was refused before, or when the cap
 * is reached and its context is new (1); its context made here when it is new and below the cap (1, see
 * `make`); else left to Python (0). -1 on a Python error. */
static int new_head(Table *t, Cut *c, Open *o) {
    if (rs_find(&t->refused, c->head)) {
        t->refused_lines++;
        return 1;
    }
    if (!t->decide)
        return 0;
    Py_ssize_t nlen = c->value - 1 - c->line;
    if (c->context == UNKNOWN)
        c->context = line_context(t, c->line, nlen, c->value, c->bar, c->end, c->named, c->head, &c->context_hash);
    if (c->context <= 0)
        return c->context;
    if (hs_find(&t->live, c->context_hash))
        return 0;  /* another head of a live context (another rate, `|e:` field, ...): Python finds it */
    if (t->contexts < t->max_contexts)
        return make(t, c, o);
    if (remember_refused(t, c->head, nlen + (c->end - c->bar - 1)) < 0)
        return -1;
    t->refused_lines++;
    t->refused_heads++;
    return 1;
}

/* A set line's member (the text from the first `:` to the `|`), as Python's `_apply` takes it: nothing
 * changes when it is in its context's set already this interval (never refused); a new one joins the set
 * within the set limits, counted in the interval (`set_bytes_of`, `set_members`, `set_bytes`). 1 when
 * done; 0 when Python must look (past a limit: Python refuses it, `set_limit`; an empty member; a head
 * made here and not yet adopted); -1 on a Python error. */
static int set_member(Table *t, Open *o, PyObject *ctx, const char *value, const char *bar) {
    Py_ssize_t size = bar - value;
    if (ctx == NULL || size == 0)
        return 0;
    PyObject *members = PyDict_GetItemWithError(o->sets, ctx);  /* borrowed; a Context hashes by identity */
    if (members == NULL && PyErr_Occurred())
        return -1;
    PyObject *member = PyBytes_FromStringAndSize(value, size), *held_obj;
    if (member == NULL)
        return -1;
    int done = members != NULL ? PySet_Contains(members, member) : 0;
    if (done != 0)
        goto out;
    Py_ssize_t held = 0;
    if ((held_obj = PyDict_GetItemWithError(o->set_bytes_of, ctx)) != NULL) {
        if ((held = PyLong_AsSsize_t(held_obj)) < 0 && PyErr_Occurred()) {
            done = -1;
            goto out;
        }
    } else if (PyErr_Occurred()) {
        done = -1;
        goto out;
    }
    const Py_ssize_t *limit = t->set_limits;
    if ((members != NULL && PySet_GET_SIZE(members) >= limit[2]) || held + size > limit[3]
            || o->set_members >= limit[0] || o->set_bytes + size > limit[1])
        goto out;  /* 0: Python refuses it, and says why */
    if (members == NULL) {
        if ((members = PySet_New(NULL)) == NULL) {
            done = -1;
            goto out;
        }
        int failed = PyDict_SetItem(o->sets, ctx, members);
        Py_DECREF(members);  /* the dict holds it */
        if (failed) {
            done = -1;
            goto out;
        }
    }
    PyObject *total = PyLong_FromSsize_t(held + size);
    if (total == NULL || PySet_Add(members, member) < 0 || PyDict_SetItem(o->set_bytes_of, ctx, total) < 0) {
        Py_XDECREF(total);
        done = -1;
        goto out;
    }
    Py_DECREF(total);
    o->set_members++;
    o->set_bytes += size;
    o->set_counts_changed = 1;
    done = 1;
out:
    Py_DECREF(member);
    return done;
}

/* Account one line; 1 when done, 0 when Python must parse it, -1 on a Python error. */
static int handle(Table *t, Cut *c, Open *o) {
    if (c->value == NULL)
        return 0;
    const char *line = c->line, *value = c->value, *bar = c->bar, *tail = bar + 1;
    Py_ssize_t nlen = value - 1 - line, tlen = c->end - tail;
    Entry *e = find(t, c->head, line, nlen, tail, tlen);
    if (e == NULL)
        return new_head(t, c, o);
    if (e->code == SET)
        return set_member(t, o, e->ctx, value, bar);
    if (e->code != COUNTER && e->code != HISTOGRAM && e->code != GAUGE)
        return 0;  /* an error's, a gauge's with deltas, ... */
    double v;
    if (!plain_number(value, bar, &v) || (e->code == HISTOGRAM && t->values_left <= 0))
        return 0;
    return accumulate(t, e, v, o);
}

/* The parts of the Interval `run` writes to (`Open`): 0, or -1 with an exception set. */
static int open_interval(PyObject *interval, Open *o) {
    static const char *dicts[] = {"gauges", "sets", "set_bytes_of"};
    PyObject **into[] = {&o->gauges, &o->sets, &o->set_bytes_of};
    Py_ssize_t *counts[] = {&o->set_members, &o->set_bytes};
    static const char *names[] = {"set_members", "set_bytes"};
    o->set_counts_changed = 0;
    for (int k = 0; k < 3; k++) {
        PyObject *d = PyObject_GetAttrString(interval, dicts[k]);
        if (d == NULL)
            return -1;
        int ok = PyDict_CheckExact(d);
        Py_DECREF(d);  /* borrowed from here on: the interval holds it, and the caller the interval */
        if (!ok) {
            PyErr_Format(PyExc_TypeError, "interval.%s must be a dict", dicts[k]);
            return -1;
        }
        *into[k] = d;
    }
    for (int k = 0; k < 2; k++) {
        PyObject *n = PyObject_GetAttrString(interval, names[k]);
        if (n == NULL)
            return -1;
        *counts[k] = PyLong_AsSsize_t(n);
        Py_DECREF(n);
        if (*counts[k] == -1 && PyErr_Occurred())
            return -1;
    }
    return 0;
}

/* The set counts back into the Interval, when members were added: 0, or -1 with an exception set. */
static int close_interval(PyObject *interval, Open *o) {
    if (!o->set_counts_changed)
        return 0;
    PyObject *members = PyLong_FromSsize_t(o->set_members), *bytes = PyLong_FromSsize_t(o->set_bytes);
    int failed = members == NULL || bytes == NULL || PyObject_SetAttrString(interval, "set_members", members) < 0
        || PyObject_SetAttrString(interval, "set_bytes", bytes) < 0;
    Py_XDECREF(members);
    Py_XDECREF(bytes);
    return failed ? -1 : 0;
}

static PyObject *Table_run(Table *t, PyObject *args) {
    Py_buffer data;
    Py_ssize_t pos;
    PyObject *interval;
    Open o;
    if (!PyArg_ParseTuple(args, "y*nO", &data, &pos, &interval))
        return NULL;
    if (open_interval(interval, &o) < 0) {
        PyBuffer_Release(&data);
        return NULL;
    }
    const char *start = data.buf, *end = start + data.len;
    const char *p = start + (pos < 0 ? 0 : pos > data.len ? data.len : pos);
    Cut cuts[2], *c = &cuts[0], *next = &cuts[1], *swap;
    int storm = CALM;
    c->line = NULL;  /* the first turn only cuts a line */
    c->after = p;
    p = end;
    for (;;) {
        cut(t, c->after, end, storm, next);  /* one line ahead of the one handled (one call: inlined) */
        if (c->line != NULL) {
            long long refused = t->refused_lines, heads = t->refused_heads;
            int done = handle(t, c, &o);
            if (done < 0) {
                PyObject *type, *value, *traceback;  /* the members added are in their sets: counted too */
                PyErr_Fetch(&type, &value, &traceback);
                if (close_interval(interval, &o) < 0)
                    PyErr_Clear();
                PyErr_Restore(type, value, traceback);
                PyBuffer_Release(&data);
                return NULL;
            }
            if (done == 0) {
                p = c->line;
                break;
            }
            t->lines++;
            storm = t->refused_heads != heads ? REFUSED_NEW : t->refused_lines != refused ? REFUSED_AGAIN : CALM;
        }
        if (next->line == NULL)
            break;
        swap = c;
        c = next;
        next = swap;
    }
    PyBuffer_Release(&data);
    if (close_interval(interval, &o) < 0)
        return NULL;
    return PyLong_FromSsize_t(p - start);
}

/* A new index for the entries, sized for them (load at most 1/4 after a shrink), the arrays with it. */
static int reindex(Table *t) {
    size_t size = 1024;
    while (size / 4 < (size_t)t->count)
        size *= 2;
    if (size > t->mask + 1)
        size = t->mask + 1;  /* never grows here */
    Bucket *slots = PyMem_RawCalloc(size, sizeof(Bucket));
    if (slots == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    Py_ssize_t room = (Py_ssize_t)(size / 2);
    Entry *entries;
    if (room < t->room && (entries = PyMem_RawRealloc(t->entries, (size_t)room * sizeof(Entry))) != NULL) {
        Py_ssize_t *touched = PyMem_RawRealloc(t->touched, (size_t)room * sizeof(Py_ssize_t));
        t->entries = entries;
        if (touched)  /* else the larger block stays: as good */
            t->touched = touched;
        t->room = room;
    }
    for (Py_ssize_t k = 0; k < t->count; k++) {
        Py_ssize_t i = free_bucket(slots, size - 1, t->entries[k].hash);
        if (i >= 0)
            slots[i] = (Bucket){t->entries[k].hash, k + 1};
    }
    PyMem_RawFree(t->slots);
    t->slots = slots;
    t->mask = size - 1;
    return 0;
}

static int grow(Table *t) {
    size_t size = t->slots ? 2 * (t->mask + 1) : 1024;
    Bucket *slots = PyMem_RawCalloc(size, sizeof(Bucket));
    Py_ssize_t room = (Py_ssize_t)(size / 2);  /* load factor at most 1/2 */
    Entry *entries = PyMem_RawRealloc(t->entries, (size_t)room * sizeof(Entry));
    Py_ssize_t *touched = PyMem_RawRealloc(t->touched, (size_t)room * sizeof(Py_ssize_t));
    if (entries)
        t->entries = entries;
    if (touched)
        t->touched = touched;
    if (!slots || !entries || !touched) {
        PyMem_RawFree(slots);
        PyErr_NoMemory();
        return -1;
    }
    for (Py_ssize_t k = 0; k < t->count; k++) {
        Py_ssize_t i = free_bucket(slots, size - 1, t->entries[k].hash);
        if (i >= 0)  /* else unreachable: its lines go to Python, which still has the head */
            slots[i] = (Bucket){t->entries[k].hash, k + 1};
    }
    PyMem_RawFree(t->slots);
    t->slots = slots;
    t->mask = size - 1;
    t->room = room;
    return 0;
}

/* The arguments of a method called per new head (METH_FASTCALL: PyArg_ParseTuple and its tuple were a
 * good part of such a call): `n` of them, the first two bytes-like, read as "y*" reads them. 0, or -1
 * with an exception (nothing to release then). */
static int head_args(const char *method, PyObject *const *args, Py_ssize_t nargs, Py_ssize_t n, Py_buffer *name,
                     Py_buffer *tail) {
    if (nargs != n) {
        PyErr_Format(PyExc_TypeError, "%s() takes %zd arguments (%zd given)", method, n, nargs);
        return -1;
    }
    if (PyObject_GetBuffer(args[0], name, PyBUF_SIMPLE) < 0)
        return -1;
    if (PyObject_GetBuffer(args[1], tail, PyBUF_SIMPLE) < 0) {
        PyBuffer_Release(name);
        return -1;
    }
    return 0;
}

/* add(name, tail, slot, ctx, code) -> True, or False when the head has no bucket near its hash
 * (Python keeps handling it then). A counter's, histogram's or gauge's head is handled here from now on;
 * any other (a set's, an error's, ...) is known here as Python's. */
static PyObject *Table_add(Table *t, PyObject *const *args, Py_ssize_t nargs) {
    Py_buffer name, tail;
    if (head_args("add", args, nargs, 5, &name, &tail) < 0)
        return NULL;
    PyObject *slot = args[2], *ctx = args[3];
    long code = PyLong_AsLong(args[4]);
    PyObject *result = NULL;
    uint64_t h = head_hash(t, name.buf, name.len, tail.buf, tail.len);
    Entry *e;
    int failed;
    if (code == -1 && PyErr_Occurred()) {
        /* TypeError or OverflowError set */
    } else if (code < COUNTER || code >= DROPPED) {  /* refused heads have a set of their own */
        PyErr_Format(PyExc_ValueError, "slot code %ld is not a head's", code);
    } else if (find(t, h, name.buf, name.len, tail.buf, tail.len) != NULL) {
        PyErr_SetString(PyExc_KeyError, "head already in the table");
    } else if ((e = insert(t, h, name.buf, name.len, tail.buf, tail.len, (int)code, &failed)) != NULL) {
        e->slot = Py_NewRef(slot);
        e->ctx = Py_NewRef(ctx);
        result = Py_NewRef(Py_True);
    } else if (!failed) {
        result = Py_NewRef(Py_False);
    }
    PyBuffer_Release(&name);
    PyBuffer_Release(&tail);
    return result;
}

/* feed(name, tail, values) -> True when the head is here: its counter gets the sum of the values (as
 * Python's sum() adds them), its histogram each value. For the lines Python parsed itself (a new head,
 * packed values), so that a slot held here accumulates in one place, in the order of the lines. */
static PyObject *Table_feed(Table *t, PyObject *const *args, Py_ssize_t nargs) {
    Py_buffer name, tail;
    if (head_args("feed", args, nargs, 3, &name, &tail) < 0)
        return NULL;
    PyObject *values = args[2];
    if (!PyTuple_Check(values)) {
        PyBuffer_Release(&name);
        PyBuffer_Release(&tail);
        PyErr_SetString(PyExc_TypeError, "feed(): values must be a tuple");
        return NULL;
    }
    Entry *e = find(t, head_hash(t, name.buf, name.len, tail.buf, tail.len), name.buf, name.len, tail.buf, tail.len);
    PyBuffer_Release(&name);
    PyBuffer_Release(&tail);
    if (e == NULL || (e->code != COUNTER && e->code != HISTOGRAM))
        Py_RETURN_FALSE;
    double sum = 0.0;
    for (Py_ssize_t k = 0; k < PyTuple_GET_SIZE(values); k++) {
        double v = PyFloat_AsDouble(PyTuple_GET_ITEM(values, k));
        if (v == -1.0 && PyErr_Occurred())
            return NULL;
        if (e->code == COUNTER)
            sum += v;
        else if (append(e, v))
            return PyErr_NoMemory();
    }
    if (e->code == COUNTER)
        e->sum += sum;
    touch(t, e);
    Py_RETURN_TRUE;
}

/* Entries made here and not adopted yet have no slot to hand over, nor a context to forget. */
static int check_bound(Table *t) {
    if (t->npending) {
        PyErr_SetString(PyExc_RuntimeError, "adopt() the contexts made here first");
        return -1;
    }
    return 0;
}

/* (slots, sums, values): the entries touched since the last harvest, their counter sums (bytes of
 * doubles, 0 for histograms) and their histogram values (bytes of doubles, None for counters). Three
 * objects whatever the number of entries: no tuple per entry, so no garbage collection pass over a
 * large heap in the middle of the receive thread. The accumulators start again from zero. */
static PyObject *Table_harvest(Table *t, PyObject *Py_UNUSED(ignored)) {
    if (check_bound(t) < 0)
        return NULL;
    Py_ssize_t n = t->ntouched;
    PyObject *slots = PyList_New(n), *values = PyList_New(n);
    PyObject *sums = PyBytes_FromStringAndSize(NULL, n * (Py_ssize_t)sizeof(double));
    if (slots == NULL || values == NULL || sums == NULL)
        goto failed;
    double *sum = (double *)PyBytes_AS_STRING(sums);
    for (Py_ssize_t k = 0; k < n; k++) {
        Entry *e = &t->entries[t->touched[k]];
        PyObject *packed = Py_None;
        if (e->code == HISTOGRAM) {
            /* a bytearray: writable, so that the export side sorts these values where they are */
            packed = PyByteArray_FromStringAndSize((const char *)e->values, e->n * (Py_ssize_t)sizeof(double));
            if (packed == NULL)
                goto failed;  /* nothing reset: a later harvest still has it all */
        } else {
            Py_INCREF(packed);
        }
        PyList_SET_ITEM(values, k, packed);
        PyList_SET_ITEM(slots, k, Py_NewRef(e->slot));
        sum[k] = e->code == COUNTER ? e->sum : 0.0;
    }
    PyObject *result = Py_BuildValue("(NNN)", slots, sums, values);  /* steals all three, even on failure */
    if (result == NULL)
        return NULL;  /* nothing reset: a later harvest still has it all */
    for (Py_ssize_t k = 0; k < n; k++) {
        Entry *e = &t->entries[t->touched[k]];
        e->touched = 0;
        e->sum = 0.0;
        PyMem_RawFree(e->values);
        e->values = NULL;
        e->n = e->cap = 0;
    }
    t->ntouched = 0;
    return result;
failed:
    Py_XDECREF(slots);
    Py_XDECREF(values);
    Py_XDECREF(sums);
    return NULL;
}

/* What an entry holds: its key, its values, its references (NULL while pending). */
static void free_entry(Entry *e) {
    PyMem_RawFree(e->key);
    PyMem_RawFree(e->values);
    Py_XDECREF(e->slot);
    Py_XDECREF(e->ctx);
}

static void forget(Table *t) {
    for (Py_ssize_t k = 0; k < t->count; k++)
        free_entry(&t->entries[k]);
    PyMem_RawFree(t->entries);
    PyMem_RawFree(t->slots);
    PyMem_RawFree(t->touched);
    PyMem_RawFree(t->pending);
    t->entries = NULL;
    t->slots = NULL;
    t->touched = NULL;
    t->pending = NULL;
    t->count = t->room = t->ntouched = t->npending = t->pending_cap = 0;
    t->mask = 0;
}

/* clear(): every head forgotten. clear(slots): only the heads whose slot is in the set `slots` (the extra
 * heads of receive.py: a context's heads beyond its first), the others stay, indexed again. Harvest first. */
static PyObject *Table_clear(Table *t, PyObject *args) {
    PyObject *drop = NULL;
    if (!PyArg_ParseTuple(args, "|O!:clear", &PySet_Type, &drop) || check_bound(t) < 0)
        return NULL;
    if (t->ntouched) {
        PyErr_SetString(PyExc_RuntimeError, "harvest before clearing: values would be lost");
        return NULL;
    }
    if (drop == NULL) {
        forget(t);
        Py_RETURN_NONE;
    }
    Py_ssize_t kept = 0;
    for (Py_ssize_t k = 0; k < t->count; k++) {
        Entry *e = &t->entries[k];
        int dead = PySet_Contains(drop, e->slot);  /* a Slot hashes by identity: never fails */
        if (dead < 0) {
            PyErr_Clear();
            dead = 0;
        }
        if (dead) {
            free_entry(e);
        } else {
            t->entries[kept++] = *e;
        }
    }
    t->count = kept;
    if (t->slots != NULL && reindex(t) < 0) {
        forget(t);  /* the old index points past the kept entries: none kept (Python reads the heads) */
        return NULL;
    }
    Py_RETURN_NONE;
}

/* reset(): every head, pending or adopted, and every live context forgotten, with what the heads held
 * (Python starts the table again from its own contexts after an error while adopting) */
static PyObject *Table_reset(Table *t, PyObject *Py_UNUSED(ignored)) {
    forget(t);
    hs_clear(&t->live);
    t->contexts = 0;
    Py_RETURN_NONE;
}

/* (lines handled, lines refused at the cap, heads refused for the first time) since the last call */
static PyObject *Table_take_counts(Table *t, PyObject *Py_UNUSED(ignored)) {
    PyObject *counts = Py_BuildValue("(LLL)", t->lines, t->refused_lines, t->refused_heads);
    if (counts != NULL)
        t->lines = t->refused_lines = t->refused_heads = 0;
    return counts;
}

static PyObject *Table_configure(Table *t, PyObject *args) {
    Py_ssize_t max_contexts, refused_limit, refused_max_bytes, head_cost, costs[3];
    int decide, gauge_deltas;
    if (!PyArg_ParseTuple(args, "npnnnp(nnn)(nnnn)", &max_contexts, &decide, &refused_limit, &refused_max_bytes,
                          &head_cost, &gauge_deltas, &costs[0], &costs[1], &costs[2], &t->set_limits[0],
                          &t->set_limits[1], &t->set_limits[2], &t->set_limits[3]))
        return NULL;
    t->max_contexts = max_contexts;
    t->decide = decide;
    t->gauge_deltas = gauge_deltas;
    t->context_cost = costs[0];
    t->tag_ref_cost = costs[1];
    t->pair_cost = costs[2];
    t->refused_limit = refused_limit;
    t->refused_max_bytes = refused_max_bytes;
    t->head_cost = head_cost;
    Py_RETURN_NONE;
}

static PyObject *Table_live_add(Table *t, PyObject *const *args, Py_ssize_t nargs) {
    uint64_t h;
    if (nargs != 4 || !PyUnicode_Check(args[0]) || !PyUnicode_Check(args[1]) || !PyUnicode_Check(args[3])) {
        PyErr_SetString(PyExc_TypeError, "live_add(name, type, tags, container): name, type and container are str");
        return NULL;
    }
    if (object_context(t, args[0], args[1], args[2], args[3], &h) < 0 || hs_add(&t->live, h) < 0)
        return NULL;
    t->contexts++;
    Py_RETURN_NONE;
}

/* forget_contexts(contexts): they are gone from the live set, and so are the heads that point to them
 * (harvest first). Heads of other contexts stay: they need no parse again. */
static PyObject *Table_forget_contexts(Table *t, PyObject *arg) {
    if (check_bound(t) < 0)
        return NULL;
    if (t->ntouched) {
        PyErr_SetString(PyExc_RuntimeError, "harvest before forgetting: values would be lost");
        return NULL;
    }
    PyObject *gone = PySet_New(arg);
    if (gone == NULL)
        return NULL;
    PyObject *each = PyObject_GetIter(gone), *ctx;
    if (each == NULL) {
        Py_DECREF(gone);
        return NULL;
    }
    while ((ctx = PyIter_Next(each)) != NULL) {
        PyObject *parts[4] = {NULL, NULL, NULL, NULL};
        static const char *names[4] = {"name", "type", "tags", "container"};
        uint64_t h;
        int failed = 0;
        for (int k = 0; k < 4 && !failed; k++)
            failed = (parts[k] = PyObject_GetAttrString(ctx, names[k])) == NULL;
        if (!failed && (!PyUnicode_Check(parts[0]) || !PyUnicode_Check(parts[1]) || !PyUnicode_Check(parts[3]))) {
            PyErr_SetString(PyExc_TypeError, "a context's name, type and container are str");
            failed = 1;
        }
        failed = failed || object_context(t, parts[0], parts[1], parts[2], parts[3], &h) < 0;
        for (int k = 0; k < 4; k++)
            Py_XDECREF(parts[k]);
        Py_DECREF(ctx);
        if (failed)
            break;
        hs_remove(&t->live, h);
        t->contexts--;
    }
    Py_DECREF(each);
    if (PyErr_Occurred()) {
        Py_DECREF(gone);
        return NULL;
    }
    Py_ssize_t kept = 0;
    for (Py_ssize_t k = 0; k < t->count; k++) {
        Entry *e = &t->entries[k];
        int dead = PySet_Contains(gone, e->ctx);
        if (dead < 0) {
            PyErr_Clear();  /* an unhashable ctx cannot be among them */
            dead = 0;
        }
        if (dead) {
            free_entry(e);
        } else {
            t->entries[kept++] = *e;
        }
    }
    Py_DECREF(gone);
    t->count = kept;
    /* after a storm, memory goes back: the live set and the table shrink to what is left */
    if (t->live.buckets != NULL && (size_t)(8 * (t->live.used + 1)) < t->live.mask + 1 && hs_rebuild(&t->live, 0) < 0)
        return NULL;
    if (t->slots != NULL && reindex(t) < 0) {
        forget(t);  /* as in clear(slots) */
        return NULL;
    }
    Py_RETURN_NONE;
}

/* refuse(name, tail): Python refused this head's context; its next lines are counted here */
static PyObject *Table_refuse(Table *t, PyObject *args) {
    Py_buffer name, tail;
    if (!PyArg_ParseTuple(args, "y*y*", &name, &tail))
        return NULL;
    uint64_t head = head_hash(t, name.buf, name.len, tail.buf, tail.len);
    int failed = !rs_find(&t->refused, head) && remember_refused(t, head, name.len + tail.len) < 0;
    PyBuffer_Release(&name);
    PyBuffer_Release(&tail);
    if (failed)
        return NULL;
    Py_RETURN_NONE;
}

/* A tuple of n new references, stolen (released on failure too), or NULL. */
static PyObject *tuple_of(Py_ssize_t n, PyObject **items) {
    PyObject *tuple = PyTuple_New(n);
    for (Py_ssize_t k = 0; k < n; k++) {
        if (tuple != NULL && items[k] != NULL) {
            PyTuple_SET_ITEM(tuple, k, items[k]);
        } else {
            Py_XDECREF(items[k]);
            Py_CLEAR(tuple);
        }
    }
    return tuple;
}

/* An ASCII str of text[0:len]: the one in *last when it holds that text (a new reference), else a new one,
 * remembered there instead. */
static PyObject *shared_str(PyObject **last, const char *text, Py_ssize_t len) {
    PyObject *s = *last;
    if (s != NULL && PyUnicode_GET_LENGTH(s) == len && memcmp(PyUnicode_1BYTE_DATA(s), text, (size_t)len) == 0)
        return Py_NewRef(s);
    if ((s = PyUnicode_DecodeASCII(text, len, NULL)) != NULL)
        Py_XSETREF(*last, Py_NewRef(s));
    return s;
}

/* The pair (key, value) as a tuple of str, shared as `shared_str` does (`last` NULL: not shared). */
static PyObject *shared_pair(PyObject **last, const char *key, Py_ssize_t klen, const char *value,
                             Py_ssize_t vlen) {
    PyObject *p = last ? *last : NULL, *k = NULL;
    if (p != NULL) {
        PyObject *v = PyTuple_GET_ITEM(p, 1);
        k = PyTuple_GET_ITEM(p, 0);
        if (PyUnicode_GET_LENGTH(k) != klen || memcmp(PyUnicode_1BYTE_DATA(k), key, (size_t)klen) != 0)
            k = NULL;
        else if (PyUnicode_GET_LENGTH(v) == vlen && memcmp(PyUnicode_1BYTE_DATA(v), value, (size_t)vlen) == 0)
            return Py_NewRef(p);
    }
    /* a pair of its own (`request_id:<id>`), its key shared when it is the last one's */
    PyObject *pair[2] = {k ? Py_NewRef(k) : PyUnicode_DecodeASCII(key, klen, NULL),
                         PyUnicode_DecodeASCII(value, vlen, NULL)};
    if ((p = tuple_of(2, pair)) != NULL && last != NULL)
        Py_XSETREF(*last, Py_NewRef(p));
    return p;
}

/* items[0:5] = name, type, rate, tags, container (new references, or NULL on a Python error) as
 * parser.parse_head gives them for a head `read_head` reads (the tags in the order of the text, or
 * `sorted` by key as `Aggregator._slot` sorts them); 0 when read_head leaves the head to parse_head. */
static int head_items(Table *t, const char *name, Py_ssize_t nlen, const char *tail, Py_ssize_t tlen, int sorted,
                      PyObject **items) {
    Head hd;
    if (!read_shaped(t, name_hash(t, name, nlen), name, nlen, tail, tail + tlen, &hd))
        return 0;
    PyObject *tags = PyTuple_New(hd.ntags);
    for (int k = 0; tags != NULL && k < hd.ntags; k++) {  /* ASCII: read_head checked */
        int i = sorted ? hd.order[k] : k;
        PyObject *pair = shared_pair(k < MAX_SHARED ? &t->last_pair[k] : NULL, hd.keys[i], hd.key_lens[i],
                                     hd.values[i], hd.value_lens[i]);
        if (pair == NULL)
            Py_CLEAR(tags);
        else
            PyTuple_SET_ITEM(tags, k, pair);
    }
    items[0] = shared_str(&t->last_text[0], name, nlen);
    items[1] = shared_str(&t->last_text[1], hd.type, hd.type_len);
    if (t->last_rate == NULL || PyFloat_AS_DOUBLE(t->last_rate) != hd.rate)
        Py_XSETREF(t->last_rate, PyFloat_FromDouble(hd.rate));
    items[2] = Py_XNewRef(t->last_rate);
    items[3] = tags;
    items[4] = shared_str(&t->last_text[2], hd.container, hd.container_end - hd.container);
    return 1;
}

/* head(name, tail) -> (name, type, rate, tags, container) as parser.parse_head gives them, or None when
 * `read_head` leaves it to parse_head. Built directly (a context is made from it per new head:
 * Py_BuildValue's format parsing was most of this call). */
static PyObject *Table_head(Table *t, PyObject *const *args, Py_ssize_t nargs) {
    Py_buffer name, tail;
    PyObject *items[5];
    if (head_args("head", args, nargs, 2, &name, &tail) < 0)
        return NULL;
    int simple = head_items(t, name.buf, name.len, tail.buf, tail.len, 0, items);
    PyBuffer_Release(&name);
    PyBuffer_Release(&tail);
    return simple ? tuple_of(5, items) : Py_NewRef(Py_None);
}

/* The tags of a context made here, kept in Python's TagPool (its `pairs` and `tuples` dicts) as
 * `TagPool.add` and `canonical` keep a context's tags: each pair of *tags as the pool stores it (added,
 * and its bytes added to *bytes, when new), then the tuple as the pool stores it (*tags replaced by it).
 * *tags is a tuple `head_items` just made, which no one else holds yet: its items are replaced in place.
 * 0, or -1 with an exception set. */
static int keep_tags(Table *t, PyObject *pairs, PyObject *tuples, PyObject **tags, Py_ssize_t *bytes) {
    PyObject *tuple = *tags;
    for (Py_ssize_t k = 0; k < PyTuple_GET_SIZE(tuple); k++) {
        PyObject *pair = PyTuple_GET_ITEM(tuple, k);
        PyObject *stored = PyDict_GetItemWithError(pairs, pair);  /* borrowed */
        if (stored == NULL) {
            if (PyErr_Occurred() || PyDict_SetItem(pairs, pair, pair) < 0)
                return -1;
            *bytes += PyUnicode_GET_LENGTH(PyTuple_GET_ITEM(pair, 0)) + PyUnicode_GET_LENGTH(PyTuple_GET_ITEM(pair, 1))
                + t->pair_cost;  /* interval.pair_cost: ASCII, so characters are bytes */
        } else if (stored != pair) {
            PyTuple_SET_ITEM(tuple, k, Py_NewRef(stored));
            Py_DECREF(pair);
        }
    }
    PyObject *kept = PyDict_SetDefault(tuples, tuple, tuple);  /* borrowed */
    if (kept == NULL)
        return -1;
    Py_SETREF(*tags, Py_NewRef(kept));
    return 0;
}

static PyObject *COST;  /* "cost", interned */

/* o, out of the garbage collector's lists (NULL stays NULL). For the objects `adopt` makes, which can
 * never be part of a reference cycle: a Context refers to strs and to a tuple of pairs of strs, a Slot to
 * its Context, a float and a str, the keys to strs, bytes and that tuple. A storm makes six of them per
 * context; tracked, each young collection walked them and the full ones walked every live context again
 * (a third of a storm's CPU). The collector untracks such tuples itself, later, after walking them. */
static PyObject *untracked(PyObject *o) {
    if (o != NULL && PyObject_GC_IsTracked(o))
        PyObject_GC_UnTrack(o);
    return o;
}

/* The Python side of one entry made here (see `adopt`): 0, or -1 with an exception set. */
static int adopt_one(Table *t, Entry *e, PyObject *const *args, Py_ssize_t *charged) {
    PyObject *context_type = args[0], *slot_type = args[1], *contexts = args[2], *cache = args[3];
    const char *tail = e->key + e->name_len;
    PyObject *items[5], *ctx = NULL, *slot = NULL, *cost = NULL, *key;
    int failed = -1;
    if (!head_items(t, e->key, e->name_len, tail, e->tail_len, 1, items)) {  /* simple: made here */
        PyErr_SetString(PyExc_RuntimeError, "a head made here no longer reads as simple");
        return -1;
    }
    if (items[0] == NULL || items[1] == NULL || items[2] == NULL || items[3] == NULL || items[4] == NULL
            || keep_tags(t, args[4], args[5], &items[3], &charged[1]) < 0)
        goto out;
    double rate = PyFloat_AS_DOUBLE(items[2]);
    for (Py_ssize_t k = 0; k < PyTuple_GET_SIZE(items[3]); k++)
        untracked(PyTuple_GET_ITEM(items[3], k));
    untracked(items[3]);
    PyObject *fields[4] = {items[0], items[1], items[3], items[4]};  /* name, type, tags, container */
    if ((ctx = untracked(PyObject_Vectorcall(context_type, fields, 4, NULL))) == NULL
            || (key = untracked(PyTuple_Pack(4, fields[0], fields[1], fields[2], fields[3]))) == NULL)
        goto out;
    int bad = PyDict_SetItem(contexts, key, ctx);
    Py_DECREF(key);
    if (bad || (cost = PyObject_GetAttr(ctx, COST)) == NULL)
        goto out;
    Py_ssize_t size = PyLong_AsSsize_t(cost);
    if (size == -1 && PyErr_Occurred())
        goto out;
    charged[0] += size;
    /* Aggregator._slot_of: a counter's and a histogram's values weigh 1/rate; gauges with deltas and
     * sets are never made here */
    PyObject *slot_args[3] = {PyLong_FromLong(e->code), ctx, PyFloat_FromDouble(e->code == GAUGE ? 1.0 : 1.0 / rate)};
    if (slot_args[0] != NULL && slot_args[2] != NULL)
        slot = untracked(PyObject_Vectorcall(slot_type, slot_args, 3, NULL));
    Py_XDECREF(slot_args[0]);
    Py_XDECREF(slot_args[2]);
    if (slot == NULL)
        goto out;
    PyObject *head[2] = {PyBytes_FromStringAndSize(e->key, e->name_len), PyBytes_FromStringAndSize(tail, e->tail_len)};
    if ((key = untracked(tuple_of(2, head))) == NULL)  /* tuple_of releases the two on failure */
        goto out;
    bad = PyDict_SetItem(cache, key, slot);
    Py_DECREF(key);
    if (bad)
        goto out;
    charged[2] += e->name_len + e->tail_len + t->head_cost;
    if (e->has_gauge) {
        PyObject *gauge = PyFloat_FromDouble(e->sum);
        bad = gauge == NULL || PyDict_SetItem(args[6], ctx, gauge) < 0;
        Py_XDECREF(gauge);
        if (bad)
            goto out;
    }
    e->slot = slot;  /* the references move to the entry */
    e->ctx = ctx;
    e->has_gauge = 0;
    slot = ctx = NULL;
    failed = 0;
out:
    for (int k = 0; k < 5; k++)
        Py_XDECREF(items[k]);
    Py_XDECREF(ctx);
    Py_XDECREF(slot);
    Py_XDECREF(cost);
    return failed;
}

/* adopt(Context, Slot, contexts, cache, pairs, tuples, gauges[, most]) -> (context bytes, pair bytes, head
 * bytes): the Python side of the contexts made here and not adopted yet (at most `most` of them, the
 * oldest: the others stay pending), in the order they were made, as
 * `Aggregator._slot` makes it for a head Python reads: each Context (its tags sorted by key, kept in the
 * tag pool's `pairs` and `tuples`: `keep_tags`) in `contexts`, its Slot in the head cache
 * `cache` and in its entry, a pending gauge's value in `gauges`; and what they are charged: the sum of
 * Context.cost, the bytes of the tag pairs new to the pool, the head cache's. One call for them all, with
 * no Python code per context but `Context.__init__` and `Slot.__init__`. On an error, the entries before
 * the failing one are adopted and the others not: the caller starts the table again (`reset`). */
static PyObject *Table_adopt(Table *t, PyObject *const *args, Py_ssize_t nargs) {
    Py_ssize_t most = t->npending;
    if ((nargs != 7 && nargs != 8) || !PyDict_CheckExact(args[2]) || !PyDict_CheckExact(args[3])
            || !PyDict_CheckExact(args[4]) || !PyDict_CheckExact(args[5]) || !PyDict_CheckExact(args[6])) {
        PyErr_SetString(PyExc_TypeError, "adopt(Context, Slot, contexts, cache, pairs, tuples, gauges[, most]): "
                        "the five after Slot are dicts");
        return NULL;
    }
    if (nargs == 8) {
        Py_ssize_t asked = PyLong_AsSsize_t(args[7]);
        if (asked < 0) {
            if (!PyErr_Occurred())
                PyErr_SetString(PyExc_ValueError, "adopt(): most must be >= 0");
            return NULL;
        }
        if (asked < most)
            most = asked;
    }
    Py_ssize_t charged[3] = {0, 0, 0};
    for (Py_ssize_t k = 0; k < most; k++)
        if (adopt_one(t, &t->entries[t->pending[k]], args, charged) < 0)
            return NULL;
    t->npending -= most;
    memmove(t->pending, t->pending + most, (size_t)t->npending * sizeof(Py_ssize_t));
    return Py_BuildValue("(nnn)", charged[0], charged[1], charged[2]);
}

static PyObject *Table_forget_refused(Table *t, PyObject *Py_UNUSED(ignored)) {
    hs_clear(&t->refused);
    t->refused_bytes = 0;
    Py_RETURN_NONE;
}

static PyObject *Table_live(Table *t, PyObject *Py_UNUSED(ignored)) {
    return Py_BuildValue("(nn)", t->contexts, t->refused.used);
}

static Py_ssize_t Table_len(Table *t) {
    return t->count;
}

static PyObject *Table_new(PyTypeObject *type, PyObject *args, PyObject *kwds) {
    if (!PyArg_ParseTuple(args, ":Table"))
        return NULL;
    if (kwds && PyDict_GET_SIZE(kwds)) {
        PyErr_SetString(PyExc_TypeError, "Table() takes no arguments");
        return NULL;
    }
    Table *t = (Table *)type->tp_alloc(type, 0);
    if (t == NULL)
        return NULL;
    /* a random key per table: see siphash13 */
    PyObject *os = PyImport_ImportModule("os");
    PyObject *bytes = os ? PyObject_CallMethod(os, "urandom", "i", (int)sizeof(t->key)) : NULL;
    Py_XDECREF(os);
    if (bytes == NULL) {
        Py_DECREF(t);
        return NULL;
    }
    memcpy(t->key, PyBytes_AS_STRING(bytes), sizeof(t->key));
    Py_DECREF(bytes);
    return (PyObject *)t;
}

static void Table_dealloc(Table *t) {
    forget(t);
    for (int k = 0; k < 3; k++)
        Py_CLEAR(t->last_text[k]);
    for (int k = 0; k < MAX_SHARED; k++)
        Py_CLEAR(t->last_pair[k]);
    Py_CLEAR(t->last_rate);
    hs_clear(&t->live);
    hs_clear(&t->refused);
    PyMem_RawFree(t->scratch);
    PyMem_RawFree(t->shapes);
    Py_TYPE(t)->tp_free((PyObject *)t);
}

#define MAX_DATAGRAM 65536  /* as in parser.py: one byte more is read, to see that it is too long */

/* Used under the GIL, by nothing that can release it (recv with MSG_DONTWAIT, memcpy into a bytes
 * object, which is not tracked by the collector); 256 KiB kept, more freed after the drain. */
static char *drained;
static size_t drained_cap;

/* drain(fd, limit) -> (datagrams joined by newlines, packets, bytes, too long): too long datagrams
 * are counted, not kept. Raises OSError only when the first read fails with something but EAGAIN. */
static PyObject *drain(PyObject *Py_UNUSED(module), PyObject *args) {
    int fd, limit;
    if (!PyArg_ParseTuple(args, "ii", &fd, &limit))
        return NULL;
    size_t used = 0;
    Py_ssize_t packets = 0, too_long = 0, total = 0;
    while (packets + too_long < limit) {
        if (drained_cap - used < MAX_DATAGRAM + 2) {
            size_t cap = drained_cap ? 2 * drained_cap : 4 * (MAX_DATAGRAM + 2);
            char *grown = PyMem_RawRealloc(drained, cap);
            if (grown == NULL)
                return PyErr_NoMemory();
            drained = grown;
            drained_cap = cap;
        }
        ssize_t n = recv(fd, drained + used, MAX_DATAGRAM + 1, MSG_DONTWAIT);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK || packets + too_long > 0)
                break;  /* an error after some datagrams shows again at the next drain */
            return PyErr_SetFromErrno(PyExc_OSError);
        }
        total += n;
        if (n > MAX_DATAGRAM) {
            too_long++;
            continue;
        }
        used += (size_t)n;
        drained[used++] = '\n';
        packets++;
    }
    PyObject *data = PyBytes_FromStringAndSize(drained, (Py_ssize_t)used);
    if (drained_cap > 4 * (MAX_DATAGRAM + 2)) {  /* grown for large datagrams: give it back */
        PyMem_RawFree(drained);
        drained = NULL;
        drained_cap = 0;
    }
    if (data == NULL)
        return NULL;
    return Py_BuildValue("(Nnnn)", data, packets + too_long, total, too_long);
}

/* order(values, weights) -> (total, valid, cumulative): one interval's histogram values sorted, for
 * `model.Points`. `values` is an array('d'), sorted ascending in place; `weights` an array('d') of the
 * same length, sorted along with them, or one float: the weight of every value (one sample rate, the
 * usual case: no array of weights, values alone to sort). `total` is the sum of value times weight;
 * `cumulative`, for an array of weights, a new bytearray of the running weight in value order (None
 * for one weight: Python makes it (i + 1) * weight, exact for an integer weight). When a value or weight is not finite, or a weight is not
 * above 0, nothing is touched: (nan, False, None). The sort and the sums run without the GIL: millions
 * of values on the flush thread must not stop the event loop (the buffers stay exported meanwhile, so
 * no array can be resized under them). */
static int compare_doubles(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* qsort_r's comparison of two value indices (`arrays`: values, weights): by value, then weight. */
static int compare_indices(const void *a, const void *b, void *arrays) {
    const double *values = ((const double **)arrays)[0], *weights = ((const double **)arrays)[1];
    uint32_t i = *(const uint32_t *)a, j = *(const uint32_t *)b;
    int by_value = (values[i] > values[j]) - (values[i] < values[j]);
    return by_value ? by_value : (weights[i] > weights[j]) - (weights[i] < weights[j]);
}

static int double_buffer(PyObject *obj, Py_buffer *view, const char *what) {
    if (PyObject_GetBuffer(obj, view, PyBUF_WRITABLE | PyBUF_FORMAT | PyBUF_C_CONTIGUOUS) < 0)
        return -1;
    if (view->itemsize != sizeof(double) || view->format == NULL || strcmp(view->format, "d") != 0) {
        PyBuffer_Release(view);
        PyErr_Format(PyExc_TypeError, "order: %s must be array('d')", what);
        return -1;
    }
    return 0;
}

/* Sorts values (and weights, when there are several) in place; 0, or -1 when out of memory. With
 * weights the order is found on 4-byte indices and applied through `scratch` (n doubles: the buffer
 * the running weights are written to next), so that a flood mixing sample rates costs 4 bytes a
 * value more for the sort, not 16 (pairs). */
static int sort_points(double *values, double *weights, double *scratch, Py_ssize_t n) {
    if (weights == NULL) {
        qsort(values, (size_t)n, sizeof(double), compare_doubles);
        return 0;
    }
    if ((uint64_t)n > UINT32_MAX)
        return -1;
    uint32_t *index = malloc((size_t)n * sizeof(uint32_t) + 1);
    if (index == NULL)
        return -1;
    for (Py_ssize_t i = 0; i < n; i++)
        index[i] = (uint32_t)i;
    const double *arrays[2] = {values, weights};
    qsort_r(index, (size_t)n, sizeof(uint32_t), compare_indices, arrays);
    for (Py_ssize_t i = 0; i < n; i++)
        scratch[i] = values[index[i]];
    memcpy(values, scratch, (size_t)n * sizeof(double));
    for (Py_ssize_t i = 0; i < n; i++)
        scratch[i] = weights[index[i]];
    memcpy(weights, scratch, (size_t)n * sizeof(double));
    free(index);
    return 0;
}

static PyObject *order(PyObject *Py_UNUSED(module), PyObject *args) {
    PyObject *values_obj, *weights_obj, *cumulative = NULL;
    if (!PyArg_ParseTuple(args, "OO", &values_obj, &weights_obj))
        return NULL;
    Py_buffer views[2];
    double weight = 0.0, *weights = NULL;
    if (double_buffer(values_obj, &views[0], "values") < 0)
        return NULL;
    int several = !PyFloat_Check(weights_obj);
    if (!several) {
        weight = PyFloat_AS_DOUBLE(weights_obj);
    } else if (double_buffer(weights_obj, &views[1], "weights") < 0) {
        PyBuffer_Release(&views[0]);
        return NULL;
    } else {
        weights = views[1].buf;
    }
    PyObject *out = NULL;
    Py_ssize_t n = views[0].len / (Py_ssize_t)sizeof(double);
    double *values = views[0].buf, total = 0.0;
    int valid = 1, sorted = 0;
    if (several && views[1].len != views[0].len) {
        PyErr_SetString(PyExc_ValueError, "order: values and weights differ in length");
        goto done;
    }
    double *running = NULL;  /* the running weights, for several: made now, written without the GIL */
    if (several) {
        cumulative = PyByteArray_FromStringAndSize(NULL, n * (Py_ssize_t)sizeof(double));
        if (cumulative == NULL)
            goto done;
        running = (double *)PyByteArray_AS_STRING(cumulative);  /* nobody else can see it yet */
    }
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t i = 0; i < n && valid; i++) {
        double w = several ? weights[i] : weight;
        valid = isfinite(values[i]) && isfinite(w) && w > 0.0;
    }
    if (valid && sort_points(values, weights, running, n) == 0) {
        sorted = 1;
        double sum = 0.0;
        for (Py_ssize_t i = 0; i < n; i++) {
            double w = several ? weights[i] : weight;
            total += values[i] * w;
            if (several) {
                sum += w;
                running[i] = sum;
            }
        }
    }
    Py_END_ALLOW_THREADS
    if (!valid || !sorted) {
        Py_CLEAR(cumulative);
        if (valid)
            PyErr_NoMemory();
        else
            out = Py_BuildValue("(dOO)", Py_NAN, Py_False, Py_None);
        goto done;
    }
    out = Py_BuildValue("(dON)", total, Py_True, cumulative ? cumulative : Py_NewRef(Py_None));
done:
    PyBuffer_Release(&views[0]);
    if (several)
        PyBuffer_Release(&views[1]);
    return out;
}

/* merge(parts, most) -> (values, weights) or None: one context's histogram values with equal values
 * merged, their weights summed, for `flush.points`. `parts` is a sequence of (values, weight): a
 * buffer of doubles (array('d'), a harvest) and the weight of each of them (one slot, one sample
 * rate), or a buffer of doubles with a weight per value (values of many sample rates folded into one
 * slot: `Interval.fold`). None as soon as there are more than `most` distinct values, or when a value
 * is not finite (such points are dropped whole anyway). Otherwise two new bytearrays of doubles: the
 * distinct values, in no particular order, and the weight of each, summed as `flush._merged` does: per
 * part, the number of times a value occurs times the part's weight, parts in order (a weight per
 * value: each added in the order of the values). Equal values are
 * equal as floats (0.0 and -0.0 are one value: the first seen stays). The table's hash is keyed, as
 * the head table's: a worker cannot choose values that collide. Counting runs without the GIL. */
typedef struct {
    double value, weight;  /* weight: summed over the parts before the current one */
    uint32_t part, count;  /* occurrences in part `part` (1-based), not yet in weight */
} MergeEntry;

static uint64_t merge_key[2];

static Py_ssize_t merge_count(Py_buffer *views, const double *weights, Py_buffer *each, Py_ssize_t nparts,
                              Py_ssize_t most, MergeEntry *table, size_t mask, uint32_t *touched) {
    Py_ssize_t distinct = 0;
    for (Py_ssize_t p = 0; p < nparts; p++) {
        const double *values = views[p].buf, *own = each[p].buf;  /* own: a weight per value, or NULL */
        Py_ssize_t n = views[p].len / (Py_ssize_t)sizeof(double), ntouched = 0;
        for (Py_ssize_t i = 0; i < n; i++) {
            double v = values[i];
            if (!isfinite(v))
                return -1;
            uint64_t bits = 0;
            if (v != 0.0)  /* 0.0 and -0.0 hash alike */
                memcpy(&bits, &v, sizeof(bits));
            size_t b = (size_t)siphash13(merge_key[0], merge_key[1], (const char *)&bits, sizeof(bits)) & mask;
            while (table[b].part != 0 && table[b].value != v)
                b = (b + 1) & mask;
            MergeEntry *e = &table[b];
            if (e->part == 0) {
                if (++distinct > most)
                    return -1;
                e->value = v;
            }
            if (own != NULL) {  /* counted as it comes: nothing left for the end of the part */
                e->part = (uint32_t)p + 1;
                e->count = 0;
                e->weight += own[i];
                continue;
            }
            if (e->part != (uint32_t)p + 1) {
                e->part = (uint32_t)p + 1;
                e->count = 0;
                touched[ntouched++] = (uint32_t)b;
            }
            if (++e->count == UINT32_MAX)  /* cannot happen below 4G values a part; kept exact anyway */
                return -1;
        }
        for (Py_ssize_t k = 0; k < ntouched; k++)
            table[touched[k]].weight += (double)table[touched[k]].count * weights[p];
    }
    return distinct;
}

static PyObject *merge(PyObject *Py_UNUSED(module), PyObject *args) {
    PyObject *parts_obj;
    Py_ssize_t most;
    if (!PyArg_ParseTuple(args, "On", &parts_obj, &most))
        return NULL;
    PyObject *parts = PySequence_Fast(parts_obj, "merge: parts must be a sequence of (values, weight)");
    if (parts == NULL)
        return NULL;
    Py_ssize_t nparts = PySequence_Fast_GET_SIZE(parts), ready = 0;
    PyObject *out = NULL, *values_out = NULL, *weights_out = NULL;
    Py_buffer *views = PyMem_Calloc((size_t)nparts + 1, sizeof(Py_buffer));
    Py_buffer *each = PyMem_Calloc((size_t)nparts + 1, sizeof(Py_buffer));  /* .buf NULL: one weight */
    double *weights = PyMem_Calloc((size_t)nparts + 1, sizeof(double));
    MergeEntry *table = NULL;
    uint32_t *touched = NULL;
    if (views == NULL || each == NULL || weights == NULL || most < 0 || most >= (Py_ssize_t)(UINT32_MAX / 4)) {
        if (views != NULL && each != NULL && weights != NULL)
            PyErr_SetString(PyExc_ValueError, "merge: most out of range");
        else
            PyErr_NoMemory();
        goto done;
    }
    for (; ready < nparts; ready++) {
        PyObject *part = PySequence_Fast_GET_ITEM(parts, ready);
        PyObject *buffer, *weight;
        if (!PyTuple_Check(part) || !PyArg_ParseTuple(part, "OO", &buffer, &weight)) {
            if (!PyErr_Occurred())
                PyErr_SetString(PyExc_TypeError, "merge: a part is (values, weight)");
            goto done;
        }
        if (PyObject_CheckBuffer(weight)) {
            if (PyObject_GetBuffer(weight, &each[ready], PyBUF_C_CONTIGUOUS) < 0) {
                each[ready].buf = NULL;
                goto done;
            }
        } else if ((weights[ready] = PyFloat_AsDouble(weight)) == -1.0 && PyErr_Occurred()) {
            goto done;
        }
        if (PyObject_GetBuffer(buffer, &views[ready], PyBUF_C_CONTIGUOUS) < 0) {
            if (each[ready].buf != NULL)
                PyBuffer_Release(&each[ready]);
            goto done;
        }
        if (views[ready].len % (Py_ssize_t)sizeof(double) != 0
                || (each[ready].buf != NULL && each[ready].len != views[ready].len)) {
            PyBuffer_Release(&views[ready]);
            if (each[ready].buf != NULL)
                PyBuffer_Release(&each[ready]);
            PyErr_SetString(PyExc_ValueError, "merge: values must be doubles, and weights one a value");
            goto done;
        }
    }
    size_t capacity = 16;  /* at most two thirds full */
    while (capacity < (size_t)most + (size_t)most / 2 + 2)
        capacity <<= 1;
    table = PyMem_RawCalloc(capacity, sizeof(MergeEntry));
    touched = PyMem_RawMalloc(((size_t)most + 1) * sizeof(uint32_t));
    if (table == NULL || touched == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    Py_ssize_t distinct;
    Py_BEGIN_ALLOW_THREADS
    distinct = merge_count(views, weights, each, nparts, most, table, capacity - 1, touched);
    Py_END_ALLOW_THREADS
    if (distinct < 0) {
        out = Py_NewRef(Py_None);
        goto done;
    }
    values_out = PyByteArray_FromStringAndSize(NULL, distinct * (Py_ssize_t)sizeof(double));
    weights_out = PyByteArray_FromStringAndSize(NULL, distinct * (Py_ssize_t)sizeof(double));
    if (values_out == NULL || weights_out == NULL)
        goto done;
    double *v = (double *)PyByteArray_AS_STRING(values_out), *w = (double *)PyByteArray_AS_STRING(weights_out);
    for (size_t b = 0, k = 0; b < capacity; b++) {
        if (table[b].part != 0) {
            v[k] = table[b].value;
            w[k++] = table[b].weight;
        }
    }
    out = PyTuple_Pack(2, values_out, weights_out);
done:
    for (Py_ssize_t k = 0; k < ready; k++) {
        PyBuffer_Release(&views[k]);
        if (each[k].buf != NULL)
            PyBuffer_Release(&each[k]);
    }
    Py_XDECREF(values_out);
    Py_XDECREF(weights_out);
    PyMem_RawFree(table);
    PyMem_RawFree(touched);
    PyMem_Free(views);
    PyMem_Free(each);
    PyMem_Free(weights);
    Py_DECREF(parts);
    return out;
}

static PyMethodDef module_methods[] = {
    {"drain", drain, METH_VARARGS,
     "drain(fd, limit) -> (datagrams joined by newlines, packets, bytes, too long)"},
    {"order", order, METH_VARARGS,
     "order(values, weights) -> (total, valid, cumulative): sorted in place, without the GIL"},
    {"merge", merge, METH_VARARGS,
     "merge([(values, weight or a weight per value), ...], most) -> (distinct values, their weights) as bytearrays of doubles, "
     "or None past `most` distinct values"},
    {NULL, NULL, 0, NULL},
};

static PyMethodDef Table_methods[] = {
    {"run", (PyCFunction)Table_run, METH_VARARGS,
     "run(data, pos, interval) -> offset of the first line left to Python, or len(data)"},
    {"add", (PyCFunction)(void (*)(void))Table_add, METH_FASTCALL,
     "add(name, tail, slot, ctx, code) -> whether this head is known here from now on"},
    {"feed", (PyCFunction)(void (*)(void))Table_feed, METH_FASTCALL,
     "feed(name, tail, values) -> whether the head's counter or histogram is here and took the values"},
    {"harvest", (PyCFunction)Table_harvest, METH_NOARGS,
     "harvest() -> (slots, counter sums as bytes of doubles, histogram values as a bytearray or None)"},
    {"clear", (PyCFunction)Table_clear, METH_VARARGS,
     "clear([slots]): forget every head, or those whose slot is in the set `slots` (harvest first)"},
    {"take_counts", (PyCFunction)Table_take_counts, METH_NOARGS,
     "take_counts() -> (lines handled, lines refused at the cap, heads refused first) since the last call"},
    {"configure", (PyCFunction)Table_configure, METH_VARARGS,
     "configure(max_contexts, decide, refused_limit, refused_max_bytes, head_cost, gauge_deltas, "
     "(context_cost, tag_ref_cost, pair_cost), (set_members, set_bytes, set_members_per_context, "
     "set_bytes_per_context)): new contexts made and refused here; set members added here"},
    {"live_add", (PyCFunction)(void (*)(void))Table_live_add, METH_FASTCALL,
     "live_add(name, type, tags, container): a new context"},
    {"forget_contexts", (PyCFunction)Table_forget_contexts, METH_O,
     "forget_contexts(contexts): expired: out of the live set, their heads out of the table"},
    {"refuse", (PyCFunction)Table_refuse, METH_VARARGS, "refuse(name, tail): a head refused at the cap by Python"},
    {"forget_refused", (PyCFunction)Table_forget_refused, METH_NOARGS, "forget the refused heads"},
    {"head", (PyCFunction)(void (*)(void))Table_head, METH_FASTCALL,
     "head(name, tail) -> (name, type, rate, tags, container) as parse_head reads them, or None: Python's"},
    {"live", (PyCFunction)Table_live, METH_NOARGS, "live() -> (live contexts, refused heads remembered)"},
    {"adopt", (PyCFunction)(void (*)(void))Table_adopt, METH_FASTCALL,
     "adopt(Context, Slot, contexts, cache, pairs, tuples, gauges) -> (context bytes, pair bytes, head bytes): "
     "the Python side of the contexts made here"},
    {"reset", (PyCFunction)Table_reset, METH_NOARGS, "reset(): no head, no live context (what they held is lost)"},
    {NULL, NULL, 0, NULL},
};

static PySequenceMethods Table_as_sequence = {.sq_length = (lenfunc)Table_len};

static PyMemberDef Table_members[] = {
    {"values_left", T_PYSSIZET, offsetof(Table, values_left), 0,
     "histogram values the interval may still take (set by Python at each interval)"},
    {"bytes_left", T_PYSSIZET, offsetof(Table, bytes_left), 0,
     "Limits.context_bytes left for contexts made here (set by Python before each run)"},
    {"heads_left", T_PYSSIZET, offsetof(Table, heads_left), 0, "heads the head cache may still take"},
    {"head_bytes_left", T_PYSSIZET, offsetof(Table, head_bytes_left), 0, "bytes the head cache may still take"},
    {"pending", T_PYSSIZET, offsetof(Table, npending), READONLY, "contexts made here and not adopted yet"},
    {NULL, 0, 0, 0, NULL},
};

static PyTypeObject TableType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "agent.statsd._fast.Table",
    .tp_basicsize = sizeof(Table),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Heads of StatsD lines and their accumulators (see the module's source).",
    .tp_new = Table_new,
    .tp_dealloc = (destructor)Table_dealloc,
    .tp_methods = Table_methods,
    .tp_members = Table_members,
    .tp_as_sequence = &Table_as_sequence,
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "agent.statsd._fast",
                                    "The StatsD hot loop in C (see agent/statsd/receive.py).", -1, module_methods};

PyMODINIT_FUNC PyInit__fast(void) {
    if (PyType_Ready(&TableType) < 0 || (COST == NULL && (COST = PyUnicode_InternFromString("cost")) == NULL))
        return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m == NULL)
        return NULL;
    PyObject *os = PyImport_ImportModule("os");  /* merge's key: see siphash13 */
    PyObject *key = os ? PyObject_CallMethod(os, "urandom", "i", (int)sizeof(merge_key)) : NULL;
    Py_XDECREF(os);
    if (key == NULL) {
        Py_DECREF(m);
        return NULL;
    }
    memcpy(merge_key, PyBytes_AS_STRING(key), sizeof(merge_key));
    Py_DECREF(key);
    if (PyModule_AddObjectRef(m, "Table", (PyObject *)&TableType) < 0
            || PyModule_AddIntMacro(m, COUNTER) < 0 || PyModule_AddIntMacro(m, HISTOGRAM) < 0
            || PyModule_AddIntMacro(m, GAUGE) < 0 || PyModule_AddIntMacro(m, GAUGE_DELTA) < 0
            || PyModule_AddIntMacro(m, SET) < 0 || PyModule_AddIntMacro(m, ERROR) < 0
            || PyModule_AddIntMacro(m, DROPPED) < 0
            /* the parser's limits, which `read_head` applies too: receive.py checks them against parser.py */
            || PyModule_AddIntMacro(m, MAX_NAME) < 0 || PyModule_AddIntMacro(m, MAX_TAG) < 0
            || PyModule_AddIntMacro(m, MAX_TAGS) < 0 || PyModule_AddIntMacro(m, MAX_TAGS_BYTES) < 0
            || PyModule_AddIntMacro(m, MAX_TAIL) < 0 || PyModule_AddIntMacro(m, MAX_DATAGRAM) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
