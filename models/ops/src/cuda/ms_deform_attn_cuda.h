// CUDA kernels of multi-scale deformable attention (float64, float32, float16, bfloat16 values).
// Inputs are contiguous tensors on one CUDA device; shapes as in ms_deform_attn.h. sampling_loc and
// attn_weight are float32 (float64 for float64 values), whatever the value dtype; so are the
// gradients returned for them.
#pragma once

#include <ATen/ATen.h>

#include <vector>

at::Tensor ms_deform_attn_cuda_forward(const at::Tensor& value, const at::Tensor& spatial_shapes,
                                       const at::Tensor& level_start_index, const at::Tensor& sampling_loc,
                                       const at::Tensor& attn_weight, int64_t im2col_step);

std::vector<at::Tensor> ms_deform_attn_cuda_backward(const at::Tensor& value, const at::Tensor& spatial_shapes,
                                                     const at::Tensor& level_start_index,
                                                     const at::Tensor& sampling_loc, const at::Tensor& attn_weight,
                                                     const at::Tensor& grad_output, int64_t im2col_step);
