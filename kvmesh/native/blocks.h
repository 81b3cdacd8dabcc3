/* Gather and scatter of paged KV blocks as rows of bytes (see blocks.c).
 *
 * The byte layout: a chunk's KV is `nrows` rows; row r lives in one buffer,
 * its block b at `base_r + b * stride_r`, each block-row `row_bytes` long.
 * In the slab, row r holds `slab_blocks` block-rows one after another, the
 * rows one after another: block position p of row r is at
 * `(r * slab_blocks + p) * row_bytes`.
 */
#ifndef KVMESH_NATIVE_BLOCKS_H
#define KVMESH_NATIVE_BLOCKS_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <stddef.h>
#include <stdint.h>

/* Below this many bytes a copy keeps the GIL: retaking it can wait for
 * another thread's whole time slice (5 ms), which would dwarf the work. */
#define KVM_COPY_RELEASE_GIL_BYTES (256 << 10)

typedef struct {
    uint8_t *base;  /* block 0 of the row */
    size_t stride;  /* bytes from one block to the next */
} kvm_row;

/* For each row r and each p < nids: copies the block-row ids[p] of row r to
 * (to_slab) or from slab position first + p of row r. All bounds must have
 * been checked; the KV and the slab must not overlap. */
void kvm_copy_blocks(const kvm_row *rows, size_t nrows, const int64_t *ids, size_t nids,
                     size_t row_bytes, uint8_t *slab, size_t slab_blocks, size_t first,
                     int to_slab);

/* gather_blocks / scatter_blocks(kv, rows, row_bytes, ids, slab, first, slab_blocks) */
PyObject *kvm_py_gather_blocks(PyObject *self, PyObject *args);
PyObject *kvm_py_scatter_blocks(PyObject *self, PyObject *args);

#endif
