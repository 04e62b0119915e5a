// Bilinear sampling math shared by the CPU and CUDA kernels of multi-scale deformable attention.
//
// One sampling point of one head reads a level of `value` laid out as (H * W) pixels. A location
// (x, y) in [0, 1] maps to the continuous pixel position (x * W - 0.5, y * H - 0.5), the same
// convention as grid_sample(align_corners=False). The four surrounding pixels ("corners") are
// blended bilinearly; a corner outside the map contributes zero (grid_sample's zero padding) and is
// never read.
//
// For a point with attention weight a and per-channel corner values v_c[d], the kernels compute
//   out[d]          += a * sum_c weight_c * v_c[d]
// and, given the output gradient g[d] and dot_c = sum_d g[d] * v_c[d],
//   grad_v_c[d]     += a * weight_c * g[d]
//   grad_attn        = sum_c weight_c * dot_c
//   grad_loc_x       = a * W * sum_c dweight_dx_c * dot_c
//   grad_loc_y       = a * H * sum_c dweight_dy_c * dot_c
// (x * W - 0.5 has derivative W with respect to x, hence the factor W; likewise H for y).
#pragma once

#include <cmath>
#include <cstdint>

#if defined(__CUDACC__) || defined(__HIPCC__)
#define MSDA_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define MSDA_HOST_DEVICE inline
#endif

namespace msda {

// Coordinates, interpolation weights and sums are float32 for half, bfloat16 and float inputs, and
// float64 for double inputs.
template <typename scalar_t>
struct AccType {
  using type = float;
};
template <>
struct AccType<double> {
  using type = double;
};

MSDA_HOST_DEVICE float floor_acc(float v) { return floorf(v); }
MSDA_HOST_DEVICE double floor_acc(double v) { return floor(v); }

// Whether a level of H x W pixels starting at pixel `start` lies inside a value of S pixels. The
// Python front rejects level tensors that do not describe value exactly; the kernels check this much
// too (once per level) and skip a level that fails, so that a direct call of the compiled module with
// wrong level tensors reads and writes nothing outside its tensors. Written without H * W, which
// could overflow for arbitrary inputs.
MSDA_HOST_DEVICE bool level_in_bounds(int64_t H, int64_t W, int64_t start, int64_t S) {
  return H > 0 && W > 0 && start >= 0 && start <= S && H <= S - start && W <= (S - start) / H;
}

// Corner order: 0 = (h_low, w_low), 1 = (h_low, w_high), 2 = (h_high, w_low), 3 = (h_high, w_high),
// with h_high = h_low + 1 and w_high = w_low + 1.
constexpr int kCorners = 4;

template <typename acc_t>
struct BilinearPoint {
  int64_t pixel[kCorners];       // h * W + w inside the level; meaningful only where valid
  bool valid[kCorners];          // the corner lies inside the map
  acc_t weight[kCorners];        // bilinear weight of the corner
  acc_t dweight_dx[kCorners];    // d weight / d (x * W - 0.5)
  acc_t dweight_dy[kCorners];    // d weight / d (y * H - 0.5)
};

// Fills `bp` for location (x, y) on an H x W map. Returns false when no corner lies inside the map
// (then the point contributes nothing and has zero gradient); that test also rejects NaN locations
// before any float-to-integer conversion.
template <typename acc_t>
MSDA_HOST_DEVICE bool bilinear_point(acc_t x, acc_t y, int64_t H, int64_t W, BilinearPoint<acc_t>& bp) {
  const acc_t w_im = x * static_cast<acc_t>(W) - static_cast<acc_t>(0.5);
  const acc_t h_im = y * static_cast<acc_t>(H) - static_cast<acc_t>(0.5);
  // Some corner is inside iff -1 <= pos < size along both axes. At exactly -1 the inside corner has
  // weight 0 but a non-zero derivative, as in grid_sample, so -1 is kept.
  if (!(h_im >= static_cast<acc_t>(-1) && h_im < static_cast<acc_t>(H) && w_im >= static_cast<acc_t>(-1) &&
        w_im < static_cast<acc_t>(W))) {
    return false;
  }
  const acc_t h_floor = floor_acc(h_im);
  const acc_t w_floor = floor_acc(w_im);
  const int64_t h_low = static_cast<int64_t>(h_floor);
  const int64_t w_low = static_cast<int64_t>(w_floor);
  const int64_t h_high = h_low + 1;
  const int64_t w_high = w_low + 1;

  const acc_t lh = h_im - h_floor;  // distance from the low row
  const acc_t lw = w_im - w_floor;  // distance from the low column
  const acc_t hh = static_cast<acc_t>(1) - lh;
  const acc_t hw = static_cast<acc_t>(1) - lw;

  const bool h_low_in = h_low >= 0;
  const bool h_high_in = h_high < H;
  const bool w_low_in = w_low >= 0;
  const bool w_high_in = w_high < W;

  bp.pixel[0] = h_low * W + w_low;
  bp.pixel[1] = h_low * W + w_high;
  bp.pixel[2] = h_high * W + w_low;
  bp.pixel[3] = h_high * W + w_high;
  bp.valid[0] = h_low_in && w_low_in;
  bp.valid[1] = h_low_in && w_high_in;
  bp.valid[2] = h_high_in && w_low_in;
  bp.valid[3] = h_high_in && w_high_in;

  bp.weight[0] = hh * hw;
  bp.weight[1] = hh * lw;
  bp.weight[2] = lh * hw;
  bp.weight[3] = lh * lw;

  bp.dweight_dx[0] = -hh;
  bp.dweight_dx[1] = hh;
  bp.dweight_dx[2] = -lh;
  bp.dweight_dx[3] = lh;

  bp.dweight_dy[0] = -hw;
  bp.dweight_dy[1] = -lw;
  bp.dweight_dy[2] = hw;
  bp.dweight_dy[3] = lw;
  return true;
}

// Gradients of one point from the four per-corner dot products dot_c = sum_d g[d] * v_c[d]
// (dot_c is 0 for corners outside the map).
template <typename acc_t>
struct PointGrad {
  acc_t attn;
  acc_t loc_x;
  acc_t loc_y;
};

template <typename acc_t>
MSDA_HOST_DEVICE PointGrad<acc_t> point_grad(const BilinearPoint<acc_t>& bp, const acc_t dot[kCorners], acc_t attn,
                                             int64_t H, int64_t W) {
  acc_t g_attn = 0;
  acc_t g_x = 0;
  acc_t g_y = 0;
  for (int c = 0; c < kCorners; ++c) {
    g_attn += bp.weight[c] * dot[c];
    g_x += bp.dweight_dx[c] * dot[c];
    g_y += bp.dweight_dy[c] * dot[c];
  }
  PointGrad<acc_t> r;
  r.attn = g_attn;
  r.loc_x = attn * static_cast<acc_t>(W) * g_x;
  r.loc_y = attn * static_cast<acc_t>(H) * g_y;
  return r;
}

}  // namespace msda
