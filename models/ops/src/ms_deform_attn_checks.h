// Memory-safety checks shared by the CPU and CUDA entry points. Users' mistakes are reported by the
// Python front (models/ops/functions/validation.py), which names the tensor; what stays here is what
// keeps a direct call of the compiled module from reading or writing outside its tensors: devices,
// contiguity, ranks and sizes that the kernels' indexing relies on, dtypes, a positive im2col_step.
// They look only at metadata (no device synchronisation). The level sizes are data: the kernels skip
// a level that does not fit inside value (msda::level_in_bounds) instead.
#pragma once

#include <ATen/ATen.h>

inline void ms_deform_attn_check_inputs(const char* where, const at::Tensor& value, const at::Tensor& spatial_shapes,
                                        const at::Tensor& level_start_index, const at::Tensor& sampling_loc,
                                        const at::Tensor& attn_weight, const at::Tensor* grad_output,
                                        int64_t im2col_step,
                                        at::ScalarType coord_dtype = at::ScalarType::Undefined) {
  // coord_dtype: the dtype sampling_loc and attn_weight must have; Undefined means value's dtype.
  for (const at::Tensor* t : {&value, &spatial_shapes, &level_start_index, &sampling_loc, &attn_weight, grad_output}) {
    if (t == nullptr) {
      continue;
    }
    TORCH_CHECK(t->device() == value.device(), where, ": all inputs must be on value's device ", value.device(),
                ", got ", t->device());
    TORCH_CHECK(t->is_contiguous(), where, ": all inputs must be contiguous");
  }
  TORCH_CHECK(value.dim() == 4, where, ": value must be (N, S, M, D), got ", value.sizes());
  const int64_t N = value.size(0);
  const int64_t M = value.size(2);
  const int64_t D = value.size(3);
  TORCH_CHECK(spatial_shapes.dim() == 2 && spatial_shapes.size(1) == 2, where, ": spatial_shapes must be (L, 2), got ",
              spatial_shapes.sizes());
  const int64_t L = spatial_shapes.size(0);
  TORCH_CHECK(level_start_index.dim() == 1 && level_start_index.size(0) == L, where,
              ": level_start_index must be (L,) with L = ", L, ", got ", level_start_index.sizes());
  TORCH_CHECK(sampling_loc.dim() == 6 && sampling_loc.size(0) == N && sampling_loc.size(2) == M &&
                  sampling_loc.size(3) == L && sampling_loc.size(5) == 2,
              where, ": sampling_loc must be (N, Lq, M, L, P, 2) = (", N, ", Lq, ", M, ", ", L, ", P, 2), got ",
              sampling_loc.sizes());
  TORCH_CHECK(attn_weight.sizes() == sampling_loc.sizes().slice(0, 5), where,
              ": attn_weight must be (N, Lq, M, L, P) = ", sampling_loc.sizes().slice(0, 5), ", got ",
              attn_weight.sizes());
  TORCH_CHECK(spatial_shapes.scalar_type() == at::kLong && level_start_index.scalar_type() == at::kLong, where,
              ": spatial_shapes and level_start_index must be int64");
  const at::ScalarType loc_dtype = coord_dtype == at::ScalarType::Undefined ? value.scalar_type() : coord_dtype;
  TORCH_CHECK(sampling_loc.scalar_type() == loc_dtype && attn_weight.scalar_type() == loc_dtype, where,
              ": sampling_loc and attn_weight must be ", loc_dtype, " for value of dtype ", value.scalar_type());
  if (grad_output != nullptr) {
    TORCH_CHECK(grad_output->scalar_type() == value.scalar_type(), where, ": grad_output must have value's dtype ",
                value.scalar_type());
    TORCH_CHECK(grad_output->dim() == 3 && grad_output->size(0) == N && grad_output->size(1) == sampling_loc.size(1) &&
                    grad_output->size(2) == M * D,
                where, ": grad_output must be (N, Lq, M * D), got ", grad_output->sizes());
  }
  TORCH_CHECK(im2col_step > 0, where, ": im2col_step must be positive, got ", im2col_step);
}
