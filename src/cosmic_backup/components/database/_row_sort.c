/* The hot loops of row_order.py in C: sort one run of a table's COPY rows by key, and
 * merge sorted runs from files, so that the per-row work costs no Python objects.
 *
 * A run is a buffer of pieces exactly as pg_dump's custom format writes a table's data:
 * a sign byte, an int_size-byte little-endian length, the row's COPY text. A piece whose
 * sign byte is 1 (pg_dump never writes one) is a reference to a big row kept in a file:
 * its payload is the row's offset and length (8 bytes each, little-endian) and the row's
 * first bytes, from which its key is read.
 *
 * spec: a tuple of (field index, numeric) pairs, the key's columns in key order; empty
 * for the whole row. Numeric columns compare as signed 64-bit integers, others bytewise;
 * ties keep the pieces' order (their index in the run, or the run's in a merge).
 *
 * sort_run(run, int_size, spec) -> (sorted run, order) or None
 *   None when a piece is not exactly one row (its only newline ends it) or a numeric
 *   column does not parse: the caller keeps pg_dump's order. `order` holds each sorted
 *   piece's index in the input run (4 bytes each, little-endian).
 * merge_runs(fds, int_size, spec, write, big) -> None
 *   reads every run file to its end, calls write(bytes) with the merged pieces in about
 *   1 MiB batches, and big(offset, length) for each reference, after the bytes before it
 *   (with big None, a reference is written as it is: a merge into another run).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <errno.h>

#define MAX_KEYS 16
#define KEY_PREFIX (64 * 1024) /* row_order.KEY_PREFIX */
#define OUT_BATCH (1 << 20)
#define READ_CHUNK (256 * 1024)

typedef struct {
    int nkeys;
    int field[MAX_KEYS];
    int numeric[MAX_KEYS];
    int max_field;
    Py_ssize_t int_size;
} Spec;

typedef struct {
    int64_t num;
    const unsigned char *text;
    size_t len;
} KeyPart;

typedef struct {
    const unsigned char *piece; /* its prefix */
    size_t size;                /* prefix + payload */
    uint32_t index;
    KeyPart *key;
} Record;

static int
parse_spec(PyObject *spec_obj, Py_ssize_t int_size, Spec *spec)
{
    if (int_size != 4 && int_size != 8) {
        PyErr_SetString(PyExc_ValueError, "int_size must be 4 or 8");
        return -1;
    }
    spec->int_size = int_size;
    if (!PyTuple_Check(spec_obj) || PyTuple_GET_SIZE(spec_obj) > MAX_KEYS) {
        PyErr_SetString(PyExc_ValueError, "spec must be a tuple of at most 16 pairs");
        return -1;
    }
    spec->nkeys = (int)PyTuple_GET_SIZE(spec_obj);
    spec->max_field = -1;
    for (int i = 0; i < spec->nkeys; i++) {
        int field, numeric;
        if (!PyArg_ParseTuple(PyTuple_GET_ITEM(spec_obj, i), "ip", &field, &numeric))
            return -1;
        if (field < 0) {
            PyErr_SetString(PyExc_ValueError, "negative field index");
            return -1;
        }
        spec->field[i] = field;
        spec->numeric[i] = numeric;
        if (field > spec->max_field)
            spec->max_field = field;
    }
    return 0;
}

static uint64_t
read_le(const unsigned char *p, Py_ssize_t n)
{
    uint64_t value = 0;
    for (Py_ssize_t i = n - 1; i >= 0; i--)
        value = (value << 8) | p[i];
    return value;
}

static int
parse_int(const unsigned char *s, size_t len, int64_t *out)
{
    size_t i = 0;
    int negative = 0;
    uint64_t value = 0;
    if (len > 0 && s[0] == '-') {
        negative = 1;
        i = 1;
    }
    if (i == len || len - i > 19)
        return -1;
    for (; i < len; i++) {
        if (s[i] < '0' || s[i] > '9')
            return -1;
        value = value * 10 + (uint64_t)(s[i] - '0');
    }
    if (value > (uint64_t)INT64_MAX + (uint64_t)negative)
        return -1;
    *out = negative ? (int64_t)(0 - value) : (int64_t)value;
    return 0;
}

/* The key of one row (`text`, `len`: its COPY text, or a big row's first bytes). */
static int
extract_key(const Spec *spec, const unsigned char *text, size_t len, int is_ref, KeyPart *key)
{
    if (!is_ref) {
        if (len == 0 || memchr(text, '\n', len) != text + len - 1)
            return -1; /* not exactly one row */
        len -= 1;      /* the newline ends the last field */
    }
    if (spec->nkeys == 0) { /* the whole row, its newline too, as row_order.whole_row */
        key[0].text = text;
        key[0].len = is_ref ? len : len + 1;
        if (key[0].len > KEY_PREFIX)
            key[0].len = KEY_PREFIX;
        return 0;
    }
    const unsigned char *starts[MAX_KEYS * 4 + 1];
    size_t lens[MAX_KEYS * 4 + 1];
    if (spec->max_field > MAX_KEYS * 4)
        return -1;
    const unsigned char *p = text, *end = text + len;
    for (int f = 0; f <= spec->max_field; f++) {
        if (p > end)
            return -1;
        const unsigned char *tab = memchr(p, '\t', (size_t)(end - p));
        const unsigned char *stop = tab ? tab : end;
        if (!tab && f < spec->max_field)
            return -1; /* fewer fields than the key needs (or cut short in a prefix) */
        starts[f] = p;
        lens[f] = (size_t)(stop - p);
        p = stop + 1;
    }
    for (int i = 0; i < spec->nkeys; i++) {
        int f = spec->field[i];
        if (spec->numeric[i]) {
            if (parse_int(starts[f], lens[f], &key[i].num) < 0)
                return -1;
        } else {
            key[i].text = starts[f];
            key[i].len = lens[f];
        }
    }
    return 0;
}

/* A piece at `p` (with `avail` bytes there): its payload and whether it is a reference. */
static int
piece_at(const Spec *spec, const unsigned char *p, size_t avail, size_t *size,
         const unsigned char **payload, size_t *payload_len, int *is_ref)
{
    size_t width = 1 + (size_t)spec->int_size;
    if (avail < width)
        return -1;
    uint64_t length = read_le(p + 1, spec->int_size);
    if (p[0] > 1 || length > avail - width)
        return -1;
    *is_ref = p[0] == 1;
    *payload = p + width;
    *payload_len = (size_t)length;
    *size = width + (size_t)length;
    if (*is_ref && length < 16)
        return -1;
    return 0;
}

static int
key_of_piece(const Spec *spec, const unsigned char *payload, size_t len, int is_ref,
             KeyPart *key)
{
    if (is_ref)
        return extract_key(spec, payload + 16, len - 16, 1, key);
    return extract_key(spec, payload, len, 0, key);
}

static int
compare_keys(const Spec *spec, const KeyPart *a, const KeyPart *b)
{
    int n = spec->nkeys ? spec->nkeys : 1;
    for (int i = 0; i < n; i++) {
        if (spec->nkeys && spec->numeric[i]) {
            if (a[i].num != b[i].num)
                return a[i].num < b[i].num ? -1 : 1;
            continue;
        }
        size_t common = a[i].len < b[i].len ? a[i].len : b[i].len;
        int c = common ? memcmp(a[i].text, b[i].text, common) : 0;
        if (c != 0)
            return c < 0 ? -1 : 1;
        if (a[i].len != b[i].len)
            return a[i].len < b[i].len ? -1 : 1;
    }
    return 0;
}

static int
compare_records(const void *x, const void *y, void *arg)
{
    const Record *a = x, *b = y;
    int c = compare_keys((const Spec *)arg, a->key, b->key);
    if (c != 0)
        return c;
    return a->index < b->index ? -1 : (a->index > b->index);
}

static PyObject *
sort_run(PyObject *self, PyObject *args)
{
    Py_buffer view;
    Py_ssize_t int_size;
    PyObject *spec_obj;
    Spec spec;
    if (!PyArg_ParseTuple(args, "y*nO", &view, &int_size, &spec_obj))
        return NULL;
    if (parse_spec(spec_obj, int_size, &spec) < 0) {
        PyBuffer_Release(&view);
        return NULL;
    }
    const unsigned char *buf = view.buf;
    size_t total = (size_t)view.len, count = 0, pos = 0;
    int nparts = spec.nkeys ? spec.nkeys : 1;
    /* Count the pieces first: one allocation each for the records and their keys. */
    while (pos < total) {
        size_t size, plen;
        const unsigned char *payload;
        int is_ref;
        if (piece_at(&spec, buf + pos, total - pos, &size, &payload, &plen, &is_ref) < 0) {
            PyBuffer_Release(&view);
            Py_RETURN_NONE;
        }
        pos += size;
        count++;
    }
    if (count > UINT32_MAX) {
        PyBuffer_Release(&view);
        Py_RETURN_NONE;
    }
    Record *records = PyMem_Malloc((count ? count : 1) * sizeof(Record));
    KeyPart *keys = PyMem_Malloc((count ? count : 1) * nparts * sizeof(KeyPart));
    PyObject *sorted = NULL, *order = NULL, *result = NULL;
    if (!records || !keys) {
        PyErr_NoMemory();
        goto done;
    }
    int bad = 0;
    Py_BEGIN_ALLOW_THREADS
    pos = 0;
    for (size_t i = 0; i < count; i++) {
        size_t size, plen;
        const unsigned char *payload;
        int is_ref;
        piece_at(&spec, buf + pos, total - pos, &size, &payload, &plen, &is_ref);
        records[i].piece = buf + pos;
        records[i].size = size;
        records[i].index = (uint32_t)i;
        records[i].key = keys + i * nparts;
        if (key_of_piece(&spec, payload, plen, is_ref, records[i].key) < 0) {
            bad = 1;
            break;
        }
        pos += size;
    }
    if (!bad)
        qsort_r(records, count, sizeof(Record), compare_records, &spec);
    Py_END_ALLOW_THREADS
    if (bad) {
        result = Py_None;
        Py_INCREF(result);
        goto done;
    }
    sorted = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)total);
    order = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)(count * 4));
    if (!sorted || !order)
        goto done;
    unsigned char *out = (unsigned char *)PyBytes_AS_STRING(sorted);
    unsigned char *idx = (unsigned char *)PyBytes_AS_STRING(order);
    for (size_t i = 0; i < count; i++) {
        memcpy(out, records[i].piece, records[i].size);
        out += records[i].size;
        uint32_t v = records[i].index;
        idx[4 * i] = v & 0xff;
        idx[4 * i + 1] = (v >> 8) & 0xff;
        idx[4 * i + 2] = (v >> 16) & 0xff;
        idx[4 * i + 3] = (v >> 24) & 0xff;
    }
    result = PyTuple_Pack(2, sorted, order);
done:
    Py_XDECREF(sorted);
    Py_XDECREF(order);
    PyMem_Free(records);
    PyMem_Free(keys);
    PyBuffer_Release(&view);
    return result;
}

/* -- merge ------------------------------------------------------------------------------ */
typedef struct {
    int fd;
    unsigned char *buf;
    size_t cap, start, end;
    int eof;
    /* the current piece */
    size_t size;
    const unsigned char *payload;
    size_t payload_len;
    int is_ref;
    KeyPart key[MAX_KEYS];
} Reader;

static int
fill(Reader *r, size_t need)
{
    if (r->start > 0 && r->end - r->start < need) {
        memmove(r->buf, r->buf + r->start, r->end - r->start);
        r->end -= r->start;
        r->start = 0;
    }
    if (need > r->cap) {
        size_t cap = r->cap;
        while (cap < need)
            cap *= 2;
        unsigned char *grown = PyMem_Realloc(r->buf, cap);
        if (!grown) {
            PyErr_NoMemory();
            return -1;
        }
        r->buf = grown;
        r->cap = cap;
    }
    while (r->end - r->start < need && !r->eof) {
        ssize_t got = read(r->fd, r->buf + r->end, r->cap - r->end);
        if (got < 0 && errno == EINTR) {
            if (PyErr_CheckSignals() < 0)
                return -1;
            continue;
        }
        if (got < 0) {
            PyErr_SetFromErrno(PyExc_OSError);
            return -1;
        }
        if (got == 0)
            r->eof = 1;
        r->end += (size_t)got;
    }
    return 0;
}

/* The reader's next piece: 1 if there is one, 0 at the end, -1 on error. */
static int
advance(const Spec *spec, Reader *r)
{
    size_t width = 1 + (size_t)spec->int_size;
    r->start += r->size;
    r->size = 0;
    if (fill(r, width) < 0)
        return -1;
    if (r->end == r->start)
        return 0;
    if (r->end - r->start < width)
        goto broken;
    uint64_t length = read_le(r->buf + r->start + 1, spec->int_size);
    if (length > ((size_t)1 << 40) || fill(r, width + (size_t)length) < 0) {
        if (!PyErr_Occurred())
            goto broken;
        return -1;
    }
    if (piece_at(spec, r->buf + r->start, r->end - r->start, &r->size, &r->payload,
                 &r->payload_len, &r->is_ref) < 0)
        goto broken;
    if (key_of_piece(spec, r->payload, r->payload_len, r->is_ref, r->key) < 0)
        goto broken;
    return 1;
broken:
    PyErr_SetString(PyExc_ValueError, "a sorted run of the dump is not as it was written");
    return -1;
}

static int
reader_less(const Spec *spec, Reader *readers, int a, int b)
{
    int c = compare_keys(spec, readers[a].key, readers[b].key);
    return c < 0 || (c == 0 && a < b);
}

static void
sift_down(const Spec *spec, Reader *readers, int *heap, int n, int i)
{
    for (;;) {
        int smallest = i, l = 2 * i + 1, r = l + 1;
        if (l < n && reader_less(spec, readers, heap[l], heap[smallest]))
            smallest = l;
        if (r < n && reader_less(spec, readers, heap[r], heap[smallest]))
            smallest = r;
        if (smallest == i)
            return;
        int t = heap[i];
        heap[i] = heap[smallest];
        heap[smallest] = t;
        i = smallest;
    }
}

static int
flush(PyObject *write, unsigned char *out, size_t *used)
{
    if (*used == 0)
        return 0;
    PyObject *chunk = PyBytes_FromStringAndSize((const char *)out, (Py_ssize_t)*used);
    if (!chunk)
        return -1;
    PyObject *r = PyObject_CallOneArg(write, chunk);
    Py_DECREF(chunk);
    if (!r)
        return -1;
    Py_DECREF(r);
    *used = 0;
    return 0;
}

static PyObject *
merge_runs(PyObject *self, PyObject *args)
{
    PyObject *fds_obj, *spec_obj, *write, *big;
    Py_ssize_t int_size;
    Spec spec;
    if (!PyArg_ParseTuple(args, "OnOOO", &fds_obj, &int_size, &spec_obj, &write, &big))
        return NULL;
    if (parse_spec(spec_obj, int_size, &spec) < 0)
        return NULL;
    PyObject *fds = PySequence_Fast(fds_obj, "fds must be a sequence");
    if (!fds)
        return NULL;
    int n = (int)PySequence_Fast_GET_SIZE(fds), live = 0, ok = 0;
    Reader *readers = PyMem_Calloc(n ? n : 1, sizeof(Reader));
    int *heap = PyMem_Malloc((n ? n : 1) * sizeof(int));
    unsigned char *out = PyMem_Malloc(OUT_BATCH);
    size_t used = 0;
    if (!readers || !heap || !out) {
        PyErr_NoMemory();
        goto done;
    }
    for (int i = 0; i < n; i++) {
        readers[i].fd = (int)PyLong_AsLong(PySequence_Fast_GET_ITEM(fds, i));
        if (PyErr_Occurred())
            goto done;
        readers[i].cap = READ_CHUNK;
        readers[i].buf = PyMem_Malloc(READ_CHUNK);
        if (!readers[i].buf) {
            PyErr_NoMemory();
            goto done;
        }
        int got = advance(&spec, &readers[i]);
        if (got < 0)
            goto done;
        if (got)
            heap[live++] = i;
    }
    for (int i = live / 2 - 1; i >= 0; i--)
        sift_down(&spec, readers, heap, live, i);
    while (live > 0) {
        Reader *r = &readers[heap[0]];
        if (r->is_ref && big != Py_None) {
            if (flush(write, out, &used) < 0)
                goto done;
            uint64_t offset = read_le(r->payload, 8), length = read_le(r->payload + 8, 8);
            PyObject *res = PyObject_CallFunction(big, "KK", (unsigned long long)offset,
                                                  (unsigned long long)length);
            if (!res)
                goto done;
            Py_DECREF(res);
        } else {
            if (used + r->size > OUT_BATCH && flush(write, out, &used) < 0)
                goto done;
            if (r->size > OUT_BATCH) {
                PyObject *chunk = PyBytes_FromStringAndSize(
                    (const char *)(r->buf + r->start), (Py_ssize_t)r->size);
                PyObject *res = chunk ? PyObject_CallOneArg(write, chunk) : NULL;
                Py_XDECREF(chunk);
                if (!res)
                    goto done;
                Py_DECREF(res);
            } else {
                memcpy(out + used, r->buf + r->start, r->size);
                used += r->size;
            }
        }
        int got = advance(&spec, r);
        if (got < 0)
            goto done;
        if (!got)
            heap[0] = heap[--live];
        sift_down(&spec, readers, heap, live, 0);
    }
    if (flush(write, out, &used) < 0)
        goto done;
    ok = 1;
done:
    if (readers)
        for (int i = 0; i < n; i++)
            PyMem_Free(readers[i].buf);
    PyMem_Free(readers);
    PyMem_Free(heap);
    PyMem_Free(out);
    Py_DECREF(fds);
    if (!ok)
        return NULL;
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"sort_run", sort_run, METH_VARARGS, "Sort one run of COPY-row pieces by key."},
    {"merge_runs", merge_runs, METH_VARARGS, "Merge sorted run files into write()."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_row_sort", "Sorting a dump's COPY rows (row_order.py).", -1,
    methods,
};

PyMODINIT_FUNC
PyInit__row_sort(void)
{
    return PyModule_Create(&module);
}
