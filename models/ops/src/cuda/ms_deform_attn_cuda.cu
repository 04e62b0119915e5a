// Entry points of the CUDA op: the kernels (ms_deform_attn_kernels.cuh) launched on the current
// stream through the host code shared with the CPU emulation (ms_deform_attn_cuda_launch.h).
// im2col_step only bounded workspace in the original design; no workspace is needed here, so the
// whole batch is one launch for any batch size.
#include "cuda/ms_deform_attn_cuda.h"

#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>

#include "cuda/ms_deform_attn_cuda_launch.h"

namespace {

struct CudaLauncher {
  struct Guard {
    explicit Guard(const at::Tensor& value) : guard(value.device()) {}
    c10::cuda::OptionalCUDAGuard guard;
  };

  template <typename T>
  static const T* input(const at::Tensor& t, const char*) {
    return t.const_data_ptr<T>();
  }

  template <typename T>
  static T* output(at::Tensor& t, const char*) {
    return t.mutable_data_ptr<T>();
  }

  template <typename... KernelArgs, typename... Args>
  static void launch(void (*kernel)(KernelArgs...), unsigned int blocks, int threads_per_block, Args... args) {
    kernel<<<blocks, threads_per_block, 0, at::cuda::getCurrentCUDAStream()>>>(args...);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
};

}  // namespace

at::Tensor ms_deform_attn_cuda_forward(const at::Tensor& value, const at::Tensor& spatial_shapes,
                                       const at::Tensor& level_start_index, const at::Tensor& sampling_loc,
                                       const at::Tensor& attn_weight, int64_t im2col_step) {
  TORCH_CHECK(value.is_cuda(), "ms_deform_attn_cuda_forward: value must be a CUDA tensor");
  return msda::launch_forward<CudaLauncher>("ms_deform_attn_cuda_forward", value, spatial_shapes, level_start_index,
                                            sampling_loc, attn_weight, im2col_step);
}

std::vector<at::Tensor> ms_deform_attn_cuda_backward(const at::Tensor& value, const at::Tensor& spatial_shapes,
                                                     const at::Tensor& level_start_index,
                                                     const at::Tensor& sampling_loc, const at::Tensor& attn_weight,
                                                     const at::Tensor& grad_output, int64_t im2col_step) {
  TORCH_CHECK(value.is_cuda(), "ms_deform_attn_cuda_backward: value must be a CUDA tensor");
  return msda::launch_backward<CudaLauncher>("ms_deform_attn_cuda_backward", value, spatial_shapes,
                                             level_start_index, sampling_loc, attn_weight, grad_output, im2col_step);
}
