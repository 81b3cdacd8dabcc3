/* Gather/scatter of paged KV blocks between the KV buffers and a slab, as one
 * call with the GIL released (kvmesh.native.gather_blocks / scatter_blocks).
 *
 * Python's per-run strided copies pay ~1-5 us of call overhead per run of
 * consecutive block ids (per layer on the fallback path); a chunk of
 * scattered ids is dozens of such calls. Here the whole chunk is plain
 * memcpys of block-rows, and every bound is checked before the first byte
 * moves, so bad arguments raise and never write out of bounds.
 *
 * Arguments, for both directions:
 *   kv          sequence of contiguous buffers (the KV storages; writable
 *               for a scatter)
 *   rows        int64 buffer of (buffer index, byte offset of block 0,
 *               block stride) triples, one per row
 *   row_bytes   bytes of one block in one row
 *   ids         sequence of block ids (ints >= 0)
 *   slab        contiguous buffer of exactly len(rows) * slab_blocks *
 *               row_bytes bytes (writable for a gather)
 *   first, slab_blocks
 *               ids[p] pairs with slab position first + p of each row
 */
#include "blocks.h"

#include <string.h>

#include "kernels.h"

/* Runs at least this long are scattered with streaming stores. */
#define STREAM_MIN_BYTES 4096

/* A scatter's run of blocks, with streaming (cache-bypassing) stores when it
 * is long enough: a chunk is megabytes, so its destination lines would be
 * read into cache first only to be evicted again (~30% of the bandwidth;
 * glibc's memcpy streams only copies far larger than one run). A remote hit's
 * scatter out of a holder's shared pool measured 7.8 ms for 48 MiB with them,
 * 11.7 ms without. */
static void copy_run(uint8_t *dst, const uint8_t *src, size_t len)
{
    if (len >= STREAM_MIN_BYTES)
        kvm_copy_stream_best(dst, src, len); /* fenced: its stores are visible on return */
    else
        memcpy(dst, src, len);
}

/* One call's borrowed buffers and converted arguments; released by `release`. */
typedef struct {
    Py_buffer *kv;
    Py_ssize_t nkv;
    Py_buffer table, slab;
    int have_table, have_slab;
    kvm_row *rows;
    size_t nrows;
    int64_t *ids;
    size_t nids;
} blocks_call;

void kvm_copy_blocks(const kvm_row *rows, size_t nrows, const int64_t *ids, size_t nids,
                     size_t row_bytes, uint8_t *slab, size_t slab_blocks, size_t first,
                     int to_slab)
{
    for (size_t r = 0; r < nrows; r++) {
        uint8_t *out = slab + (r * slab_blocks + first) * row_bytes;
        size_t run;
        for (size_t p = 0; p < nids; p += run) {
            /* Consecutive ids of a block-contiguous row are one memcpy. */
            run = 1;
            if (rows[r].stride == row_bytes)
                while (p + run < nids && ids[p + run] == ids[p] + (int64_t)run)
                    run++;
            uint8_t *kv = rows[r].base + (size_t)ids[p] * rows[r].stride;
            uint8_t *at = out + p * row_bytes;
            if (to_slab) /* a save: plain stores measured faster into a slab that is reused */
                memcpy(at, kv, run * row_bytes);
            else
                copy_run(kv, at, run * row_bytes);
        }
    }
}

static int fail(const char *message)
{
    PyErr_SetString(PyExc_ValueError, message);
    return -1;
}

/* A contiguous byte buffer of `obj`; TypeError when it must be writable and is not. */
static int get_bytes(PyObject *obj, Py_buffer *view, int writable, const char *what)
{
    if (PyObject_GetBuffer(obj, view, PyBUF_SIMPLE) < 0)
        return -1;
    if (writable && view->readonly) {
        PyBuffer_Release(view);
        PyErr_Format(PyExc_TypeError, "%s must be a writable buffer", what);
        return -1;
    }
    return 0;
}

static int take_kv(blocks_call *c, PyObject *kv, int writable)
{
    PyObject *fast = PySequence_Fast(kv, "kv must be a sequence of buffers");
    if (fast == NULL)
        return -1;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(fast);
    c->kv = PyMem_Calloc(n ? (size_t)n : 1, sizeof(Py_buffer));
    if (c->kv == NULL) {
        Py_DECREF(fast);
        PyErr_NoMemory();
        return -1;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        if (get_bytes(PySequence_Fast_GET_ITEM(fast, i), &c->kv[i], writable, "a kv buffer") < 0)
            break;
        c->nkv++;
    }
    Py_DECREF(fast);
    return c->nkv == n ? 0 : -1;
}

/* ids as int64, all >= 0; *max_id is the largest (0 when there are none). */
static int take_ids(blocks_call *c, PyObject *ids, int64_t *max_id)
{
    PyObject *fast = PySequence_Fast(ids, "ids must be a sequence of ints");
    if (fast == NULL)
        return -1;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(fast);
    c->ids = PyMem_Malloc((n ? (size_t)n : 1) * sizeof(int64_t));
    int rc = 0;
    if (c->ids == NULL) {
        PyErr_NoMemory();
        rc = -1;
    }
    *max_id = 0;
    for (Py_ssize_t i = 0; rc == 0 && i < n; i++) {
        long long id = PyLong_AsLongLong(PySequence_Fast_GET_ITEM(fast, i));
        if (id == -1 && PyErr_Occurred())
            rc = -1;
        else if (id < 0)
            rc = fail("block ids must be >= 0");
        else {
            c->ids[i] = id;
            *max_id = id > *max_id ? id : *max_id;
        }
    }
    c->nids = (size_t)n;
    Py_DECREF(fast);
    return rc;
}

/* Reads the row table and checks that every block-row of every id lies inside its buffer. */
static int take_rows(blocks_call *c, PyObject *table, Py_ssize_t row_bytes, int64_t max_id)
{
    if (get_bytes(table, &c->table, 0, "rows") < 0)
        return -1;
    c->have_table = 1;
    if (c->table.len == 0 || (size_t)c->table.len % (3 * sizeof(int64_t)) != 0)
        return fail("rows must be a non-empty int64 buffer of (buffer, offset, stride) triples");
    c->nrows = (size_t)c->table.len / (3 * sizeof(int64_t));
    c->rows = PyMem_Malloc(c->nrows * sizeof(kvm_row));
    if (c->rows == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    for (size_t r = 0; r < c->nrows; r++) {
        int64_t t[3]; /* memcpy: the buffer need not be 8-byte aligned */
        memcpy(t, (const uint8_t *)c->table.buf + r * sizeof(t), sizeof(t));
        if (t[0] < 0 || t[0] >= c->nkv || t[1] < 0 || t[2] < 0)
            return fail("a row names no kv buffer, or has a negative offset or stride");
        Py_ssize_t len = c->kv[t[0]].len;
        /* Highest byte touched: offset + max_id * stride + row_bytes <= len, without overflow. */
        if (row_bytes > len || t[1] > len - row_bytes
            || (c->nids && t[2] && max_id > (len - row_bytes - t[1]) / t[2]))
            return fail("a block id reaches past the end of its kv buffer");
        c->rows[r].base = (uint8_t *)c->kv[t[0]].buf + t[1];
        c->rows[r].stride = (size_t)t[2];
    }
    return 0;
}

static int take_slab(blocks_call *c, PyObject *slab, int writable, Py_ssize_t row_bytes,
                     Py_ssize_t first, Py_ssize_t slab_blocks)
{
    if (get_bytes(slab, &c->slab, writable, "the slab") < 0)
        return -1;
    c->have_slab = 1;
    if (first < 0 || slab_blocks < first || (size_t)(slab_blocks - first) < c->nids)
        return fail("ids do not fit in the slab's blocks from `first`");
    if (c->nrows > (size_t)(PY_SSIZE_T_MAX / row_bytes))
        return fail("the slab must hold exactly len(rows) * slab_blocks * row_bytes bytes");
    Py_ssize_t per_slot = (Py_ssize_t)c->nrows * row_bytes; /* one block of every row */
    if (slab_blocks > PY_SSIZE_T_MAX / per_slot || c->slab.len != slab_blocks * per_slot)
        return fail("the slab must hold exactly len(rows) * slab_blocks * row_bytes bytes");
    return 0;
}

static void release(blocks_call *c)
{
    for (Py_ssize_t i = 0; i < c->nkv; i++)
        PyBuffer_Release(&c->kv[i]);
    if (c->have_table)
        PyBuffer_Release(&c->table);
    if (c->have_slab)
        PyBuffer_Release(&c->slab);
    PyMem_Free(c->kv);
    PyMem_Free(c->rows);
    PyMem_Free(c->ids);
}

static PyObject *copy_blocks(PyObject *args, int to_slab)
{
    PyObject *kv, *table, *ids, *slab;
    Py_ssize_t row_bytes, first, slab_blocks;
    if (!PyArg_ParseTuple(args, "OOnOOnn", &kv, &table, &row_bytes, &ids, &slab, &first,
                          &slab_blocks))
        return NULL;
    blocks_call c = {0};
    int64_t max_id;
    int rc = row_bytes > 0 ? 0 : fail("row_bytes must be > 0");
    if (rc == 0)
        rc = take_kv(&c, kv, !to_slab);
    if (rc == 0)
        rc = take_ids(&c, ids, &max_id);
    if (rc == 0)
        rc = take_rows(&c, table, row_bytes, max_id);
    if (rc == 0)
        rc = take_slab(&c, slab, to_slab, row_bytes, first, slab_blocks);
    if (rc == 0) {
        size_t moved = c.nrows * c.nids * (size_t)row_bytes;
        if (moved >= KVM_COPY_RELEASE_GIL_BYTES) {
            Py_BEGIN_ALLOW_THREADS
            kvm_copy_blocks(c.rows, c.nrows, c.ids, c.nids, (size_t)row_bytes, c.slab.buf,
                            (size_t)slab_blocks, (size_t)first, to_slab);
            Py_END_ALLOW_THREADS
        } else {
            kvm_copy_blocks(c.rows, c.nrows, c.ids, c.nids, (size_t)row_bytes, c.slab.buf,
                            (size_t)slab_blocks, (size_t)first, to_slab);
        }
    }
    release(&c);
    if (rc < 0)
        return NULL;
    Py_RETURN_NONE;
}

PyObject *kvm_py_gather_blocks(PyObject *self, PyObject *args)
{
    return copy_blocks(args, 1);
}

PyObject *kvm_py_scatter_blocks(PyObject *self, PyObject *args)
{
    return copy_blocks(args, 0);
}
