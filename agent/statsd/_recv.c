/* The StatsD receive thread, in C: reads every listener socket without the GIL, so that nothing the
 * interpreter does (the event loop, a flush, a garbage collection) pauses receiving.
 *
 * `Receiver(fds, buffer_bytes)` dups the sockets and starts a pthread that waits in poll() and reads
 * each ready socket with recvmmsg (MSG_DONTWAIT, up to VLEN datagrams a call) into a ring of chunks
 * holding `buffer_bytes` in all. Each datagram lands in its own slot of MAX_DATAGRAM + 1 bytes (one
 * byte more shows a datagram that is too long), then is moved down next to the previous one, followed
 * by a newline, while it is still in the cache: a chunk holds datagrams joined by newlines, which is
 * what `Aggregator.ingest_joined` parses. Too long datagrams are counted and left out, as `_fast.drain`
 * does.
 *
 * The chunks are bytes objects, allocated under the GIL and filled by the thread before Python sees
 * them. `take()` (under the GIL) lends Python the oldest chunk with data, its length set to what it
 * holds: Python parses it in place, no copy. When Python no longer holds it (reference count back to 1: nobody else
 * can see it) the next `take()` gives it back to the thread, full size again; one still referenced
 * elsewhere is left to its holder and replaced by a new one.
 *
 * When every chunk is full or lent the thread stops reading until `take()` frees one: datagrams then
 * wait in the kernel's socket buffer, which drops (and counts) what does not fit. The thread counts
 * how often that happened (`buffer_full`), and the errors of its reads, for Python to export.
 * The thread never touches a Python object's reference count or calls the Python API; it shares the
 * ring with Python under one mutex, held for one non-blocking recvmmsg at a time.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define MAX_DATAGRAM 65536         /* as in parser.py */
#define SLOT (MAX_DATAGRAM + 1)    /* room for one datagram in recvmmsg: one byte more than allowed */
#define VLEN 64                    /* datagrams per recvmmsg call at most */
#define MAX_SOCKETS 16
#define MAX_CHUNK (2 * 1024 * 1024) /* Python parses a chunk at a time: slow-path lines (a storm of new
                                    * names, ~2 us each) keep it from the clock and the flush for ~0.3 s */
#define MIN_CHUNKS 2               /* one filled by the thread while Python parses the other */
#define GATHER_NS 1000000          /* after a pass, 1 ms before the next: wake-ups at most 1,000/s, not one
                                    * per datagram (the kernel buffers meanwhile: 3,640 datagrams in 8 MiB) */
#define ERRNOS 160                 /* counted per errno below this, the rest together at 0 */

enum { FREE, FILLING, FULL, LENT };

typedef struct {
    PyObject *bytes;               /* a bytes object of `cap` bytes, ours alone unless LENT */
    char *data;                    /* its buffer, for the thread (which never touches the object) */
    int state;
    size_t used;
    Py_ssize_t packets, size, too_long;
    long long lent;                /* when it was last lent (a count of lends) */
} Chunk;

typedef struct {
    PyObject_HEAD
    pthread_t thread;
    int started, joined;
    pthread_mutex_t lock;
    pthread_cond_t room;           /* signalled when a chunk is handed back, or at stop */
    int nfds;
    int fds[MAX_SOCKETS];          /* dups of the listeners' sockets: they stay valid until stop */
    int stop_fd, ready_fd;         /* eventfds: stop the thread; data waits for Python */
    int stopping, notified;
    Chunk *chunks;
    int nchunks, r, w;             /* r: the oldest chunk with data; w: the one the thread fills */
    long long lends;
    size_t cap;
    size_t pending, peak;          /* bytes waiting for Python, and the most since stats() */
    long long received;            /* bytes stored since the start */
    long long buffer_full;
    long long errors[ERRNOS];
} Receiver;

static PyObject *new_chunk(Chunk *c, size_t cap) {
    PyObject *b = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)cap);
    if (b == NULL)
        return NULL;
    c->bytes = b;
    c->data = PyBytes_AS_STRING(b);
    c->state = FREE;
    c->used = 0;
    c->packets = c->size = c->too_long = 0;
    return b;
}

/* -- the thread (no Python API below, up to the next marker) ------------------------------------- */

static void count_error(Receiver *rc, int err) {
    rc->errors[err > 0 && err < ERRNOS ? err : 0]++;
}

/* The chunk to write into, with room for at least one slot, or NULL when the buffer is full. */
static Chunk *writable(Receiver *rc) {
    for (;;) {
        Chunk *c = &rc->chunks[rc->w];
        if (c->state == LENT) {  /* the next in the ring is in Python's hands: any free one will do */
            for (int i = 0; i < rc->nchunks; i++) {
                if (rc->chunks[i].state == FREE) {  /* outside r..w, where the chunks wait in order */
                    Chunk lent = *c;
                    *c = rc->chunks[i];
                    rc->chunks[i] = lent;
                    break;
                }
            }
        }
        if (c->state == FREE)
            c->state = FILLING;
        if (c->state != FILLING)
            return NULL;  /* every chunk full or lent: Python has not taken or handed back one yet */
        if (c->used + SLOT <= rc->cap)
            return c;
        c->state = FULL;
        rc->w = (rc->w + 1) % rc->nchunks;
    }
}

/* One recvmmsg on `fd` into the current chunk (lock held). Returns the datagrams read, 0 when none
 * were waiting, -1 when the buffer is full; `*more`: as many as asked for, so more may be waiting. */
static int read_once(Receiver *rc, int fd, int *more) {
    Chunk *c = writable(rc);
    if (c == NULL)
        return -1;
    size_t room = (rc->cap - c->used) / SLOT;
    unsigned vlen = room < VLEN ? (unsigned)room : VLEN;
    struct mmsghdr msgs[VLEN];
    struct iovec iov[VLEN];
    char *base = c->data + c->used;
    memset(msgs, 0, sizeof(msgs[0]) * vlen);
    for (unsigned k = 0; k < vlen; k++) {
        iov[k].iov_base = base + (size_t)k * SLOT;
        iov[k].iov_len = SLOT;
        msgs[k].msg_hdr.msg_iov = &iov[k];
        msgs[k].msg_hdr.msg_iovlen = 1;
    }
    int n;
    do {
        n = recvmmsg(fd, msgs, vlen, MSG_DONTWAIT, NULL);
    } while (n < 0 && errno == EINTR);
    if (n < 0) {
        if (errno != EAGAIN && errno != EWOULDBLOCK)
            count_error(rc, errno);
        return 0;
    }
    *more = n == (int)vlen;
    char *to = base;
    for (int k = 0; k < n; k++) {
        size_t len = msgs[k].msg_len;
        c->packets++;
        c->size += (Py_ssize_t)len;
        if (len > MAX_DATAGRAM || (msgs[k].msg_hdr.msg_flags & MSG_TRUNC)) {
            c->too_long++;  /* rejected whole, as `_fast.drain` does */
            continue;
        }
        char *from = base + (size_t)k * SLOT;
        if (to != from)
            memmove(to, from, len);  /* never past `from + len`: the newline stays inside this slot */
        to[len] = '\n';
        to += len + 1;
    }
    size_t added = (size_t)(to - base);
    c->used += added;
    rc->pending += added;
    rc->received += (long long)added;
    if (rc->pending > rc->peak)
        rc->peak = rc->pending;
    if (n > 0 && !rc->notified) {
        uint64_t one = 1;
        if (write(rc->ready_fd, &one, sizeof(one)) == (ssize_t)sizeof(one))
            rc->notified = 1;
    }
    return n;
}

static void pause_ns(long ns) {
    struct timespec ts = {0, ns};
    while (nanosleep(&ts, &ts) < 0 && errno == EINTR) {
    }
}

static void *receive(void *arg) {
    Receiver *rc = arg;
    struct pollfd pfds[MAX_SOCKETS + 1];
    for (int i = 0; i < rc->nfds; i++)
        pfds[i] = (struct pollfd){.fd = rc->fds[i], .events = POLLIN};
    pfds[rc->nfds] = (struct pollfd){.fd = rc->stop_fd, .events = POLLIN};
    for (;;) {
        if (poll(pfds, (nfds_t)rc->nfds + 1, -1) < 0) {
            if (errno != EINTR) {
                count_error(rc, errno);
                pause_ns(10 * GATHER_NS);
            }
            continue;
        }
        if (pfds[rc->nfds].revents)
            break;
        int busy, stopping = 0;
        do {  /* every socket in turn, until none had a full batch waiting */
            busy = 0;
            for (int i = 0; i < rc->nfds && !stopping; i++) {
                if (pfds[i].fd < 0)
                    continue;
                if (pfds[i].revents & POLLNVAL) {
                    count_error(rc, EBADF);  /* cannot happen with our dups; never spin on it */
                    pfds[i].fd = -1;
                    continue;
                }
                pthread_mutex_lock(&rc->lock);  /* one read at a time: take() waits at most for one */
                int more = 0, n = read_once(rc, rc->fds[i], &more);
                if (n < 0) {  /* full: wait for Python to take a chunk; the kernel buffers meanwhile */
                    rc->buffer_full++;
                    while (!rc->stopping && writable(rc) == NULL)
                        pthread_cond_wait(&rc->room, &rc->lock);
                    busy = 1;
                }
                stopping = rc->stopping;
                pthread_mutex_unlock(&rc->lock);
                busy |= more;
            }
        } while (busy && !stopping);
        if (stopping)
            break;
        pause_ns(GATHER_NS);
    }
    return NULL;
}

/* -- Python side (under the GIL) ----------------------------------------------------------------- */

static void stop_thread(Receiver *rc) {
    if (!rc->started || rc->joined)
        return;
    pthread_mutex_lock(&rc->lock);
    rc->stopping = 1;
    pthread_cond_broadcast(&rc->room);
    pthread_mutex_unlock(&rc->lock);
    uint64_t one = 1;
    if (write(rc->stop_fd, &one, sizeof(one)) < 0) {
        /* an eventfd write fails only at its maximum: then it is readable already */
    }
    Py_BEGIN_ALLOW_THREADS
    pthread_join(rc->thread, NULL);
    Py_END_ALLOW_THREADS
    rc->joined = 1;
    for (int i = 0; i < rc->nfds; i++)
        close(rc->fds[i]);
    rc->nfds = 0;
}

static void close_fds(Receiver *rc) {
    for (int i = 0; i < rc->nfds; i++)
        close(rc->fds[i]);
    rc->nfds = 0;
    if (rc->stop_fd >= 0)
        close(rc->stop_fd);
    if (rc->ready_fd >= 0)
        close(rc->ready_fd);
    rc->stop_fd = rc->ready_fd = -1;
}

static int Receiver_init(Receiver *rc, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"fds", "buffer_bytes", NULL};
    PyObject *fds;
    Py_ssize_t buffer_bytes;
    if (rc->chunks != NULL || rc->started) {
        PyErr_SetString(PyExc_RuntimeError, "Receiver already initialized");
        return -1;
    }
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "On", kwlist, &fds, &buffer_bytes))
        return -1;
    PyObject *seq = PySequence_Fast(fds, "fds must be a sequence of file descriptors");
    if (seq == NULL)
        return -1;
    Py_ssize_t nfds = PySequence_Fast_GET_SIZE(seq);
    if (nfds < 1 || nfds > MAX_SOCKETS) {
        Py_DECREF(seq);
        PyErr_Format(PyExc_ValueError, "1 to %d sockets, not %zd", MAX_SOCKETS, nfds);
        return -1;
    }
    if (buffer_bytes < (Py_ssize_t)(MIN_CHUNKS * SLOT)) {
        Py_DECREF(seq);
        PyErr_Format(PyExc_ValueError, "buffer_bytes must be at least %d", MIN_CHUNKS * SLOT);
        return -1;
    }
    for (Py_ssize_t i = 0; i < nfds; i++) {
        int fd = PyObject_AsFileDescriptor(PySequence_Fast_GET_ITEM(seq, i));
        int dup = fd < 0 ? -1 : fcntl(fd, F_DUPFD_CLOEXEC, 0);
        if (dup < 0) {
            if (fd >= 0)
                PyErr_SetFromErrno(PyExc_OSError);
            Py_DECREF(seq);
            close_fds(rc);
            return -1;
        }
        rc->fds[rc->nfds++] = dup;
    }
    Py_DECREF(seq);
    rc->stop_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    rc->ready_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (rc->stop_fd < 0 || rc->ready_fd < 0) {
        PyErr_SetFromErrno(PyExc_OSError);
        close_fds(rc);
        return -1;
    }
    /* chunks of up to MAX_CHUNK, at least two; a chunk's last slot must fit whole */
    int nchunks = MIN_CHUNKS;
    while ((size_t)buffer_bytes / (size_t)nchunks > MAX_CHUNK)
        nchunks++;
    rc->cap = (size_t)buffer_bytes / (size_t)nchunks;
    rc->chunks = PyMem_Calloc((size_t)nchunks, sizeof(Chunk));
    if (rc->chunks == NULL) {
        PyErr_NoMemory();
        close_fds(rc);
        return -1;
    }
    rc->nchunks = nchunks;
    for (int i = 0; i < nchunks; i++) {
        if (new_chunk(&rc->chunks[i], rc->cap) == NULL) {
            close_fds(rc);
            return -1;  /* dealloc frees the chunks made so far */
        }
    }
    pthread_mutex_init(&rc->lock, NULL);
    pthread_cond_init(&rc->room, NULL);
    /* the thread takes no signal: they are for the main thread (SIGTERM), and would interrupt its calls */
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    int failed = pthread_create(&rc->thread, NULL, receive, rc);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (failed) {
        errno = failed;
        PyErr_SetFromErrno(PyExc_OSError);
        close_fds(rc);
        return -1;
    }
    rc->started = 1;
    return 0;
}

/* Give lent chunks back to the thread: as they are when nobody else holds them, else new ones. */
static int reclaim(Receiver *rc) {
    for (int i = 0; i < rc->nchunks; i++) {
        Chunk *c = &rc->chunks[i];
        if (c->state != LENT)
            continue;
        if (Py_REFCNT(c->bytes) == 1) {
            /* ours alone again: nobody can see it change; forget its length and any cached hash */
            Py_SET_SIZE(c->bytes, (Py_ssize_t)rc->cap);
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wdeprecated-declarations"
            ((PyBytesObject *)c->bytes)->ob_shash = -1;
#pragma GCC diagnostic pop
            c->state = FREE;
            c->used = 0;
            c->packets = c->size = c->too_long = 0;
        } else {
            PyObject *held = c->bytes;
            if (new_chunk(c, rc->cap) == NULL) {
                c->bytes = held;  /* still LENT: tried again at the next take() */
                return -1;
            }
            Py_DECREF(held);  /* its holder keeps it, as it is */
        }
    }
    return 0;
}

/* The free chunk lent most recently, or -1. */
static int hottest_free(const Receiver *rc) {
    int best = -1;
    for (int i = 0; i < rc->nchunks; i++)
        if (rc->chunks[i].state == FREE && (best < 0 || rc->chunks[i].lent > rc->chunks[best].lent))
            best = i;
    return best;
}

static int has_data(const Chunk *c) {
    return c->state == FULL || (c->state == FILLING && c->packets > 0);
}

/* take() -> (datagrams joined by newlines, packets, bytes, too long) or None: the oldest chunk with
 * data, lent to the caller until it drops it. */
static PyObject *Receiver_take(Receiver *rc, PyObject *Py_UNUSED(ignored)) {
    if (rc->chunks == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "Receiver not initialized");
        return NULL;
    }
    pthread_mutex_lock(&rc->lock);
    int failed = reclaim(rc);
    Chunk *c = &rc->chunks[rc->r];
    PyObject *out = NULL;
    if (has_data(c)) {
        int filling = c->state == FILLING;
        c->state = LENT;
        c->lent = ++rc->lends;
        rc->pending -= c->used;
        Py_SET_SIZE(c->bytes, (Py_ssize_t)c->used);
        c->data[c->used] = '\0';  /* a bytes object ends with one (room for it: cap + 1 allocated) */
        out = Py_BuildValue("(Onnn)", c->bytes, c->packets, c->size, c->too_long);
        int hot = filling ? hottest_free(rc) : -1;
        if (hot >= 0) {
            /* nothing else holds data (r == w): the thread goes on in the free chunk lent last, whose
             * pages are resident and warm, instead of touching every chunk in turn (RSS, cache) */
            Chunk lent = *c;
            *c = rc->chunks[hot];
            rc->chunks[hot] = lent;
        } else {
            if (filling)  /* the thread moves on to the next chunk */
                rc->w = (rc->w + 1) % rc->nchunks;
            rc->r = (rc->r + 1) % rc->nchunks;
        }
    }
    if (!has_data(&rc->chunks[rc->r]) && rc->notified) {
        uint64_t value;
        if (read(rc->ready_fd, &value, sizeof(value)) < 0) {
            /* EAGAIN: nothing to reset */
        }
        rc->notified = 0;  /* all taken: the thread signals its next datagram */
    }
    pthread_cond_signal(&rc->room);
    pthread_mutex_unlock(&rc->lock);
    if (failed) {
        Py_XDECREF(out);
        return NULL;  /* MemoryError: nothing lost, the chunk stays lent until a later take() */
    }
    if (out == NULL && !PyErr_Occurred())
        Py_RETURN_NONE;
    return out;
}

static PyObject *Receiver_stop(Receiver *rc, PyObject *Py_UNUSED(ignored)) {
    stop_thread(rc);
    Py_RETURN_NONE;
}

static PyObject *Receiver_fileno(Receiver *rc, PyObject *Py_UNUSED(ignored)) {
    return PyLong_FromLong(rc->ready_fd);
}

/* stats() -> {"buffer_full": n, "peak_bytes": n, "received_bytes": n, "errors": {errno: n}}: counts
 * since the start; the peak is the most bytes waiting for Python since the last call. */
static PyObject *Receiver_stats(Receiver *rc, PyObject *Py_UNUSED(ignored)) {
    long long errors[ERRNOS];
    if (rc->chunks == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "Receiver not initialized");
        return NULL;
    }
    pthread_mutex_lock(&rc->lock);
    long long full = rc->buffer_full, received = rc->received;
    size_t peak = rc->peak;
    rc->peak = rc->pending;
    memcpy(errors, rc->errors, sizeof(errors));
    pthread_mutex_unlock(&rc->lock);
    PyObject *by_errno = PyDict_New();
    if (by_errno == NULL)
        return NULL;
    for (int e = 0; e < ERRNOS; e++) {
        if (errors[e] == 0)
            continue;
        PyObject *k = PyLong_FromLong(e), *v = PyLong_FromLongLong(errors[e]);
        int bad = k == NULL || v == NULL || PyDict_SetItem(by_errno, k, v) < 0;
        Py_XDECREF(k);
        Py_XDECREF(v);
        if (bad) {
            Py_DECREF(by_errno);
            return NULL;
        }
    }
    return Py_BuildValue("{sLsnsLsN}", "buffer_full", full, "peak_bytes", (Py_ssize_t)peak, "received_bytes",
                         received, "errors", by_errno);
}

/* trim() -> bytes handed back: the pages of the chunks holding nothing go back to the system (they
 * read as zeros if touched again). After a burst, what it touched is not kept for good; not under
 * load, where every page would be faulted in again. */
static PyObject *Receiver_trim(Receiver *rc, PyObject *Py_UNUSED(ignored)) {
    if (rc->chunks == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "Receiver not initialized");
        return NULL;
    }
    uintptr_t page = (uintptr_t)sysconf(_SC_PAGESIZE);
    size_t released = 0;
    /* no Python object is touched (the chunks live until dealloc): madvise of up to the whole buffer
     * runs without the GIL, so the event loop and the receive thread go on meanwhile */
    Py_BEGIN_ALLOW_THREADS
    pthread_mutex_lock(&rc->lock);
    for (int i = 0; i < rc->nchunks; i++) {
        Chunk *c = &rc->chunks[i];
        if (!(c->state == FREE || (c->state == FILLING && c->packets == 0)))
            continue;
        /* whole pages inside the buffer only: the object's header and its last byte stay */
        uintptr_t start = ((uintptr_t)c->data + page - 1) & ~(page - 1);
        uintptr_t end = ((uintptr_t)c->data + rc->cap) & ~(page - 1);
        if (end > start && madvise((void *)start, end - start, MADV_DONTNEED) == 0)
            released += end - start;
    }
    pthread_mutex_unlock(&rc->lock);
    Py_END_ALLOW_THREADS
    return PyLong_FromSize_t(released);
}

static PyObject *Receiver_get_buffer_bytes(Receiver *rc, void *Py_UNUSED(closure)) {
    return PyLong_FromSize_t(rc->cap * (size_t)rc->nchunks);
}

static PyObject *Receiver_get_pending_bytes(Receiver *rc, void *Py_UNUSED(closure)) {
    if (rc->chunks == NULL)
        return PyLong_FromLong(0);
    pthread_mutex_lock(&rc->lock);  /* held by the thread only for a non-blocking read: never long */
    size_t pending = rc->pending;
    pthread_mutex_unlock(&rc->lock);
    return PyLong_FromSize_t(pending);
}

static PyObject *Receiver_new(PyTypeObject *type, PyObject *Py_UNUSED(args), PyObject *Py_UNUSED(kwds)) {
    Receiver *rc = (Receiver *)type->tp_alloc(type, 0);
    if (rc != NULL)
        rc->stop_fd = rc->ready_fd = -1;
    return (PyObject *)rc;
}

static void Receiver_dealloc(Receiver *rc) {
    stop_thread(rc);  /* the thread never waits for the GIL: joining while holding it is safe */
    close_fds(rc);
    if (rc->chunks != NULL) {
        for (int i = 0; i < rc->nchunks; i++)
            Py_XDECREF(rc->chunks[i].bytes);
        PyMem_Free(rc->chunks);
    }
    if (rc->started) {
        pthread_mutex_destroy(&rc->lock);
        pthread_cond_destroy(&rc->room);
    }
    Py_TYPE(rc)->tp_free((PyObject *)rc);
}

static PyMethodDef Receiver_methods[] = {
    {"take", (PyCFunction)Receiver_take, METH_NOARGS,
     "take() -> (datagrams joined by newlines, packets, bytes, too long), or None when nothing waits"},
    {"stop", (PyCFunction)Receiver_stop, METH_NOARGS, "stop the thread and wait for it; take() still works"},
    {"trim", (PyCFunction)Receiver_trim, METH_NOARGS, "trim() -> bytes of empty chunks handed back to the system"},
    {"fileno", (PyCFunction)Receiver_fileno, METH_NOARGS, "readable while data waits for take()"},
    {"stats", (PyCFunction)Receiver_stats, METH_NOARGS,
     "stats() -> {'buffer_full': n, 'peak_bytes': n, 'received_bytes': n, 'errors': {errno: n}}"},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef Receiver_getset[] = {
    {"buffer_bytes", (getter)Receiver_get_buffer_bytes, NULL, "bytes of the ring, all chunks", NULL},
    {"pending_bytes", (getter)Receiver_get_pending_bytes, NULL, "bytes read and not yet taken", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject ReceiverType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "agent.statsd._recv.Receiver",
    .tp_basicsize = sizeof(Receiver),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Receiver(fds, buffer_bytes): a thread reading datagrams without the GIL (see the source).",
    .tp_new = Receiver_new,
    .tp_init = (initproc)Receiver_init,
    .tp_dealloc = (destructor)Receiver_dealloc,
    .tp_methods = Receiver_methods,
    .tp_getset = Receiver_getset,
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "agent.statsd._recv",
                                    "The StatsD receive thread in C (see agent/statsd/server.py).", -1, NULL};

PyMODINIT_FUNC PyInit__recv(void) {
    if (PyType_Ready(&ReceiverType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m == NULL)
        return NULL;
    if (PyModule_AddObjectRef(m, "Receiver", (PyObject *)&ReceiverType) < 0
            || PyModule_AddIntConstant(m, "MAX_DATAGRAM", MAX_DATAGRAM) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
