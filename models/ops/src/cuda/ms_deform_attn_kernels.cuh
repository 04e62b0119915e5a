// CUDA kernels of multi-scale deformable attention, and the launch sizing they are written for.
//
// nvcc compiles this file (through ms_deform_attn_cuda.cu); the CPU emulation used by the tests
// (models/ops/emulation) compiles the very same text as host C++ after its shim header, which
// provides threadIdx & co., warp intrinsics, atomics and a bounds-checked msda::global_ptr.
// Kernels therefore reach global memory only through msda::global_ptr (a plain pointer under nvcc).
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
// Dtypes: value, output, grad_output and grad_value in the value dtype scalar_t; sampling locations,
// attention weights and their gradients in acc_t (float32, float64 for double values), so that
// half-precision values never round a location (0.33 pixel at W = 167 in bfloat16).
// Index arithmetic is 64-bit throughout.
#pragma once

#include <cstdint>

#include "ms_deform_attn_math.h"

namespace msda {

#ifndef MSDA_HAVE_GLOBAL_PTR
// A pointer into global memory; the emulation substitutes a bounds-checked type.
template <typename T>
using global_ptr = T*;
#endif

// Interpolation, accumulation and coordinate dtype for values of dtype T.
template <typename T>
using acc_type = typename AccType<T>::type;

constexpr int kThreadsPerBlock = 256;
constexpr int kMaxGroup = 32;          // one warp
constexpr int kChannelsPerThread = 4;  // target channels per lane when choosing G
constexpr int kChunk = 8;              // channels a forward thread accumulates in registers at once

struct Sizes {
  int64_t N;
  int64_t S;
  int64_t M;
  int64_t D;
  int64_t Lq;
  int64_t L;
  int64_t P;
};

// Threads per query item: the power of two near D / kChannelsPerThread, at most a warp.
inline int group_size(int64_t D) {
  const int64_t want = (D + kChannelsPerThread - 1) / kChannelsPerThread;
  int group = 1;
  while (group < want && group < kMaxGroup) {
    group *= 2;
  }
  return group;
}

// Blocks of kThreadsPerBlock threads covering num_threads; the last block may be partial.
inline int64_t num_blocks(int64_t num_threads) { return (num_threads + kThreadsPerBlock - 1) / kThreadsPerBlock; }

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
    forward_kernel(global_ptr<const scalar_t> __restrict__ value, global_ptr<const int64_t> __restrict__ shapes,
                   global_ptr<const int64_t> __restrict__ starts,
                   global_ptr<const acc_type<scalar_t>> __restrict__ loc,
                   global_ptr<const acc_type<scalar_t>> __restrict__ attn, global_ptr<scalar_t> __restrict__ out,
                   const Sizes z, const int group, const int64_t num_threads) {
  using acc_t = acc_type<scalar_t>;
  const int64_t tid = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (tid >= num_threads) {
    return;
  }
  const int64_t item = tid / group;
  const int lane = static_cast<int>(tid % group);
  const int64_t n = item / (z.Lq * z.M);
  const int64_t m = item % z.M;
  const int64_t pixel_stride = z.M * z.D;
  const global_ptr<const scalar_t> value_nm = value + n * z.S * pixel_stride + m * z.D;
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
      if (!level_in_bounds(H, W, starts[l], z.S)) {
        continue;  // a level outside value (see level_in_bounds) contributes nothing
      }
      const global_ptr<const scalar_t> value_level = value_nm + starts[l] * pixel_stride + channel0;
      for (int64_t p = 0; p < z.P; ++p) {
        const int64_t idx = (item * z.L + l) * z.P + p;
        BilinearPoint<acc_t> bp;
        if (!bilinear_point(loc[2 * idx], loc[2 * idx + 1], H, W, bp)) {
          continue;
        }
        const acc_t a = attn[idx];
#pragma unroll
        for (int c = 0; c < kCorners; ++c) {
          if (!bp.valid[c]) {
            continue;
          }
          const global_ptr<const scalar_t> v = value_level + bp.pixel[c] * pixel_stride;
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
    const global_ptr<scalar_t> out_row = out + item * z.D + channel0;
#pragma unroll
    for (int k = 0; k < kChunk; ++k) {
      if (k0 + k < my_channels) {
        out_row[k * group] = static_cast<scalar_t>(acc[k]);
      }
    }
  }
}

// grad_value is accumulated in acc_t (float32 for half types) and cast by the caller.
template <typename scalar_t>
__global__ void __launch_bounds__(kThreadsPerBlock)
    backward_kernel(global_ptr<const scalar_t> __restrict__ value, global_ptr<const int64_t> __restrict__ shapes,
                    global_ptr<const int64_t> __restrict__ starts,
                    global_ptr<const acc_type<scalar_t>> __restrict__ loc,
                    global_ptr<const acc_type<scalar_t>> __restrict__ attn,
                    global_ptr<const scalar_t> __restrict__ grad_out,
                    global_ptr<acc_type<scalar_t>> __restrict__ grad_value,
                    global_ptr<acc_type<scalar_t>> __restrict__ grad_loc,
                    global_ptr<acc_type<scalar_t>> __restrict__ grad_attn, const Sizes z, const int group,
                    const int64_t num_threads) {
  using acc_t = acc_type<scalar_t>;
  const int64_t tid = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  // Threads past the end stay alive until the end: they take part in the group sums of their warp.
  const bool active = tid < num_threads;
  const int64_t item = active ? tid / group : 0;
  const int lane = static_cast<int>(tid % group);
  const int64_t n = item / (z.Lq * z.M);
  const int64_t m = item % z.M;
  const int64_t pixel_stride = z.M * z.D;
  const int64_t nm_offset = n * z.S * pixel_stride + m * z.D;
  const global_ptr<const scalar_t> g_row = grad_out + item * z.D;

  for (int64_t l = 0; l < z.L; ++l) {
    const int64_t H = shapes[2 * l];
    const int64_t W = shapes[2 * l + 1];
    // A level outside value (see level_in_bounds) contributes nothing: its points get zero gradients,
    // and its threads still join the group sums below.
    const bool level_ok = level_in_bounds(H, W, starts[l], z.S);
    const int64_t level_offset = nm_offset + (level_ok ? starts[l] : 0) * pixel_stride;
    for (int64_t p = 0; p < z.P; ++p) {
      const int64_t idx = (item * z.L + l) * z.P + p;
      PointGrad<acc_t> pg{0, 0, 0};
      if (active) {
        BilinearPoint<acc_t> bp;
        if (level_ok && bilinear_point(loc[2 * idx], loc[2 * idx + 1], H, W, bp)) {
          const acc_t a = attn[idx];
          int64_t corner_offset[kCorners];
          acc_t coef[kCorners];
          acc_t dot[kCorners];
#pragma unroll
          for (int c = 0; c < kCorners; ++c) {
            corner_offset[c] = level_offset + bp.pixel[c] * pixel_stride;
            coef[c] = a * bp.weight[c];
            dot[c] = 0;
          }
          for (int64_t d = lane; d < z.D; d += group) {
            const acc_t g = static_cast<acc_t>(g_row[d]);
#pragma unroll
            for (int c = 0; c < kCorners; ++c) {
              if (bp.valid[c]) {
                dot[c] += g * static_cast<acc_t>(value[corner_offset[c] + d]);
                atomicAdd(grad_value + corner_offset[c] + d, coef[c] * g);
              }
            }
          }
          // Partial over this lane's channels; point_grad is linear in dot, so partials add up.
          pg = point_grad(bp, dot, a, H, W);
        }
      }
      pg.attn = group_sum(pg.attn, group);
      pg.loc_x = group_sum(pg.loc_x, group);
      pg.loc_y = group_sum(pg.loc_y, group);
      if (active && lane == 0) {
        grad_attn[idx] = pg.attn;
        grad_loc[2 * idx] = pg.loc_x;
        grad_loc[2 * idx + 1] = pg.loc_y;
      }
    }
  }
}

}  // namespace msda
