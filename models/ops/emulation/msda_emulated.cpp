// The CUDA kernels of multi-scale deformable attention, compiled as host C++ and run on the CPU.
//
// The kernel source and the host launch code are the files nvcc compiles (src/cuda/*.cuh, *.h);
// only the Launcher differs: it hands the kernels bounds-checked pointers to CPU tensors and runs
// the grid through the emulator (cuda_emulation.h). A few deliberately wrong kernels let the tests
// check that the emulator catches what a GPU would punish.
#include <torch/extension.h>

// clang-format off: the shim must come after the torch headers and before the kernels.
#include "cuda_emulation.h"
#include "cuda/ms_deform_attn_cuda_launch.h"
// clang-format on

namespace {

struct EmulatedLauncher {
  struct Guard {
    explicit Guard(const at::Tensor& value) {
      TORCH_CHECK(value.device().is_cpu(), "cuda emulation: tensors must be on the CPU, got ", value.device());
    }
  };

  template <typename T>
  static msda::global_ptr<const T> input(const at::Tensor& t, const char* name) {
    return msda::global_ptr<const T>(t.const_data_ptr<T>(), t.numel(), name);
  }

  template <typename T>
  static msda::global_ptr<T> output(at::Tensor& t, const char* name) {
    return msda::global_ptr<T>(t.mutable_data_ptr<T>(), t.numel(), name);
  }

  template <typename... KernelArgs, typename... Args>
  static void launch(void (*kernel)(KernelArgs...), unsigned int blocks, int threads_per_block, Args... args) {
    cuda_emu::launch(kernel, cuda_emu::dim3{blocks}, cuda_emu::dim3{static_cast<unsigned int>(threads_per_block)},
                     args...);
  }
};

at::Tensor forward(const at::Tensor& value, const at::Tensor& spatial_shapes, const at::Tensor& level_start_index,
                   const at::Tensor& sampling_loc, const at::Tensor& attn_weight, int64_t im2col_step) {
  return msda::launch_forward<EmulatedLauncher>("ms_deform_attn_emulated_forward", value, spatial_shapes,
                                                level_start_index, sampling_loc, attn_weight, im2col_step);
}

std::vector<at::Tensor> backward(const at::Tensor& value, const at::Tensor& spatial_shapes,
                                 const at::Tensor& level_start_index, const at::Tensor& sampling_loc,
                                 const at::Tensor& attn_weight, const at::Tensor& grad_output, int64_t im2col_step) {
  return msda::launch_backward<EmulatedLauncher>("ms_deform_attn_emulated_backward", value, spatial_shapes,
                                                 level_start_index, sampling_loc, attn_weight, grad_output,
                                                 im2col_step);
}

std::vector<int64_t> launch_sizes(int64_t head_dim, int64_t num_items) {
  const int group = msda::group_size(head_dim);
  const int64_t num_threads = num_items * group;
  return {group, num_threads, msda::num_blocks(num_threads), msda::kThreadsPerBlock};
}

// ---- Kernels for testing the emulator itself ----

// out[t] = the value lane t of its warp reads with the given shuffle; lane `skip` (if >= 0) skips it.
template <int kMode>
__global__ void shuffle_kernel(msda::global_ptr<int64_t> out, int arg, int width, int skip) {
  const int t = static_cast<int>(blockIdx.x * blockDim.x + threadIdx.x);
  const int lane = t % warpSize;
  int64_t v = 1000 + t;
  if (lane != skip) {
    if (kMode == 0) {
      v = __shfl_sync(0xffffffffu, v, arg, width);
    } else if (kMode == 1) {
      v = __shfl_up_sync(0xffffffffu, v, arg, width);
    } else if (kMode == 2) {
      v = __shfl_down_sync(0xffffffffu, v, arg, width);
    } else {
      v = __shfl_xor_sync(0xffffffffu, v, arg, width);
    }
  }
  out[t] = v;
}

// out[t] = ballot of (x[t] > 0) over the warp.
__global__ void ballot_kernel(msda::global_ptr<const float> x, msda::global_ptr<int64_t> out) {
  const int t = static_cast<int>(blockIdx.x * blockDim.x + threadIdx.x);
  out[t] = __ballot_sync(0xffffffffu, x[t] > 0);
}

// out[b] = sum of x over block b, by a shared-memory tree reduction with __syncthreads.
__global__ void block_sum_kernel(msda::global_ptr<const float> x, msda::global_ptr<float> out) {
  __shared__ float partial[1024];
  const unsigned int t = threadIdx.x;
  partial[t] = x[blockIdx.x * blockDim.x + t];
  __syncthreads();
  for (unsigned int half = blockDim.x / 2; half > 0; half /= 2) {
    if (t < half) {
      partial[t] += partial[t + half];
    }
    __syncthreads();
  }
  if (t == 0) {
    out[blockIdx.x] = partial[0];
  }
}

// Writes out[t + shift]: with shift 1 the last thread writes one past the end.
__global__ void shifted_write_kernel(msda::global_ptr<float> out, int shift) {
  const int t = static_cast<int>(blockIdx.x * blockDim.x + threadIdx.x);
  out[t + shift] = static_cast<float>(t);
}

// Copies x[t + shift] to out[t]: with shift 1 the last thread reads one past the end of x.
__global__ void shifted_read_kernel(msda::global_ptr<const float> x, msda::global_ptr<float> out, int shift) {
  const int t = static_cast<int>(blockIdx.x * blockDim.x + threadIdx.x);
  out[t] = x[t + shift];
}

at::Tensor run_shuffle(const std::string& mode, int64_t threads, int64_t arg, int64_t width, int64_t skip) {
  at::Tensor out = at::empty({threads}, at::kLong);
  const auto o = EmulatedLauncher::output<int64_t>(out, "out");
  const unsigned int blocks = 1;
  const int a = static_cast<int>(arg);
  const int w = static_cast<int>(width);
  const int s = static_cast<int>(skip);
  const int n = static_cast<int>(threads);
  if (mode == "idx") {
    EmulatedLauncher::launch(shuffle_kernel<0>, blocks, n, o, a, w, s);
  } else if (mode == "up") {
    EmulatedLauncher::launch(shuffle_kernel<1>, blocks, n, o, a, w, s);
  } else if (mode == "down") {
    EmulatedLauncher::launch(shuffle_kernel<2>, blocks, n, o, a, w, s);
  } else {
    TORCH_CHECK(mode == "xor", "run_shuffle: mode must be idx, up, down or xor, got ", mode);
    EmulatedLauncher::launch(shuffle_kernel<3>, blocks, n, o, a, w, s);
  }
  return out;
}

at::Tensor run_ballot(const at::Tensor& x) {
  at::Tensor out = at::empty({x.numel()}, at::kLong);
  EmulatedLauncher::launch(ballot_kernel, 1, static_cast<int>(x.numel()), EmulatedLauncher::input<float>(x, "x"),
                           EmulatedLauncher::output<int64_t>(out, "out"));
  return out;
}

at::Tensor run_block_sum(const at::Tensor& x, int64_t threads_per_block) {
  TORCH_CHECK(x.numel() % threads_per_block == 0, "run_block_sum: numel must be a multiple of the block");
  at::Tensor out = at::empty({x.numel() / threads_per_block}, at::kFloat);
  EmulatedLauncher::launch(block_sum_kernel, static_cast<unsigned int>(out.numel()),
                           static_cast<int>(threads_per_block), EmulatedLauncher::input<float>(x, "x"),
                           EmulatedLauncher::output<float>(out, "out"));
  return out;
}

at::Tensor run_shifted_write(int64_t threads, int64_t shift) {
  at::Tensor out = at::zeros({threads}, at::kFloat);
  EmulatedLauncher::launch(shifted_write_kernel, 1, static_cast<int>(threads),
                           EmulatedLauncher::output<float>(out, "out"), static_cast<int>(shift));
  return out;
}

at::Tensor run_shifted_read(const at::Tensor& x, int64_t shift) {
  at::Tensor out = at::zeros({x.numel()}, at::kFloat);
  EmulatedLauncher::launch(shifted_read_kernel, 1, static_cast<int>(x.numel()), EmulatedLauncher::input<float>(x, "x"),
                           EmulatedLauncher::output<float>(out, "out"), static_cast<int>(shift));
  return out;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "The CUDA kernels of multi-scale deformable attention, emulated on the CPU (tests only)";
  m.def("ms_deform_attn_forward", &forward, "Forward through the emulated CUDA kernels: (N, Lq, M * D)");
  m.def("ms_deform_attn_backward", &backward, "Backward: [grad_value, grad_sampling_loc, grad_attn_weight]");
  m.def("launch_sizes", &launch_sizes, "[group, num_threads, blocks, threads_per_block] of the real launch");
  m.def("run_shuffle", &run_shuffle, "Test kernel: one warp shuffle (idx, up, down, xor)");
  m.def("run_ballot", &run_ballot, "Test kernel: __ballot_sync of x > 0");
  m.def("run_block_sum", &run_block_sum, "Test kernel: per-block sums through __shared__ and __syncthreads");
  m.def("run_shifted_write", &run_shifted_write, "Test kernel: thread t writes out[t + shift]");
  m.def("run_shifted_read", &run_shifted_read, "Test kernel: thread t reads x[t + shift]");
}
