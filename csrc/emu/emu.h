// Host emulation of the CUDA execution model, so the CUDA kernels of csrc/cuda run (and are
// checked) on a CPU. Header-only; included instead of the CUDA headers when RJA_EMULATE is set.
//
// - Blocks of a grid run one after the other on the calling OS thread. A cooperative launch
//   (launch_cooperative) instead keeps every block of the grid alive at once and interleaves them:
//   a block runs until it waits for another (a thread spins on volatile_load()), then the next
//   block runs, so a barrier across blocks (atomicAdd on a counter, spin until it is reached)
//   works. No thread of any block able to progress fails with emu::Error naming the stalled
//   blocks, and a grid larger than the emulated device's resident capacity (Device: a notional
//   SM count and per-SM limits, queried by the host as a GPU's occupancy) is refused. Running one
//   block as far as it goes before the next starts is the most skewed schedule there is: a read of
//   another block's data that a barrier does not order sees it unwritten.
// - Every thread of a block is a fiber (ucontext) with its own stack. A fiber runs until it
//   reaches __syncthreads() or a warp collective (a shuffle, a WMMA operation: wmma.h) and then
//   yields to the block's scheduler, so barriers and warp collectives have GPU semantics (all
//   threads arrive before any proceeds).
// - A barrier that not every thread reaches (a thread exits while others wait, or threads wait at
//   different __syncthreads() calls), a deadlock among warp collectives and lanes of a warp that
//   meet at different collectives fail with emu::Error.
// - Shared memory (dynamic and RJA_STATIC_SHARED) is a per-block arena; kernels access shared and
//   global memory through emu::Ptr, which checks every index against the buffer it names.
// - Errors raised inside a fiber are caught on its stack and rethrown by emu::launch.
// - A plain `__shared__` variable is one per OS thread, not per block: cooperative kernels, whose
//   blocks interleave, must use RJA_STATIC_SHARED or the dynamic shared memory.
#pragma once

#include <ucontext.h>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <exception>
#include <functional>
#include <memory>
#include <sstream>
#include <stdexcept>
#include <string>
#include <tuple>
#include <type_traits>
#include <unordered_map>
#include <utility>
#include <vector>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
// A plain `__shared__ T x[N];` becomes storage shared by every fiber of the OS thread, which runs
// one block at a time: per-block storage, but unchecked (RJA_STATIC_SHARED is the checked form).
#define __shared__ static thread_local
#define __syncthreads() ::emu::syncthreads(__FILE__, __LINE__)
#define threadIdx ::emu::tl_thread_idx
#define blockIdx ::emu::tl_block_idx
#define blockDim ::emu::tl_block_dim
#define gridDim ::emu::tl_grid_dim

namespace emu {

struct dim3 {
  unsigned x, y, z;
  constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};
struct uint3 {
  unsigned x = 0, y = 0, z = 0;
};

inline thread_local uint3 tl_thread_idx;
inline thread_local uint3 tl_block_idx;
inline thread_local dim3 tl_block_dim;
inline thread_local dim3 tl_grid_dim;

// The opt-in dynamic shared memory limit of an H100 (sm_90), per block.
constexpr std::size_t kMaxSharedBytes = 227 * 1024;
constexpr std::size_t kFiberStackBytes = 256 * 1024;

// The emulated device, for occupancy: an H100's per-SM limits, but few SMs and few blocks per SM
// by default, so that the grids of cooperative launches (all blocks alive, each thread a fiber)
// stay small. Tests change it with set_device().
struct Device {
  int sm_count = 4;
  int max_blocks_per_sm = 2;
  int max_threads_per_sm = 2048;
  std::size_t shared_bytes_per_sm = 228 * 1024;
};

inline Device& device() {
  static Device d;
  return d;
}

// Blocks of `threads` threads and `shared_bytes` of dynamic shared memory one SM holds at once
// (cudaOccupancyMaxActiveBlocksPerMultiprocessor).
inline int max_active_blocks_per_sm(int threads, std::size_t shared_bytes) {
  const Device& dev = device();
  int n = dev.max_blocks_per_sm;
  if (threads > 0) n = std::min(n, dev.max_threads_per_sm / threads);
  if (shared_bytes > 0) n = std::min<std::size_t>(n, dev.shared_bytes_per_sm / shared_bytes);
  return std::max(n, 0);
}

class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// Raised from kernel code: names the block and thread that failed.
[[noreturn]] inline void fail(const std::string& what) {
  std::ostringstream s;
  s << "CUDA emulator: block (" << tl_block_idx.x << "," << tl_block_idx.y << "," << tl_block_idx.z
    << ") thread (" << tl_thread_idx.x << "," << tl_thread_idx.y << "," << tl_thread_idx.z << "): " << what;
  throw Error(s.str());
}

// A bounds-checked pointer into a named buffer; `p + n` is free, every access is checked.
template <class T>
class Ptr {
 public:
  Ptr() = default;
  Ptr(T* base, std::ptrdiff_t size, const char* name, std::ptrdiff_t offset = 0)
      : base_(base), size_(size), offset_(offset), name_(name) {}
  template <class U, class = std::enable_if_t<std::is_convertible_v<U*, T*>>>
  Ptr(const Ptr<U>& other)  // NOLINT: implicit like T* -> const T*
      : base_(other.base()), size_(other.size()), offset_(other.offset()), name_(other.name()) {}

  T& operator[](std::ptrdiff_t i) const {
    const std::ptrdiff_t at = offset_ + i;
    if (at < 0 || at >= size_) {
      std::ostringstream s;
      s << "out-of-bounds access " << name_ << "[" << at << "]; " << name_ << " has " << size_ << " elements";
      fail(s.str());
    }
    return base_[at];
  }
  T& operator*() const { return (*this)[0]; }
  Ptr operator+(std::ptrdiff_t n) const { return Ptr(base_, size_, name_, offset_ + n); }

  T* base() const { return base_; }
  std::ptrdiff_t size() const { return size_; }
  std::ptrdiff_t offset() const { return offset_; }
  const char* name() const { return name_; }

 private:
  T* base_ = nullptr;
  std::ptrdiff_t size_ = 0, offset_ = 0;
  const char* name_ = "null";
};

// The sub-buffer [off, off + n) of p under its own name: later accesses are checked against it.
template <class T>
Ptr<T> slice(const Ptr<T>& p, std::int64_t off, std::int64_t n, const char* name) {
  if (off < 0 || n < 0 || p.offset() + off + n > p.size()) {
    std::ostringstream s;
    s << "slice " << name << " = " << p.name() << "[" << p.offset() + off << ", " << p.offset() + off + n
      << ") exceeds " << p.name() << " of " << p.size() << " elements";
    fail(s.str());
  }
  return Ptr<T>(p.base() + p.offset() + off, n, name);
}

// 16-byte (128-bit) accesses so far: the kernels' vectorised loads and stores (compat.cuh,
// load_vector, store_vector), counted per thread. Lets tests see which path a kernel took.
inline std::uint64_t vector_access_count = 0;

template <class T>
bool address_aligned_16(const Ptr<T>& p) {
  return reinterpret_cast<std::uintptr_t>(p.base() + p.offset()) % 16 == 0;
}

// The address of the 16 bytes at p for a vectorised access `op`, checked: in bounds, and 16-byte
// aligned (a GPU faults on a misaligned one).
template <class T>
T* vector_address(const Ptr<T>& p, const char* op) {
  static_assert(16 % sizeof(T) == 0, "a vector holds whole elements");
  if (!address_aligned_16(p)) {
    std::ostringstream s;
    s << op << " of 16 bytes at " << p.name() << "[" << p.offset() << "] is not 16-byte aligned";
    fail(s.str());
  }
  (void)p[0];
  (void)p[std::ptrdiff_t(16 / sizeof(T)) - 1];
  ++vector_access_count;
  return p.base() + p.offset();
}

struct Fiber {
  enum class State { Running, AtBarrier, AtWarp, Spinning, Done };  // Spinning: yielded at volatile_load()
  ucontext_t context;  // must not move after getcontext: glibc points into it
  std::unique_ptr<char[]> stack;
  uint3 idx;
  int warp = 0;
  State state = State::Running;
  const char* barrier_file = "";
  int barrier_line = 0;
  std::uint64_t wait_gen = 0;  // the barrier/warp generation this fiber waits to see pass
};

struct Warp {
  // What each lane deposits at a collective, double-buffered by generation parity: the name of
  // the collective, a shuffle's value, a WMMA operation's arguments and fragment elements.
  const char* ops[2][32] = {};
  std::uint64_t slots[2][32] = {};
  std::vector<unsigned char> blobs[2][32];
  int arrived = 0;
  std::uint64_t gen = 0;
};

// Shared memory arenas are aligned like a GPU's (WMMA needs 256-bit aligned tiles).
struct alignas(128) SharedChunk {
  unsigned char bytes[128];
};

struct SharedBuffer {
  std::unique_ptr<SharedChunk[]> storage;
  std::size_t bytes = 0;
};

inline std::unique_ptr<SharedChunk[]> garbage_filled(std::size_t bytes) {
  // 0xFF bytes read as NaN floats: a read of shared memory never written shows up in results.
  auto chunks = (bytes + sizeof(SharedChunk) - 1) / sizeof(SharedChunk);
  std::unique_ptr<SharedChunk[]> p(new SharedChunk[std::max<std::size_t>(chunks, 1)]);
  std::memset(static_cast<void*>(p.get()), 0xFF, chunks * sizeof(SharedChunk));
  return p;
}

struct Block {
  Block(const uint3& idx_, const dim3& block, std::size_t shared_bytes, const std::function<void()>& body_)
      : idx(idx_), body(body_), fibers(std::size_t(block.x) * block.y * block.z),
        warps((fibers.size() + 31) / 32) {
    dynamic_shared.storage = garbage_filled(shared_bytes);
    dynamic_shared.bytes = shared_bytes;
  }

  uint3 idx;
  bool finished = false;
  const std::function<void()>& body;
  std::vector<Fiber> fibers;  // sized once: contexts must not move
  std::vector<Warp> warps;
  ucontext_t scheduler;
  std::size_t current = 0;
  int barrier_arrived = 0;
  std::uint64_t barrier_gen = 0;
  SharedBuffer dynamic_shared;
  std::unordered_map<const void*, SharedBuffer> static_shared;  // keyed by declaration site
  std::exception_ptr error;
};

inline thread_local Block* tl_block = nullptr;
// Whether the running grid was launched cooperatively, and a count of the atomic writes so far: a
// thread spinning on memory can progress only once someone writes it.
inline thread_local bool tl_cooperative = false;
inline thread_local std::uint64_t tl_atomic_writes = 0;

inline Fiber& current_fiber() { return tl_block->fibers[tl_block->current]; }

inline void yield_to_scheduler() { swapcontext(&current_fiber().context, &tl_block->scheduler); }

inline void fiber_entry() {
  Block& blk = *tl_block;
  try {
    blk.body();
  } catch (...) {
    blk.error = std::current_exception();
  }
  current_fiber().state = Fiber::State::Done;
}  // returns to uc_link, the scheduler

inline std::string site(const Fiber& f) { return std::string(f.barrier_file) + ":" + std::to_string(f.barrier_line); }

inline void syncthreads(const char* file, int line) {
  Block& blk = *tl_block;
  Fiber& self = current_fiber();
  self.state = Fiber::State::AtBarrier;
  self.barrier_file = file;
  self.barrier_line = line;
  self.wait_gen = blk.barrier_gen;
  if (++blk.barrier_arrived == int(blk.fibers.size())) {
    for (const Fiber& f : blk.fibers) {
      if (f.barrier_line != line || std::strcmp(f.barrier_file, file) != 0) {
        fail("divergent barrier: threads wait at different __syncthreads() calls (" + site(f) + " and " +
             site(self) + ")");
      }
    }
    blk.barrier_arrived = 0;
    ++blk.barrier_gen;
  } else {
    yield_to_scheduler();  // resumed once the last thread has arrived
  }
  self.state = Fiber::State::Running;
}

inline int lane_id() { return int(&current_fiber() - tl_block->fibers.data()) % 32; }

// Threads of the caller's warp: 32, fewer in a partial last warp.
inline int active_lanes() { return std::min<int>(32, int(tl_block->fibers.size()) - current_fiber().warp * 32); }

// Rendezvous of every active lane of the caller's warp at the collective `op`: deposit(w, parity)
// stores this lane's contribution, then the lane waits for the others. Returns the parity of the
// buffers that hold every lane's deposit; they stay valid until the lane's next collective (a
// lane can deposit at the next generation only once all have left this one). Lanes that meet at
// different collectives fail.
template <class Deposit>
int warp_rendezvous(const char* op, const Deposit& deposit) {
  Block& blk = *tl_block;
  Fiber& self = current_fiber();
  const int lane = lane_id(), active = active_lanes();
  Warp& w = blk.warps[std::size_t(self.warp)];
  const std::uint64_t gen = w.gen;
  const int parity = int(gen & 1);
  w.ops[parity][lane] = op;
  deposit(w, parity);
  if (++w.arrived == active) {
    w.arrived = 0;
    ++w.gen;
  } else {
    self.state = Fiber::State::AtWarp;
    self.wait_gen = gen;
    yield_to_scheduler();
    self.state = Fiber::State::Running;
  }
  for (int j = 0; j < active; ++j) {
    if (std::strcmp(w.ops[parity][j], op) != 0) {
      fail(std::string("divergent warp collective: lane ") + std::to_string(lane) + " calls " + op + ", lane " +
           std::to_string(j) + " " + w.ops[parity][j]);
    }
  }
  return parity;
}

// A warp shuffle: every active lane deposits its value, then each reads lane src_of(lane).
template <class T, class SrcOf>
T warp_exchange(unsigned mask, T value, int width, SrcOf src_of, const char* op) {
  static_assert(std::is_trivially_copyable_v<T> && sizeof(T) <= 8, "shuffle of a type wider than 8 bytes");
  const int lane = lane_id(), active = active_lanes();
  const unsigned full = active == 32 ? 0xFFFFFFFFu : (1u << active) - 1;
  if (mask != full || width != 32) {
    std::ostringstream s;
    s << op << ": only whole-warp shuffles (mask 0x" << std::hex << full << ", width 32) are emulated, got mask 0x"
      << mask << std::dec << ", width " << width;
    fail(s.str());
  }
  Warp& w = tl_block->warps[std::size_t(current_fiber().warp)];
  const int parity = warp_rendezvous(op, [&](Warp& wp, int par) { std::memcpy(&wp.slots[par][lane], &value, sizeof(T)); });
  const int src = src_of(lane);
  if (src < 0 || src >= active) {
    fail(std::string(op) + ": reads lane " + std::to_string(src) + ", which is not an active lane of the warp");
  }
  T out;
  std::memcpy(&out, &w.slots[parity][src], sizeof(T));
  return out;
}

inline bool can_resume(const Block& blk, const Fiber& f) {
  switch (f.state) {
    case Fiber::State::Running: return true;
    case Fiber::State::AtBarrier: return blk.barrier_gen != f.wait_gen;
    case Fiber::State::AtWarp: return blk.warps[std::size_t(f.warp)].gen != f.wait_gen;
    case Fiber::State::Spinning: return true;
    case Fiber::State::Done: return false;
  }
  return false;
}

// Where the threads of a stalled block are.
inline std::string describe_threads(const Block& blk) {
  int exited = 0, at_warp = 0, spinning = 0;
  std::unordered_map<std::string, int> at_barrier;
  for (const Fiber& f : blk.fibers) {
    if (f.state == Fiber::State::Done) ++exited;
    if (f.state == Fiber::State::AtWarp) ++at_warp;
    if (f.state == Fiber::State::Spinning) ++spinning;
    if (f.state == Fiber::State::AtBarrier) ++at_barrier[site(f)];
  }
  std::ostringstream s;
  for (const auto& [where, n] : at_barrier) s << " " << n << " wait at __syncthreads() " << where << ";";
  if (at_warp) s << " " << at_warp << " wait at a warp collective (shuffle or WMMA);";
  if (spinning) s << " " << spinning << " spin on a volatile load (a barrier across blocks);";
  s << " " << exited << " have exited";
  return s.str();
}

inline std::string describe_stall(const Block& blk) {
  return "barrier not reached by every thread of the block (" + std::to_string(blk.fibers.size()) +
         " threads):" + describe_threads(blk);
}

inline std::string block_name(const Block& blk) {
  std::ostringstream s;
  s << "(" << blk.idx.x << "," << blk.idx.y << "," << blk.idx.z << ")";
  return s.str();
}

inline void init_fibers(Block& blk, const dim3& block_dim) {
  for (std::size_t t = 0; t < blk.fibers.size(); ++t) {
    Fiber& f = blk.fibers[t];
    f.idx.x = unsigned(t % block_dim.x);
    f.idx.y = unsigned(t / block_dim.x % block_dim.y);
    f.idx.z = unsigned(t / (std::size_t(block_dim.x) * block_dim.y));
    f.warp = int(t / 32);
    f.stack.reset(new char[kFiberStackBytes]);
    getcontext(&f.context);
    f.context.uc_stack.ss_sp = f.stack.get();
    f.context.uc_stack.ss_size = kFiberStackBytes;
    f.context.uc_link = &blk.scheduler;
    makecontext(&f.context, fiber_entry, 0);
  }
}

// Runs the threads of blk until all have exited or the block waits for memory that only other
// blocks can change: its only runnable threads spin, and a round of them saw no atomic write.
// Returns whether it progressed. A barrier that the block's own threads can never pass fails.
inline bool advance_block(Block& blk) {
  tl_block = &blk;
  tl_block_idx = blk.idx;
  bool progressed = false;
  for (;;) {
    bool resumed = false, moved = false;
    const std::uint64_t writes = tl_atomic_writes;
    for (std::size_t t = 0; t < blk.fibers.size(); ++t) {
      Fiber& f = blk.fibers[t];
      if (!can_resume(blk, f)) continue;
      const bool was_spinning = f.state == Fiber::State::Spinning;
      blk.current = t;
      tl_thread_idx = f.idx;
      swapcontext(&blk.scheduler, &f.context);
      resumed = true;
      moved = moved || !was_spinning || f.state != Fiber::State::Spinning;
      if (blk.error) std::rethrow_exception(blk.error);
    }
    moved = moved || writes != tl_atomic_writes;
    blk.finished = std::all_of(blk.fibers.begin(), blk.fibers.end(),
                               [](const Fiber& f) { return f.state == Fiber::State::Done; });
    if (blk.finished) return true;
    if (!resumed) throw Error("CUDA emulator: block " + block_name(blk) + ": " + describe_stall(blk));
    if (!moved) return progressed;
    progressed = true;
  }
}

inline std::string describe_deadlock(const std::vector<std::unique_ptr<Block>>& blocks, const char* what) {
  std::ostringstream s;
  s << "CUDA emulator: deadlock" << what << ": no thread of any block can progress; stalled blocks:";
  for (const auto& blk : blocks) {
    if (!blk->finished) s << " block " << block_name(*blk) << ":" << describe_threads(*blk) << ".";
  }
  return s.str();
}

inline void run_grid(const dim3& grid, const dim3& block, std::size_t shared_bytes, const std::function<void()>& body,
                     bool cooperative = false) {
  const std::size_t threads = std::size_t(block.x) * block.y * block.z;
  if (threads == 0 || threads > 1024 || std::size_t(grid.x) * grid.y * grid.z == 0) {
    std::ostringstream s;
    s << "CUDA emulator: invalid launch configuration: grid (" << grid.x << "," << grid.y << "," << grid.z
      << "), block (" << block.x << "," << block.y << "," << block.z << ")";
    throw Error(s.str());
  }
  if (shared_bytes > kMaxSharedBytes) {
    throw Error("CUDA emulator: launch asks for " + std::to_string(shared_bytes) +
                " bytes of dynamic shared memory per block; the limit is " + std::to_string(kMaxSharedBytes));
  }
  const std::size_t blocks = std::size_t(grid.x) * grid.y * grid.z;
  if (cooperative) {
    const int per_sm = max_active_blocks_per_sm(int(threads), shared_bytes);
    const std::size_t resident = std::size_t(per_sm) * std::size_t(device().sm_count);
    if (blocks > resident) {
      throw Error("CUDA emulator: cooperative launch of " + std::to_string(blocks) +
                  " blocks exceeds the resident capacity of the emulated device: " +
                  std::to_string(device().sm_count) + " SMs x " + std::to_string(per_sm) + " blocks of " +
                  std::to_string(threads) + " threads and " + std::to_string(shared_bytes) +
                  " bytes of shared memory = " + std::to_string(resident));
    }
  }
  struct Reset {
    ~Reset() {
      tl_block = nullptr;
      tl_cooperative = false;
    }
  } reset;
  tl_grid_dim = grid;
  tl_block_dim = block;
  tl_cooperative = cooperative;
  std::vector<std::unique_ptr<Block>> alive;  // the whole grid when cooperative, else one block
  for (unsigned z = 0; z < grid.z; ++z) {
    for (unsigned y = 0; y < grid.y; ++y) {
      for (unsigned x = 0; x < grid.x; ++x) {
        alive.push_back(std::make_unique<Block>(uint3{x, y, z}, block, shared_bytes, body));
        init_fibers(*alive.back(), block);
        if (cooperative) continue;
        while (!alive.back()->finished) {  // alone, a block that waits for another waits forever
          if (!advance_block(*alive.back())) {
            throw Error(describe_deadlock(alive, " (a wait for another block needs a cooperative launch)"));
          }
        }
        alive.clear();
      }
    }
  }
  while (cooperative) {
    bool progressed = false, finished = true;
    for (const auto& blk : alive) {
      if (blk->finished) continue;
      progressed = advance_block(*blk) || progressed;
      finished = finished && blk->finished;
    }
    if (finished) return;
    if (!progressed) throw Error(describe_deadlock(alive, " in a cooperative grid"));
  }
}

// kernel<<<grid, block, shared_bytes>>>(args...): each fiber calls the kernel with its own copy
// of the arguments, as every GPU thread gets the kernel parameters.
template <class... KArgs, class... Args>
void launch(void (*kernel)(KArgs...), dim3 grid, dim3 block, std::size_t shared_bytes, Args&&... args) {
  const std::tuple<std::decay_t<KArgs>...> params(std::forward<Args>(args)...);
  const std::function<void()> body = [&] { std::apply(kernel, params); };
  run_grid(grid, block, shared_bytes, body);
}

// cudaLaunchCooperativeKernel: every block of the grid resident at once (see the top).
template <class... KArgs, class... Args>
void launch_cooperative(void (*kernel)(KArgs...), dim3 grid, dim3 block, std::size_t shared_bytes, Args&&... args) {
  const std::tuple<std::decay_t<KArgs>...> params(std::forward<Args>(args)...);
  const std::function<void()> body = [&] { std::apply(kernel, params); };
  run_grid(grid, block, shared_bytes, body, true);
}

// A load that another block may change while this thread waits for it: the thread yields first,
// so the blocks of a cooperative grid progress while one spins.
template <class T>
T volatile_load(const T* address) {
  Fiber& self = current_fiber();
  self.state = Fiber::State::Spinning;
  yield_to_scheduler();
  self.state = Fiber::State::Running;
  return *address;
}

template <class T>
Ptr<T> dynamic_shared(const char* name) {
  const SharedBuffer& buf = tl_block->dynamic_shared;
  return Ptr<T>(reinterpret_cast<T*>(buf.storage.get()), std::ptrdiff_t(buf.bytes / sizeof(T)), name);
}

// The n elements of type U that start at element off of p: a buffer of another type carved from an
// arena (the dynamic shared memory), checked against p's extent.
template <class U, class T>
Ptr<U> reinterpret_slice(const Ptr<T>& p, std::int64_t off, std::int64_t n, const char* name) {
  if (off < 0 || n < 0 || (p.offset() + off) * std::int64_t(sizeof(T)) + n * std::int64_t(sizeof(U)) >
                               p.size() * std::int64_t(sizeof(T))) {
    std::ostringstream s;
    s << "slice " << name << " of " << n << " elements of " << sizeof(U) << " bytes at " << p.name() << "["
      << p.offset() + off << "] exceeds " << p.name() << " of " << p.size() << " elements";
    fail(s.str());
  }
  return Ptr<U>(reinterpret_cast<U*>(p.base() + p.offset() + off), n, name);
}

template <class T>
Ptr<T> static_shared(const void* declaration, std::size_t count, const char* name) {
  SharedBuffer& buf = tl_block->static_shared[declaration];
  if (!buf.storage) {
    buf.storage = garbage_filled(count * sizeof(T));
    buf.bytes = count * sizeof(T);
  }
  return Ptr<T>(reinterpret_cast<T*>(buf.storage.get()), std::ptrdiff_t(count), name);
}

}  // namespace emu

using emu::dim3;

// Warp shuffles (whole warps, width 32).
template <class T>
T __shfl_sync(unsigned mask, T var, int src_lane, int width = 32) {
  return emu::warp_exchange(mask, var, width, [&](int) { return src_lane % 32; }, "__shfl_sync");
}
template <class T>
T __shfl_xor_sync(unsigned mask, T var, int lane_mask, int width = 32) {
  return emu::warp_exchange(mask, var, width, [&](int lane) { return lane ^ lane_mask; }, "__shfl_xor_sync");
}
template <class T>
T __shfl_down_sync(unsigned mask, T var, unsigned delta, int width = 32) {
  return emu::warp_exchange(
      mask, var, width, [&](int lane) { return lane + int(delta) < 32 ? lane + int(delta) : lane; },
      "__shfl_down_sync");
}

// Fibers switch only at barriers, shuffles and volatile loads, and blocks only when one waits, so
// a plain read-modify-write is atomic here. Memory is sequentially consistent: a fence has nothing
// to order.
template <class T>
T atomicAdd(T* address, T val) {
  const T old = *address;
  *address = old + val;
  ++emu::tl_atomic_writes;
  return old;
}

inline void __threadfence() {}

inline float __expf(float x) { return std::exp(x); }

// The 16-bit float types, bit-compatible with CUDA's (and torch's Half/BFloat16).
struct __half {
  std::uint16_t bits;
};
struct __nv_bfloat16 {
  std::uint16_t bits;
};

inline float emu_bits_to_float(std::uint32_t bits) {
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}
inline std::uint32_t emu_float_to_bits(float f) {
  std::uint32_t bits;
  std::memcpy(&bits, &f, 4);
  return bits;
}

inline float __half2float(__half h) {
  const std::uint32_t sign = std::uint32_t(h.bits & 0x8000u) << 16;
  const std::uint32_t exp = (h.bits >> 10) & 0x1Fu, man = h.bits & 0x3FFu;
  if (exp == 0) {  // zero or subnormal: man * 2^-24, exact in float
    const float v = std::ldexp(float(man), -24);
    return sign ? -v : v;
  }
  if (exp == 31) return emu_bits_to_float(sign | 0x7F800000u | (man << 13));
  return emu_bits_to_float(sign | ((exp + 112) << 23) | (man << 13));
}

inline __half __float2half_rn(float f) {  // round to nearest even
  const std::uint32_t x = emu_float_to_bits(f);
  const std::uint32_t sign = (x >> 16) & 0x8000u, ax = x & 0x7FFFFFFFu;
  std::uint32_t h;
  if (ax > 0x7F800000u) {
    h = 0x7E00u;  // NaN
  } else if (ax >= 0x47800000u) {
    h = 0x7C00u;  // >= 2^16: infinity
  } else if (ax < 0x38800000u) {  // below 2^-14: subnormal half, round(|f| * 2^24)
    h = std::uint32_t(std::nearbyint(std::ldexp(emu_bits_to_float(ax), 24)));
  } else {
    h = (((ax >> 23) - 112) << 10) | ((ax & 0x7FFFFFu) >> 13);
    const std::uint32_t rest = ax & 0x1FFFu;
    if (rest > 0x1000u || (rest == 0x1000u && (h & 1u))) ++h;  // a carry into the exponent is right
  }
  return __half{std::uint16_t(sign | h)};
}

inline float __bfloat162float(__nv_bfloat16 b) { return emu_bits_to_float(std::uint32_t(b.bits) << 16); }

inline __nv_bfloat16 __float2bfloat16_rn(float f) {
  const std::uint32_t x = emu_float_to_bits(f);
  if ((x & 0x7FFFFFFFu) > 0x7F800000u) return __nv_bfloat16{std::uint16_t((x >> 16) | 0x40u)};  // quiet NaN
  return __nv_bfloat16{std::uint16_t((x + 0x7FFFu + ((x >> 16) & 1u)) >> 16)};
}

// The WMMA API (nvcuda::wmma), emulated; it needs the 16-bit types above.
#include "wmma.h"
