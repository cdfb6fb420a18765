// The int8 decode GEMM of kernels/int8_mma.py, whose docstring explains its data path. That
// module compiles it at run time (NVRTC) once per variant, after defines for BF16 (bf16 or fp16
// activations), NT (16-feature tiles a program), WARPS (warps splitting K), PIPE (K blocks in
// flight a warp), KW and KBLOCK (16-byte loads a thread makes of a row per K block, and the
// block's width, 64 * KW), PDL (programmatic dependent launch) and KERNEL_NAME; its helpers,
// int8_common.cuh, come first.

struct Slot {
    uint4 w[NT][2][KW];  // rows g and g + 8 of each 16-feature tile: 16 * KW bytes of K each
    uint4 x[2 * KW];     // 16 * KW activations of row g
};

__device__ __forceinline__ void load_weights(Slot &slot, const signed char *const (&wrow)[NT][2], int kb) {
#pragma unroll
    for (int j = 0; j < NT; ++j)
#pragma unroll
        for (int u = 0; u < KW; ++u) {
            slot.w[j][0][u] = load_stream(wrow[j][0] + kb * KBLOCK + 16 * u);
            slot.w[j][1][u] = load_stream(wrow[j][1] + kb * KBLOCK + 16 * u);
        }
}

__device__ __forceinline__ void load_x(Slot &slot, const u16 *xrow, bool has_x, int kb) {
#pragma unroll
    for (int u = 0; u < 2 * KW; ++u)
        slot.x[u] = has_x ? *(const uint4 *)(xrow + kb * KBLOCK + 8 * u) : make_uint4(0, 0, 0, 0);
}

// Program: 16 * NT output features; its WARPS warps take the KBLOCK-wide K blocks in turn.
extern "C" __global__ void __launch_bounds__(WARPS * 32)
KERNEL_NAME(const u16 *__restrict__ x, const signed char *__restrict__ w, const float *__restrict__ scale,
            const u16 *__restrict__ bias, u16 *__restrict__ out, int M, int N, int K, int stride_xm,
            int stride_om, int has_bias) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int g = lane >> 2, t = lane & 3;
    const int n0 = blockIdx.x * (16 * NT);
    const int kblocks = K / KBLOCK;
    const signed char *wrow[NT][2];
#pragma unroll
    for (int j = 0; j < NT; ++j)
#pragma unroll
        for (int h = 0; h < 2; ++h) {
            int n = min(n0 + 16 * j + 8 * h + g, N - 1);  // rows past N are read, never stored
            wrow[j][h] = w + (long long)n * K + 16 * KW * t;
        }
    const bool has_x = g < M;  // the MMA's columns past M multiply zeros
    const u16 *xrow = x + (long long)(has_x ? g : 0) * stride_xm + 16 * KW * t;
    float acc[NT][4];
#pragma unroll
    for (int j = 0; j < NT; ++j) acc[j][0] = acc[j][1] = acc[j][2] = acc[j][3] = 0.0f;
    // Launched early (PDL), the program loads its first weights, which no kernel of the step
    // writes, while its predecessor still runs; then it waits for the activations.
    Slot slot[PIPE];
#pragma unroll
    for (int s = 0; s < PIPE; ++s)
        if (warp + s * WARPS < kblocks)
            load_weights(slot[s], wrow, warp + s * WARPS);
#if PDL
    asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
#pragma unroll
    for (int s = 0; s < PIPE; ++s)
        if (warp + s * WARPS < kblocks)
            load_x(slot[s], xrow, has_x, warp + s * WARPS);
    for (int base = warp; base < kblocks; base += PIPE * WARPS) {
#pragma unroll
        for (int s = 0; s < PIPE; ++s) {
            const int kb = base + s * WARPS;
            if (kb < kblocks) {
#pragma unroll
                for (int i = 0; i < 4 * KW; ++i) {  // MMA step i: bytes 4i .. 4i + 3 of a row's 16 KW
                    const u32 b0 = word(slot[s].x[i >> 1], (2 * i) & 3);
                    const u32 b1 = word(slot[s].x[i >> 1], (2 * i + 1) & 3);
#pragma unroll
                    for (int j = 0; j < NT; ++j) {
                        u32 a0, a1, a2, a3;
                        convert4(word(slot[s].w[j][0][i >> 2], i & 3), a0, a2);
                        convert4(word(slot[s].w[j][1][i >> 2], i & 3), a1, a3);
                        mma(acc[j], a0, a1, a2, a3, b0, b1);
                    }
                }
                if (kb + PIPE * WARPS < kblocks) {
                    load_weights(slot[s], wrow, kb + PIPE * WARPS);
                    load_x(slot[s], xrow, has_x, kb + PIPE * WARPS);
                }
            }
        }
    }
#if PDL
    asm volatile("griddepcontrol.launch_dependents;");  // late, as the Triton GEMMs (kernels/pdl.py)
#endif
    // acc[j][r]: feature n0 + 16j + g + 8 * (r >> 1), row 2t + (r & 1). Sum over the warps.
    __shared__ float partial[WARPS][NT * 4][32];
#pragma unroll
    for (int j = 0; j < NT; ++j)
#pragma unroll
        for (int r = 0; r < 4; ++r) partial[warp][4 * j + r][lane] = acc[j][r];
    __syncthreads();
    for (int v = threadIdx.x; v < NT * 4 * 32; v += WARPS * 32) {
        const int jr = v >> 5, l = v & 31;
        const int j = jr >> 2, r = jr & 3;
        const int n = n0 + 16 * j + (l >> 2) + 8 * (r >> 1);
        const int m = 2 * (l & 3) + (r & 1);
        if (n < N && m < M) {
            float sum = 0.0f;
#pragma unroll
            for (int q = 0; q < WARPS; ++q) sum += partial[q][jr][l];
            sum *= scale[n];
            if (has_bias)
                sum += half_to_float(bias[n]);
            out[(long long)m * stride_om + n] = float_to_half(sum);
        }
    }
}
