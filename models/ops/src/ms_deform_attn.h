// Multi-scale deformable attention: device dispatch between the CPU and CUDA kernels.
//
// value (N, S, M, D); spatial_shapes (L, 2) int64 as (H, W); level_start_index (L,) int64;
// sampling_loc (N, Lq, M, L, P, 2) as (x, y) in [0, 1]; attn_weight (N, Lq, M, L, P);
// output (N, Lq, M * D). The Python front validates inputs and makes them contiguous; the checks
// here and in the kernels are a safety net against crashes when the module is called directly.
#pragma once

#include <ATen/ATen.h>

#include <vector>

#include "cpu/ms_deform_attn_cpu.h"
#ifdef WITH_CUDA
#include "cuda/ms_deform_attn_cuda.h"
#endif

inline bool ms_deform_attn_compiled_with_cuda() {
#ifdef WITH_CUDA
  return true;
#else
  return false;
#endif
}

inline at::Tensor ms_deform_attn_forward(const at::Tensor& value, const at::Tensor& spatial_shapes,
                                         const at::Tensor& level_start_index, const at::Tensor& sampling_loc,
                                         const at::Tensor& attn_weight, int64_t im2col_step) {
  if (value.is_cuda()) {
#ifdef WITH_CUDA
    return ms_deform_attn_cuda_forward(value, spatial_shapes, level_start_index, sampling_loc, attn_weight,
                                       im2col_step);
#else
    TORCH_CHECK(false, "MultiScaleDeformableAttention was built without CUDA; rebuild it with nvcc available "
                       "(sh models/ops/make.sh) to run on ", value.device());
#endif
  }
  TORCH_CHECK(value.device().is_cpu(), "ms_deform_attn_forward: unsupported device ", value.device());
  return ms_deform_attn_cpu_forward(value, spatial_shapes, level_start_index, sampling_loc, attn_weight, im2col_step);
}

inline std::vector<at::Tensor> ms_deform_attn_backward(const at::Tensor& value, const at::Tensor& spatial_shapes,
                                                       const at::Tensor& level_start_index,
                                                       const at::Tensor& sampling_loc, const at::Tensor& attn_weight,
                                                       const at::Tensor& grad_output, int64_t im2col_step) {
  if (value.is_cuda()) {
#ifdef WITH_CUDA
    return ms_deform_attn_cuda_backward(value, spatial_shapes, level_start_index, sampling_loc, attn_weight,
                                        grad_output, im2col_step);
#else
    TORCH_CHECK(false, "MultiScaleDeformableAttention was built without CUDA; rebuild it with nvcc available "
                       "(sh models/ops/make.sh) to run on ", value.device());
#endif
  }
  TORCH_CHECK(value.device().is_cpu(), "ms_deform_attn_backward: unsupported device ", value.device());
  return ms_deform_attn_cpu_backward(value, spatial_shapes, level_start_index, sampling_loc, attn_weight, grad_output,
                                     im2col_step);
}
