// Host side of the CUDA op: checks, output allocation, launch sizing and dtype dispatch.
//
// Shared by the real launch (ms_deform_attn_cuda.cu) and the CPU emulation of the kernels
// (models/ops/emulation), so the tests exercise the same group size, block count and buffers as a
// GPU run. A Launcher provides what differs:
//   Launcher::Guard                      made from value (the CUDA device guard, or nothing)
//   Launcher::input<T>(tensor, name)     a msda::global_ptr<const T> to the tensor's data
//   Launcher::output<T>(tensor, name)    a msda::global_ptr<T> to the tensor's data
//   Launcher::launch(kernel, blocks, threads_per_block, args...)
// Dtypes: value and grad_output in any floating dtype; sampling_loc and attn_weight in float32
// (float64 when value is float64); outputs and grad_value in value's dtype, grad_loc and
// grad_attn in the locations' dtype.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>

#include <limits>
#include <vector>

#include "cuda/ms_deform_attn_kernels.cuh"
#include "ms_deform_attn_checks.h"

namespace msda {

inline Sizes sizes_of(const at::Tensor& value, const at::Tensor& sampling_loc) {
  return Sizes{value.size(0),        value.size(1),        value.size(2),       value.size(3),
               sampling_loc.size(1), sampling_loc.size(3), sampling_loc.size(4)};
}

// The dtype of sampling_loc and attn_weight (and their gradients) for values of this dtype.
inline at::ScalarType coord_dtype(const at::Tensor& value) {
  return value.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
}

inline unsigned int checked_num_blocks(int64_t num_threads) {
  const int64_t blocks = num_blocks(num_threads);
  TORCH_CHECK(blocks <= std::numeric_limits<int32_t>::max(), "ms_deform_attn_cuda: problem too large (", num_threads,
              " threads)");
  return static_cast<unsigned int>(blocks);
}

template <class Launcher>
at::Tensor launch_forward(const char* where, const at::Tensor& value, const at::Tensor& spatial_shapes,
                          const at::Tensor& level_start_index, const at::Tensor& sampling_loc,
                          const at::Tensor& attn_weight, int64_t im2col_step) {
  ms_deform_attn_check_inputs(where, value, spatial_shapes, level_start_index, sampling_loc, attn_weight, nullptr,
                              im2col_step, coord_dtype(value));
  const typename Launcher::Guard guard(value);
  const Sizes z = sizes_of(value, sampling_loc);
  at::Tensor output = at::empty({z.N, z.Lq, z.M * z.D}, value.options());
  if (output.numel() == 0) {
    return output;
  }
  const int group = group_size(z.D);
  const int64_t num_threads = z.N * z.Lq * z.M * group;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, value.scalar_type(), "ms_deform_attn_cuda_forward", [&] {
    using acc_t = acc_type<scalar_t>;
    Launcher::launch(forward_kernel<scalar_t>, checked_num_blocks(num_threads), kThreadsPerBlock,
                     Launcher::template input<scalar_t>(value, "value"),
                     Launcher::template input<int64_t>(spatial_shapes, "spatial_shapes"),
                     Launcher::template input<int64_t>(level_start_index, "level_start_index"),
                     Launcher::template input<acc_t>(sampling_loc, "sampling_loc"),
                     Launcher::template input<acc_t>(attn_weight, "attn_weight"),
                     Launcher::template output<scalar_t>(output, "output"), z, group, num_threads);
  });
  return output;
}

template <class Launcher>
std::vector<at::Tensor> launch_backward(const char* where, const at::Tensor& value, const at::Tensor& spatial_shapes,
                                        const at::Tensor& level_start_index, const at::Tensor& sampling_loc,
                                        const at::Tensor& attn_weight, const at::Tensor& grad_output,
                                        int64_t im2col_step) {
  ms_deform_attn_check_inputs(where, value, spatial_shapes, level_start_index, sampling_loc, attn_weight, &grad_output,
                              im2col_step, coord_dtype(value));
  const typename Launcher::Guard guard(value);
  const Sizes z = sizes_of(value, sampling_loc);

  // grad_value is a sum over points (atomics), so it starts at zero; for half types it is summed in
  // float32 and cast at the end. grad_loc and grad_attn are written once per point.
  const bool half_type = value.scalar_type() == at::kHalf || value.scalar_type() == at::kBFloat16;
  const at::ScalarType acc_dtype = half_type ? at::kFloat : value.scalar_type();
  at::Tensor grad_value_acc = at::zeros(value.sizes(), value.options().dtype(acc_dtype));
  at::Tensor grad_loc = at::empty_like(sampling_loc);
  at::Tensor grad_attn = at::empty_like(attn_weight);

  const int group = group_size(z.D);
  const int64_t num_threads = z.N * z.Lq * z.M * group;
  if (num_threads > 0 && z.D > 0) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, value.scalar_type(), "ms_deform_attn_cuda_backward", [&] {
      using acc_t = acc_type<scalar_t>;
      Launcher::launch(backward_kernel<scalar_t>, checked_num_blocks(num_threads), kThreadsPerBlock,
                       Launcher::template input<scalar_t>(value, "value"),
                       Launcher::template input<int64_t>(spatial_shapes, "spatial_shapes"),
                       Launcher::template input<int64_t>(level_start_index, "level_start_index"),
                       Launcher::template input<acc_t>(sampling_loc, "sampling_loc"),
                       Launcher::template input<acc_t>(attn_weight, "attn_weight"),
                       Launcher::template input<scalar_t>(grad_output, "grad_output"),
                       Launcher::template output<acc_t>(grad_value_acc, "grad_value"),
                       Launcher::template output<acc_t>(grad_loc, "grad_loc"),
                       Launcher::template output<acc_t>(grad_attn, "grad_attn"), z, group, num_threads);
    });
  } else {
    grad_loc.zero_();
    grad_attn.zero_();
  }
  at::Tensor grad_value = half_type ? grad_value_acc.to(value.scalar_type()) : grad_value_acc;
  return {grad_value, grad_loc, grad_attn};
}

}  // namespace msda
