// The int8 decode GEMM of kernels/int8_streamk.py, whose docstring explains why and how it spreads
// the work. Compiled at run time (NVRTC) once per variant, after defines for BF16, WARPS (warps a
// block), PIPE (K blocks in flight a warp), PDL and KERNEL_NAME, and after int8_common.cuh.
//
// A unit is one 16-feature tile's 128-wide K block (2 KB of weights); units are numbered tile by
// tile. Warp i of the T in the grid takes units [i U / T, (i + 1) U / T): its share of every SM's
// equal share. Where its range leaves a tile, it adds its partial sums to the float32 workspace
// and counts the K blocks it covered; the warp whose count completes the tile scales the sums,
// adds the bias, writes the output and leaves workspace and count at zero for the next call.

constexpr int KBLOCK = 128;

struct Unit {
    uint4 w[2][2];  // rows g and g + 8: bytes 32t .. 32t + 31 of the K block
    uint4 x[4];     // row g's activations 32t .. 32t + 31 of the K block
};

// A unit's place: its tile and its K block in the tile.
struct Cursor {
    int tile, kb;
    __device__ __forceinline__ void advance(int kblocks) {
        if (++kb == kblocks) {
            kb = 0;
            ++tile;
        }
    }
};

__device__ __forceinline__ void load_weights(Unit &unit, const signed char *w, Cursor at, int N, int K, int g,
                                             int t) {
#pragma unroll
    for (int h = 0; h < 2; ++h) {
        const int n = min(16 * at.tile + 8 * h + g, N - 1);  // rows past N are read, never stored
        const signed char *p = w + (long long)n * K + at.kb * KBLOCK + 32 * t;
        unit.w[h][0] = load_stream(p);
        unit.w[h][1] = load_stream(p + 16);
    }
}

__device__ __forceinline__ void load_x(Unit &unit, const u16 *xrow, bool has_x, Cursor at) {
#pragma unroll
    for (int v = 0; v < 4; ++v)
        unit.x[v] = has_x ? *(const uint4 *)(xrow + at.kb * KBLOCK + 8 * v) : make_uint4(0, 0, 0, 0);
}

__device__ __forceinline__ void multiply(float *acc, const Unit &unit) {
#pragma unroll
    for (int i = 0; i < 8; ++i) {  // MMA step i: bytes 4i .. 4i + 3 of the thread's 32
        const u32 b0 = word(unit.x[i >> 1], (2 * i) & 3), b1 = word(unit.x[i >> 1], (2 * i + 1) & 3);
        u32 a0, a1, a2, a3;
        convert4(word(unit.w[0][i >> 2], i & 3), a0, a2);
        convert4(word(unit.w[1][i >> 2], i & 3), a1, a3);
        mma(acc, a0, a1, a2, a3, b0, b1);
    }
}

// acc[r]: feature 16 tile + g + 8 (r >> 1), row 2t + (r & 1), as in int8_mma.cu.
__device__ void flush(float *acc, int tile, int covered, int kblocks, float *workspace, int *counts,
                      const float *scale, const u16 *bias, int has_bias, u16 *out, int M, int N, int stride_om,
                      int lane) {
    const int g = lane >> 2, t = lane & 3;
    const bool whole = covered == kblocks;  // no other warp touches this tile: no workspace
    if (!whole) {
#pragma unroll
        for (int r = 0; r < 4; ++r)
            if (2 * t + (r & 1) < M)
                atomicAdd(&workspace[(16 * tile + g + 8 * (r >> 1)) * 8 + 2 * t + (r & 1)], acc[r]);
        __threadfence();  // the sums land before the count says so
        __syncwarp();
    }
    int last = whole;
    if (!whole && lane == 0)
        last = atomicAdd(&counts[tile], covered) + covered == kblocks;
    last = __shfl_sync(0xffffffffu, last, 0);
    if (!last)
        return;
    if (!whole)
        __threadfence();  // every other warp's sums, seen through their count
#pragma unroll
    for (int r = 0; r < 4; ++r) {
        const int n = 16 * tile + g + 8 * (r >> 1), m = 2 * t + (r & 1);
        if (m < M) {
            const float sum = whole ? acc[r] : atomicExch(&workspace[n * 8 + m], 0.0f);
            if (n < N) {
                float y = sum * scale[n];
                if (has_bias)
                    y += half_to_float(bias[n]);
                out[(long long)m * stride_om + n] = float_to_half(y);
            }
        }
    }
    if (!whole && lane == 0)
        counts[tile] = 0;
}

extern "C" __global__ void __launch_bounds__(WARPS * 32)
KERNEL_NAME(const u16 *__restrict__ x, const signed char *__restrict__ w, const float *__restrict__ scale,
            const u16 *__restrict__ bias, u16 *__restrict__ out, float *__restrict__ workspace,
            int *__restrict__ counts, int M, int N, int K, int stride_xm, int stride_om, int has_bias) {
    const int lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    const int kblocks = K / KBLOCK;
    const long long units = (long long)((N + 15) / 16) * kblocks;
    const long long warps = (long long)gridDim.x * WARPS, i = (long long)blockIdx.x * WARPS + (threadIdx.x >> 5);
    const int first = (int)(i * units / warps), end = (int)((i + 1) * units / warps);  // units < 2^31
    const bool has_x = g < M;  // the MMA's columns past M multiply zeros
    const u16 *xrow = x + (long long)(has_x ? g : 0) * stride_xm + 32 * t;
    Cursor at = {first / kblocks, first % kblocks}, next = at;  // the unit to multiply, to load
    // Launched early (PDL), the warp loads its first weights, which no kernel of the step writes,
    // while its predecessor still runs; then it waits for the activations.
    Unit unit[PIPE];
#pragma unroll
    for (int s = 0; s < PIPE; ++s)
        if (first + s < end) {
            load_weights(unit[s], w, next, N, K, g, t);
            next.advance(kblocks);
        }
#if PDL
    asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
    Cursor x_at = at;
#pragma unroll
    for (int s = 0; s < PIPE; ++s)
        if (first + s < end) {
            load_x(unit[s], xrow, has_x, x_at);
            x_at.advance(kblocks);
        }
    float acc[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    int covered = 0;  // K blocks of this tile in acc
    for (int base = first; base < end; base += PIPE) {
#pragma unroll
        for (int s = 0; s < PIPE; ++s) {
            const int u = base + s;
            if (u < end) {
                multiply(acc, unit[s]);
                ++covered;
                if (u + PIPE < end) {
                    load_weights(unit[s], w, next, N, K, g, t);
                    load_x(unit[s], xrow, has_x, next);
                    next.advance(kblocks);
                }
                const int tile = at.tile;
                at.advance(kblocks);
                if (u + 1 == end || at.kb == 0) {  // the run leaves this tile
                    flush(acc, tile, covered, kblocks, workspace, counts, scale, bias, has_bias, out, M, N,
                          stride_om, lane);
                    acc[0] = acc[1] = acc[2] = acc[3] = 0.0f;
                    covered = 0;
                }
            }
        }
    }
#if PDL
    asm volatile("griddepcontrol.launch_dependents;");  // late, as the other GEMMs (kernels/pdl.py)
#endif
}
