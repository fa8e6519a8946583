// Runs a CUDA kernel that uses threadIdx/blockIdx, __shared__ and __syncthreads() on the
// host: every block in turn, each of its threads as a std::thread, __syncthreads() as a
// std::barrier. Slow, but it executes the kernel's real indexing and tiling logic, so a
// machine without a GPU can check it against NumPy.
#pragma once
#include <barrier>
#include <functional>
#include <thread>
#include <vector>

struct gf_dim3 { unsigned x = 1, y = 1, z = 1; };
thread_local gf_dim3 threadIdx;
gf_dim3 blockIdx, blockDim, gridDim;
std::barrier<>* gf_block_barrier = nullptr;

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __shared__ static
#define __syncthreads() gf_block_barrier->arrive_and_wait()

inline void gf_launch(gf_dim3 grid, gf_dim3 block, const std::function<void()>& kernel) {
    gridDim = grid;
    blockDim = block;
    const unsigned n = block.x * block.y * block.z;
    for (unsigned bz = 0; bz < grid.z; ++bz)
        for (unsigned by = 0; by < grid.y; ++by)
            for (unsigned bx = 0; bx < grid.x; ++bx) {
                blockIdx = {bx, by, bz};
                std::barrier<> barrier(n);
                gf_block_barrier = &barrier;
                std::vector<std::thread> threads;
                for (unsigned t = 0; t < n; ++t)
                    threads.emplace_back([&, t] {
                        threadIdx = {t % block.x, (t / block.x) % block.y, t / (block.x * block.y)};
                        kernel();
                    });
                for (auto& th : threads) th.join();
            }
}
