// Internals shared by the exact scorer (rescore.cpp) and the HNSW engine (index.cpp):
// the score of one item, scattered-row scoring, the bounded top-K heap, a thread pool loop.
#pragma once

#include <algorithm>
#include <atomic>
#include <cmath>
#include <exception>
#include <limits>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "rescore.hpp"

// Hot loops are compiled for several x86-64 levels and picked at load time, so a
// portable build still uses AVX2/AVX-512 where the CPU has them.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && !defined(CTXREC_NO_CLONES)
#define CTXREC_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define CTXREC_CLONES
#endif

namespace ctxrec {
namespace detail {


struct Entry {
    float s;
    int64_t id;
};

// a ranks before b: higher score first, then smaller item index.
inline bool better(const Entry& a, const Entry& b) {
    return a.s > b.s || (a.s == b.s && a.id < b.id);
}

// Bounded heap keeping the K best entries; front() is the worst kept entry.
class TopKHeap {
public:
    explicit TopKHeap(int64_t K) : K_(K) { h_.reserve(static_cast<size_t>(K)); }
    inline void push(float s, int64_t id) {
        if (K_ == 0) return;
        Entry e{s, id};
        if (static_cast<int64_t>(h_.size()) < K_) {
            h_.push_back(e);
            std::push_heap(h_.begin(), h_.end(), better);
        } else if (better(e, h_.front())) {
            std::pop_heap(h_.begin(), h_.end(), better);
            h_.back() = e;
            std::push_heap(h_.begin(), h_.end(), better);
        }
    }
    inline bool full() const { return K_ > 0 && static_cast<int64_t>(h_.size()) == K_; }
    inline float worst() const { return h_.front().s; }
    std::vector<Entry>& entries() { return h_; }
    void write(int64_t* ids, float* scores) {
        std::sort(h_.begin(), h_.end(), better);
        for (int64_t j = 0; j < K_; ++j) {
            if (j < static_cast<int64_t>(h_.size())) {
                ids[j] = h_[j].id;
                scores[j] = h_[j].s;
            } else {
                ids[j] = -1;
                scores[j] = -std::numeric_limits<float>::infinity();
            }
        }
    }

private:
    int64_t K_;
    std::vector<Entry> h_;
};

inline float dot(const float* __restrict a, const float* __restrict b, int64_t n) {
    float acc = 0.f;
#pragma omp simd reduction(+ : acc)
    for (int64_t i = 0; i < n; ++i) acc += a[i] * b[i];
    return acc;
}

[[noreturn]] inline void bad_score(int64_t q, int64_t item, float s) {
    throw std::invalid_argument(
        "non-finite score " + std::to_string(s) + " for query row " + std::to_string(q) + " and item index " +
        std::to_string(item) + ": item_vecs, item_bias, item_text or item_tri hold NaN or inf in that row");
}

inline float score_one(const ScoreSpec& sp, int64_t q, int64_t i) {
    float s = dot(sp.queries + q * sp.dim, sp.items + i * sp.dim, sp.dim);
    if (sp.bias) s += sp.bias[i];
    if (sp.item_text) s += sp.w_text * dot(sp.text_q + q * sp.d, sp.item_text + i * sp.d, sp.d);
    if (sp.item_tri) s += sp.w_tri * dot(sp.tri_q + q * sp.t, sp.item_tri + i * sp.t, sp.t);
    return s;
}

// Scores of query q for a list of item indices.
// Candidate rows are scattered and usually cold: prefetch them all first so the
// memory system fetches them in parallel instead of one miss at a time.
inline void prefetch_row(const float* row, int64_t width) {
    const char* p = reinterpret_cast<const char*>(row);
    for (int64_t off = 0; off < width * static_cast<int64_t>(sizeof(float)); off += 64) __builtin_prefetch(p + off);
}

CTXREC_CLONES
[[maybe_unused]] static void score_list(const ScoreSpec& sp, int64_t q, const int64_t* ids, int64_t m, float* out) {
    for (int64_t j = 0; j < m; ++j) {
        const int64_t i = ids[j];
        prefetch_row(sp.items + i * sp.dim, sp.dim);
        if (sp.item_text) prefetch_row(sp.item_text + i * sp.d, sp.d);
        if (sp.item_tri) prefetch_row(sp.item_tri + i * sp.t, sp.t);
    }
    if (sp.bias)
        for (int64_t j = 0; j < m; ++j) __builtin_prefetch(sp.bias + ids[j]);
    for (int64_t j = 0; j < m; ++j) out[j] = score_one(sp, q, ids[j]);
}

// Scores of queries q0..q0+g-1 for the contiguous items [j0, j1); out is [g, j1-j0].
// The item row stays in L1 while all g queries use it.
CTXREC_CLONES
[[maybe_unused]] static void score_block(const ScoreSpec& sp, int64_t q0, int64_t g, int64_t j0, int64_t j1, float* out) {
    const int64_t w = j1 - j0;
    for (int64_t i = j0; i < j1; ++i)
        for (int64_t qi = 0; qi < g; ++qi) out[qi * w + (i - j0)] = score_one(sp, q0 + qi, i);
}

// Runs task(i) for i in [0, n_tasks) on up to n_threads threads; rethrows the first error.
template <class F>
inline void parallel_for(int64_t n_tasks, int n_threads, F&& task) {
    if (n_tasks <= 0) return;
    const int nt = static_cast<int>(std::min<int64_t>(n_threads, n_tasks));
    if (nt <= 1) {
        for (int64_t i = 0; i < n_tasks; ++i) task(i);
        return;
    }
    std::atomic<int64_t> next{0};
    std::atomic<bool> failed{false};
    std::exception_ptr error;
    std::mutex mu;
    auto worker = [&]() {
        try {
            for (int64_t i = next.fetch_add(1); i < n_tasks && !failed.load(std::memory_order_relaxed);
                 i = next.fetch_add(1))
                task(i);
        } catch (...) {
            std::lock_guard<std::mutex> lock(mu);
            if (!error) error = std::current_exception();
            failed = true;
        }
    };
    std::vector<std::thread> threads;
    threads.reserve(static_cast<size_t>(nt - 1));
    for (int i = 0; i < nt - 1; ++i) threads.emplace_back(worker);
    worker();
    for (auto& th : threads) th.join();
    if (error) std::rethrow_exception(error);
}

// Push scored items into the heap, rejecting non-finite scores.
inline void push_scores(TopKHeap& heap, int64_t q, const int64_t* ids, const float* s, int64_t m) {
    for (int64_t j = 0; j < m; ++j) {
        if (!std::isfinite(s[j])) bad_score(q, ids[j], s[j]);
        heap.push(s[j], ids[j]);
    }
}

}  // namespace detail
}  // namespace ctxrec
