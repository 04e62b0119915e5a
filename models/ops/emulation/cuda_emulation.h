// Runs CUDA kernel source on the CPU, for tests on machines without a GPU.
//
// Include this header after the torch headers and before the kernel source (.cuh). It provides
// what the kernels use from CUDA:
// - __global__, __device__, __host__, __forceinline__, __launch_bounds__, __restrict__ (no-ops);
// - threadIdx, blockIdx, blockDim, gridDim, warpSize;
// - __shared__ as a function-local static: blocks run one after another, so each block sees one
//   copy (static __shared__ arrays only; no dynamic shared memory);
// - __syncthreads, __syncwarp, __shfl_sync / _up / _down / _xor, __ballot_sync, __any_sync,
//   __all_sync with CUDA's semantics (width, clamping, member masks);
// - atomicAdd (float, double, c10::Half, c10::BFloat16, int, unsigned, unsigned long long),
//   atomicExch, atomicCAS, atomicMax, atomicMin;
// - msda::global_ptr<T>: a pointer that checks every access against the extent of its tensor.
//
// Every thread of a block is a fiber (ucontext) on one OS thread. A fiber runs until it reaches a
// warp intrinsic or a barrier, or ends; once no lane of a warp can run, the lanes named in the mask
// of a pending warp intrinsic must all wait at that same intrinsic (same call site, same mask), and
// the exchange happens as on a GPU, in lockstep. A lane that ended, waits at another intrinsic or
// at __syncthreads instead is reported as an error, as is an out-of-bounds access: the launch then
// throws (a RuntimeError in Python) naming the block, the thread and what went wrong. Nothing can
// hang: the scheduler sees every fiber's state.
#pragma once

#include <c10/util/BFloat16.h>
#include <c10/util/Exception.h>
#include <c10/util/Half.h>
#include <sys/mman.h>
#include <ucontext.h>

#include <cstdint>
#include <cstring>
#include <exception>
#include <functional>
#include <sstream>
#include <string>
#include <type_traits>
#include <vector>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __restrict__
#define __shared__ static

namespace cuda_emu {

struct dim3 {
  unsigned int x = 1;
  unsigned int y = 1;
  unsigned int z = 1;
};

// The built-in variables of the thread that runs now.
struct Builtins {
  dim3 thread_idx;
  dim3 block_idx;
  dim3 block_dim;
  dim3 grid_dim;
};
inline Builtins builtins;

constexpr int kWarpSize = 32;

// ---------------------------------------------------------------------------------------------
// Bounds-checked pointer into one tensor: [base, base + extent) is valid; arithmetic is free, every
// dereference is checked.
template <typename T>
class checked_ptr {
 public:
  checked_ptr() = default;
  checked_ptr(T* base, int64_t extent, const char* name) : base_(base), extent_(extent), name_(name) {}
  template <typename U, typename = std::enable_if_t<std::is_convertible_v<U*, T*>>>
  checked_ptr(const checked_ptr<U>& other)  // NOLINT: implicit like T* -> const T*
      : base_(other.base()), offset_(other.offset()), extent_(other.extent()), name_(other.name()) {}

  checked_ptr operator+(int64_t k) const { return checked_ptr(*this, offset_ + k); }
  checked_ptr operator-(int64_t k) const { return checked_ptr(*this, offset_ - k); }
  checked_ptr& operator+=(int64_t k) {
    offset_ += k;
    return *this;
  }
  checked_ptr& operator-=(int64_t k) {
    offset_ -= k;
    return *this;
  }
  T& operator[](int64_t k) const { return at(offset_ + k); }
  T& operator*() const { return at(offset_); }

  T* base() const { return base_; }
  int64_t offset() const { return offset_; }
  int64_t extent() const { return extent_; }
  const char* name() const { return name_; }

 private:
  checked_ptr(const checked_ptr& p, int64_t offset)
      : base_(p.base_), offset_(offset), extent_(p.extent_), name_(p.name_) {}

  T& at(int64_t i) const {
    if (i < 0 || i >= extent_) {
      std::ostringstream msg;
      msg << "out-of-bounds " << (std::is_const_v<T> ? "read of " : "access to ") << name_ << "[" << i
          << "] (valid indices 0.." << extent_ - 1 << ")";
      throw std::out_of_range(msg.str());
    }
    return base_[i];
  }

  T* base_ = nullptr;
  int64_t offset_ = 0;
  int64_t extent_ = 0;
  const char* name_ = "";
};

template <typename T>
checked_ptr<T> operator+(int64_t k, const checked_ptr<T>& p) {
  return p + k;
}

// ---------------------------------------------------------------------------------------------
// Fibers and the block scheduler.

enum class State { kRunnable, kWarpOp, kBarrier, kDone, kFailed };
enum class WarpOp { kShflIdx, kShflUp, kShflDown, kShflXor, kBallot, kAny, kAll, kSyncWarp };

inline const char* op_name(WarpOp op) {
  switch (op) {
    case WarpOp::kShflIdx:
      return "__shfl_sync";
    case WarpOp::kShflUp:
      return "__shfl_up_sync";
    case WarpOp::kShflDown:
      return "__shfl_down_sync";
    case WarpOp::kShflXor:
      return "__shfl_xor_sync";
    case WarpOp::kBallot:
      return "__ballot_sync";
    case WarpOp::kAny:
      return "__any_sync";
    case WarpOp::kAll:
      return "__all_sync";
    case WarpOp::kSyncWarp:
      return "__syncwarp";
  }
  return "?";
}

struct Fiber {
  ucontext_t ctx;
  dim3 thread_idx;
  State state = State::kRunnable;
  // The pending warp intrinsic: kind, call site, member mask, lane/offset argument, width, operand.
  WarpOp op = WarpOp::kSyncWarp;
  const char* site = "";
  unsigned int mask = 0;
  int arg = 0;
  int width = kWarpSize;
  uint64_t operand = 0;
  uint64_t result = 0;
  const char* barrier_site = "";
  std::exception_ptr error;
};

class Scheduler {
 public:
  static Scheduler& get() {
    static Scheduler s;
    return s;
  }

  void run_grid(const std::function<void()>& body, dim3 grid, dim3 block) {
    TORCH_CHECK(block.x * block.y * block.z > 0 && block.x * block.y * block.z <= 1024,
                "cuda emulation: a block holds 1 to 1024 threads, got ", block.x * block.y * block.z);
    TORCH_CHECK(!running_, "cuda emulation: a kernel launched from inside a kernel");
    running_ = true;
    body_ = &body;
    try {
      for (unsigned int bz = 0; bz < grid.z; ++bz) {
        for (unsigned int by = 0; by < grid.y; ++by) {
          for (unsigned int bx = 0; bx < grid.x; ++bx) {
            run_block(dim3{bx, by, bz}, block, grid);
          }
        }
      }
    } catch (...) {
      running_ = false;
      throw;
    }
    running_ = false;
  }

  // Called on a fiber: suspends it at a warp intrinsic until its warp performs the exchange.
  uint64_t warp_op(WarpOp op, const char* site, unsigned int mask, uint64_t operand, int arg, int width) {
    Fiber& f = fibers_[current_];
    f.state = State::kWarpOp;
    f.op = op;
    f.site = site;
    f.mask = mask;
    f.operand = operand;
    f.arg = arg;
    f.width = width;
    swapcontext(&f.ctx, &main_ctx_);
    return f.result;
  }

  void barrier(const char* site) {
    Fiber& f = fibers_[current_];
    f.state = State::kBarrier;
    f.barrier_site = site;
    swapcontext(&f.ctx, &main_ctx_);
  }

  ~Scheduler() {
    for (void* s : stacks_) {
      munmap(s, kStackBytes + kGuardBytes);
    }
  }

 private:
  static constexpr size_t kStackBytes = 256 * 1024;
  static constexpr size_t kGuardBytes = 4096;

  static void entry() {
    Scheduler& s = get();
    Fiber& f = s.fibers_[s.current_];
    try {
      (*s.body_)();
      f.state = State::kDone;
    } catch (...) {
      f.error = std::current_exception();
      f.state = State::kFailed;
    }
  }  // returns to main_ctx_ through uc_link

  void* stack(size_t i) {
    while (stacks_.size() <= i) {
      // A guard page below each stack turns an overflow into a crash instead of silent corruption.
      void* mem = mmap(nullptr, kStackBytes + kGuardBytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
      TORCH_CHECK(mem != MAP_FAILED, "cuda emulation: cannot allocate a fiber stack");
      mprotect(mem, kGuardBytes, PROT_NONE);
      stacks_.push_back(mem);
    }
    return static_cast<char*>(stacks_[i]) + kGuardBytes;
  }

  std::string where(size_t i) const {
    const Fiber& f = fibers_[i];
    std::ostringstream out;
    out << "block (" << block_idx_.x << ", " << block_idx_.y << ", " << block_idx_.z << ") thread ("
        << f.thread_idx.x << ", " << f.thread_idx.y << ", " << f.thread_idx.z << ")";
    return out.str();
  }

  void resume(size_t i) {
    current_ = i;
    builtins.thread_idx = fibers_[i].thread_idx;
    swapcontext(&main_ctx_, &fibers_[i].ctx);
    if (fibers_[i].state == State::kFailed) {
      std::string what = "unknown exception";
      try {
        std::rethrow_exception(fibers_[i].error);
      } catch (const c10::Error& e) {
        what = e.what_without_backtrace();
      } catch (const std::exception& e) {
        what = e.what();
      } catch (...) {
      }
      TORCH_CHECK(false, "cuda emulation: ", where(i), ": ", what);
    }
  }

  void run_block(dim3 block_idx, dim3 block, dim3 grid) {
    const size_t n = static_cast<size_t>(block.x) * block.y * block.z;
    block_idx_ = block_idx;
    builtins.block_idx = block_idx;
    builtins.block_dim = block;
    builtins.grid_dim = grid;
    fibers_.assign(n, Fiber{});
    for (size_t i = 0; i < n; ++i) {
      Fiber& f = fibers_[i];
      f.thread_idx = dim3{static_cast<unsigned int>(i % block.x), static_cast<unsigned int>(i / block.x % block.y),
                          static_cast<unsigned int>(i / (block.x * block.y))};
      getcontext(&f.ctx);
      f.ctx.uc_stack.ss_sp = stack(i);
      f.ctx.uc_stack.ss_size = kStackBytes;
      f.ctx.uc_link = &main_ctx_;
      makecontext(&f.ctx, &Scheduler::entry, 0);
    }
    const size_t num_warps = (n + kWarpSize - 1) / kWarpSize;
    for (;;) {
      for (size_t i = 0; i < n; ++i) {
        if (fibers_[i].state == State::kRunnable) {
          resume(i);
        }
      }
      // Nothing can run now: every fiber waits at a warp intrinsic or a barrier, or has ended.
      bool exchanged = false;
      for (size_t w = 0; w < num_warps; ++w) {
        exchanged = exchange(w, n) || exchanged;
      }
      if (exchanged) {
        continue;
      }
      size_t ended = 0;
      size_t at_barrier = 0;
      for (const Fiber& f : fibers_) {
        ended += f.state == State::kDone;
        at_barrier += f.state == State::kBarrier;
      }
      if (ended == n) {
        return;
      }
      // Every fiber not ended waits at __syncthreads (threads that ended count as arrived).
      TORCH_CHECK(at_barrier + ended == n, "cuda emulation: block (", block_idx.x, ", ", block_idx.y, ", ",
                  block_idx.z, ") deadlocked");
      for (Fiber& f : fibers_) {
        if (f.state == State::kBarrier) {
          f.state = State::kRunnable;
        }
      }
    }
  }

  static std::string lane_list(unsigned int lanes) {
    std::ostringstream out;
    const char* sep = "";
    for (int l = 0; l < kWarpSize; ++l) {
      if (lanes & (1u << l)) {
        out << sep << l;
        sep = ", ";
      }
    }
    return out.str();
  }

  // Performs one pending warp intrinsic of warp w if its lanes are consistent; false if none pends.
  bool exchange(size_t w, size_t n) {
    const size_t first = w * kWarpSize;
    const int lanes = static_cast<int>(std::min<size_t>(kWarpSize, n - first));
    int leader = -1;
    for (int l = 0; l < lanes; ++l) {
      if (fibers_[first + l].state == State::kWarpOp) {
        leader = l;
        break;
      }
    }
    if (leader < 0) {
      return false;
    }
    const Fiber& lead = fibers_[first + leader];
    const unsigned int mask = lead.mask;
    unsigned int waiting = 0;
    for (int l = 0; l < lanes; ++l) {
      const Fiber& f = fibers_[first + l];
      // __syncwarp may pair different call sites, as on a GPU; shuffles and votes must not.
      const bool same_site = f.site == lead.site || lead.op == WarpOp::kSyncWarp;
      if (f.state == State::kWarpOp && f.op == lead.op && same_site && f.mask == mask) {
        waiting |= 1u << l;
      }
    }
    const std::string what = std::string(op_name(lead.op)) + " at " + lead.site;
    const std::string context = "cuda emulation: block (" + std::to_string(block_idx_.x) + ", " +
                                std::to_string(block_idx_.y) + ", " + std::to_string(block_idx_.z) + ") warp " +
                                std::to_string(w) + ": ";
    std::ostringstream mask_hex;
    mask_hex << "0x" << std::hex << mask;
    TORCH_CHECK(mask & (1u << leader), context, "lane ", leader, " calls ", what, " with mask ", mask_hex.str(),
                " that leaves itself out");
    for (int l = 0; l < kWarpSize; ++l) {
      if (!(mask & (1u << l)) || (waiting & (1u << l))) {
        continue;
      }
      const std::string waiters = "lanes " + lane_list(waiting) + " wait at " + what;
      TORCH_CHECK(l < lanes, context, "mask ", mask_hex.str(), " names lane ", l, " but the warp has ", lanes,
                  " threads (", waiters, ")");
      const Fiber& f = fibers_[first + l];
      std::string problem = "is in an unexpected state";
      if (f.state == State::kDone) {
        problem = "ended without joining the " + what + ": a lane skipped a warp intrinsic its warp performs";
      } else if (f.state == State::kBarrier) {
        problem = std::string("waits at __syncthreads at ") + f.barrier_site;
      } else if (f.state == State::kWarpOp) {
        problem = std::string("is at ") + op_name(f.op) + " at " + f.site + ": the lanes of the mask diverged";
      }
      TORCH_CHECK(false, context, "lane ", l, " ", problem, " (", waiters, ")");
    }
    unsigned int ballot = 0;
    for (int l = 0; l < lanes; ++l) {
      if ((mask & (1u << l)) && fibers_[first + l].operand != 0) {
        ballot |= 1u << l;
      }
    }
    for (int l = 0; l < lanes; ++l) {
      if (!(mask & (1u << l))) {
        continue;
      }
      Fiber& f = fibers_[first + l];
      switch (f.op) {
        case WarpOp::kBallot:
          f.result = ballot;
          break;
        case WarpOp::kAny:
          f.result = ballot != 0;
          break;
        case WarpOp::kAll:
          f.result = ballot == mask;
          break;
        case WarpOp::kSyncWarp:
          break;
        default: {
          const int src = source_lane(f.op, l, f.arg, f.width);
          TORCH_CHECK(src < lanes && (mask & (1u << src)), context, "lane ", l, " reads lane ", src, " in ", what,
                      ", which is not in the mask ", mask_hex.str());
          f.result = fibers_[first + src].operand;
        }
      }
      f.state = State::kRunnable;
    }
    return true;
  }

  // The lane a shuffle reads from, as PTX shfl.sync defines it for the width the CUDA intrinsics
  // pass (a lane outside its width-sized segment reads its own value).
  static int source_lane(WarpOp op, int lane, int arg, int width) {
    const int segment = lane & ~(width - 1);
    const int last = segment + width - 1;
    int src = lane;
    switch (op) {
      case WarpOp::kShflIdx:
        src = segment + (arg & (width - 1));
        break;
      case WarpOp::kShflUp:
        src = lane - arg >= segment ? lane - arg : lane;
        break;
      case WarpOp::kShflDown:
        src = lane + arg <= last ? lane + arg : lane;
        break;
      case WarpOp::kShflXor:
        src = (lane ^ arg) <= last ? (lane ^ arg) : lane;
        break;
      default:
        break;
    }
    return src;
  }

  const std::function<void()>* body_ = nullptr;
  bool running_ = false;
  ucontext_t main_ctx_;
  std::vector<Fiber> fibers_;
  std::vector<void*> stacks_;
  size_t current_ = 0;
  dim3 block_idx_;
};

// Runs kernel(args...) on a grid of `blocks` x `threads_per_block` emulated threads.
template <typename... KernelArgs, typename... Args>
void launch(void (*kernel)(KernelArgs...), dim3 grid, dim3 block, Args... args) {
  const std::function<void()> body = [&]() { kernel(args...); };
  Scheduler::get().run_grid(body, grid, block);
}

template <typename T>
uint64_t to_bits(T v) {
  static_assert(std::is_trivially_copyable_v<T> && sizeof(T) <= sizeof(uint64_t), "shuffle of a type over 8 bytes");
  uint64_t bits = 0;
  std::memcpy(&bits, &v, sizeof(T));
  return bits;
}

template <typename T>
T from_bits(uint64_t bits) {
  T v;
  std::memcpy(&v, &bits, sizeof(T));
  return v;
}

template <typename T>
T shuffle(WarpOp op, const char* site, unsigned int mask, T var, int arg, int width) {
  TORCH_CHECK(width > 0 && width <= kWarpSize && (width & (width - 1)) == 0, "cuda emulation: ", op_name(op),
              " at ", site, ": width must be a power of two up to 32, got ", width);
  return from_bits<T>(Scheduler::get().warp_op(op, site, mask, to_bits(var), arg, width));
}

// Atomics: fibers share one OS thread, so a plain read-modify-write is atomic here.
template <typename T>
T atomic_add(T& slot, T v) {
  const T old = slot;
  slot = static_cast<T>(old + v);
  return old;
}

}  // namespace cuda_emu

#define MSDA_EMU_STR2(x) #x
#define MSDA_EMU_STR(x) MSDA_EMU_STR2(x)
#define MSDA_EMU_SITE __FILE__ ":" MSDA_EMU_STR(__LINE__)

#define threadIdx (::cuda_emu::builtins.thread_idx)
#define blockIdx (::cuda_emu::builtins.block_idx)
#define blockDim (::cuda_emu::builtins.block_dim)
#define gridDim (::cuda_emu::builtins.grid_dim)
constexpr int warpSize = cuda_emu::kWarpSize;

#define __syncthreads() ::cuda_emu::Scheduler::get().barrier(MSDA_EMU_SITE)
#define __syncwarp(...) ::cuda_emu::syncwarp_call(MSDA_EMU_SITE, ##__VA_ARGS__)
// (mask, var, srcLane|delta|laneMask [, width])
#define __shfl_sync(...) ::cuda_emu::shfl_call(::cuda_emu::WarpOp::kShflIdx, MSDA_EMU_SITE, __VA_ARGS__)
#define __shfl_up_sync(...) ::cuda_emu::shfl_call(::cuda_emu::WarpOp::kShflUp, MSDA_EMU_SITE, __VA_ARGS__)
#define __shfl_down_sync(...) ::cuda_emu::shfl_call(::cuda_emu::WarpOp::kShflDown, MSDA_EMU_SITE, __VA_ARGS__)
#define __shfl_xor_sync(...) ::cuda_emu::shfl_call(::cuda_emu::WarpOp::kShflXor, MSDA_EMU_SITE, __VA_ARGS__)
#define __ballot_sync(mask, pred) \
  static_cast<unsigned int>(         \
      ::cuda_emu::Scheduler::get().warp_op(::cuda_emu::WarpOp::kBallot, MSDA_EMU_SITE, mask, (pred) != 0, 0, 32))
#define __any_sync(mask, pred) \
  static_cast<int>(::cuda_emu::Scheduler::get().warp_op(::cuda_emu::WarpOp::kAny, MSDA_EMU_SITE, mask, (pred) != 0, 0, 32))
#define __all_sync(mask, pred) \
  static_cast<int>(::cuda_emu::Scheduler::get().warp_op(::cuda_emu::WarpOp::kAll, MSDA_EMU_SITE, mask, (pred) != 0, 0, 32))

namespace cuda_emu {
inline void syncwarp_call(const char* site, unsigned int mask = 0xffffffffu) {
  Scheduler::get().warp_op(WarpOp::kSyncWarp, site, mask, 0, 0, kWarpSize);
}

template <typename T>
T shfl_call(WarpOp op, const char* site, unsigned int mask, T var, int arg, int width = kWarpSize) {
  return shuffle(op, site, mask, var, arg, width);
}
}  // namespace cuda_emu

// Global-memory pointers of the kernels are bounds-checked.
#define MSDA_HAVE_GLOBAL_PTR
namespace msda {
template <typename T>
using global_ptr = cuda_emu::checked_ptr<T>;
}  // namespace msda

template <typename T>
T atomicAdd(cuda_emu::checked_ptr<T> p, T v) {
  return cuda_emu::atomic_add(*p, v);
}
template <typename T>
T atomicAdd(T* p, T v) {
  return cuda_emu::atomic_add(*p, v);
}
template <typename T>
T atomicExch(cuda_emu::checked_ptr<T> p, T v) {
  const T old = *p;
  *p = v;
  return old;
}
template <typename T>
T atomicCAS(cuda_emu::checked_ptr<T> p, T compare, T v) {
  const T old = *p;
  if (old == compare) {
    *p = v;
  }
  return old;
}
template <typename T>
T atomicMax(cuda_emu::checked_ptr<T> p, T v) {
  const T old = *p;
  *p = old < v ? v : old;
  return old;
}
template <typename T>
T atomicMin(cuda_emu::checked_ptr<T> p, T v) {
  const T old = *p;
  *p = v < old ? v : old;
  return old;
}
