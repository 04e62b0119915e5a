// CPU kernels of multi-scale deformable attention.
//
// Layouts (all contiguous): value (N, S, M, D); spatial_shapes (L, 2) as (H, W);
// level_start_index (L,); sampling_loc (N, Lq, M, L, P, 2) as (x, y); attn_weight (N, Lq, M, L, P);
// output / grad_output (N, Lq, M * D). A "query item" is one (n, q, m); its output row is
// ((n * Lq + q) * M + m) * D and its points start at ((n * Lq + q) * M + m) * L * P.
//
// For every point the interpolation setup is done once (ms_deform_attn_math.h) and then the D
// channels of the four corners are walked contiguously. Corners outside the map are redirected to a
// row of zeros (reads) or a scratch row (gradient writes) so the channel loops have no branches.
// im2col_step only bounds GPU workspace in the original design; these kernels need no workspace, so
// the whole batch is processed at once whatever its value.
//
// On x86-64 with GCC or Clang the loop bodies are also compiled for AVX2 + FMA and picked at run
// time when the CPU has them (the build itself stays portable: no -march flags).
#include "cpu/ms_deform_attn_cpu.h"

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <vector>

#include "ms_deform_attn_checks.h"
#include "ms_deform_attn_math.h"

#if (defined(__GNUC__) || defined(__clang__)) && defined(__x86_64__)
#define MSDA_X86_AVX2_CLONE 1
#define MSDA_ALWAYS_INLINE inline __attribute__((always_inline))
#else
#define MSDA_ALWAYS_INLINE inline
#endif

namespace {

struct Sizes {
  int64_t N;   // batch
  int64_t S;   // value length, sum of H * W over levels
  int64_t M;   // heads
  int64_t D;   // channels per head
  int64_t Lq;  // queries
  int64_t L;   // levels
  int64_t P;   // points per level
};

Sizes sizes_of(const at::Tensor& value, const at::Tensor& sampling_loc) {
  return Sizes{value.size(0),        value.size(1),        value.size(2),       value.size(3),
               sampling_loc.size(1), sampling_loc.size(3), sampling_loc.size(4)};
}

// The read-only inputs of both kernels.
template <typename scalar_t>
struct Inputs {
  Sizes z;
  const scalar_t* value;
  const int64_t* shapes;  // (L, 2) as (H, W)
  const int64_t* starts;  // (L,)
  const scalar_t* loc;
  const scalar_t* attn;
};

template <typename scalar_t>
Inputs<scalar_t> inputs_of(const at::Tensor& value, const at::Tensor& spatial_shapes,
                           const at::Tensor& level_start_index, const at::Tensor& sampling_loc,
                           const at::Tensor& attn_weight) {
  return Inputs<scalar_t>{sizes_of(value, sampling_loc),
                          value.const_data_ptr<scalar_t>(),
                          spatial_shapes.const_data_ptr<int64_t>(),
                          level_start_index.const_data_ptr<int64_t>(),
                          sampling_loc.const_data_ptr<scalar_t>(),
                          attn_weight.const_data_ptr<scalar_t>()};
}

#ifdef MSDA_X86_AVX2_CLONE
bool cpu_has_avx2_fma() {
  static const bool has = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return has;
}
#endif

// acc[d] += c0 * v0[d] + c1 * v1[d] + c2 * v2[d] + c3 * v3[d]
template <typename scalar_t, typename acc_t>
MSDA_ALWAYS_INLINE void blend_corners(acc_t* __restrict__ acc, const scalar_t* __restrict__ v0,
                                      const scalar_t* __restrict__ v1, const scalar_t* __restrict__ v2,
                                      const scalar_t* __restrict__ v3, acc_t c0, acc_t c1, acc_t c2, acc_t c3,
                                      int64_t D) {
  for (int64_t d = 0; d < D; ++d) {
    acc[d] += c0 * static_cast<acc_t>(v0[d]) + c1 * static_cast<acc_t>(v1[d]) + c2 * static_cast<acc_t>(v2[d]) +
              c3 * static_cast<acc_t>(v3[d]);
  }
}

// For each corner c: dot[c] = sum_d g[d] * v_c[d] and gv_c[d] += coef_c * g[d].
// The dot products keep kLanes independent partial sums so the loop vectorises without reassociation
// flags; the gradient rows never alias (distinct pixels or distinct scratch rows).
template <typename scalar_t, typename acc_t>
MSDA_ALWAYS_INLINE void corners_backward(const acc_t* __restrict__ g, const scalar_t* __restrict__ v0,
                                         const scalar_t* __restrict__ v1, const scalar_t* __restrict__ v2,
                                         const scalar_t* __restrict__ v3, acc_t* __restrict__ gv0,
                                         acc_t* __restrict__ gv1, acc_t* __restrict__ gv2, acc_t* __restrict__ gv3,
                                         acc_t c0, acc_t c1, acc_t c2, acc_t c3, int64_t D,
                                         acc_t dot[msda::kCorners]) {
  constexpr int kLanes = 8;
  acc_t p0[kLanes] = {};
  acc_t p1[kLanes] = {};
  acc_t p2[kLanes] = {};
  acc_t p3[kLanes] = {};
  int64_t d = 0;
  for (; d + kLanes <= D; d += kLanes) {
    for (int k = 0; k < kLanes; ++k) {
      const acc_t gd = g[d + k];
      p0[k] += gd * static_cast<acc_t>(v0[d + k]);
      p1[k] += gd * static_cast<acc_t>(v1[d + k]);
      p2[k] += gd * static_cast<acc_t>(v2[d + k]);
      p3[k] += gd * static_cast<acc_t>(v3[d + k]);
      gv0[d + k] += c0 * gd;
      gv1[d + k] += c1 * gd;
      gv2[d + k] += c2 * gd;
      gv3[d + k] += c3 * gd;
    }
  }
  for (; d < D; ++d) {
    const acc_t gd = g[d];
    p0[0] += gd * static_cast<acc_t>(v0[d]);
    p1[0] += gd * static_cast<acc_t>(v1[d]);
    p2[0] += gd * static_cast<acc_t>(v2[d]);
    p3[0] += gd * static_cast<acc_t>(v3[d]);
    gv0[d] += c0 * gd;
    gv1[d] += c1 * gd;
    gv2[d] += c2 * gd;
    gv3[d] += c3 * gd;
  }
  acc_t s0 = 0, s1 = 0, s2 = 0, s3 = 0;
  for (int k = 0; k < kLanes; ++k) {
    s0 += p0[k];
    s1 += p1[k];
    s2 += p2[k];
    s3 += p3[k];
  }
  dot[0] = s0;
  dot[1] = s1;
  dot[2] = s2;
  dot[3] = s3;
}

// Output rows of the (n, q) pairs in [begin, end), all heads of each.
template <typename scalar_t>
MSDA_ALWAYS_INLINE void forward_range(const Inputs<scalar_t>& in, scalar_t* out, int64_t begin, int64_t end) {
  using acc_t = typename msda::AccType<scalar_t>::type;
  const Sizes& z = in.z;
  const int64_t pixel_stride = z.M * z.D;  // elements between two pixels of one head
  std::vector<acc_t> acc(z.D);
  const std::vector<scalar_t> zero_row(z.D, static_cast<scalar_t>(0));
  for (int64_t nq = begin; nq < end; ++nq) {
    const int64_t n = nq / z.Lq;
    for (int64_t m = 0; m < z.M; ++m) {
      const int64_t item = nq * z.M + m;
      const scalar_t* value_nm = in.value + n * z.S * pixel_stride + m * z.D;
      std::fill(acc.begin(), acc.end(), static_cast<acc_t>(0));
      for (int64_t l = 0; l < z.L; ++l) {
        const int64_t H = in.shapes[2 * l];
        const int64_t W = in.shapes[2 * l + 1];
        if (!msda::level_in_bounds(H, W, in.starts[l], z.S)) {
          continue;
        }
        const scalar_t* value_level = value_nm + in.starts[l] * pixel_stride;
        for (int64_t p = 0; p < z.P; ++p) {
          const int64_t idx = (item * z.L + l) * z.P + p;
          msda::BilinearPoint<acc_t> bp;
          const acc_t x = static_cast<acc_t>(in.loc[2 * idx]);
          const acc_t y = static_cast<acc_t>(in.loc[2 * idx + 1]);
          if (!msda::bilinear_point(x, y, H, W, bp)) {
            continue;
          }
          const acc_t a = static_cast<acc_t>(in.attn[idx]);
          const scalar_t* v[msda::kCorners];
          acc_t coef[msda::kCorners];
          for (int c = 0; c < msda::kCorners; ++c) {
            v[c] = bp.valid[c] ? value_level + bp.pixel[c] * pixel_stride : zero_row.data();
            coef[c] = bp.valid[c] ? a * bp.weight[c] : static_cast<acc_t>(0);
          }
          blend_corners(acc.data(), v[0], v[1], v[2], v[3], coef[0], coef[1], coef[2], coef[3], z.D);
        }
      }
      scalar_t* out_row = out + item * z.D;
      for (int64_t d = 0; d < z.D; ++d) {
        out_row[d] = static_cast<scalar_t>(acc[d]);
      }
    }
  }
}

#ifdef MSDA_X86_AVX2_CLONE
template <typename scalar_t>
__attribute__((target("avx2,fma"))) void forward_range_avx2(const Inputs<scalar_t>& in, scalar_t* out,
                                                             int64_t begin, int64_t end) {
  forward_range(in, out, begin, end);
}
#endif

template <typename scalar_t>
void forward_kernel(const Inputs<scalar_t>& in, scalar_t* out) {
  // One task is one (n, q) with all heads: neighbouring queries sample neighbouring pixels.
  at::parallel_for(0, in.z.N * in.z.Lq, 16, [&](int64_t begin, int64_t end) {
#ifdef MSDA_X86_AVX2_CLONE
    if (cpu_has_avx2_fma()) {
      forward_range_avx2(in, out, begin, end);
      return;
    }
#endif
    forward_range(in, out, begin, end);
  });
}

// Gradients of the (n, m) pairs in [begin, end): all of grad_value[n, :, m, :] and the location
// and attention gradients of every query's points of head m.
template <typename scalar_t>
MSDA_ALWAYS_INLINE void backward_range(const Inputs<scalar_t>& in, const scalar_t* grad_out, scalar_t* grad_value,
                                       scalar_t* grad_loc, scalar_t* grad_attn, int64_t begin, int64_t end) {
  using acc_t = typename msda::AccType<scalar_t>::type;
  const Sizes& z = in.z;
  const int64_t pixel_stride = z.M * z.D;
  // S rows of gradient plus one scratch row per corner for corners outside the map.
  std::vector<acc_t> gv_buf((z.S + msda::kCorners) * z.D);
  acc_t* scratch = gv_buf.data() + z.S * z.D;
  std::vector<acc_t> g(z.D);
  const std::vector<scalar_t> zero_row(z.D, static_cast<scalar_t>(0));
  for (int64_t nm = begin; nm < end; ++nm) {
    const int64_t n = nm / z.M;
    const int64_t m = nm % z.M;
    const scalar_t* value_nm = in.value + n * z.S * pixel_stride + m * z.D;
    std::fill(gv_buf.begin(), gv_buf.begin() + z.S * z.D, static_cast<acc_t>(0));
    for (int64_t q = 0; q < z.Lq; ++q) {
      const int64_t item = (n * z.Lq + q) * z.M + m;
      const scalar_t* g_row = grad_out + item * z.D;
      for (int64_t d = 0; d < z.D; ++d) {
        g[d] = static_cast<acc_t>(g_row[d]);
      }
      for (int64_t l = 0; l < z.L; ++l) {
        const int64_t H = in.shapes[2 * l];
        const int64_t W = in.shapes[2 * l + 1];
        // A level outside value is skipped; its points get zero gradients.
        const bool level_ok = msda::level_in_bounds(H, W, in.starts[l], z.S);
        const int64_t start = level_ok ? in.starts[l] : 0;
        const scalar_t* value_level = value_nm + start * pixel_stride;
        acc_t* gv_level = gv_buf.data() + start * z.D;
        for (int64_t p = 0; p < z.P; ++p) {
          const int64_t idx = (item * z.L + l) * z.P + p;
          msda::BilinearPoint<acc_t> bp;
          const acc_t x = static_cast<acc_t>(in.loc[2 * idx]);
          const acc_t y = static_cast<acc_t>(in.loc[2 * idx + 1]);
          if (!level_ok || !msda::bilinear_point(x, y, H, W, bp)) {
            grad_attn[idx] = static_cast<scalar_t>(0);
            grad_loc[2 * idx] = static_cast<scalar_t>(0);
            grad_loc[2 * idx + 1] = static_cast<scalar_t>(0);
            continue;
          }
          const acc_t a = static_cast<acc_t>(in.attn[idx]);
          const scalar_t* v[msda::kCorners];
          acc_t* gv[msda::kCorners];
          acc_t coef[msda::kCorners];
          for (int c = 0; c < msda::kCorners; ++c) {
            v[c] = bp.valid[c] ? value_level + bp.pixel[c] * pixel_stride : zero_row.data();
            gv[c] = bp.valid[c] ? gv_level + bp.pixel[c] * z.D : scratch + c * z.D;
            coef[c] = bp.valid[c] ? a * bp.weight[c] : static_cast<acc_t>(0);
          }
          acc_t dot[msda::kCorners];
          corners_backward(g.data(), v[0], v[1], v[2], v[3], gv[0], gv[1], gv[2], gv[3], coef[0], coef[1], coef[2],
                           coef[3], z.D, dot);
          const msda::PointGrad<acc_t> pg = msda::point_grad(bp, dot, a, H, W);
          grad_attn[idx] = static_cast<scalar_t>(pg.attn);
          grad_loc[2 * idx] = static_cast<scalar_t>(pg.loc_x);
          grad_loc[2 * idx + 1] = static_cast<scalar_t>(pg.loc_y);
        }
      }
    }
    scalar_t* grad_value_nm = grad_value + n * z.S * pixel_stride + m * z.D;
    for (int64_t s = 0; s < z.S; ++s) {
      const acc_t* src = gv_buf.data() + s * z.D;
      scalar_t* dst = grad_value_nm + s * pixel_stride;
      for (int64_t d = 0; d < z.D; ++d) {
        dst[d] = static_cast<scalar_t>(src[d]);
      }
    }
  }
}

#ifdef MSDA_X86_AVX2_CLONE
template <typename scalar_t>
__attribute__((target("avx2,fma"))) void backward_range_avx2(const Inputs<scalar_t>& in, const scalar_t* grad_out,
                                                              scalar_t* grad_value, scalar_t* grad_loc,
                                                              scalar_t* grad_attn, int64_t begin, int64_t end) {
  backward_range(in, grad_out, grad_value, grad_loc, grad_attn, begin, end);
}
#endif

template <typename scalar_t>
void backward_kernel(const Inputs<scalar_t>& in, const scalar_t* grad_out, scalar_t* grad_value, scalar_t* grad_loc,
                     scalar_t* grad_attn) {
  // One task is one (n, m): it alone touches grad_value[n, :, m, :], so there are no races. It
  // accumulates that slice in acc_t, packed (S, D) for locality, then writes it out once.
  at::parallel_for(0, in.z.N * in.z.M, 1, [&](int64_t begin, int64_t end) {
#ifdef MSDA_X86_AVX2_CLONE
    if (cpu_has_avx2_fma()) {
      backward_range_avx2(in, grad_out, grad_value, grad_loc, grad_attn, begin, end);
      return;
    }
#endif
    backward_range(in, grad_out, grad_value, grad_loc, grad_attn, begin, end);
  });
}

}  // namespace

at::Tensor ms_deform_attn_cpu_forward(const at::Tensor& value, const at::Tensor& spatial_shapes,
                                      const at::Tensor& level_start_index, const at::Tensor& sampling_loc,
                                      const at::Tensor& attn_weight, int64_t im2col_step) {
  TORCH_CHECK(value.device().is_cpu(), "ms_deform_attn_cpu_forward: value must be a CPU tensor");
  ms_deform_attn_check_inputs("ms_deform_attn_cpu_forward", value, spatial_shapes, level_start_index, sampling_loc,
                              attn_weight, nullptr, im2col_step);
  const Sizes z = sizes_of(value, sampling_loc);
  at::Tensor output = at::empty({z.N, z.Lq, z.M * z.D}, value.options());
  if (output.numel() == 0) {
    return output;
  }
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, value.scalar_type(), "ms_deform_attn_cpu_forward", [&] {
    forward_kernel(inputs_of<scalar_t>(value, spatial_shapes, level_start_index, sampling_loc, attn_weight),
                   output.mutable_data_ptr<scalar_t>());
  });
  return output;
}

std::vector<at::Tensor> ms_deform_attn_cpu_backward(const at::Tensor& value, const at::Tensor& spatial_shapes,
                                                    const at::Tensor& level_start_index,
                                                    const at::Tensor& sampling_loc, const at::Tensor& attn_weight,
                                                    const at::Tensor& grad_output, int64_t im2col_step) {
  TORCH_CHECK(value.device().is_cpu(), "ms_deform_attn_cpu_backward: value must be a CPU tensor");
  ms_deform_attn_check_inputs("ms_deform_attn_cpu_backward", value, spatial_shapes, level_start_index, sampling_loc,
                              attn_weight, &grad_output, im2col_step);
  const Sizes z = sizes_of(value, sampling_loc);
  // Every element of the three gradients is written by exactly one task, so no zero-fill.
  at::Tensor grad_value = at::empty_like(value);
  at::Tensor grad_loc = at::empty_like(sampling_loc);
  at::Tensor grad_attn = at::empty_like(attn_weight);
  if (z.N * z.M == 0 || z.D == 0 || z.S == 0) {
    grad_value.zero_();
    grad_loc.zero_();
    grad_attn.zero_();
    return {grad_value, grad_loc, grad_attn};
  }
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, value.scalar_type(), "ms_deform_attn_cpu_backward", [&] {
    backward_kernel(inputs_of<scalar_t>(value, spatial_shapes, level_start_index, sampling_loc, attn_weight),
                    grad_output.const_data_ptr<scalar_t>(), grad_value.mutable_data_ptr<scalar_t>(),
                    grad_loc.mutable_data_ptr<scalar_t>(), grad_attn.mutable_data_ptr<scalar_t>());
  });
  return {grad_value, grad_loc, grad_attn};
}
