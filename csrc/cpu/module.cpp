// Python module of the CPU extension. It holds no Python functions: importing it runs the static
// TORCH_LIBRARY registrations of this library, and the kernels are reached as torch.ops.rja.*.
#include <Python.h>

extern "C" PyObject* PyInit__C(void) {
  static PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr,
                                   nullptr, nullptr, nullptr, nullptr};
  return PyModule_Create(&module_def);
}
