// weft's side of the stream fence (fence.rs): volatile accesses go to L2, where burn's side
// (a cubecl kernel) reads and writes the same words.
extern "C" __global__ void weft_fence_wait(const volatile unsigned int *flag, unsigned int n) {
    while (*flag < n) {
    }
    __threadfence();
}
extern "C" __global__ void weft_fence_signal(volatile unsigned int *flag, unsigned int n) {
    __threadfence();
    *flag = n;
}
