// Variable-length (packed documents) attention for bf16 on CPUs with AVX512-BF16, forward and backward.
//
// Why it exists (issue #9): PyTorch's CPU flash attention computes in fp32 at small head sizes (its bf16
// path is slower still), so at ESM-2's head sizes (16, 24) attention was 40-60% of a training step
// while the matrix products around it ran in bf16 at 3x the rate. Here every product runs on
// vdpbf16ps (bf16 pairs, fp32 accumulation, as flash-attention on GPUs), softmax and its gradient in
// fp32, one (document, head) per task. Scores of one block of query rows against all keys of the
// document stay in L1/L2 (documents are at most a few thousand tokens), so no online softmax is needed.
//
// Layouts: q, k, v, out, dout rows are tokens, (N, n_head, D) with a row stride per tensor and heads
// contiguous; cu_seqlens (n_docs + 1, int32) splits the N rows into documents; lse is (N, n_head) fp32.
// bf16 pairs are handled as int32: a "pair over d" is two neighbouring channels of one row, a "pair
// over j" two neighbouring keys (or rows) of one channel.
//
// Built by plm/model/cpu_attention.py with g++ -O3 -mavx512f -mavx512bw -mavx512vl -mavx512bf16 and
// called through ctypes; no Python or torch headers.

#include <immintrin.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <thread>
#include <type_traits>
#include <vector>

namespace {

using bf16 = uint16_t;

constexpr int KEY_BLOCK = 32;  // keys are padded to a multiple of this (two 16-lane vectors)
constexpr int BWD_ROWS = 16;   // query rows per backward block (8 row pairs for the dK, dV products)

inline int64_t round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }

inline int32_t pair_at(const bf16* row, int p) {  // channels 2p, 2p+1 of a row as one int32
  int32_t x;
  std::memcpy(&x, row + 2 * p, 4);
  return x;
}

inline __m512bh bh(__m512i x) { return (__m512bh)x; }

inline __mmask16 lanes(int64_t n) { return n >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << std::max<int64_t>(n, 0)) - 1); }

// 2^t on 16 floats: 2^round(t) by vscalefps times a degree-5 Taylor polynomial of 2^r on r in [-1/2, 1/2]
// (relative error < 3e-6, a thousandth of bf16's rounding, which every probability goes through). Scores
// are scaled by log2(e) once, in the same fused multiply-subtract that removes the row maximum or the
// logsumexp, so this is 8 vector operations where a general expf is 14. Very negative t (masked-out keys,
// far below the maximum) gives 0 through vscalefps.
inline __m512 exp2_16(__m512 t) {
  const __m512 n = _mm512_roundscale_ps(t, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  const __m512 r = _mm512_sub_ps(t, n);
  __m512 p = _mm512_set1_ps(1.3333558146e-3f);  // ln2^5 / 5!
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(9.6181291076e-3f));  // ln2^4 / 4!
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.5504108665e-2f));  // ln2^3 / 3!
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(2.4022650696e-1f));  // ln2^2 / 2!
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(6.9314718056e-1f));  // ln2
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
  return _mm512_scalef_ps(p, n);
}

constexpr float LOG2E = 1.44269504088896341f;

inline __m256i to_bf16(__m512 x) { return (__m256i)_mm512_cvtneps_pbh(x); }

// Two rows of 16 bf16 → 16 int32 pairs over rows (a in the low half).
inline __m512i pair_rows(__m256i a, __m256i b) {
  return _mm512_or_si512(_mm512_cvtepu16_epi32(a), _mm512_slli_epi32(_mm512_cvtepu16_epi32(b), 16));
}

// s[r][j] = Σ_p a_r[p] · b[p][j] for 4 rows and ncols (multiple of 32) columns: a_r rows as pairs over
// d, b packed [npairs][ldb] int32 pairs over d. The q·k and dO·v products.
inline void rows4_dot(const bf16* const a[4], const int32_t* b, int64_t ldb, int npairs, int64_t ncols, float* s,
                      int64_t lds) {
  for (int64_t j = 0; j < ncols; j += KEY_BLOCK) {
    __m512 c[4][2];
    for (int r = 0; r < 4; ++r) c[r][0] = c[r][1] = _mm512_setzero_ps();
    for (int p = 0; p < npairs; ++p) {
      const __m512bh b0 = bh(_mm512_loadu_si512(b + p * ldb + j));
      const __m512bh b1 = bh(_mm512_loadu_si512(b + p * ldb + j + 16));
#pragma GCC unroll 4
      for (int r = 0; r < 4; ++r) {
        const __m512bh ar = bh(_mm512_set1_epi32(pair_at(a[r], p)));
        c[r][0] = _mm512_dpbf16_ps(c[r][0], ar, b0);
        c[r][1] = _mm512_dpbf16_ps(c[r][1], ar, b1);
      }
    }
    for (int r = 0; r < 4; ++r) {
      _mm512_storeu_ps(s + r * lds + j, c[r][0]);
      _mm512_storeu_ps(s + r * lds + j + 16, c[r][1]);
    }
  }
}

// Head channels in the products whose output runs over channels (P·V, dS·K, Pᵀ·dO, dSᵀ·Q): NV vectors of
// 16 lanes plus, if TAIL, one of 8, so head size 24 is 16 + 8 lanes where 2 × 16 wasted a quarter of them.
template <int NV, int TAIL>
constexpr int padded_width() { return NV * 16 + TAIL * 8; }

// o[r][:] = Σ_jp w_r[jp] · b[jp][:] for 4 rows: w_r bf16 rows read as pairs over j, b packed [npairs][Dp]
// int32 pairs over j. The P·V and dS·K products; o is [4][Dp] fp32.
template <int NV, int TAIL>
inline void rows4_mix(const bf16* const w[4], const int32_t* b, int64_t npairs, float* o) {
  constexpr int Dp = padded_width<NV, TAIL>();
  __m512 c[4][NV > 0 ? NV : 1];
  __m256 ct[4];
  for (int r = 0; r < 4; ++r) {
    for (int v = 0; v < NV; ++v) c[r][v] = _mm512_setzero_ps();
    ct[r] = _mm256_setzero_ps();
  }
  for (int64_t jp = 0; jp < npairs; ++jp) {
    __m512bh bv[NV > 0 ? NV : 1];
    for (int v = 0; v < NV; ++v) bv[v] = bh(_mm512_loadu_si512(b + jp * Dp + v * 16));
    __m256bh bt{};
    if (TAIL) bt = (__m256bh)_mm256_loadu_si256(reinterpret_cast<const __m256i*>(b + jp * Dp + NV * 16));
#pragma GCC unroll 4
    for (int r = 0; r < 4; ++r) {
      const __m512i wr = _mm512_set1_epi32(pair_at(w[r], int(jp)));
      for (int v = 0; v < NV; ++v) c[r][v] = _mm512_dpbf16_ps(c[r][v], bh(wr), bv[v]);
      if (TAIL) ct[r] = _mm256_dpbf16_ps(ct[r], (__m256bh)_mm512_castsi512_si256(wr), bt);
    }
  }
  for (int r = 0; r < 4; ++r) {
    for (int v = 0; v < NV; ++v) _mm512_storeu_ps(o + r * Dp + v * 16, c[r][v]);
    if (TAIL) _mm256_storeu_ps(o + r * Dp + NV * 16, ct[r]);
  }
}

// acc[j][:] += Σ_rp t[rp][j] · x[rp][:] for j < ncols: t int32 pairs over rows [RP][ldt], x packed
// [RP][Dp] int32 pairs over rows. The Pᵀ·dO and dSᵀ·Q products into fp32 accumulators [ncols][Dp].
template <int NV, int TAIL, int RP>
inline void cols_accumulate(float* acc, const int32_t* t, int64_t ldt, const int32_t* x, int64_t ncols) {
  constexpr int Dp = padded_width<NV, TAIL>();
  __m512bh xv[RP][NV > 0 ? NV : 1];
  __m256bh xt[RP];
  for (int rp = 0; rp < RP; ++rp) {
    for (int v = 0; v < NV; ++v) xv[rp][v] = bh(_mm512_loadu_si512(x + rp * Dp + v * 16));
    xt[rp] = TAIL ? (__m256bh)_mm256_loadu_si256(reinterpret_cast<const __m256i*>(x + rp * Dp + NV * 16))
                  : __m256bh{};
  }
  for (int64_t j = 0; j < ncols; ++j) {
    float* a = acc + j * Dp;
    __m512 c[NV > 0 ? NV : 1];
    for (int v = 0; v < NV; ++v) c[v] = _mm512_loadu_ps(a + v * 16);
    __m256 ct = TAIL ? _mm256_loadu_ps(a + NV * 16) : _mm256_setzero_ps();
#pragma GCC unroll 8
    for (int rp = 0; rp < RP; ++rp) {
      const __m512i tb = _mm512_set1_epi32(t[rp * ldt + j]);
      for (int v = 0; v < NV; ++v) c[v] = _mm512_dpbf16_ps(c[v], bh(tb), xv[rp][v]);
      if (TAIL) ct = _mm256_dpbf16_ps(ct, (__m256bh)_mm512_castsi512_si256(tb), xt[rp]);
    }
    for (int v = 0; v < NV; ++v) _mm512_storeu_ps(a + v * 16, c[v]);
    if (TAIL) _mm256_storeu_ps(a + NV * 16, ct);
  }
}

// fp32 row of D values, times mul, → bf16 at dst.
inline void store_row(bf16* dst, const float* src, int D, float mul = 1.0f) {
  const __m512 m = _mm512_set1_ps(mul);
  for (int d = 0; d < D; d += 16)
    _mm256_mask_storeu_epi16(dst + d, lanes(D - d), to_bf16(_mm512_mul_ps(_mm512_maskz_loadu_ps(lanes(D - d), src + d), m)));
}

struct Problem {
  const bf16 *q, *k, *v, *out, *dout;
  int64_t sq, sk, sv, so, sdo;  // row strides (elements)
  float* lse;
  bf16* y;             // forward output, contiguous (N, n_head, D)
  bf16 *dq, *dk, *dv;  // gradients, (N, n_head, D) each with row stride sdx (slots of one dqkv, or three)
  int64_t sdx;
  const int32_t* cu;
  int n_docs, n_head, D;
  bool causal;
  float scale;
  // Rotary embedding applied here when rot_half > 0: q and k as given are not yet rotated; the token at
  // index j of its document turns channels i and i + rot_half (i < rot_half) by the angle whose cosine and
  // sine are cos[j * rot_half + i], sin[...]. dq and dk come out for the unrotated q and k.
  const float *cos, *sin;
  int rot_half;
};

// Up to 16 bf16 values (lanes mk) → fp32.
inline __m512 load16(const bf16* src, __mmask16 mk) {
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(mk, src)), 16));
}

// bf16 row of D values → fp32 at dst.
inline void load_row(float* dst, const bf16* src, int D) {
  for (int d = 0; d < D; d += 16) _mm512_mask_storeu_ps(dst + d, lanes(D - d), load16(src + d, lanes(D - d)));
}

// Σ_d a[d] · b[d] over two bf16 rows of D values, in fp32.
inline float dot_row(const bf16* a, const bf16* b, int D) {
  __m512 acc = _mm512_setzero_ps();
  for (int d = 0; d < D; d += 16) acc = _mm512_fmadd_ps(load16(a + d, lanes(D - d)), load16(b + d, lanes(D - d)), acc);
  return _mm512_reduce_add_ps(acc);
}

// Rotary embedding of the fp32 row x at document position pos, in place (rotate-half layout: channel i
// pairs with i + half); sign -1 turns the other way, which maps a rotated row's gradient to the unrotated.
inline void rotate(float* x, const Problem& pb, int64_t pos, float sign) {
  const int half = pb.rot_half;
  const float* cs = pb.cos + pos * half;
  const float* sn = pb.sin + pos * half;
  const __m512 sg = _mm512_set1_ps(sign);
  for (int i = 0; i < half; i += 16) {
    const __mmask16 mk = lanes(half - i);
    const __m512 a = _mm512_maskz_loadu_ps(mk, x + i), b = _mm512_maskz_loadu_ps(mk, x + half + i);
    const __m512 c = _mm512_maskz_loadu_ps(mk, cs + i), sn_i = _mm512_mul_ps(sg, _mm512_maskz_loadu_ps(mk, sn + i));
    _mm512_mask_storeu_ps(x + i, mk, _mm512_fmsub_ps(a, c, _mm512_mul_ps(b, sn_i)));
    _mm512_mask_storeu_ps(x + half + i, mk, _mm512_fmadd_ps(b, c, _mm512_mul_ps(a, sn_i)));
  }
}

// The L rows of one document and head, rotated in fp32 and rounded once to bf16, contiguous at out.
void rotate_rows(const bf16* x, int64_t stride, int64_t L, const Problem& pb, bf16* out) {
  float row[64];
  for (int64_t j = 0; j < L; ++j) {
    load_row(row, x + j * stride, pb.D);
    rotate(row, pb, j, 1.0f);
    store_row(out + j * pb.D, row, pb.D);
  }
}

// q and k of one document and head as the products need them: rotated into qrot, krot (contiguous rows of D)
// when the kernel applies rotary, else the caller's rows with their strides, untouched.
struct QK {
  const bf16 *q, *k;
  int64_t sq, sk;
};
inline QK rotated_qk(const Problem& pb, const bf16* q, const bf16* k, int64_t L, bf16* qrot, bf16* krot) {
  if (!pb.rot_half) return {q, k, pb.sq, pb.sk};
  rotate_rows(q, pb.sq, L, pb, qrot);
  rotate_rows(k, pb.sk, L, pb, krot);
  return {qrot, krot, pb.D, pb.D};
}

// Scratch bytes for the rotated q and k of the longest document (none without rotary).
inline size_t rotated_bytes(const Problem& pb, int64_t maxLp) { return pb.rot_half ? 2 * size_t(maxLp) * pb.D * 2 : 0; }

// fp32 gradient row of the rotated q or k at document position pos → bf16 gradient of the unrotated one.
inline void store_grad_row(bf16* dst, float* src, const Problem& pb, int64_t pos) {
  if (pb.rot_half) rotate(src, pb, pos, -1.0f);
  store_row(dst, src, pb.D);
}

// Keys of one document and head packed as pairs over d: out[p][j] for j < Lp (zero beyond L).
void pack_pairs_over_d(const bf16* x, int64_t stride, int64_t L, int64_t Lp, int D, int32_t* out) {
  for (int p = 0; p < D / 2; ++p) {
    for (int64_t j = 0; j < L; ++j) out[p * Lp + j] = pair_at(x + j * stride, p);
    std::fill(out + p * Lp + L, out + (p + 1) * Lp, 0);
  }
}

// The same rows packed as pairs over rows: out[jp][d] for jp < n_pairs, d < Dp (zero beyond L and D).
void pack_pairs_over_rows(const bf16* x, int64_t stride, int64_t L, int64_t n_pairs, int D, int Dp, int32_t* out) {
  for (int64_t jp = 0; jp < n_pairs; ++jp) {
    const int64_t j0 = 2 * jp, j1 = 2 * jp + 1;
    for (int d = 0; d < Dp; d += 16) {
      const __mmask16 in = lanes(D - d);
      const __m256i lo = j0 < L ? _mm256_maskz_loadu_epi16(in, x + j0 * stride + d) : _mm256_setzero_si256();
      const __m256i hi = j1 < L ? _mm256_maskz_loadu_epi16(in, x + j1 * stride + d) : _mm256_setzero_si256();
      _mm512_mask_storeu_epi32(out + jp * Dp + d, lanes(Dp - d), pair_rows(lo, hi));
    }
  }
}

// One (document, head) task: the document's first row s0, its length L, L rounded up to KEY_BLOCK.
struct Task {
  int64_t s0, L, Lp;
  int h;
};

// Runs work(task, maxLp, scratch) for every (document, head) on n_threads threads, longest documents
// first so the last tasks are the short ones. maxLp is the longest document rounded up to KEY_BLOCK;
// each thread owns one scratch buffer of scratch_bytes(maxLp) bytes, reused across its tasks.
template <class Bytes, class Work>
void for_each_task(const Problem& pb, int n_threads, Bytes&& scratch_bytes, Work&& work) {
  std::vector<int> docs(pb.n_docs);
  int64_t max_len = 0;
  for (int i = 0; i < pb.n_docs; ++i) {
    docs[i] = i;
    max_len = std::max<int64_t>(max_len, pb.cu[i + 1] - pb.cu[i]);
  }
  std::stable_sort(docs.begin(), docs.end(),
                   [&](int a, int b) { return pb.cu[a + 1] - pb.cu[a] > pb.cu[b + 1] - pb.cu[b]; });
  const int64_t maxLp = round_up(max_len, KEY_BLOCK), n_tasks = int64_t(pb.n_docs) * pb.n_head;
  std::vector<std::vector<char>> scratch(n_threads, std::vector<char>(scratch_bytes(maxLp)));
  std::atomic<int64_t> next{0};
  auto worker = [&](int thread) {
    for (int64_t t; (t = next.fetch_add(1)) < n_tasks;) {
      const int doc = docs[t / pb.n_head];
      const int64_t s0 = pb.cu[doc], L = pb.cu[doc + 1] - s0;
      work(Task{s0, L, round_up(L, KEY_BLOCK), int(t % pb.n_head)}, maxLp, scratch[thread].data());
    }
  };
  std::vector<std::thread> pool;
  for (int i = 1; i < n_threads; ++i) pool.emplace_back(worker, i);
  worker(0);
  for (auto& th : pool) th.join();
}

template <int NV, int TAIL>
void forward(const Problem& pb, int n_threads) {
  const int D = pb.D;
  constexpr int Dp = padded_width<NV, TAIL>();
  const auto bytes = [&](int64_t maxLp) {  // kd, vj (int32); s (fp32); pw (bf16); o (fp32); rotated q, k (bf16)
    return (size_t(D / 2) * maxLp + size_t(maxLp / 2) * Dp) * 4 + size_t(4) * maxLp * 4 + size_t(4) * maxLp * 2 +
           size_t(4) * Dp * 4 + rotated_bytes(pb, maxLp);
  };
  for_each_task(pb, n_threads, bytes, [&](const Task& task, int64_t maxLp, char* buf) {
    const int64_t s0 = task.s0, L = task.L, Lp = task.Lp;
    const int h = task.h;
    int32_t* kd = reinterpret_cast<int32_t*>(buf);
    int32_t* vj = kd + size_t(D / 2) * maxLp;
    float* s = reinterpret_cast<float*>(vj + size_t(maxLp / 2) * Dp);
    bf16* pw = reinterpret_cast<bf16*>(s + 4 * maxLp);
    float* o = reinterpret_cast<float*>(pw + 4 * maxLp);
    bf16* qrot = reinterpret_cast<bf16*>(o + 4 * Dp);
    bf16* krot = qrot + size_t(maxLp) * D;

    const auto [q, k, sq, sk] = rotated_qk(pb, pb.q + s0 * pb.sq + h * D, pb.k + s0 * pb.sk + h * D, L, qrot, krot);
    const bf16* v = pb.v + s0 * pb.sv + h * D;
    pack_pairs_over_d(k, sk, L, Lp, D, kd);
    pack_pairs_over_rows(v, pb.sv, L, Lp / 2, D, Dp, vj);
    for (int64_t m = 0; m < L; m += 4) {
      const int nr = int(std::min<int64_t>(4, L - m));
      const int64_t Lk = pb.causal ? std::min<int64_t>(L, m + 4) : L, Lkp = round_up(Lk, KEY_BLOCK);
      const bf16* rows[4];
      for (int r = 0; r < 4; ++r) rows[r] = q + (m + std::min(r, nr - 1)) * sq;
      rows4_dot(rows, kd, Lp, D / 2, Lkp, s, maxLp);
      const bf16* wrows[4];
      float inv_sum[4];
      for (int r = 0; r < 4; ++r) {
        bf16* pr = pw + r * maxLp;
        wrows[r] = pr;
        if (r >= nr) continue;
        const int64_t i = m + r, limit = pb.causal ? i + 1 : L;
        float* sr = s + r * maxLp;
        __m512 mx = _mm512_set1_ps(-std::numeric_limits<float>::infinity());
        for (int64_t j = 0; j < limit; j += 16)
          mx = _mm512_mask_max_ps(mx, lanes(limit - j), mx, _mm512_loadu_ps(sr + j));
        // probabilities times the row's sum, in (0, 1]: bf16 rounds them as it would the normalised ones, and
        // the output row is divided by the sum once (D values) instead of every probability (L values)
        const float row_max = _mm512_reduce_max_ps(mx) * pb.scale;
        const __m512 c = _mm512_set1_ps(pb.scale * LOG2E), shift = _mm512_set1_ps(row_max * LOG2E);
        __m512 sum = _mm512_setzero_ps();
        for (int64_t j = 0; j < Lkp; j += 16) {
          const __m512 e = _mm512_maskz_mov_ps(lanes(limit - j), exp2_16(_mm512_fmsub_ps(_mm512_loadu_ps(sr + j), c, shift)));
          sum = _mm512_add_ps(sum, e);
          _mm256_storeu_si256(reinterpret_cast<__m256i*>(pr + j), to_bf16(e));
        }
        const float total = _mm512_reduce_add_ps(sum);
        inv_sum[r] = 1.0f / total;
        pb.lse[(s0 + i) * pb.n_head + h] = row_max + std::log(total);
      }
      rows4_mix<NV, TAIL>(wrows, vj, Lkp / 2, o);
      for (int r = 0; r < nr; ++r)
        store_row(pb.y + (s0 + m + r) * pb.n_head * D + h * D, o + r * Dp, D, inv_sum[r]);
    }
  });
}

template <int NV, int TAIL>
void backward(const Problem& pb, int n_threads) {
  constexpr int R = BWD_ROWS, RP = R / 2;
  const int D = pb.D;
  constexpr int Dp = padded_width<NV, TAIL>();
  const auto bytes = [&](int64_t maxLp) {
    const size_t n32 = 2 * size_t(D / 2) * maxLp + size_t(maxLp / 2) * Dp  // kd, vd, kj
                       + 2 * size_t(maxLp) * Dp                              // dk, dv accumulators (fp32)
                       + 2 * size_t(R) * maxLp                               // p, dp (fp32)
                       + 2 * size_t(RP) * maxLp                              // pt, dst
                       + 2 * size_t(RP) * Dp + maxLp + 4 * Dp;               // qr, dor, drow, o
    return n32 * 4 + 2 * size_t(R) * maxLp * 2 + rotated_bytes(pb, maxLp);  // + pw, dsw, rotated q, k (bf16)
  };
  for_each_task(pb, n_threads, bytes, [&](const Task& task, int64_t maxLp, char* buf) {
    const int64_t s0 = task.s0, L = task.L, Lp = task.Lp;
    const int h = task.h;
    int32_t* kd = reinterpret_cast<int32_t*>(buf);
    int32_t* vd = kd + size_t(D / 2) * maxLp;
    int32_t* kj = vd + size_t(D / 2) * maxLp;
    float* dk_acc = reinterpret_cast<float*>(kj + size_t(maxLp / 2) * Dp);
    float* dv_acc = dk_acc + size_t(maxLp) * Dp;
    float* p = dv_acc + size_t(maxLp) * Dp;
    float* dp = p + size_t(R) * maxLp;
    int32_t* pt = reinterpret_cast<int32_t*>(dp + size_t(R) * maxLp);
    int32_t* dst = pt + size_t(RP) * maxLp;
    int32_t* qr = dst + size_t(RP) * maxLp;
    int32_t* dor = qr + size_t(RP) * Dp;
    float* drow = reinterpret_cast<float*>(dor + size_t(RP) * Dp);
    float* o = drow + maxLp;
    bf16* dsw = reinterpret_cast<bf16*>(o + 4 * Dp);
    bf16* pw = dsw + size_t(R) * maxLp;
    bf16* qrot = pw + size_t(R) * maxLp;
    bf16* krot = qrot + size_t(maxLp) * D;

    // rotated again rather than saved by the forward: the same bits, and no (N, 2, nh, hd) kept per layer
    const auto [q, k, sq, sk] = rotated_qk(pb, pb.q + s0 * pb.sq + h * D, pb.k + s0 * pb.sk + h * D, L, qrot, krot);
    const bf16* v = pb.v + s0 * pb.sv + h * D;
    const bf16* out = pb.out + s0 * pb.so + h * D;
    const bf16* dout = pb.dout + s0 * pb.sdo + h * D;
    pack_pairs_over_d(k, sk, L, Lp, D, kd);
    pack_pairs_over_d(v, pb.sv, L, Lp, D, vd);
    pack_pairs_over_rows(k, sk, L, Lp / 2, D, Dp, kj);
    std::fill(dk_acc, dk_acc + size_t(Lp) * Dp, 0.0f);
    std::fill(dv_acc, dv_acc + size_t(Lp) * Dp, 0.0f);
    for (int64_t i = 0; i < L; ++i) drow[i] = dot_row(dout + i * pb.sdo, out + i * pb.so, D);
    const __m512 vscale = _mm512_set1_ps(pb.scale), c = _mm512_set1_ps(pb.scale * LOG2E);
    for (int64_t m = 0; m < L; m += R) {
      const int nr = int(std::min<int64_t>(R, L - m));
      const int64_t Lk = pb.causal ? std::min<int64_t>(L, m + R) : L, Lkp = round_up(Lk, KEY_BLOCK);
      for (int g = 0; g < nr; g += 4) {
        const bf16 *qrows[4], *drows[4];
        for (int r = 0; r < 4; ++r) {
          const int64_t row = m + std::min(g + r, nr - 1);
          qrows[r] = q + row * sq;
          drows[r] = dout + row * pb.sdo;
        }
        rows4_dot(qrows, kd, Lp, D / 2, Lkp, p + g * maxLp, maxLp);
        rows4_dot(drows, vd, Lp, D / 2, Lkp, dp + g * maxLp, maxLp);
      }
      for (int r = 0; r < R; ++r) {
        const float* pr = p + r * maxLp;
        const float* dpr = dp + r * maxLp;
        bf16* pwr = pw + r * maxLp;
        bf16* dsr = dsw + r * maxLp;
        if (r >= nr) {
          std::fill(pwr, pwr + Lkp, bf16(0));
          std::fill(dsr, dsr + Lkp, bf16(0));
          continue;
        }
        const int64_t i = m + r, limit = pb.causal ? i + 1 : L;
        const __m512 shift = _mm512_set1_ps(pb.lse[(s0 + i) * pb.n_head + h] * LOG2E), di = _mm512_set1_ps(drow[i]);
        for (int64_t j = 0; j < Lkp; j += 16) {
          const __m512 e = _mm512_maskz_mov_ps(lanes(limit - j), exp2_16(_mm512_fmsub_ps(_mm512_loadu_ps(pr + j), c, shift)));
          const __m512 ds = _mm512_mul_ps(_mm512_mul_ps(e, _mm512_sub_ps(_mm512_loadu_ps(dpr + j), di)), vscale);
          _mm256_storeu_si256(reinterpret_cast<__m256i*>(pwr + j), to_bf16(e));
          _mm256_storeu_si256(reinterpret_cast<__m256i*>(dsr + j), to_bf16(ds));
        }
      }
      for (int rp = 0; rp < RP; ++rp) {
        for (int64_t j = 0; j < Lkp; j += 16) {
          const int64_t a = (2 * rp) * maxLp + j, b = (2 * rp + 1) * maxLp + j;
          const auto row = [](const bf16* x) { return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x)); };
          _mm512_storeu_si512(pt + rp * maxLp + j, pair_rows(row(pw + a), row(pw + b)));
          _mm512_storeu_si512(dst + rp * maxLp + j, pair_rows(row(dsw + a), row(dsw + b)));
        }
      }
      pack_pairs_over_rows(q + m * sq, sq, nr, RP, D, Dp, qr);
      pack_pairs_over_rows(dout + m * pb.sdo, pb.sdo, nr, RP, D, Dp, dor);
      for (int g = 0; g < nr; g += 4) {  // dQ rows = dS · K
        const bf16* wrows[4];
        for (int r = 0; r < 4; ++r) wrows[r] = dsw + std::min(g + r, nr - 1) * maxLp;
        rows4_mix<NV, TAIL>(wrows, kj, Lkp / 2, o);
        for (int r = 0; r < 4 && g + r < nr; ++r)
          store_grad_row(pb.dq + (s0 + m + g + r) * pb.sdx + h * D, o + r * Dp, pb, m + g + r);
      }
      cols_accumulate<NV, TAIL, RP>(dv_acc, pt, maxLp, dor, Lk);  // dV += Pᵀ · dO
      cols_accumulate<NV, TAIL, RP>(dk_acc, dst, maxLp, qr, Lk);  // dK += dSᵀ · Q
    }
    for (int64_t j = 0; j < L; ++j) {
      store_grad_row(pb.dk + (s0 + j) * pb.sdx + h * D, dk_acc + j * Dp, pb, j);
      store_row(pb.dv + (s0 + j) * pb.sdx + h * D, dv_acc + j * Dp, D);
    }
  });
}

// Whether the call is one the kernel handles: head size, rotary width, and rotary tables (rot_rows rows) that
// cover the longest document.
inline bool head_size_ok(int head_dim) { return head_dim >= 2 && head_dim <= 64 && head_dim % 2 == 0; }

bool valid(int head_dim, int rot_half, int64_t rot_rows, const int32_t* cu, int n_docs) {
  if (!head_size_ok(head_dim) || rot_half < 0 || 2 * rot_half > head_dim) return false;
  if (rot_half)
    for (int i = 0; i < n_docs; ++i)
      if (cu[i + 1] - cu[i] > rot_rows) return false;
  return true;
}

// Calls run(NV, TAIL) as integral constants for the narrowest padded_width that holds head_dim (≤ 64).
template <class Run>
void with_width(int head_dim, Run&& run) {
  using std::integral_constant;
  switch ((head_dim + 7) / 8) {
    case 1: run(integral_constant<int, 0>{}, integral_constant<int, 1>{}); break;
    case 2: run(integral_constant<int, 1>{}, integral_constant<int, 0>{}); break;
    case 3: run(integral_constant<int, 1>{}, integral_constant<int, 1>{}); break;
    case 4: run(integral_constant<int, 2>{}, integral_constant<int, 0>{}); break;
    case 5: run(integral_constant<int, 2>{}, integral_constant<int, 1>{}); break;
    case 6: run(integral_constant<int, 3>{}, integral_constant<int, 0>{}); break;
    case 7: run(integral_constant<int, 3>{}, integral_constant<int, 1>{}); break;
    default: run(integral_constant<int, 4>{}, integral_constant<int, 0>{}); break;
  }
}

}  // namespace

extern "C" {

// Largest head size handled; odd head sizes are not (pairs over d).
int plm_attention_supports(int head_dim) { return head_size_ok(head_dim); }

// rot_half = 0: q and k are used as given (cos and sin may be null); else see Problem, the tables having
// rot_rows rows. Returns 0, or 1 for an unsupported head size or rotary width, or tables shorter than a document.
int plm_attention_forward(const bf16* q, const bf16* k, const bf16* v, int64_t sq, int64_t sk, int64_t sv,
                          bf16* out, float* lse, const int32_t* cu, int n_docs, int n_head, int head_dim,
                          int causal, float scale, int n_threads, const float* cos, const float* sin,
                          int rot_half, int64_t rot_rows) {
  if (!valid(head_dim, rot_half, rot_rows, cu, n_docs)) return 1;
  Problem pb{q, k, v, nullptr, nullptr, sq, sk, sv, 0, 0, lse, out, nullptr, nullptr, nullptr, 0, cu, n_docs, n_head,
             head_dim, causal != 0, scale, cos, sin, rot_half};
  n_threads = std::max(1, n_threads);
  with_width(head_dim, [&](auto nv, auto tail) { forward<decltype(nv)::value, decltype(tail)::value>(pb, n_threads); });
  return 0;
}

// dq, dk, dv: (N, n_head, head_dim) with row stride sdx each (three tensors, or the slots of one dqkv).
int plm_attention_backward(const bf16* q, const bf16* k, const bf16* v, const bf16* out, const bf16* dout,
                           int64_t sq, int64_t sk, int64_t sv, int64_t so, int64_t sdo, const float* lse,
                           bf16* dq, bf16* dk, bf16* dv, int64_t sdx, const int32_t* cu, int n_docs, int n_head,
                           int head_dim, int causal, float scale, int n_threads, const float* cos,
                           const float* sin, int rot_half, int64_t rot_rows) {
  if (!valid(head_dim, rot_half, rot_rows, cu, n_docs)) return 1;
  Problem pb{q,  k,  v,   out, dout,   sq,     sk,    sv,    so,  sdo, const_cast<float*>(lse), nullptr, dq, dk, dv,
             sdx, cu, n_docs, n_head, head_dim, causal != 0, scale, cos, sin, rot_half};
  n_threads = std::max(1, n_threads);
  with_width(head_dim, [&](auto nv, auto tail) { backward<decltype(nv)::value, decltype(tail)::value>(pb, n_threads); });
  return 0;
}

}  // extern "C"
