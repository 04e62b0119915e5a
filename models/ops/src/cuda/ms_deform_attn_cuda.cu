// CUDA kernels of multi-scale deformable attention.
//
// Layouts as in the CPU kernels: value (N, S, M, D); spatial_shapes (L, 2) as (H, W);
// level_start_index (L,); sampling_loc (N, Lq, M, L, P, 2); attn_weight (N, Lq, M, L, P);
// output / grad_output (N, Lq, M * D). A query item is one (n, q, m).
//
// Work split: a "group" of G threads (G a power of two <= 32, so a group never straddles a warp)
// serves one query item; lane t of the group handles channels t, t + G, t + 2G, ... so that the group
// reads consecutive channels of a corner together. Each thread does the interpolation setup of a
// point once (ms_deform_attn_math.h) and reuses it for all its channels.
// Forward: per-thread register accumulators, written once (no zero-fill of the output).
// Backward: grad_value by atomicAdd (in a float32 buffer for half types); the per-point gradients
// of the location and attention weight are linear in the per-corner dot products, so each lane
// computes them from its channels and the group sums them with __shfl_xor_sync; lane 0 writes them.
// im2col_step only bounded workspace in the original design; no workspace is needed here, so the
// whole batch is one launch for any batch size. Index arithmetic is 64-bit throughout.
#include "cuda/ms_deform_attn_cuda.h"

#include <ATen/Dispatch.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>

#include <limits>

#include "ms_deform_attn_checks.h"
#include "ms_deform_attn_math.h"

namespace {

constexpr int kThreadsPerBlock = 256;
constexpr int kMaxGroup = 32;            // one warp
constexpr int kChannelsPerThread = 4;    // target channels per lane when choosing G
constexpr int kChunk = 8;                // channels a forward thread accumulates in registers at once

struct Sizes {
  int64_t N;
  int64_t S;
  int64_t M;
  int64_t D;
  int64_t Lq;
  int64_t L;
  int64_t P;
};

// Sum of v over the G lanes of this thread's group; every lane of the warp must call it.
template <typename T>
__device__ __forceinline__ T group_sum(T v, int group) {
  for (int offset = group / 2; offset > 0; offset >>= 1) {
    v += __shfl_xor_sync(0xffffffffu, v, offset);
  }
  return v;
}

template <typename scalar_t>
__global__ void __launch_bounds__(kThreadsPerBlock)
    ms_deform_attn_forward_kernel(const scalar_t* __restrict__ value, const int64_t* __restrict__ shapes,
                                  const int64_t* __restrict__ starts, const scalar_t* __restrict__ loc,
                                  const scalar_t* __restrict__ attn, scalar_t* __restrict__ out, const Sizes z,
                                  const int group, const int64_t num_threads) {
  using acc_t = typename msda::AccType<scalar_t>::type;
  const int64_t tid = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (tid >= num_threads) {
    return;
  }
  const int64_t item = tid / group;
  const int lane = static_cast<int>(tid % group);
  const int64_t n = item / (z.Lq * z.M);
  const int64_t m = item % z.M;
  const int64_t pixel_stride = z.M * z.D;
  const scalar_t* value_nm = value + n * z.S * pixel_stride + m * z.D;
  const int64_t my_channels = (z.D - lane + group - 1) / group;  // lane, lane + G, ... below D

  for (int64_t k0 = 0; k0 < my_channels; k0 += kChunk) {
    const int64_t channel0 = lane + k0 * group;
    acc_t acc[kChunk];
#pragma unroll
    for (int k = 0; k < kChunk; ++k) {
      acc[k] = 0;
    }
    for (int64_t l = 0; l < z.L; ++l) {
      const int64_t H = shapes[2 * l];
      const int64_t W = shapes[2 * l + 1];
      const scalar_t* value_level = value_nm + starts[l] * pixel_stride + channel0;
      for (int64_t p = 0; p < z.P; ++p) {
        const int64_t idx = (item * z.L + l) * z.P + p;
        msda::BilinearPoint<acc_t> bp;
        if (!msda::bilinear_point(static_cast<acc_t>(loc[2 * idx]), static_cast<acc_t>(loc[2 * idx + 1]), H, W, bp)) {
          continue;
        }
        const acc_t a = static_cast<acc_t>(attn[idx]);
#pragma unroll
        for (int c = 0; c < msda::kCorners; ++c) {
          if (!bp.valid[c]) {
            continue;
          }
          const scalar_t* v = value_level + bp.pixel[c] * pixel_stride;
          const acc_t coef = a * bp.weight[c];
#pragma unroll
          for (int k = 0; k < kChunk; ++k) {
            if (k0 + k < my_channels) {
              acc[k] += coef * static_cast<acc_t>(v[k * group]);
            }
          }
        }
      }
    }
    scalar_t* out_row = out + item * z.D + channel0;
#pragma unroll
    for (int k = 0; k < kChunk; ++k) {
      if (k0 + k < my_channels) {
        out_row[k * group] = static_cast<scalar_t>(acc[k]);
      }
    }
  }
}

// gv_t: element type of the grad_value accumulator (float for half types, else scalar_t).
template <typename scalar_t, typename gv_t>
__global__ void __launch_bounds__(kThreadsPerBlock)
    ms_deform_attn_backward_kernel(const scalar_t* __restrict__ value, const int64_t* __restrict__ shapes,
                                   const int64_t* __restrict__ starts, const scalar_t* __restrict__ loc,
                                   const scalar_t* __restrict__ attn, const scalar_t* __restrict__ grad_out,
                                   gv_t* __restrict__ grad_value, scalar_t* __restrict__ grad_loc,
                                   scalar_t* __restrict__ grad_attn, const Sizes z, const int group,
                                   const int64_t num_threads) {
  using acc_t = typename msda::AccType<scalar_t>::type;
  const int64_t tid = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  // Threads past the end stay alive until the end: they take part in the group sums of their warp.
  const bool active = tid < num_threads;
  const int64_t item = active ? tid / group : 0;
  const int lane = static_cast<int>(tid % group);
  const int64_t n = item / (z.Lq * z.M);
  const int64_t m = item % z.M;
  const int64_t pixel_stride = z.M * z.D;
  const int64_t nm_offset = n * z.S * pixel_stride + m * z.D;
  const scalar_t* g_row = grad_out + item * z.D;

  for (int64_t l = 0; l < z.L; ++l) {
    const int64_t H = shapes[2 * l];
    const int64_t W = shapes[2 * l + 1];
    const int64_t level_offset = nm_offset + starts[l] * pixel_stride;
    for (int64_t p = 0; p < z.P; ++p) {
      const int64_t idx = (item * z.L + l) * z.P + p;
      msda::PointGrad<acc_t> pg{0, 0, 0};
      if (active) {
        msda::BilinearPoint<acc_t> bp;
        if (msda::bilinear_point(static_cast<acc_t>(loc[2 * idx]), static_cast<acc_t>(loc[2 * idx + 1]), H, W, bp)) {
          const acc_t a = static_cast<acc_t>(attn[idx]);
          int64_t corner_offset[msda::kCorners];
          acc_t coef[msda::kCorners];
          acc_t dot[msda::kCorners];
#pragma unroll
          for (int c = 0; c < msda::kCorners; ++c) {
            corner_offset[c] = level_offset + bp.pixel[c] * pixel_stride;
            coef[c] = a * bp.weight[c];
            dot[c] = 0;
          }
          for (int64_t d = lane; d < z.D; d += group) {
            const acc_t g = static_cast<acc_t>(g_row[d]);
#pragma unroll
            for (int c = 0; c < msda::kCorners; ++c) {
              if (bp.valid[c]) {
                dot[c] += g * static_cast<acc_t>(value[corner_offset[c] + d]);
                atomicAdd(grad_value + corner_offset[c] + d, static_cast<gv_t>(coef[c] * g));
              }
            }
          }
          // Partial over this lane's channels; point_grad is linear in dot, so partials add up.
          pg = msda::point_grad(bp, dot, a, H, W);
        }
      }
      pg.attn = group_sum(pg.attn, group);
      pg.loc_x = group_sum(pg.loc_x, group);
      pg.loc_y = group_sum(pg.loc_y, group);
      if (active && lane == 0) {
        grad_attn[idx] = static_cast<scalar_t>(pg.attn);
        grad_loc[2 * idx] = static_cast<scalar_t>(pg.loc_x);
        grad_loc[2 * idx + 1] = static_cast<scalar_t>(pg.loc_y);
      }
    }
  }
}

Sizes sizes_of(const at::Tensor& value, const at::Tensor& sampling_loc) {
  return Sizes{value.size(0),        value.size(1),        value.size(2),       value.size(3),
               sampling_loc.size(1), sampling_loc.size(3), sampling_loc.size(4)};
}

// Threads per query item: the power of two near D / kChannelsPerThread, at most a warp.
int group_size(int64_t D) {
  const int64_t want = (D + kChannelsPerThread - 1) / kChannelsPerThread;
  int group = 1;
  while (group < want && group < kMaxGroup) {
    group *= 2;
  }
  return group;
}

unsigned int num_blocks(int64_t num_threads) {
  const int64_t blocks = (num_threads + kThreadsPerBlock - 1) / kThreadsPerBlock;
  TORCH_CHECK(blocks <= std::numeric_limits<int32_t>::max(), "ms_deform_attn_cuda: problem too large (", num_threads,
              " threads)");
  return static_cast<unsigned int>(blocks);
}

}  // namespace

at::Tensor ms_deform_attn_cuda_forward(const at::Tensor& value, const at::Tensor& spatial_shapes,
                                       const at::Tensor& level_start_index, const at::Tensor& sampling_loc,
                                       const at::Tensor& attn_weight, int64_t im2col_step) {
  TORCH_CHECK(value.is_cuda(), "ms_deform_attn_cuda_forward: value must be a CUDA tensor");
  ms_deform_attn_check_inputs("ms_deform_attn_cuda_forward", value, spatial_shapes, level_start_index, sampling_loc,
                              attn_weight, nullptr, im2col_step);
  const c10::cuda::OptionalCUDAGuard device_guard(value.device());
  const Sizes z = sizes_of(value, sampling_loc);
  at::Tensor output = at::empty({z.N, z.Lq, z.M * z.D}, value.options());
  if (output.numel() == 0) {
    return output;
  }
  const int group = group_size(z.D);
  const int64_t num_threads = z.N * z.Lq * z.M * group;
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, value.scalar_type(), "ms_deform_attn_cuda_forward", [&] {
    ms_deform_attn_forward_kernel<scalar_t><<<num_blocks(num_threads), kThreadsPerBlock, 0, stream>>>(
        value.const_data_ptr<scalar_t>(), spatial_shapes.const_data_ptr<int64_t>(),
        level_start_index.const_data_ptr<int64_t>(), sampling_loc.const_data_ptr<scalar_t>(),
        attn_weight.const_data_ptr<scalar_t>(), output.mutable_data_ptr<scalar_t>(), z, group, num_threads);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return output;
}

std::vector<at::Tensor> ms_deform_attn_cuda_backward(const at::Tensor& value, const at::Tensor& spatial_shapes,
                                                     const at::Tensor& level_start_index,
                                                     const at::Tensor& sampling_loc, const at::Tensor& attn_weight,
                                                     const at::Tensor& grad_output, int64_t im2col_step) {
  TORCH_CHECK(value.is_cuda(), "ms_deform_attn_cuda_backward: value must be a CUDA tensor");
  ms_deform_attn_check_inputs("ms_deform_attn_cuda_backward", value, spatial_shapes, level_start_index, sampling_loc,
                              attn_weight, &grad_output, im2col_step);
  const Sizes z = sizes_of(value, sampling_loc);
  const c10::cuda::OptionalCUDAGuard device_guard(value.device());

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
    cudaStream_t stream = at::cuda::getCurrentCUDAStream();
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, value.scalar_type(), "ms_deform_attn_cuda_backward", [&] {
      using gv_t = typename msda::AccType<scalar_t>::type;
      ms_deform_attn_backward_kernel<scalar_t, gv_t><<<num_blocks(num_threads), kThreadsPerBlock, 0, stream>>>(
          value.const_data_ptr<scalar_t>(), spatial_shapes.const_data_ptr<int64_t>(),
          level_start_index.const_data_ptr<int64_t>(), sampling_loc.const_data_ptr<scalar_t>(),
          attn_weight.const_data_ptr<scalar_t>(), grad_output.const_data_ptr<scalar_t>(),
          grad_value_acc.mutable_data_ptr<gv_t>(), grad_loc.mutable_data_ptr<scalar_t>(),
          grad_attn.mutable_data_ptr<scalar_t>(), z, group, num_threads);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  } else {
    grad_loc.zero_();
    grad_attn.zero_();
  }
  at::Tensor grad_value = half_type ? grad_value_acc.to(value.scalar_type()) : grad_value_acc;
  return {grad_value, grad_loc, grad_attn};
}
