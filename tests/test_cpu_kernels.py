"""The C loops of the max-correlation layer: the PyTorch path's bits, and every way they can fail.

The C loops must change nothing but the time: values, winning indices and both gradients equal
the PyTorch formulation bit for bit (NaN included), so trained weights do not change. When they
cannot be built (no compiler, a failing one, a corrupt cached library, disabled) the layer runs
the PyTorch path and says so once in the log.
"""

from __future__ import annotations

import os
import subprocess
import sys
import warnings

import pytest
import torch
import torch.nn.functional as F

from pellucid.nn.semantic import _cpu_kernels
from pellucid.nn.semantic.kernels import max_correlation

LIB = _cpu_kernels.library()
needs_lib = pytest.mark.skipif(LIB is None, reason=f"C kernels unavailable: {_cpu_kernels.unavailable_reason()}")


def _run(x, w, g, *, native: bool, monkeypatch, need=(True, True)):
    """Values, indices and the requested gradients of ``sum(best * g)``, with or without C."""
    monkeypatch.setenv("PELLUCID_CPU_KERNELS", "1" if native else "0")
    x = x.clone().requires_grad_(need[0])
    w = w.clone().requires_grad_(need[1])
    best, idx = max_correlation(x, w)
    inputs = [t for t, n in zip((x, w), need) if n]
    grads = torch.autograd.grad(best, inputs, g) if inputs else ()
    return (best, idx, *grads)


def _same_bits(a, b):
    for u, v in zip(a, b, strict=True):
        assert u.dtype == v.dtype and u.shape == v.shape
        torch.testing.assert_close(u, v, rtol=0, atol=0, equal_nan=True)
        if u.is_floating_point():  # +0 and -0 compare equal: their sign bits must agree too
            number = ~u.isnan()  # (a NaN's sign means nothing)
            assert torch.equal(torch.signbit(u[number]), torch.signbit(v[number]))


@needs_lib
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", [(150, 1, 28, 28, 64, 5), (5, 2, 7, 9, 7, 3), (9, 1, 6, 5, 4, 5)])
def test_c_kernels_give_the_pytorch_paths_bits(dtype, shape, monkeypatch):
    b, c, h, w_, k, ks = shape
    gen = torch.Generator().manual_seed(sum(shape))
    x = torch.rand(b, c, h, w_, generator=gen, dtype=dtype) * 2 - 1
    w = torch.randn(k, c, ks, ks, generator=gen, dtype=dtype)
    w[k - 1] = w[0]  # a tie everywhere: the first kernel must win
    x[0, :, :3] = 0.0  # exact zeros: tied scores of 0 at many pixels
    g = torch.randn(b, 1, h, w_, generator=gen, dtype=dtype) * (torch.rand(b, 1, h, w_, generator=gen) > 0.5)
    g[0, 0, 0, 0] = -0.0
    for need in ((True, True), (True, False), (False, True)):
        _same_bits(_run(x, w, g, native=True, monkeypatch=monkeypatch, need=need),
                   _run(x, w, g, native=False, monkeypatch=monkeypatch, need=need))
    best, idx = _run(x, w, g, native=True, monkeypatch=monkeypatch, need=(False, False))
    dense = F.conv2d(x, w, padding=ks // 2)
    top = dense.amax(1, keepdim=True)
    first = (dense == top).to(torch.int8).argmax(1)  # the first kernel attaining the max
    assert torch.equal(best, top) and torch.equal(idx, first)
    assert ((dense == top).sum(1) > 1).any()  # ties did occur


@needs_lib
@pytest.mark.parametrize("threads", [1, 2, 3])
def test_the_threaded_backward_gives_the_same_bits_at_any_thread_count(threads, monkeypatch):
    """The backward's shares (taps for the kernel gradient, images for the input gradient) run on
    PyTorch's OpenMP workers; each share adds what one thread would, so the count changes nothing."""
    gen = torch.Generator().manual_seed(11)
    x = torch.rand(37, 1, 28, 28, generator=gen)
    w = torch.randn(64, 1, 5, 5, generator=gen)
    g = torch.randn(37, 1, 28, 28, generator=gen) * (torch.rand(37, 1, 28, 28, generator=gen) > 0.3)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = _run(x, w, g, native=True, monkeypatch=monkeypatch)
        torch.set_num_threads(threads)
        many = _run(x, w, g, native=True, monkeypatch=monkeypatch)
        pytorch = _run(x, w, g, native=False, monkeypatch=monkeypatch)
    finally:
        torch.set_num_threads(before)
    _same_bits(many, one)
    _same_bits(many, pytorch)


@needs_lib
def test_c_kernels_match_on_nan_and_inf(monkeypatch):
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(4, 1, 9, 9, generator=gen)
    w = torch.randn(6, 1, 3, 3, generator=gen)
    g = torch.randn(4, 1, 9, 9, generator=gen)
    g[1, 0, 0, 0], g[2, 0, 4, 4], g[3, 0, 8, 0] = float("nan"), float("inf"), -float("inf")
    _same_bits(_run(x, w, g, native=True, monkeypatch=monkeypatch),
               _run(x, w, g, native=False, monkeypatch=monkeypatch))
    x[0, 0, 5, 5] = float("nan")  # NaN scores around it: best NaN, index 0, as the PyTorch path
    native = _run(x, w, g, native=True, monkeypatch=monkeypatch)
    _same_bits(native, _run(x, w, g, native=False, monkeypatch=monkeypatch))
    assert native[0][0, 0, 5, 5].isnan() and native[1][0, 5, 5] == 0
    x[1, 0, 0, 0] = float("inf")
    w[3, 0, 1, 1] = float("nan")  # one kernel NaN at every pixel: best NaN, index 0 everywhere
    native = _run(x, w, g, native=True, monkeypatch=monkeypatch, need=(False, False))
    _same_bits(native, _run(x, w, g, native=False, monkeypatch=monkeypatch, need=(False, False)))
    assert native[0].isnan().all() and (native[1] == 0).all()


@needs_lib
def test_training_steps_give_the_same_weights_with_and_without_c(monkeypatch):
    from pellucid.models import whitebox_mnist35
    from pellucid.train.optim import Adam

    def train(native: bool) -> dict:
        monkeypatch.setenv("PELLUCID_CPU_KERNELS", "1" if native else "0")
        torch.manual_seed(0)
        model = whitebox_mnist35().train()
        opt = Adam(model.parameters(), lr=3e-3)
        gen = torch.Generator().manual_seed(1)
        for _ in range(3):
            x = torch.rand(40, 1, 28, 28, generator=gen)
            y = torch.randint(0, 2, (40,), generator=gen)
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            opt.step()
        return {k: v.clone() for k, v in model.state_dict().items()}

    with_c, without = train(True), train(False)
    assert all(torch.equal(with_c[k], without[k]) for k in with_c)


def test_disabled_kernels_leave_the_pytorch_path(monkeypatch):
    monkeypatch.setenv("PELLUCID_CPU_KERNELS", "0")
    assert _cpu_kernels.library() is None
    assert "PELLUCID_CPU_KERNELS=0" in _cpu_kernels.unavailable_reason()


def _fresh(monkeypatch, tmp_path, cc: str | None = None):
    """A process state that has not loaded the kernels, building into an empty cache."""
    monkeypatch.setattr(_cpu_kernels, "_state", {})
    monkeypatch.setenv("PELLUCID_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("PELLUCID_CPU_KERNELS", "1")
    if cc is not None:
        monkeypatch.setenv("CC", cc)


@pytest.mark.parametrize("cc,reason", [("/nonexistent/cc", "no C compiler"), ("false", "failed"),
                                        ("", "no C compiler")])
def test_a_missing_or_failing_compiler_is_logged_once_and_keeps_the_numbers(cc, reason, monkeypatch,
                                                                            tmp_path, caplog):
    _fresh(monkeypatch, tmp_path, cc)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a log line, never a warning (code may turn those into errors)
        assert _cpu_kernels.library() is None
        assert reason in _cpu_kernels.unavailable_reason()
        assert _cpu_kernels.library() is None
        x = torch.rand(2, 1, 8, 8, requires_grad=True)
        w = torch.randn(3, 1, 3, 3)
        best, _ = max_correlation(x, w)
        best.sum().backward()
    logged = [r.getMessage() for r in caplog.records if "C kernels" in r.getMessage()]
    assert len(logged) == 1 and "using the PyTorch path" in logged[0] and reason in logged[0]
    assert torch.equal(best[:, 0].detach(), F.conv2d(x.detach(), w, padding=1).amax(1))


@needs_lib
def test_a_compiler_without_openmp_builds_the_threaded_library_and_keeps_the_bits(monkeypatch, tmp_path):
    """A compiler that refuses -fopenmp (e.g. Apple's clang): the library builds without it, runs
    its shares on threads of its own, and gives the same numbers as the PyTorch path."""
    from pellucid.nn import TwoStep
    from pellucid.nn.semantic.twostep import _train_graph

    fake = tmp_path / "cc-without-openmp"
    fake.write_text('#!/bin/sh\nfor a in "$@"; do [ "$a" = "-fopenmp" ] && { echo "unknown option -fopenmp" >&2; '
                    'exit 1; }; done\nexec cc "$@"\n')
    fake.chmod(0o755)
    _fresh(monkeypatch, tmp_path, str(fake))
    lib = _cpu_kernels.library()
    assert lib is not None, _cpu_kernels.unavailable_reason()
    assert not _cpu_kernels.built_with_openmp(lib)
    gen = torch.Generator().manual_seed(2)
    x, w = torch.rand(9, 1, 28, 28, generator=gen), torch.randn(64, 1, 5, 5, generator=gen)
    g = torch.randn(9, 1, 28, 28, generator=gen)
    _same_bits(_run(x, w, g, native=True, monkeypatch=monkeypatch),
               _run(x, w, g, native=False, monkeypatch=monkeypatch))
    monkeypatch.setenv("PELLUCID_CPU_KERNELS", "1")
    layer = TwoStep()
    y = layer(x)
    assert type(y.grad_fn).__name__ == "_TwoStepTrainingBackward"
    params = list(layer.parameters())
    ours, graph = torch.autograd.grad(y, params, g), torch.autograd.grad(_train_graph(x, *params), params, g)
    assert all(torch.equal(a, b) for a, b in zip(ours, graph))


@needs_lib
def test_a_compiler_with_openmp_builds_the_library_with_it(tmp_path):
    """Where the compiler takes -fopenmp, the shares must run on PyTorch's OpenMP workers (own
    threads competed with them: the fused forward took 8.7 ms in a training step against 6.0 ms)."""
    probe = tmp_path / "probe.c"
    probe.write_text("#include <omp.h>\nint f(void) { return omp_get_max_threads(); }\n")
    cc = os.environ.get("CC", "cc")
    takes = subprocess.run([*cc.split(), "-fopenmp", "-shared", "-fPIC", str(probe), "-o", str(tmp_path / "p.so")],
                           capture_output=True).returncode == 0
    if not takes:
        pytest.skip(f"{cc} does not take -fopenmp")
    assert _cpu_kernels.built_with_openmp(LIB)


@needs_lib
def test_a_corrupt_cached_library_is_not_loaded_silently(monkeypatch, tmp_path):
    _fresh(monkeypatch, tmp_path)
    # built by another process: overwriting a library this process has mapped would crash it
    code = "from pellucid.nn.semantic import _cpu_kernels as k; assert k.library() is not None"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=300)
    (built,) = (tmp_path / "cache").glob("*.so")
    built.write_bytes(b"\x7fELF not really")  # a truncated or tampered file
    assert _cpu_kernels.library() is None
    assert "OSError" in _cpu_kernels.unavailable_reason()


@needs_lib
def test_concurrent_processes_build_the_library_once(tmp_path):
    env = {**os.environ, "PELLUCID_CACHE_DIR": str(tmp_path / "cache"), "PELLUCID_CPU_KERNELS": "1"}
    code = "from pellucid.nn.semantic import _cpu_kernels as k; assert k.library() is not None, k.unavailable_reason()"
    procs = [subprocess.Popen([sys.executable, "-c", code], env=env, stderr=subprocess.PIPE) for _ in range(3)]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err.decode()[-500:]
    assert len(list((tmp_path / "cache").glob("*.so"))) == 1
    assert not [p for p in (tmp_path / "cache").iterdir() if p.is_dir()]  # no build directory left


@needs_lib
def test_non_contiguous_or_other_dtypes_take_the_pytorch_path(monkeypatch):
    x = torch.rand(3, 1, 10, 10, dtype=torch.float64)
    w = torch.randn(5, 1, 3, 3, dtype=torch.float64)
    assert _cpu_kernels.usable(x, w) and not _cpu_kernels.usable(x.transpose(2, 3), w)
    assert not _cpu_kernels.usable(x.half(), w.half()) and not _cpu_kernels.usable(x.float(), w)
    g = torch.randn(3, 1, 10, 10, dtype=torch.float64)
    _same_bits(_run(x.transpose(2, 3), w, g, native=True, monkeypatch=monkeypatch),
               _run(x.transpose(2, 3), w, g, native=False, monkeypatch=monkeypatch))


# ---- the fused forward (one input channel, float32, AVX2 + FMA builds) --------------------------

needs_fused = pytest.mark.skipif(LIB is None or not _cpu_kernels.fused_forward_built(LIB),
                                 reason="no fused forward in this build (needs the C kernels, AVX2 and FMA)")


def _reference(x, w):
    """``conv2d`` + max over kernels, the first kernel attaining it: the PyTorch path's bits."""
    dense = F.conv2d(x, w, padding=w.shape[-1] // 2)
    top = dense.amax(1)
    return top, (dense == top[:, None]).to(torch.int8).argmax(1)


@needs_fused
@pytest.mark.parametrize("shape", [(150, 28, 28, 64, 5), (9, 6, 5, 4, 5), (7, 13, 29, 7, 3),
                                   (1, 28, 28, 64, 5), (3, 11, 8, 5, 7), (2, 3, 3, 1, 3)])
@pytest.mark.parametrize("threads", [1, 2])
def test_fused_forward_gives_conv2d_and_max_bits(shape, threads):
    b, h, w_, k, ks = shape
    gen = torch.Generator().manual_seed(sum(shape))
    x = torch.rand(b, 1, h, w_, generator=gen) * 2 - 1
    x[0, :, : h // 2] = 0.0  # exact zeros: scores of +0 and -0
    w = torch.randn(k, 1, ks, ks, generator=gen)
    w[k - 1] = w[0]  # a tie everywhere (for k > 1): the first kernel must win
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        best, idx = _cpu_kernels.max_correlation_forward(x, w, LIB)
    finally:
        torch.set_num_threads(before)
    top, first = _reference(x, w)
    _same_bits((best[:, 0], idx), (top, first))


@needs_fused
def test_the_layer_runs_the_fused_forward_where_the_probe_agrees(monkeypatch):
    from pellucid.nn.semantic import kernels

    monkeypatch.setattr(kernels, "_FUSED_AGREES", {})
    calls = []
    original = _cpu_kernels.max_correlation_forward
    monkeypatch.setattr(_cpu_kernels, "max_correlation_forward", lambda *a: calls.append(1) or original(*a))
    gen = torch.Generator().manual_seed(5)
    x, w = torch.rand(20, 1, 12, 12, generator=gen), torch.randn(6, 1, 5, 5, generator=gen)
    with torch.no_grad():
        best, _ = max_correlation(x, w, return_index=False)
    assert len(calls) == 2 and list(kernels._FUSED_AGREES.values()) == [True]  # the probe, then the batch
    _same_bits((best[:, 0],), (_reference(x, w)[0],))
    max_correlation(x, w)
    assert len(calls) == 3  # the probe ran once for this shape


@needs_fused
def test_a_probe_that_disagrees_leaves_the_conv2d_path(monkeypatch):
    """On a CPU whose convolution sums otherwise, the probe sees one ulp and the layer keeps conv2d."""
    from pellucid.nn.semantic import kernels

    monkeypatch.setattr(kernels, "_FUSED_AGREES", {})
    original = _cpu_kernels.max_correlation_forward

    def one_ulp_off(x, w, lib):
        best, idx = original(x, w, lib)
        return torch.nextafter(best, torch.full_like(best, float("inf"))), idx

    monkeypatch.setattr(_cpu_kernels, "max_correlation_forward", one_ulp_off)
    gen = torch.Generator().manual_seed(6)
    x, w = torch.rand(10, 1, 9, 9, generator=gen), torch.randn(4, 1, 3, 3, generator=gen)
    best, idx = max_correlation(x, w)
    assert list(kernels._FUSED_AGREES.values()) == [False]
    _same_bits((best[:, 0], idx), _reference(x, w))


@needs_fused
def test_fused_forward_is_safe_under_threads(monkeypatch):
    from concurrent.futures import ThreadPoolExecutor

    from pellucid.nn.semantic import kernels

    monkeypatch.setattr(kernels, "_FUSED_AGREES", {})
    gen = torch.Generator().manual_seed(7)
    xs = [torch.rand(16, 1, 14, 14, generator=gen) for _ in range(8)]
    w = torch.randn(8, 1, 5, 5, generator=gen)
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda x: max_correlation(x, w), xs))
    assert len(kernels._FUSED_AGREES) == 1
    for x, (best, idx) in zip(xs, results):
        _same_bits((best[:, 0], idx), _reference(x, w))


@needs_fused
@pytest.mark.filterwarnings("ignore:TF32 acceleration")  # torch's own note when the flags change
def test_switching_onednn_off_probes_again(monkeypatch):
    """With oneDNN off, conv2d sums in another order: the layer must probe again, not reuse the answer."""
    from pellucid.nn.semantic import kernels

    monkeypatch.setattr(kernels, "_FUSED_AGREES", {})
    gen = torch.Generator().manual_seed(10)
    x, w = torch.rand(12, 1, 10, 10, generator=gen), torch.randn(16, 1, 5, 5, generator=gen)
    on = max_correlation(x, w)
    with torch.backends.mkldnn.flags(enabled=False):
        off = max_correlation(x, w)
        reference = _reference(x, w)
    assert len(kernels._FUSED_AGREES) == 2
    _same_bits((off[0][:, 0], off[1]), reference)
    _same_bits((on[0][:, 0], on[1]), _reference(x, w))


@needs_fused
def test_the_two_kernel_forward_of_avx2_builds_gives_conv2d_and_max_bits(monkeypatch, tmp_path):
    """CPUs without AVX-512VL get the loop that scores two kernels at a time: built here with
    AVX-512 switched off, it must give the same bits as conv2d + max (this host may take the
    four-kernel loop otherwise)."""
    fake = tmp_path / "cc-without-avx512"
    fake.write_text('#!/bin/sh\nexec cc "$@" -mno-avx512f\n')
    fake.chmod(0o755)
    _fresh(monkeypatch, tmp_path, str(fake))
    lib = _cpu_kernels.library()
    assert lib is not None and _cpu_kernels.fused_forward_built(lib), _cpu_kernels.unavailable_reason()
    for b, h, w_, k, ks in ((40, 28, 28, 64, 5), (3, 11, 8, 5, 7), (2, 3, 3, 1, 3)):
        gen = torch.Generator().manual_seed(b + k)
        x = torch.rand(b, 1, h, w_, generator=gen) * 2 - 1
        x[0, :, : h // 2] = 0.0
        w = torch.randn(k, 1, ks, ks, generator=gen)
        w[k - 1] = w[0]
        best, idx = _cpu_kernels.max_correlation_forward(x, w, lib)
        _same_bits((best[:, 0], idx), _reference(x, w))


@needs_lib  # a compiler is there (else the build stops before looking at the cache)
@pytest.mark.parametrize("where", ["directory", "library"])
def test_a_cache_other_users_can_write_is_never_loaded(where, monkeypatch, tmp_path, caplog):
    """A library in a cache that another user could have replaced would run their code in this
    process: the kernels are not loaded from it (the PyTorch path keeps the numbers)."""
    _fresh(monkeypatch, tmp_path)
    cache = tmp_path / "cache"
    if where == "directory":
        cache.mkdir()
        cache.chmod(0o777)
    else:  # a library already there (the name this build would use), writable by the group
        cache.mkdir(mode=0o700)
        planted = cache / _cpu_kernels.library_name(os.environ.get("CC", "cc"))
        planted.write_bytes(b"not a library")  # loading it would raise an OSError, not our refusal
        planted.chmod(0o664)
    loaded = []
    monkeypatch.setattr(_cpu_kernels.ctypes, "CDLL", lambda path: loaded.append(path))
    assert _cpu_kernels.library() is None
    assert "writable by other users" in _cpu_kernels.unavailable_reason() and not loaded
    x, w = torch.rand(2, 1, 8, 8), torch.randn(3, 1, 3, 3)
    assert torch.equal(max_correlation(x, w)[0][:, 0], F.conv2d(x, w, padding=1).amax(1))


@needs_lib
@pytest.mark.skipif(os.getuid() != 0, reason="needs root to give a file away")
def test_a_library_owned_by_another_user_is_never_loaded(monkeypatch, tmp_path):
    _fresh(monkeypatch, tmp_path)
    built = _cpu_kernels._build(tmp_path / "cache")
    os.chown(built, 65534, 65534)  # nobody
    loaded = []
    monkeypatch.setattr(_cpu_kernels.ctypes, "CDLL", lambda path: loaded.append(path))
    assert _cpu_kernels.library() is None
    assert "belongs to another user" in _cpu_kernels.unavailable_reason() and not loaded


@needs_lib
def test_the_cache_and_its_library_are_created_private(monkeypatch, tmp_path):
    _fresh(monkeypatch, tmp_path)
    old = os.umask(0o002)  # a umask that would leave both writable by the group
    try:
        built = _cpu_kernels._build(tmp_path / "cache" / "nested")
    finally:
        os.umask(old)
    assert built.parent.stat().st_mode & 0o077 == 0
    assert built.stat().st_mode & 0o022 == 0
    assert _cpu_kernels._build(built.parent) == built  # and it is loaded from there
