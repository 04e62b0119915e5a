// CPU kernels of multi-scale deformable attention (float64, float32, bfloat16, float16).
// Inputs are contiguous CPU tensors; shapes as in ms_deform_attn.h.
#pragma once

#include <ATen/ATen.h>

#include <vector>

at::Tensor ms_deform_attn_cpu_forward(const at::Tensor& value, const at::Tensor& spatial_shapes,
                                      const at::Tensor& level_start_index, const at::Tensor& sampling_loc,
                                      const at::Tensor& attn_weight, int64_t im2col_step);

std::vector<at::Tensor> ms_deform_attn_cpu_backward(const at::Tensor& value, const at::Tensor& spatial_shapes,
                                                    const at::Tensor& level_start_index,
                                                    const at::Tensor& sampling_loc, const at::Tensor& attn_weight,
                                                    const at::Tensor& grad_output, int64_t im2col_step);
