/* The fp8 and int8 chunk codecs' loops (see quant.c). */
#ifndef KVMESH_NATIVE_QUANT_H
#define KVMESH_NATIVE_QUANT_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <stdint.h>

/* 1 when this CPU runs the kernels (x86-64 with AVX2 and F16C). */
int kvm_quant_supported(void);

PyObject *kvm_py_quant_encode(PyObject *self, PyObject *args);
PyObject *kvm_py_quant_decode(PyObject *self, PyObject *args);

#endif
