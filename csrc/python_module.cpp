// Makes the library importable as `engine._C`; importing it runs the op registrations.
#include <Python.h>

extern "C" PyMODINIT_FUNC PyInit__C(void) {
  static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_C", "noise-robust loss ops (torch.ops.noisy)", -1,
                                      nullptr};
  return PyModule_Create(&module);
}
