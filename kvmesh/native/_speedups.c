/* Python bindings of the kvmesh.native kernels (see kernels.h and __init__.py).
 *
 * chain_keys(root, tokens, chunk_bytes, n) -> list[bytes]
 *     the n chained xxh3-128 chunk keys; the same bytes as the Python loop.
 * copy_checksum(dst, src) -> int
 *     dst[:len(src)] = src, and xxh3_64 of those bytes, in one pass.
 * copy_stream(dst, src) -> None
 *     dst[:len(src)] = src with streaming (cache-bypassing) stores.
 * pack_int32(seq) -> bytes
 *     a list or tuple of ints as int32 little-endian; TypeError for a
 *     non-integer, OverflowError for a value outside int32.
 * gather_blocks / scatter_blocks(kv, rows, row_bytes, ids, slab, first, slab_blocks)
 *     paged KV block-rows to / from a slab in one call (blocks.c).
 * quant_encode / quant_decode(...)
 *     the fp8 and int8 chunk codecs' loops (quant.c); QUANT says if this CPU runs them.
 *
 * xxhash.h is vendored (BSD-2-Clause, LICENSE.xxhash); the kernel for the
 * best instruction set the CPU has is picked once, at import.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#if PY_VERSION_HEX < 0x030B0000
#include <longintrepr.h> /* ob_digit (3.11 has it in Python.h) */
#endif

#include "blocks.h"
#include "kernels.h"
#include "quant.h"

/* Below these sizes the GIL is kept: retaking it can wait for another thread's
 * whole time slice (5 ms), which would dwarf the work. Key chains sit on the
 * TTFT path, so they keep it unless the prompt is huge; a chunk copy (2 MiB,
 * ~0.5 ms) lets the engine thread run meanwhile. */
#define CHAIN_RELEASE_GIL_BYTES (4 << 20)
#define COPY_RELEASE_GIL_BYTES KVM_COPY_RELEASE_GIL_BYTES

static kvm_chain_keys_fn chain_keys_impl = kvm_chain_keys_default;
static kvm_copy_checksum_fn copy_checksum_impl = kvm_copy_checksum_default;
kvm_copy_stream_fn kvm_copy_stream_best = kvm_copy_stream_default;
static const char *isa = "default";

static void pick_kernels(void)
{
#ifdef KVM_X86_DISPATCH
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f")) {
        chain_keys_impl = kvm_chain_keys_avx512;
        copy_checksum_impl = kvm_copy_checksum_avx512;
        kvm_copy_stream_best = kvm_copy_stream_avx512;
        isa = "avx512";
    } else if (__builtin_cpu_supports("avx2")) {
        chain_keys_impl = kvm_chain_keys_avx2;
        copy_checksum_impl = kvm_copy_checksum_avx2;
        kvm_copy_stream_best = kvm_copy_stream_avx2;
        isa = "avx2";
    }
#endif
}

static PyObject *chain_keys(PyObject *self, PyObject *args)
{
    Py_buffer root, tokens;
    Py_ssize_t chunk_bytes, n;
    if (!PyArg_ParseTuple(args, "y*y*nn", &root, &tokens, &chunk_bytes, &n))
        return NULL;
    PyObject *out = NULL;
    uint8_t *scratch = NULL, *keys = NULL;
    if (root.len != KVM_KEY_BYTES || chunk_bytes <= 0 || n < 0 || n > tokens.len / chunk_bytes) {
        PyErr_SetString(PyExc_ValueError, "chain_keys: bad root, chunk size or count");
        goto done;
    }
    scratch = PyMem_RawMalloc((size_t)(KVM_KEY_BYTES + chunk_bytes));
    keys = PyMem_RawMalloc((size_t)(n ? n : 1) * KVM_KEY_BYTES);
    if (scratch == NULL || keys == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    if (n * chunk_bytes >= CHAIN_RELEASE_GIL_BYTES) {
        Py_BEGIN_ALLOW_THREADS
        chain_keys_impl(root.buf, tokens.buf, (size_t)chunk_bytes, (size_t)n, scratch, keys);
        Py_END_ALLOW_THREADS
    } else {
        chain_keys_impl(root.buf, tokens.buf, (size_t)chunk_bytes, (size_t)n, scratch, keys);
    }
    out = PyList_New(n);
    for (Py_ssize_t i = 0; out != NULL && i < n; i++) {
        PyObject *key = PyBytes_FromStringAndSize((const char *)keys + i * KVM_KEY_BYTES,
                                                  KVM_KEY_BYTES);
        if (key == NULL)
            Py_CLEAR(out);
        else
            PyList_SET_ITEM(out, i, key);
    }
done:
    PyMem_RawFree(scratch);
    PyMem_RawFree(keys);
    PyBuffer_Release(&root);
    PyBuffer_Release(&tokens);
    return out;
}

static PyObject *copy_checksum(PyObject *self, PyObject *args)
{
    Py_buffer dst, src;
    if (!PyArg_ParseTuple(args, "w*y*", &dst, &src))
        return NULL;
    PyObject *out = NULL;
    if (src.len > dst.len) {
        PyErr_SetString(PyExc_ValueError, "copy_checksum: destination is smaller than the source");
    } else {
        uint64_t h;
        if (src.len >= COPY_RELEASE_GIL_BYTES) {
            Py_BEGIN_ALLOW_THREADS
            h = copy_checksum_impl(dst.buf, src.buf, (size_t)src.len);
            Py_END_ALLOW_THREADS
        } else {
            h = copy_checksum_impl(dst.buf, src.buf, (size_t)src.len);
        }
        out = PyLong_FromUnsignedLongLong(h);
    }
    PyBuffer_Release(&dst);
    PyBuffer_Release(&src);
    return out;
}

static PyObject *copy_stream(PyObject *self, PyObject *args)
{
    Py_buffer dst, src;
    if (!PyArg_ParseTuple(args, "w*y*", &dst, &src))
        return NULL;
    int fits = src.len <= dst.len;
    if (!fits) {
        PyErr_SetString(PyExc_ValueError, "copy_stream: destination is smaller than the source");
    } else if (src.len >= COPY_RELEASE_GIL_BYTES) {
        Py_BEGIN_ALLOW_THREADS
        kvm_copy_stream_best(dst.buf, src.buf, (size_t)src.len);
        Py_END_ALLOW_THREADS
    } else {
        kvm_copy_stream_best(dst.buf, src.buf, (size_t)src.len);
    }
    PyBuffer_Release(&dst);
    PyBuffer_Release(&src);
    if (!fits)
        return NULL;
    Py_RETURN_NONE;
}

/* An exact int whose value fits one internal digit, read without a call
 * (token ids always do): 1 for done, 0 to take the general path. Saves about
 * half of pack_int32's time on a 32k-token prompt. */
static inline int compact_value(PyObject *item, long *value)
{
    if (!PyLong_CheckExact(item))
        return 0;
#if PY_VERSION_HEX >= 0x030C0000
    if (!PyUnstable_Long_IsCompact((PyLongObject *)item))
        return 0;
    *value = (long)PyUnstable_Long_CompactValue((PyLongObject *)item);
    return 1;
#else
    Py_ssize_t size = Py_SIZE(item); /* digits, negated for negative values */
    if (size < -1 || size > 1)
        return 0;
    *value = size * (long)((PyLongObject *)item)->ob_digit[0];
    return 1;
#endif
}

static PyObject *pack_int32(PyObject *self, PyObject *seq)
{
    /* numpy or array.array spend 25-40 ns per Python int; this spends a few. */
    PyObject *fast = PySequence_Fast(seq, "pack_int32: expected a list or tuple");
    if (fast == NULL)
        return NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(fast);
    PyObject **items = PySequence_Fast_ITEMS(fast);
    PyObject *out = PyBytes_FromStringAndSize(NULL, n * 4);
    unsigned char *p = out ? (unsigned char *)PyBytes_AS_STRING(out) : NULL;
    for (Py_ssize_t i = 0; out != NULL && i < n; i++) {
        PyObject *item = items[i];
        int overflow = 0;
        long value;
        if (compact_value(item, &value)) {
            /* the common case: a small exact int, read in place */
        } else if (PyLong_Check(item)) {
            value = PyLong_AsLongAndOverflow(item, &overflow);
        } else {
            PyObject *index = PyNumber_Index(item); /* numpy ints; TypeError for floats */
            value = index ? PyLong_AsLongAndOverflow(index, &overflow) : -1;
            Py_XDECREF(index);
            if (index == NULL) {
                Py_CLEAR(out);
                break;
            }
        }
        if (overflow || value < INT32_MIN || value > INT32_MAX) {
            PyErr_SetString(PyExc_OverflowError, "token ids must fit in int32");
            Py_CLEAR(out);
            break;
        }
        uint32_t u = (uint32_t)value; /* little-endian whatever the host */
        p[4 * i] = (unsigned char)u;
        p[4 * i + 1] = (unsigned char)(u >> 8);
        p[4 * i + 2] = (unsigned char)(u >> 16);
        p[4 * i + 3] = (unsigned char)(u >> 24);
    }
    Py_DECREF(fast);
    return out;
}

static PyMethodDef methods[] = {
    {"chain_keys", chain_keys, METH_VARARGS,
     "chain_keys(root, tokens, chunk_bytes, n) -> list of n chained xxh3-128 keys"},
    {"copy_checksum", copy_checksum, METH_VARARGS,
     "copy_checksum(dst, src) -> xxh3_64 of src, after copying it into dst"},
    {"copy_stream", copy_stream, METH_VARARGS,
     "copy_stream(dst, src): dst[:len(src)] = src, bypassing the cache"},
    {"pack_int32", pack_int32, METH_O,
     "pack_int32(seq) -> bytes: ints as int32 little-endian"},
    {"gather_blocks", kvm_py_gather_blocks, METH_VARARGS,
     "gather_blocks(kv, rows, row_bytes, ids, slab, first, slab_blocks): KV block-rows into slab"},
    {"scatter_blocks", kvm_py_scatter_blocks, METH_VARARGS,
     "scatter_blocks(kv, rows, row_bytes, ids, slab, first, slab_blocks): slab into KV block-rows"},
    {"quant_encode", kvm_py_quant_encode, METH_VARARGS,
     "quant_encode(x, value_kind, codes, code_kind, scales, loop, qmax) -> 0, or -1 for inf/NaN"},
    {"quant_decode", kvm_py_quant_decode, METH_VARARGS,
     "quant_decode(out, value_kind, codes, code_kind, scales, loop) -> count of invalid codes"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "kvmesh.native._speedups", NULL, -1, methods,
};

PyMODINIT_FUNC PyInit__speedups(void)
{
    pick_kernels();
    PyObject *m = PyModule_Create(&module);
    if (m != NULL && (PyModule_AddStringConstant(m, "ISA", isa) < 0
                      || PyModule_AddIntConstant(m, "QUANT", kvm_quant_supported()) < 0))
        Py_CLEAR(m);
    return m;
}
