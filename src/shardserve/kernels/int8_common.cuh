// Helpers of the int8 decode GEMM (int8_mma.cu; also benchmarks/tma_int8_probe.py's kernel): bytes
// to 16-bit floats, the tensor core's m16n8k16, streaming loads. Python puts this file after the
// variant's defines (BF16: bf16 activations, else fp16) and before the kernel's own file.

typedef unsigned int u32;
typedef unsigned short u16;

// Four int8 weights (one word) -> two registers of two 16-bit floats: bytes (0, 1) and (2, 3).
__device__ __forceinline__ void convert4(u32 q, u32 &lo, u32 &hi) {
    u32 u = q ^ 0x80808080u;  // w + 128, as unsigned bytes
#if BF16
    const u32 base = 0x4B000000u;  // 2^23: its mantissa's low byte takes u
    float f0 = __uint_as_float(__byte_perm(u, base, 0x7440)) - 8388736.0f;
    float f1 = __uint_as_float(__byte_perm(u, base, 0x7441)) - 8388736.0f;
    float f2 = __uint_as_float(__byte_perm(u, base, 0x7442)) - 8388736.0f;
    float f3 = __uint_as_float(__byte_perm(u, base, 0x7443)) - 8388736.0f;
    lo = __byte_perm(__float_as_uint(f0), __float_as_uint(f1), 0x7632);
    hi = __byte_perm(__float_as_uint(f2), __float_as_uint(f3), 0x7632);
#else
    const u32 magic = 0x64806480u;  // 1152.0 = 1024 + 128, twice
    u32 a = __byte_perm(u, 0x64646464u, 0x4140);  // 1024 + u0, 1024 + u1
    u32 b = __byte_perm(u, 0x64646464u, 0x4342);
    asm("sub.f16x2 %0, %1, %2;" : "=r"(lo) : "r"(a), "r"(magic));
    asm("sub.f16x2 %0, %1, %2;" : "=r"(hi) : "r"(b), "r"(magic));
#endif
}

__device__ __forceinline__ void mma(float *c, u32 a0, u32 a1, u32 a2, u32 a3, u32 b0, u32 b1) {
#if BF16
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 "
#else
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 "
#endif
                 "{%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}

// Weights are read once: keep them out of L1.
__device__ __forceinline__ uint4 load_stream(const void *p) {
    uint4 v;
    asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0,%1,%2,%3}, [%4];"
                 : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w) : "l"(p));
    return v;
}

__device__ __forceinline__ float half_to_float(u16 h) {
#if BF16
    return __uint_as_float(((u32)h) << 16);
#else
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h));
    return f;
#endif
}

__device__ __forceinline__ u16 float_to_half(float f) {
    u16 h;
#if BF16
    asm("cvt.rn.bf16.f32 %0, %1;" : "=h"(h) : "f"(f));
#else
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(f));
#endif
    return h;
}

__device__ __forceinline__ u32 word(const uint4 &v, int i) {
    return i == 0 ? v.x : i == 1 ? v.y : i == 2 ? v.z : v.w;
}
