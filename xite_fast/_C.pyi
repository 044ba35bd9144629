# Type stub for the compiled extension xite_fast._C (csrc/). Use the Python wrappers in xite_fast;
# these raw entry points take float32 C-contiguous numpy arrays and skip most validation.
import numpy as np

ops: list[str]

def cpu_supports_avx2() -> bool: ...
def cpu_supports_avx512() -> bool: ...
def cpu_supports_avx512_bf16() -> bool: ...
def max_threads() -> int: ...
def with_cuda() -> bool: ...
def cosine_topk(
    queries: np.ndarray,
    keys: np.ndarray,
    k: int,
    assume_normalized: bool = False,
    num_threads: int = 0,
    key_offset: int = 0,
    key_block: int = 0,
    query_block: int = 0,
    stream_keys: bool = False,
    split: str = "auto",
    kernel: str = "auto",
    d_block: int = 0,
    out_of_range: str = "raise",
) -> tuple[np.ndarray, np.ndarray] | tuple[np.ndarray, np.ndarray, bool]: ...
def cosine_topk_bf16_stats() -> dict[str, int]: ...
def cosine_topk_fma_peak(isa: str = "avx2", num_threads: int = 0, iters: int = 20000000) -> float: ...
def lda_project_interp(
    src: np.ndarray,
    tgt: np.ndarray,
    W: np.ndarray,
    lam: np.ndarray,
    lam_div: int,
    mode: str,
    out: np.ndarray,
    num_threads: int = 0,
    nt_mode: int = -1,
    simd: str = "auto",
) -> int: ...
def lda_project_interp_triad(
    a: np.ndarray, b: np.ndarray, c: np.ndarray, scalar: float, num_threads: int = 0
) -> None: ...
def sinkhorn(
    x: np.ndarray,
    y: np.ndarray,
    a: np.ndarray,
    b: np.ndarray,
    eps_list: list[float],
    tol: float = 0.0,
    symmetric: bool = False,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]: ...
def sinkhorn_backward(
    x: np.ndarray,
    y: np.ndarray,
    a: np.ndarray,
    b: np.ndarray,
    f: np.ndarray,
    g: np.ndarray,
    eps: float,
    grad_output: np.ndarray,
    symmetric: bool = False,
) -> tuple[np.ndarray, ...]: ...

# built with -DXITE_ENABLE_CUDA=ON only (torch CUDA tensors in and out)
def cosine_topk_cuda(queries, keys, k: int, *, assume_normalized: bool = False): ...
def lda_project_interp_cuda(src, tgt, W, lam, mode: str = "proj"): ...
