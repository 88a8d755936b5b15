//! `StreamFence`: orders weft's own CUDA streams (cuBLASLt, the NVRTC kernels) against
//! burn-cuda's stream on the device, so the host never waits between them.
//!
//! cubecl's streams are private: weft cannot record an event on burn's stream. Instead two
//! device words carry sequence numbers, each written by a one-thread kernel on one side and
//! polled by a one-thread kernel on the other. Before weft's work, a cubecl kernel on burn's
//! stream stores `n` into the first word and an NVRTC kernel on weft's stream spins until it reads
//! ≥ n: everything burn queued earlier is done. After weft's work, an NVRTC kernel on weft's
//! stream stores `n` into the second word (after a memory fence) and a cubecl kernel on burn's
//! stream spins until it reads ≥ n: nothing burn queues later starts before weft's work is done.
//! Each spinning kernel holds one warp of one SM while it waits. (The driver's stream memory
//! operations, `cuStreamWaitValue32`, refuse the stream-ordered pool memory cubecl allocates.)
//!
//! Memory follows the same order: a buffer burn frees after handing it to weft can only be reused
//! by burn work queued after the spin, which starts after weft's kernels finished with it; an
//! output burn allocated for weft was last used by burn work before the signal.
use burn::tensor::backend::Backend;
use burn::tensor::{DType, Int, Tensor};
use burn_cubecl::cubecl::cuda::{CudaDevice, CudaRuntime};
use burn_cubecl::tensor::CubeTensor;
use cubecl::prelude::*;
use cudarc::driver::{CudaContext, CudaFunction, CudaStream, LaunchConfig, PushKernelArg};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use crate::backend::CudaBackend;
use crate::fence_plan;

#[cube(launch_unchecked)]
fn fence_signal(flag: &mut Array<Atomic<u32>>, value: u32) {
    if ABSOLUTE_POS == 0 {
        flag[0].store(value);
    }
}

#[cube(launch_unchecked)]
fn fence_wait(flag: &mut Array<Atomic<u32>>, value: u32) {
    if ABSOLUTE_POS == 0 {
        loop {
            if flag[0].load() >= value {
                break;
            }
        }
    }
}

/// Why a fence could not be set up or queued (the caller then waits on the host instead).
#[derive(Debug, thiserror::Error)]
#[error("stream fence: {0}")]
pub struct FenceError(String);

/// The two device words of one device and their sequence.
pub struct StreamFence {
    context: Arc<CudaContext>,
    wait_kernel: CudaFunction,
    signal_kernel: CudaFunction,
    /// Written by burn's stream, awaited by weft's.
    to_weft: CubeTensor<CudaRuntime>,
    to_weft_ptr: u64,
    /// Written by weft's streams, awaited by burn's.
    to_burn: CubeTensor<CudaRuntime>,
    to_burn_ptr: u64,
    next: AtomicU32,
}

impl StreamFence {
    fn new(device: &CudaDevice) -> Result<Self, FenceError> {
        let word = || -> Result<(CubeTensor<CudaRuntime>, u64), FenceError> {
            let t = Tensor::<CudaBackend, 1, Int>::zeros([1], (device, DType::U32));
            let t: CubeTensor<CudaRuntime> = t.into_primitive();
            let ptr = t
                .client
                .get_resource(t.handle.clone())
                .map_err(|e| FenceError(format!("flag: {e:?}")))?
                .resource()
                .ptr;
            Ok((t, ptr))
        };
        let context = CudaContext::new(device.index).map_err(|e| FenceError(format!("{e:?}")))?;
        let (major, minor) = context
            .compute_capability()
            .map_err(|e| FenceError(format!("{e:?}")))?;
        let arch = super::dequant_plan::gpu_arch(major, minor);
        let ptx = super::nvrtc::compile(
            "fence.cu",
            fence_plan::KERNEL_SOURCE,
            &arch,
            fence_plan::NVRTC_OPTIONS,
        )
        .map_err(|e| FenceError(format!("NVRTC: {e}")))?;
        let module = context
            .load_module(ptx)
            .map_err(|e| FenceError(format!("loading the kernels: {e:?}")))?;
        let function = |name: &str| {
            module
                .load_function(name)
                .map_err(|e| FenceError(format!("{name}: {e:?}")))
        };
        let (wait_kernel, signal_kernel) =
            (function("weft_fence_wait")?, function("weft_fence_signal")?);
        let (to_weft, to_weft_ptr) = word()?;
        let (to_burn, to_burn_ptr) = word()?;
        // The zeros are written before any fence is used.
        CudaBackend::sync(device).map_err(|e| FenceError(format!("sync: {e:?}")))?;
        let fence = StreamFence {
            context,
            wait_kernel,
            signal_kernel,
            to_weft,
            to_weft_ptr,
            to_burn,
            to_burn_ptr,
            next: AtomicU32::new(1),
        };
        fence.self_test(device)?;
        Ok(fence)
    }

    /// Checks the four kernels and both addresses before any wait can depend on them, so that a
    /// kernel that does not run or a word read at the wrong address is an error here (host waits
    /// from then on) rather than a wait that never ends: weft's signal kernel at both addresses,
    /// read back through burn; burn's signal kernel, read back; then both waits on values the
    /// words are known to hold, which return at once.
    fn self_test(&self, device: &CudaDevice) -> Result<(), FenceError> {
        let n = self.next.fetch_add(2, Ordering::Relaxed);
        let stream = self
            .context
            .new_stream()
            .map_err(|e| FenceError(format!("stream: {e:?}")))?;
        let sync = || CudaBackend::sync(device).map_err(|e| FenceError(format!("sync: {e:?}")));
        let read = |t: &CubeTensor<CudaRuntime>| -> Result<u32, FenceError> {
            let t = Tensor::<CudaBackend, 1, Int>::from_primitive(t.clone());
            let v = t
                .into_data()
                .convert::<u32>()
                .to_vec::<u32>()
                .map_err(|e| FenceError(format!("reading a word: {e:?}")))?;
            v.first()
                .copied()
                .ok_or_else(|| FenceError("empty word".into()))
        };
        let expect = |what: &str, got: u32, want: u32| match got == want {
            true => Ok(()),
            false => Err(FenceError(format!("{what} wrote {got}, expected {want}"))),
        };
        let wait_stream =
            |s: &CudaStream| s.synchronize().map_err(|e| FenceError(format!("{e:?}")));
        for (ptr, word) in [
            (self.to_weft_ptr, &self.to_weft),
            (self.to_burn_ptr, &self.to_burn),
        ] {
            self.launch(&stream, &self.signal_kernel, ptr, n)?;
            wait_stream(&stream)?;
            expect("weft's signal kernel", read(word)?, n)?;
        }
        self.burn_signal(n + 1);
        sync()?;
        expect("burn's signal kernel", read(&self.to_weft)?, n + 1)?;
        // The words hold n + 1 and n, checked at the addresses the waits read.
        self.launch(&stream, &self.wait_kernel, self.to_weft_ptr, n + 1)?;
        wait_stream(&stream)?;
        self.burn_wait(n);
        sync()?;
        tracing::info!("stream fences on cuda:{}: self-test passed", device.index);
        Ok(())
    }

    /// The calling thread's fence on `device`, made on first use.
    ///
    /// One fence per device *and thread*: cubecl gives each thread its own stream, so a signal
    /// must come from the stream of the thread whose work it orders, and its words must not be
    /// advanced by another thread's sequence.
    pub fn shared(device: &CudaDevice) -> Result<Arc<Self>, FenceError> {
        type Key = (usize, std::thread::ThreadId);
        static SHARED: OnceLock<Mutex<HashMap<Key, Arc<StreamFence>>>> = OnceLock::new();
        let key = (device.index, std::thread::current().id());
        let mut shared = SHARED
            .get_or_init(Default::default)
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(f) = shared.get(&key) {
            return Ok(f.clone());
        }
        let f = Arc::new(StreamFence::new(device)?);
        shared.insert(key, f.clone());
        Ok(f)
    }

    /// Makes `stream` wait, on the device, for everything queued on burn's stream so far.
    /// Returns the sequence number to pass to [`release`](Self::release).
    pub fn acquire(&self, stream: &CudaStream) -> Result<u32, FenceError> {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        self.burn_signal(n);
        // cubecl hands launches to its device thread: the signal must reach the GPU before the
        // wait (two streams may share one hardware queue, where a wait ahead of its signal would
        // never end).
        self.to_weft
            .client
            .flush()
            .map_err(|e| FenceError(format!("flushing burn's queue: {e:?}")))?;
        self.launch(stream, &self.wait_kernel, self.to_weft_ptr, n)?;
        Ok(n)
    }

    /// Queues burn's signal: `n` stored into the word weft's waits read, after burn's work so far.
    fn burn_signal(&self, n: u32) {
        // SAFETY: a one-block, one-thread kernel that stores `n` into element 0 of `to_weft`, a
        // live U32 buffer of one element owned by this fence.
        unsafe {
            fence_signal::launch_unchecked::<CudaRuntime>(
                &self.to_weft.client,
                CubeCount::Static(1, 1, 1),
                CubeDim::new_1d(1),
                self.to_weft.clone().into_array_arg(),
                n,
            );
        }
    }

    /// Queues burn's wait: burn's later work starts once the word weft's signals write holds n.
    fn burn_wait(&self, n: u32) {
        // SAFETY: a one-block, one-thread kernel that reads element 0 of `to_burn` (a live U32
        // buffer of one element) until it is at least `n`.
        unsafe {
            fence_wait::launch_unchecked::<CudaRuntime>(
                &self.to_burn.client,
                CubeCount::Static(1, 1, 1),
                CubeDim::new_1d(1),
                self.to_burn.clone().into_array_arg(),
                n,
            );
        }
    }

    /// Queues `kernel(flag, n)` (one thread) on `stream`.
    fn launch(
        &self,
        stream: &CudaStream,
        kernel: &CudaFunction,
        flag: u64,
        n: u32,
    ) -> Result<(), FenceError> {
        self.context
            .bind_to_thread()
            .map_err(|e| FenceError(format!("bind: {e:?}")))?;
        let mut args = stream.launch_builder(kernel);
        args.arg(&flag).arg(&n);
        let one = LaunchConfig {
            grid_dim: (1, 1, 1),
            block_dim: (1, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: both kernels take (unsigned int *flag, unsigned int n) and touch only
        // flag[0]; `flag` is one of this fence's live one-word U32 buffers.
        unsafe { args.launch(one) }
            .map(drop)
            .map_err(|e| FenceError(format!("fence kernel: {e:?}")))
    }

    /// Makes burn's stream wait, on the device, for everything queued on `stream` so far.
    pub fn release(&self, stream: &CudaStream, n: u32) -> Result<(), FenceError> {
        self.launch(stream, &self.signal_kernel, self.to_burn_ptr, n)?;
        self.burn_wait(n);
        Ok(())
    }
}

/// The fence of `device` unless `WEFT_STREAM_FENCE=0` or it cannot be made (then `None`, with
/// one warning: the fast paths wait on the host instead).
pub fn fence_for(device: &CudaDevice) -> Option<Arc<StreamFence>> {
    static OFF: OnceLock<bool> = OnceLock::new();
    if *OFF.get_or_init(|| std::env::var("WEFT_STREAM_FENCE").is_ok_and(|v| v == "0")) {
        return None;
    }
    if FAILED.load(Ordering::Relaxed) {
        return None;
    }
    match StreamFence::shared(device) {
        Ok(f) => Some(f),
        Err(e) => {
            give_up(&e);
            None
        }
    }
}

/// Set once a fence failed: host waits from then on, for the whole process.
static FAILED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

fn give_up(e: &FenceError) {
    if !FAILED.swap(true, Ordering::Relaxed) {
        tracing::warn!("{e}; the fast paths wait on the host instead");
    }
}

/// How one batch of weft work on a stream was ordered after burn's queue: a device fence (to
/// be released) or a host wait (the stream to be waited for).
pub enum Ticket {
    Fence(Arc<StreamFence>, u32),
    Host,
}

/// Orders work queued next on `stream` after everything burn has queued: a device fence when
/// there is one, else a host wait for burn's queue.
/// A fence that fails turns fences off for the process and falls back to the host wait.
pub fn before(device: &CudaDevice, stream: &CudaStream) -> Result<Ticket, FenceError> {
    if let Some(f) = fence_for(device) {
        match f.acquire(stream) {
            Ok(n) => return Ok(Ticket::Fence(f, n)),
            Err(e) => give_up(&e),
        }
    }
    CudaBackend::sync(device).map_err(|e| FenceError(format!("sync: {e:?}")))?;
    Ok(Ticket::Host)
}

/// Orders burn's later work after everything queued on `stream`: releases the fence, or waits
/// for the stream on the host. With a fence the caller may drop its inputs at once (burn reuses
/// their memory only after the release).
pub fn after(ticket: Ticket, stream: &CudaStream) -> Result<(), FenceError> {
    let host_wait = || {
        stream
            .synchronize()
            .map_err(|e| FenceError(format!("waiting for the stream: {e:?}")))
    };
    match ticket {
        Ticket::Fence(f, n) => f.release(stream, n).or_else(|e| {
            // Burn's side may not wait: wait here instead.
            give_up(&e);
            host_wait()
        }),
        Ticket::Host => host_wait(),
    }
}
