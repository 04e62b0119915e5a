// Python bindings of the compiled module MultiScaleDeformableAttention.
#include <torch/extension.h>

#include "ms_deform_attn.h"

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "Multi-scale deformable attention kernels (CPU, and CUDA when built with it)";
  m.def("ms_deform_attn_forward", &ms_deform_attn_forward, "Forward: output (N, Lq, M * D)", py::arg("value"),
        py::arg("spatial_shapes"), py::arg("level_start_index"), py::arg("sampling_loc"), py::arg("attn_weight"),
        py::arg("im2col_step"));
  m.def("ms_deform_attn_backward", &ms_deform_attn_backward,
        "Backward: [grad_value, grad_sampling_loc, grad_attn_weight]", py::arg("value"), py::arg("spatial_shapes"),
        py::arg("level_start_index"), py::arg("sampling_loc"), py::arg("attn_weight"), py::arg("grad_output"),
        py::arg("im2col_step"));
  m.def("compiled_with_cuda", &ms_deform_attn_compiled_with_cuda, "True iff the CUDA kernels were built");
}
