// Python module of the CUDA extension; importing it runs the TORCH_LIBRARY registrations of the
// CUDA kernels (torch.ops.rja.cuda_*).
#include <Python.h>

extern "C" PyObject* PyInit__C_cuda(void) {
  static PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C_cuda", nullptr, -1, nullptr,
                                   nullptr, nullptr, nullptr, nullptr};
  return PyModule_Create(&module_def);
}
