"""C loops for the max-correlation layer on CPU, compiled on first use; the same bits as PyTorch.

Why C: the PyTorch formulation of the backward (:func:`~pellucid.nn.semantic.kernels.
_max_correlation_backward_block`) materialises ``(taps, B, H, W)`` tensors (the winning kernels'
taps gathered per pixel, their products with the gradient, the shifted windows of the input) and
spends most of a training step of the white-box network moving them through memory. These loops
read each pixel's gradient, winner and input once and keep nothing ``taps``-sized. The forward's
max with first index is one pass over the scores instead of five.

**The same numbers.** Every output is the sum of the same products, added in the same order, as
the PyTorch path (IEEE single or double precision; compiled with ``-ffp-contract=off`` and without
fast-math, so no fused multiply-add and no reassociation):

- kernel gradient ``dw[t, k]``: over the pixels in ``(b, i, j)`` order, ``+= x[b, i + dy, j + dx] *
  g[b, i, j]`` where pixel ``(b, i, j)`` was won by kernel ``k`` (``index_add_`` adds its source
  columns in that order);
- input gradient ``dx[b, c, p, q]``: over the taps ``(c, dy, dx)`` in order, ``+= w[k, tap] *
  g[b, i, j]`` with ``(i, j) = (p - dy + kh // 2, q - dx + kw // 2)`` and ``k`` that pixel's winner
  (the PyTorch path adds one shifted tap map after the other);
- products with ``g = 0``, and those of a finite ``g`` with the zero padding, are skipped: they add
  a signed zero, which leaves every sum unchanged, because a sum that starts at ``+0`` is never
  ``-0``. (A NaN or infinite ``g`` is not skipped: ``0 * g`` is NaN.)
- max with first index: the first kernel that attains the max; a NaN score makes the pixel's best
  NaN and its index 0, as :func:`~pellucid.nn.semantic.kernels._max_with_first_index` does.
- the fused forward (one input channel, float32, built only for CPUs with AVX2 and FMA) computes
  each score as oneDNN's AVX2 convolution does, ``fma(w[t], x[t], acc)`` over the taps in order
  from ``acc = +0``, and keeps only the max and its first index, so the ``(B, K, H, W)`` scores are
  never written. Because that order is oneDNN's and not a promise, the layer uses it only after a
  probe has matched ``conv2d`` + max bit for bit (zeros' signs included) for that shape in this
  process (:func:`~pellucid.nn.semantic.kernels._fused_forward_agrees`). Where the CPU has
  AVX-512VL (32 vector registers), it scores four kernels at a time instead of two.

**Threads.** The fused forward (by images), the backward (kernel gradient by taps, input gradient
by images) and TwoStep's gradient terms (by pixels) run on ``torch.get_num_threads()`` threads;
each share computes exactly what one thread would, so the bits do not depend on the count. The
library is built with OpenMP and linked against ``libgomp``, which the loader resolves to the
copy PyTorch has loaded: the shares run on PyTorch's own workers, which would otherwise keep
spinning after each of PyTorch's parallel ops and compete with new threads (see ``run_threads``).

**TwoStep** (:mod:`pellucid.nn.semantic.twostep`): its training forward, each pixel through its
own piece, and the per-pixel terms of its parameters' gradients, written with autograd's
backward formulas in autograd's order (see the C text).

The library is compiled with the system's C compiler (``$CC``, else ``cc``; with ``-fopenmp`` and
``-march=native`` where it accepts them, else without) into pellucid's cache
(``$PELLUCID_CACHE_DIR``, else ``$XDG_CACHE_HOME/pellucid`` or ``~/.cache/pellucid``), once per
source version, under a file lock and by atomic rename, so concurrent processes (``torchrun``)
build it once. Without a compiler, or with ``PELLUCID_CPU_KERNELS=0``, the PyTorch path runs (the same
numbers, slower), and a compiler's absence or failure is logged once. The C code is this module's
own source text; nothing is loaded from a user's file. The cache directory is created private
(mode 0700), and a library is loaded only from a directory and a file owned by the user and
writable by no one else (another user who could replace it would run code in this process);
otherwise the PyTorch path runs and the log says why.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import platform
import shutil
import stat
import subprocess
import tempfile
import threading
from pathlib import Path

import torch

_SOURCE = r"""
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    const void *x, *wt, *g, *scores; const int64_t *idx;
    void *gx, *gw, *best; int64_t *best_idx;
    int64_t B, C, H, W, K, kh, kw, N;
    int64_t lo, hi;  /* the share to compute: images, or taps */
} job_t;

/* ---- forward: best[b, n] = max_k s[b, k, n], idx = the first k attaining it ---------------- */
#define TILE 256
#define MAX_FIRST(T, NAME)                                                                     \
static void *NAME(void *arg) {                                                                 \
    job_t *a = (job_t *)arg;                                                                   \
    T lb[TILE]; int32_t li[TILE];   /* a tile of pixels in L1; int32 so that it vectorises */  \
    for (int64_t b = a->lo; b < a->hi; b++) {                                                  \
        const T *s = (const T *)a->scores + b * a->K * a->N;                                   \
        T *best = (T *)a->best + b * a->N;                                                     \
        int64_t *idx = a->best_idx + b * a->N;                                                 \
        for (int64_t n0 = 0; n0 < a->N; n0 += TILE) {                                          \
            const int64_t m = a->N - n0 < TILE ? a->N - n0 : TILE;                            \
            int nan = 0;                                                                       \
            for (int64_t n = 0; n < m; n++) { lb[n] = s[n0 + n]; li[n] = 0; nan |= lb[n] != lb[n]; } \
            for (int32_t k = 1; k < a->K; k++) {   /* branch-free */                           \
                const T *row = s + k * a->N + n0;                                              \
                for (int64_t n = 0; n < m; n++) {                                              \
                    const T v = row[n];                                                        \
                    const int larger = v > lb[n];                                              \
                    nan |= v != v;                                                             \
                    lb[n] = larger ? v : lb[n];                                                \
                    li[n] = larger ? k : li[n];                                                \
                }                                                                              \
            }                                                                                  \
            for (int64_t n = 0; n < m; n++) { best[n0 + n] = lb[n]; idx[n0 + n] = li[n]; }     \
            if (nan) for (int64_t n = 0; n < m; n++) {   /* a NaN score: best NaN, index 0 */  \
                int any = 0;                                                                   \
                for (int64_t k = 0; k < a->K; k++) any |= s[k * a->N + n0 + n] != s[k * a->N + n0 + n]; \
                if (any) { best[n0 + n] = (T)NAN; idx[n0 + n] = 0; }                           \
            }                                                                                  \
        }                                                                                      \
    }                                                                                          \
    return 0;                                                                                  \
}
MAX_FIRST(float, max_first_f32)
MAX_FIRST(double, max_first_f64)

/* ---- backward, kernel gradient: taps lo..hi, all pixels in (b, i, j) order ---------------- */
#define GRAD_W(T, NAME)                                                                        \
static void *NAME(void *arg) {                                                                 \
    job_t *a = (job_t *)arg;                                                                   \
    const T *x = (const T *)a->x, *g = (const T *)a->g;                                        \
    T *gw = (T *)a->gw;                                                                        \
    const int64_t H = a->H, W = a->W, K = a->K, kh = a->kh, kw = a->kw;                        \
    const int64_t ph = kh / 2, pw = kw / 2, hw = H * W, n_t = a->hi - a->lo;                   \
    int64_t off[n_t], tdy[n_t], tdx[n_t];   /* each tap's offset from the pixel, in x[b] */    \
    for (int64_t u = 0; u < n_t; u++) {                                                        \
        const int64_t t = a->lo + u, c = t / (kh * kw);                                        \
        tdy[u] = (t / kw) % kh - ph; tdx[u] = t % kw - pw;                                     \
        off[u] = c * hw + tdy[u] * W + tdx[u];                                                 \
    }                                                                                          \
    for (int64_t b = 0; b < a->B; b++) {                                                       \
        const T *gb = g + b * hw, *xb = x + b * a->C * hw; const int64_t *ib = a->idx + b * hw; \
        for (int64_t i = 0; i < H; i++) for (int64_t j = 0; j < W; j++) {                      \
            const T gv = gb[i * W + j];                                                        \
            if (gv == 0) continue;                                                             \
            T *col = gw + a->lo * K + ib[i * W + j];                                           \
            const T *xp = xb + i * W + j;                                                      \
            if (i >= ph && i < H - ph && j >= pw && j < W - pw) {   /* every tap inside */     \
                for (int64_t u = 0; u < n_t; u++) col[u * K] = col[u * K] + xp[off[u]] * gv;   \
                continue;                                                                      \
            }                                                                                  \
            for (int64_t u = 0; u < n_t; u++) {                                                \
                const int64_t si = i + tdy[u], sj = j + tdx[u];                                \
                const int outside = si < 0 || si >= H || sj < 0 || sj >= W;                    \
                if (outside && gv - gv == 0) continue;   /* zero padding, finite g: adds +-0 */ \
                col[u * K] = col[u * K] + (outside ? (T)0 : xp[off[u]]) * gv;                  \
            }                                                                                  \
        }                                                                                      \
    }                                                                                          \
    return 0;                                                                                  \
}
GRAD_W(float, grad_w_f32)
GRAD_W(double, grad_w_f64)

/* ---- backward, input gradient: images lo..hi; per output, taps in order ------------------- */
#define GRAD_X(T, NAME)                                                                        \
static void *NAME(void *arg) {                                                                 \
    job_t *a = (job_t *)arg;                                                                   \
    const T *g = (const T *)a->g, *wt = (const T *)a->wt;                                      \
    T *gx = (T *)a->gx;                                                                        \
    const int64_t H = a->H, W = a->W, K = a->K, kh = a->kh, kw = a->kw, C = a->C;              \
    const int64_t ph = kh / 2, pw = kw / 2, hw = H * W;                                        \
    for (int64_t b = a->lo; b < a->hi; b++) {                                                  \
        const T *gb = g + b * hw; const int64_t *ib = a->idx + b * hw;                         \
        for (int64_t c = 0; c < C; c++) for (int64_t p = 0; p < H; p++) {                      \
            T *acc = gx + ((b * C + c) * H + p) * W;                                           \
            for (int64_t q = 0; q < W; q++) acc[q] = 0;                                        \
            for (int64_t dy = 0; dy < kh; dy++) {                                              \
                const int64_t i = p - dy + ph;                                                 \
                if (i < 0 || i >= H) continue;                                                 \
                for (int64_t dx = 0; dx < kw; dx++) {                                          \
                    const T *wrow = wt + ((c * kh + dy) * kw + dx) * K;                        \
                    const int64_t q0 = dx - pw > 0 ? dx - pw : 0;                              \
                    const int64_t q1 = W + dx - pw < W ? W + dx - pw : W;                      \
                    const T *grow = gb + i * W + pw - dx;                                      \
                    const int64_t *irow = ib + i * W + pw - dx;                                \
                    for (int64_t q = q0; q < q1; q++) {  /* every product, as PyTorch adds */  \
                        const T prod = wrow[irow[q]] * grow[q];                                \
                        acc[q] = acc[q] + prod;                                                \
                    }                                                                          \
                }                                                                              \
            }                                                                                  \
        }                                                                                      \
    }                                                                                          \
    return 0;                                                                                  \
}
GRAD_X(float, grad_x_f32)
GRAD_X(double, grad_x_f64)

/* ---- forward, fused: best[b, n], idx[b, n] = max_k (x_b * w_k)[n] for one input channel --------
   Each score is oneDNN's on AVX2: fma(w_t, x_t, acc) over the taps t = (dy, dx) in order, from
   acc = +0, zero padding included. The scores of a tile of 32 output positions (4 vectors) for
   two kernels at a time stay in registers; nothing K-sized is written. Positions run over the
   padded image's rows (width W + kw - 1); those past column W are computed and dropped. */
#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#define FUSED_TILE 32
/* the image into the zero-bordered buffer P (rows of width Wp = W + kw - 1); returns Wp */
static inline int64_t fused_pad(float *P, const float *x, int64_t H, int64_t W, int64_t kh, int64_t kw) {
    const int64_t Wp = W + kw - 1;
    for (int64_t i = 0; i < H; i++) memcpy(P + (i + kh / 2) * Wp + kw / 2, x + i * W, W * sizeof(float));
    return Wp;
}

/* a tile's maxima and first indices to best / idx: positions past column W are dropped */
static inline void fused_store_tile(const __m256 *lb, const __m256 *li, const __m256 *bad, int64_t n0, int64_t N,
                                    int64_t Wp, int64_t W, float *best, int64_t *idx) {
    float fb[FUSED_TILE], fi[FUSED_TILE], fn[FUSED_TILE];
    for (int q = 0; q < 4; q++) {
        _mm256_storeu_ps(fb + 8 * q, lb[q]); _mm256_storeu_ps(fi + 8 * q, li[q]);
        _mm256_storeu_ps(fn + 8 * q, bad[q]);
    }
    for (int64_t n = 0; n < FUSED_TILE && n0 + n < N; n++) {
        const int64_t i = (n0 + n) / Wp, j = (n0 + n) % Wp;
        if (j >= W) continue;
        int32_t nan_bits; memcpy(&nan_bits, fn + n, sizeof nan_bits);
        best[i * W + j] = nan_bits ? (float)NAN : fb[n];   /* a NaN score: best NaN, index 0 */
        idx[i * W + j] = nan_bits ? 0 : (int64_t)fi[n];
    }
}

static void fused_image_2(const float *x, const float *w, float *best, int64_t *idx, int64_t K,
                        int64_t H, int64_t W, int64_t kh, int64_t kw, float *P, const int64_t *off) {
    const int64_t Wp = fused_pad(P, x, H, W, kh, kw), T = kh * kw, N = H * Wp;
    for (int64_t n0 = 0; n0 < N; n0 += FUSED_TILE) {
        __m256 lb[4], li[4], bad[4];
        for (int q = 0; q < 4; q++) bad[q] = _mm256_setzero_ps();
        for (int64_t k = 0; k < K; k += 2) {
            const int two = k + 1 < K;
            const float *wa = w + k * T, *wb = w + (two ? k + 1 : k) * T;
            /* 8 accumulators in registers: enough independent FMAs to keep both FMA units busy */
            __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0, c0 = a0, c1 = a0, c2 = a0, c3 = a0;
            for (int64_t t = 0; t < T; t++) {
                const float *xp = P + n0 + off[t];
                const __m256 x0 = _mm256_loadu_ps(xp), x1 = _mm256_loadu_ps(xp + 8);
                const __m256 x2 = _mm256_loadu_ps(xp + 16), x3 = _mm256_loadu_ps(xp + 24);
                const __m256 va = _mm256_broadcast_ss(wa + t), vb = _mm256_broadcast_ss(wb + t);
                a0 = _mm256_fmadd_ps(va, x0, a0); a1 = _mm256_fmadd_ps(va, x1, a1);
                a2 = _mm256_fmadd_ps(va, x2, a2); a3 = _mm256_fmadd_ps(va, x3, a3);
                c0 = _mm256_fmadd_ps(vb, x0, c0); c1 = _mm256_fmadd_ps(vb, x1, c1);
                c2 = _mm256_fmadd_ps(vb, x2, c2); c3 = _mm256_fmadd_ps(vb, x3, c3);
            }
            const __m256 a[4] = {a0, a1, a2, a3}, c[4] = {c0, c1, c2, c3};
            const __m256 ka = _mm256_set1_ps((float)k), kb = _mm256_set1_ps((float)(k + 1));
            for (int q = 0; q < 4; q++) {   /* strictly larger: the first kernel keeps a tie */
                bad[q] = _mm256_or_ps(bad[q], _mm256_cmp_ps(a[q], a[q], _CMP_UNORD_Q));
                if (k == 0) { lb[q] = a[q]; li[q] = ka; }
                else {
                    const __m256 m = _mm256_cmp_ps(a[q], lb[q], _CMP_GT_OQ);
                    lb[q] = _mm256_blendv_ps(lb[q], a[q], m); li[q] = _mm256_blendv_ps(li[q], ka, m);
                }
                if (two) {
                    bad[q] = _mm256_or_ps(bad[q], _mm256_cmp_ps(c[q], c[q], _CMP_UNORD_Q));
                    const __m256 m = _mm256_cmp_ps(c[q], lb[q], _CMP_GT_OQ);
                    lb[q] = _mm256_blendv_ps(lb[q], c[q], m); li[q] = _mm256_blendv_ps(li[q], kb, m);
                }
            }
        }
        fused_store_tile(lb, li, bad, n0, N, Wp, W, best, idx);
    }
}

#if defined(__AVX512VL__)
/* With AVX-512's 32 vector registers (AVX-512VL gives the 256-bit forms of all 32): four kernels at
   a time, 16 accumulators, so each tap's 4 input loads serve 16 fused multiply-adds instead of 8
   (the same per-score operations in the same order, so the same bits). On a 2-core AVX-512 CPU
   the forward took 3.0-3.1 ms per 200 images against 4.8-5.9 ms with two kernels at a time. */
#define FUSED_KB 4
static void fused_image(const float *x, const float *w, float *best, int64_t *idx, int64_t K,
                        int64_t H, int64_t W, int64_t kh, int64_t kw, float *P, const int64_t *off) {
    const int64_t Wp = fused_pad(P, x, H, W, kh, kw), T = kh * kw, N = H * Wp;
    for (int64_t n0 = 0; n0 < N; n0 += FUSED_TILE) {
        __m256 lb[4], li[4], bad[4];
        for (int q = 0; q < 4; q++) { bad[q] = _mm256_setzero_ps(); lb[q] = bad[q]; li[q] = bad[q]; }
        for (int64_t k = 0; k < K; k += FUSED_KB) {
            const float *wk[FUSED_KB];
            for (int u = 0; u < FUSED_KB; u++) wk[u] = w + (k + u < K ? k + u : K - 1) * T;  /* past K: a repeat, unused */
            __m256 a[FUSED_KB][4];
            for (int u = 0; u < FUSED_KB; u++) for (int q = 0; q < 4; q++) a[u][q] = _mm256_setzero_ps();
            for (int64_t t = 0; t < T; t++) {
                const float *xp = P + n0 + off[t];
                const __m256 x0 = _mm256_loadu_ps(xp), x1 = _mm256_loadu_ps(xp + 8);
                const __m256 x2 = _mm256_loadu_ps(xp + 16), x3 = _mm256_loadu_ps(xp + 24);
                for (int u = 0; u < FUSED_KB; u++) {
                    const __m256 v = _mm256_broadcast_ss(wk[u] + t);
                    a[u][0] = _mm256_fmadd_ps(v, x0, a[u][0]); a[u][1] = _mm256_fmadd_ps(v, x1, a[u][1]);
                    a[u][2] = _mm256_fmadd_ps(v, x2, a[u][2]); a[u][3] = _mm256_fmadd_ps(v, x3, a[u][3]);
                }
            }
            for (int u = 0; u < FUSED_KB && k + u < K; u++) {   /* strictly larger: the first kernel keeps a tie */
                const __m256 kk = _mm256_set1_ps((float)(k + u));
                for (int q = 0; q < 4; q++) {
                    bad[q] = _mm256_or_ps(bad[q], _mm256_cmp_ps(a[u][q], a[u][q], _CMP_UNORD_Q));
                    if (k + u == 0) { lb[q] = a[u][q]; li[q] = kk; continue; }
                    const __m256 m = _mm256_cmp_ps(a[u][q], lb[q], _CMP_GT_OQ);
                    lb[q] = _mm256_blendv_ps(lb[q], a[u][q], m); li[q] = _mm256_blendv_ps(li[q], kk, m);
                }
            }
        }
        fused_store_tile(lb, li, bad, n0, N, Wp, W, best, idx);
    }
}
#else
#define fused_image fused_image_2
#endif

static void *fused_forward_f32(void *arg) {
    job_t *a = (job_t *)arg;
    const int64_t Wp = a->W + a->kw - 1, T = a->kh * a->kw, hw = a->H * a->W;
    /* the padded image, zero borders, and room for the last tile's reads past the end */
    float *P = calloc((size_t)((a->H + a->kh - 1) * Wp + FUSED_TILE + Wp), sizeof(float));
    int64_t *off = malloc((size_t)T * sizeof(int64_t));
    if (!P || !off) { free(P); free(off); a->N = -1; return 0; }
    for (int64_t t = 0; t < T; t++) off[t] = (t / a->kw) * Wp + t % a->kw;
    for (int64_t b = a->lo; b < a->hi; b++)
        fused_image((const float *)a->x + b * hw, (const float *)a->wt, (float *)a->best + b * hw,
                    a->best_idx + b * hw, a->K, a->H, a->W, a->kh, a->kw, P, off);
    free(P); free(off);
    return 0;
}
#endif

/* one thread: the caller's */
static int run(void *(*fn)(void *), job_t a, int64_t total) {
    a.lo = 0; a.hi = total;
    fn(&a);
    return 0;
}

/* Several threads, each on a contiguous share [lo, hi) of [0, total); each share computes exactly
   what one thread would for it, so the bits do not depend on the thread count.
   With OpenMP the shares run on PyTorch's own OpenMP workers: the library is linked against
   libgomp, which the loader resolves to the copy PyTorch has loaded, so the process has one pool.
   Without it (pthreads), new threads competed with PyTorch's workers, which keep spinning for a
   while after each of its parallel regions: on 2 cores the fused forward took 8.7 ms per 200
   images inside a training step against 6.0 ms alone, and splitting the backward made it slower,
   so without OpenMP the backward stays on the calling thread. */
#ifdef _OPENMP
#include <omp.h>
#define THREADED_BACKWARD 1
static int run_threads(void *(*fn)(void *), job_t a, int64_t total, int64_t n) {
    if (n > total) n = total;
    if (n < 2) { a.lo = 0; a.hi = total; fn(&a); return a.N < 0 ? -1 : 0; }
    job_t jobs[n];
    for (int64_t u = 0; u < n; u++) { jobs[u] = a; jobs[u].lo = total * u / n; jobs[u].hi = total * (u + 1) / n; }
    #pragma omp parallel for num_threads(n) schedule(static, 1)
    for (int64_t u = 0; u < n; u++) fn(&jobs[u]);
    for (int64_t u = 0; u < n; u++) if (jobs[u].N < 0) return -1;
    return 0;
}
#else
#define THREADED_BACKWARD 0
#include <pthread.h>
static int run_threads(void *(*fn)(void *), job_t a, int64_t total, int64_t n) {
    if (n > total) n = total;
    if (n < 2) { a.lo = 0; a.hi = total; fn(&a); return a.N < 0 ? -1 : 0; }
    job_t jobs[n]; pthread_t tid[n]; int started[n];
    for (int64_t u = 0; u < n; u++) {
        jobs[u] = a; jobs[u].lo = total * u / n; jobs[u].hi = total * (u + 1) / n;
        started[u] = u > 0 && pthread_create(&tid[u], 0, fn, &jobs[u]) == 0;
    }
    fn(&jobs[0]);
    for (int64_t u = 1; u < n; u++) {
        if (started[u]) pthread_join(tid[u], 0); else fn(&jobs[u]);   /* no thread: do it here */
    }
    for (int64_t u = 0; u < n; u++) if (jobs[u].N < 0) return -1;
    return 0;
}
#endif

int pellucid_max_first(const void *scores, void *best, int64_t *idx, int64_t B, int64_t K,
                       int64_t N, int is_double) {
    job_t a; memset(&a, 0, sizeof a);
    a.scores = scores; a.best = best; a.best_idx = idx; a.B = B; a.K = K; a.N = N;
    return run(is_double ? max_first_f64 : max_first_f32, a, B);
}

/* 1 where this build runs its shares on OpenMP (PyTorch's workers), 0 with its own threads */
int pellucid_built_with_openmp(void) {
    return THREADED_BACKWARD;
}

/* 1 where this build has the fused forward (compiled for a CPU with AVX2 and FMA), else 0 */
int pellucid_fused_forward_built(void) {
#if defined(__AVX2__) && defined(__FMA__)
    return 1;
#else
    return 0;
#endif
}

/* best (B, H, W) and idx (B, H, W) of x (B, 1, H, W) and w (K, 1, kh, kw), float32; 0 on
   success, -1 when this build has no fused forward or memory ran out (nothing usable written) */
int pellucid_max_corr_forward(const void *x, const void *w, void *best, int64_t *idx, int64_t B,
                              int64_t H, int64_t W, int64_t K, int64_t kh, int64_t kw, int64_t threads) {
#if defined(__AVX2__) && defined(__FMA__)
    job_t a; memset(&a, 0, sizeof a);
    a.x = x; a.wt = w; a.best = best; a.best_idx = idx;
    a.B = B; a.C = 1; a.H = H; a.W = W; a.K = K; a.kh = kh; a.kw = kw;
    return run_threads(fused_forward_f32, a, B, threads);
#else
    (void)x; (void)w; (void)best; (void)idx; (void)B; (void)H; (void)W; (void)K; (void)kh; (void)kw;
    (void)threads;
    return -1;
#endif
}

/* ---- TwoStep (twostep.py), training: values, and the per-pixel terms of its parameters' gradients
   c: per side (negative, positive) T, s_external, s_internal, a, D, sigma, |sigma|, level. Each
   pixel goes through the piece it picks (side: xt < 0; external: below T0, or at or above T1),
   with the float operations of the train graph for that piece, in its order (no contraction
   into fused multiply-adds; -ffp-contract=off). Branch-free, so the compiler vectorises it.

   Values: a * (u + sigma) / |sigma| (internal) or u / D + level (external), u = d / (s + |d|),
   d = xt - T, xt = 2 x - 1. Both return 1 if some x (forward) or g (terms) is not finite: then
   nothing is promised, and the caller runs the train graph instead.

   Terms: for the picked piece, the chain of autograd's backward formulas (div: g / q and
   -g * ((d / q) / q); abs: g * sgn(d); mul: g * other; sub: -g), in autograd's order of
   operations; the caller sums each of the 18 rows over all pixels with torch, as autograd
   reduces a broadcast scalar's gradient. Rows, per side: external piece (T, s, D, level), then
   internal (T, s, |sigma|, a, sigma). Terms of pieces a pixel does not pick are 0 (autograd's
   are +-0, which leave every sum unchanged). */
#define TWOSTEP_PIXEL(T)                                                                       \
    const T xt = (T)2 * x[i] - (T)1;                                                           \
    const int side = !(xt < 0);                                                                \
    const T big_t = side ? c1[0] : c0[0], s_e = side ? c1[1] : c0[1];                          \
    const T s_i = side ? c1[2] : c0[2], a = side ? c1[3] : c0[3];                              \
    const T dd = side ? c1[4] : c0[4], sig = side ? c1[5] : c0[5];                             \
    const T asig = side ? c1[6] : c0[6], level = side ? c1[7] : c0[7];                         \
    const T d = xt - big_t, ad = fabs(d);                                                      \
    const int external = side ^ (d < 0);                                                       \
    const T q = (external ? s_e : s_i) + ad, u = d / q;
#define TWOSTEP_FORWARD(T, NAME)                                                               \
static int NAME(const T *restrict x, T *restrict y, int64_t n, const T *c) {                   \
    T c0[8], c1[8];                                                                            \
    for (int k = 0; k < 8; k++) { c0[k] = c[k]; c1[k] = c[8 + k]; }                            \
    int bad = 0;                                                                               \
    for (int64_t i = 0; i < n; i++) {                                                          \
        bad |= !(x[i] - x[i] == 0);                                                            \
        TWOSTEP_PIXEL(T)                                                                       \
        const T ye = u / dd + level, yi = (a * (u + sig)) / asig;                              \
        y[i] = external ? ye : yi;                                                             \
    }                                                                                          \
    return bad;                                                                                \
}
#define TWOSTEP_CHUNK 256
#define TWOSTEP_TERMS(T, NAME)                                                                 \
static int NAME(const T *restrict x_all, const T *restrict g, T *restrict out, int64_t n, const T *c,\
                int64_t threads) {                                                             \
    T c0[8], c1[8];                                                                            \
    for (int k = 0; k < 8; k++) { c0[k] = c[k]; c1[k] = c[8 + k]; }                            \
    int bad = 0;                                                                               \
    /* chunks on threads (writing the rows is most of the time); each chunk's 18 rows in a     \
       local array (provably apart, so the loop vectorises), then out */                       \
    _Pragma("omp parallel for num_threads(threads) schedule(static) reduction(|:bad) if(threads > 1)")\
    for (int64_t i0 = 0; i0 < n; i0 += TWOSTEP_CHUNK) {                                        \
        T o[18][TWOSTEP_CHUNK];                                                                \
        const int64_t m = n - i0 < TWOSTEP_CHUNK ? n - i0 : TWOSTEP_CHUNK;                     \
        const T *restrict x = x_all + i0;                                                      \
        for (int64_t i = 0; i < m; i++) {                                                      \
            TWOSTEP_PIXEL(T)                                                                   \
            (void)level;                                                                       \
            bad |= !(g[i0 + i] - g[i0 + i] == 0);                                             \
            const T gi = g[i0 + i], sgn = d > 0 ? (T)1 : (d < 0 ? (T)-1 : (T)0), r = (d / q) / q; \
            /* external: g_u = g / D; internal: g_w = g / |sigma|, g_v = g_w * a */             \
            const T gw = gi / asig, gv = gw * a, ge = gi / dd, gu = external ? ge : gv;        \
            const T gq = (-gu) * r, gt = -(gu / q + gq * sgn);                                 \
            const T v = u + sig, w = a * v, gav = gw * v;                                      \
            const T ext_d = (-gi) * ((u / dd) / dd), int_abs = (-gi) * ((w / asig) / asig);   \
            const T z = 0;                                                                     \
            const int e0 = !side & external, i0_ = !side & !external;                          \
            const int e1 = side & external, i1 = side & !external;                             \
            o[0][i] = e0 ? gt : z; o[1][i] = e0 ? gq : z; o[2][i] = e0 ? ext_d : z; o[3][i] = e0 ? gi : z; \
            o[4][i] = i0_ ? gt : z; o[5][i] = i0_ ? gq : z; o[6][i] = i0_ ? int_abs : z;       \
            o[7][i] = i0_ ? gav : z; o[8][i] = i0_ ? gv : z;                                   \
            o[9][i] = e1 ? gt : z; o[10][i] = e1 ? gq : z; o[11][i] = e1 ? ext_d : z; o[12][i] = e1 ? gi : z; \
            o[13][i] = i1 ? gt : z; o[14][i] = i1 ? gq : z; o[15][i] = i1 ? int_abs : z;      \
            o[16][i] = i1 ? gav : z; o[17][i] = i1 ? gv : z;                                   \
        }                                                                                      \
        for (int k = 0; k < 18; k++) memcpy(out + k * n + i0, o[k], (size_t)m * sizeof(T));   \
    }                                                                                          \
    return bad;                                                                                \
}
TWOSTEP_FORWARD(float, twostep_forward_f32)
TWOSTEP_FORWARD(double, twostep_forward_f64)
TWOSTEP_TERMS(float, twostep_terms_f32)
TWOSTEP_TERMS(double, twostep_terms_f64)

int pellucid_twostep_forward(const void *x, void *y, int64_t n, const void *c, int is_double) {
    return is_double ? twostep_forward_f64(x, y, n, c) : twostep_forward_f32(x, y, n, c);
}

int pellucid_twostep_terms(const void *x, const void *g, void *out, int64_t n, const void *c, int is_double,
                           int64_t threads) {
    return is_double ? twostep_terms_f64(x, g, out, n, c, threads) : twostep_terms_f32(x, g, out, n, c, threads);
}

int pellucid_max_corr_backward(const void *x, const void *wt, const int64_t *idx, const void *g,
                               void *gx, void *gw, int64_t B, int64_t C, int64_t H, int64_t W,
                               int64_t K, int64_t kh, int64_t kw, int is_double, int64_t threads) {
    job_t a; memset(&a, 0, sizeof a);
    a.x = x; a.wt = wt; a.idx = idx; a.g = g; a.gx = gx; a.gw = gw;
    a.B = B; a.C = C; a.H = H; a.W = W; a.K = K; a.kh = kh; a.kw = kw;
    if (!THREADED_BACKWARD) threads = 1;
    /* kernel gradient: shares of taps (each tap's column still adds its pixels in order);
       input gradient: shares of images */
    if (gw) run_threads(is_double ? grad_w_f64 : grad_w_f32, a, C * kh * kw, threads);
    if (gx) run_threads(is_double ? grad_x_f64 : grad_x_f32, a, B, threads);
    return 0;
}
"""

_FLAGS = ("-O3", "-fPIC", "-shared", "-pthread", "-ffp-contract=off", "-fno-fast-math", "-std=gnu99")
# tuned to the CPU where it is built, if the compiler can (the library's name records the CPU)
_NATIVE = ("-march=native",)
# the backward's shares and the fused forward on PyTorch's OpenMP workers (see run_threads)
_OPENMP = ("-fopenmp",)
_lock = threading.Lock()
_state: dict[str, object] = {}  # "lib": the loaded library, or "error": why there is none


def cache_dir() -> Path:
    """Where compiled kernels are kept: ``$PELLUCID_CACHE_DIR``, else ``$XDG_CACHE_HOME/pellucid``
    or ``~/.cache/pellucid``."""
    if os.environ.get("PELLUCID_CACHE_DIR"):
        return Path(os.environ["PELLUCID_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "pellucid"


def _cpu_id() -> str:
    """What ``-march=native`` depends on: the CPU's model and feature flags (a cache shared by
    different machines must not hand one a library built for the other's instructions)."""
    try:
        info = Path("/proc/cpuinfo").read_text()
        wanted = [line for line in info.splitlines() if line.startswith(("model name", "flags", "Features"))]
        return "\n".join(dict.fromkeys(wanted))
    except OSError:
        return f"{platform.machine()} {platform.processor()}"


def _compile(cc: str, flags: tuple[str, ...], src: Path, out: Path) -> str | None:
    """Compile; ``None`` on success, else the compiler's complaint."""
    done = subprocess.run([*cc.split(), *flags, str(src), "-o", str(out), "-lm"],
                          capture_output=True, text=True, timeout=120)
    return None if done.returncode == 0 else (done.stderr.strip()[-300:] or f"exit {done.returncode}")


def _check_private(path: Path) -> None:
    """Refuse a cache entry that another user could have written: the library is loaded into this
    process, so whoever can replace it (or its directory's entries) runs code here. Owned by this
    user (or root, as for a cache an administrator built) and writable by no one else, or an error
    (the caller then keeps the PyTorch path)."""
    st = path.stat()  # follows a symbolic link: the file or directory actually used
    if st.st_uid not in (os.getuid(), 0):
        raise RuntimeError(f"{path} belongs to another user (uid {st.st_uid}); not loading code from it "
                           "(set PELLUCID_CACHE_DIR to a directory of your own)")
    if st.st_mode & 0o022:
        raise RuntimeError(f"{path} is writable by other users (mode {stat.filemode(st.st_mode)}); not loading "
                           "code from it (chmod go-w it, or set PELLUCID_CACHE_DIR to a private directory)")


def library_name(cc: str) -> str:
    """The cached library's file name: one per source text, compiler, flag sets and CPU."""
    key = hashlib.sha256("\0".join((_SOURCE, cc, *_FLAGS, *_NATIVE, *_OPENMP, _cpu_id())).encode()).hexdigest()[:16]
    return f"max_correlation-{key}.so"


def _build(directory: Path) -> Path:
    """The library's path in ``directory``, compiled there first if it is missing."""
    import fcntl  # POSIX only: elsewhere the ImportError leaves the PyTorch path

    cc = os.environ.get("CC", "cc")
    if not cc.strip() or shutil.which(cc.split()[0]) is None:
        raise RuntimeError(f"no C compiler {cc!r} (set CC, or install gcc or clang)")
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    _check_private(directory)
    target = directory / library_name(cc)
    if target.exists():
        _check_private(target)
        return target
    with open(target.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another process may be building the same library
        if target.exists():
            _check_private(target)
            return target
        with tempfile.TemporaryDirectory(dir=directory) as tmp:
            src, out = Path(tmp) / "max_correlation.c", Path(tmp) / "max_correlation.so"
            src.write_text(_SOURCE)
            # the compiler may lack -march=native or OpenMP: each flag set in turn, the fullest first
            for extra in (_OPENMP + _NATIVE, _NATIVE, _OPENMP, ()):
                error = _compile(cc, _FLAGS + extra, src, out)
                if error is None:
                    break
            if error is not None:
                raise RuntimeError(f"{cc} failed: {error}")
            os.chmod(out, 0o755)  # writable by no one else whatever the umask (see _check_private)
            with open(out, "rb") as f:
                os.fsync(f.fileno())
            os.replace(out, target)  # atomic: a reader sees no library or the whole one
    return target


def _load() -> ctypes.CDLL:
    lib = ctypes.CDLL(str(_build(cache_dir())))
    i64, ptr, c_int = ctypes.c_int64, ctypes.c_void_p, ctypes.c_int
    lib.pellucid_max_first.argtypes = [ptr, ptr, ptr, i64, i64, i64, c_int]
    lib.pellucid_max_corr_backward.argtypes = [ptr, ptr, ptr, ptr, ptr, ptr, *[i64] * 7, c_int, i64]
    lib.pellucid_fused_forward_built.argtypes = []
    lib.pellucid_built_with_openmp.argtypes = []
    lib.pellucid_max_corr_forward.argtypes = [ptr, ptr, ptr, ptr, *[i64] * 7]
    lib.pellucid_twostep_terms.argtypes = [ptr, ptr, ptr, i64, ptr, c_int, i64]
    lib.pellucid_twostep_forward.argtypes = [ptr, ptr, i64, ptr, c_int]
    return lib


def library() -> ctypes.CDLL | None:
    """The compiled kernels, or ``None`` (disabled, or no compiler: :func:`unavailable_reason`)."""
    if os.environ.get("PELLUCID_CPU_KERNELS", "1") == "0":
        return None
    with _lock:
        if "lib" not in _state and "error" not in _state:
            try:
                _state["lib"] = _load()
            except Exception as e:  # any failure leaves the PyTorch path, which gives the same numbers
                _state["error"] = f"{type(e).__name__}: {e}"
                # a log line, not a warning: the numbers do not change, so code that turns
                # warnings into errors must not fail on a machine without a compiler
                logging.getLogger(__name__).warning(
                    "pellucid: the C kernels of the max-correlation layer are unavailable (%s); "
                    "using the PyTorch path (the same numbers, slower)", _state["error"])
    return _state.get("lib")  # type: ignore[return-value]


def unavailable_reason() -> str | None:
    """Why :func:`library` returned ``None`` (``None`` when it loaded or was not tried yet)."""
    if os.environ.get("PELLUCID_CPU_KERNELS", "1") == "0":
        return "disabled by PELLUCID_CPU_KERNELS=0"
    return _state.get("error")  # type: ignore[return-value]


def usable(*tensors: torch.Tensor) -> bool:
    """The kernels apply: contiguous CPU tensors, all float32 or all float64."""
    first = tensors[0]
    return (first.device.type == "cpu" and first.dtype in (torch.float32, torch.float64)
            and all(t.device.type == "cpu" and t.is_contiguous() and t.dtype == first.dtype for t in tensors))


def max_first(scores: torch.Tensor, best: torch.Tensor, idx: torch.Tensor, lib: ctypes.CDLL) -> None:
    """``best[b, n], idx[b, n] = max_k scores[b, k, n]`` and its first index, written in place.
    ``scores``: contiguous ``(B, K, ...)``; ``best``: ``(B, ...)`` of its dtype; ``idx``: int64."""
    b, k = scores.shape[:2]
    n = scores[0, 0].numel()
    lib.pellucid_max_first(scores.data_ptr(), best.data_ptr(), idx.data_ptr(), b, k, n,
                           int(scores.dtype == torch.float64))


def max_correlation_backward(x: torch.Tensor, weight: torch.Tensor, idx: torch.Tensor, g: torch.Tensor,
                             need_x: bool, need_w: bool, lib: ctypes.CDLL
                             ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Input gradient ``(B, C, H, W)`` and kernel gradient ``(taps, K)`` (see the module text)."""
    n_k, c, kh, kw = weight.shape
    b, _, h, w = x.shape
    w_taps = weight.reshape(n_k, -1).t().contiguous()  # (taps, K)
    gx = torch.empty_like(x) if need_x else None
    gw = weight.new_zeros(c * kh * kw, n_k) if need_w else None
    lib.pellucid_max_corr_backward(x.data_ptr(), w_taps.data_ptr(), idx.data_ptr(), g.data_ptr(),
                                   gx.data_ptr() if gx is not None else None,
                                   gw.data_ptr() if gw is not None else None,
                                   b, c, h, w, n_k, kh, kw, int(x.dtype == torch.float64), torch.get_num_threads())
    return gx, gw


def built_with_openmp(lib: ctypes.CDLL) -> bool:
    """Whether this build runs its threads on OpenMP (PyTorch's own workers) rather than its own."""
    return bool(lib.pellucid_built_with_openmp())


def fused_forward_built(lib: ctypes.CDLL) -> bool:
    """Whether this build has the fused forward (compiled for a CPU with AVX2 and FMA)."""
    return bool(lib.pellucid_fused_forward_built())


def max_correlation_forward(x: torch.Tensor, weight: torch.Tensor, lib: ctypes.CDLL
                            ) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Fused ``conv2d(x, weight, padding=k // 2).max(dim=1)`` for one input channel, float32:
    ``best (B, 1, H, W)`` and the first winning kernel ``idx (B, H, W)``, on
    ``torch.get_num_threads()`` threads; ``None`` when this build has no fused forward or
    memory ran out. Contiguous CPU float32 ``x (B, 1, H, W)`` and ``weight (K, 1, kh, kw)``."""
    n_k, _, kh, kw = weight.shape
    b, _, h, w = x.shape
    best = x.new_empty(b, 1, h, w)
    idx = torch.empty(b, h, w, dtype=torch.long, device=x.device)
    done = lib.pellucid_max_corr_forward(x.data_ptr(), weight.data_ptr(), best.data_ptr(), idx.data_ptr(),
                                         b, h, w, n_k, kh, kw, torch.get_num_threads())
    return (best, idx) if done == 0 else None


def twostep_forward(x: torch.Tensor, constants: torch.Tensor, lib: ctypes.CDLL) -> torch.Tensor | None:
    """TwoStep's values of contiguous CPU ``x`` (see the C text), or ``None`` if some ``x`` is not
    finite; ``constants``: ``(16,)`` of ``x``'s dtype."""
    y = torch.empty_like(x)
    bad = lib.pellucid_twostep_forward(x.data_ptr(), y.data_ptr(), x.numel(), constants.data_ptr(),
                                       int(x.dtype == torch.float64))
    return None if bad else y


def twostep_terms(x: torch.Tensor, g: torch.Tensor, constants: torch.Tensor, lib: ctypes.CDLL,
                  out: torch.Tensor | None = None) -> torch.Tensor | None:
    """The 18 per-pixel terms of TwoStep's parameter gradients, ``(18, *x.shape)`` (see the C
    text; written into ``out`` if given, contiguous), or ``None`` if some ``g`` is not finite:
    contiguous CPU ``x`` and ``g`` of one dtype, ``constants`` ``(16,)`` of that dtype."""
    out = x.new_empty(18, *x.shape) if out is None else out
    bad = lib.pellucid_twostep_terms(x.data_ptr(), g.data_ptr(), out.data_ptr(), x.numel(), constants.data_ptr(),
                                     int(x.dtype == torch.float64), torch.get_num_threads())
    return None if bad else out
