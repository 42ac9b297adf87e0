// ctxrec HNSW engine core: hnswlib's graph search with the engine's filters applied inside
// the traversal, followed by exact rescoring (rescore.hpp's score) and top-K, in one call.
//
// Rows are hnswlib labels. Two graphs, chosen at construction by max_norm:
//  - max_norm == 0: an inner-product graph over [v, b]; the query [q, 1] retrieves by q . v + b
//    (and [q, 0] by q . v alone, for item-item similarity). Best for unfiltered requests:
//    rows with large norms are hubs the search reaches fast (recall@10 0.978 at ef = 64 on
//    1M clustered items), but rows with small norms are nearly unreachable, which a filtered
//    search needs (0.83 for a 10 % filter).
//  - max_norm > 0 ("sphere"): maximum inner product as nearest neighbours: a row [v, b] is
//    stored as [v, b, sqrt(max_norm^2 - |v|^2 - b^2)] under squared L2, so for [q, 1, 0] the
//    distance is max_norm^2 + |q|^2 + 1 - 2 (q . v + b). Every row is reachable (0.99 for a
//    10 % filter) but unfiltered recall drops (0.85 at ef = 64 on 1M). Rows added later with
//    a norm past max_norm get a 0 last coordinate, so the graph places them approximately: the
//    caller passes them as `always` rows, scored exactly on every graph search, until it rebuilds.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>

#include "rescore.hpp"

namespace hnswlib {
template <typename T>
class HierarchicalNSW;
template <typename T>
class SpaceInterface;
}  // namespace hnswlib

namespace ctxrec {

// Readers share the index with each other and writers (inserting threads) with each other,
// never readers with writers: hnswlib's search is not safe against a concurrent insert.
// Phase-fair: a waiting writer stops new readers; readers waiting when the writers leave
// go next, before any new writer. A writer holds it per insert, so no reader waits for a
// whole write batch.
class PhaseLock {
public:
    void lock_read();
    void unlock_read();
    void lock_write();
    void unlock_write();

private:
    std::mutex m_;
    std::condition_variable cv_;
    int64_t readers_ = 0, writers_ = 0, wait_r_ = 0, wait_w_ = 0, admitted_ = 0;
    uint64_t gen_ = 0;
};

// A bitset over rows; rows at or past `n` are unset.
struct Bits {
    const uint64_t* w = nullptr;
    int64_t n = 0;
    bool present() const { return w != nullptr; }
    bool test(int64_t i) const { return i >= 0 && i < n && ((w[i >> 6] >> (i & 63)) & 1u); }
};

struct SearchArgs {
    ScoreSpec spec;           // tables (n_items = rows the tables hold) and queries; bias null = similarity
    Bits live;                // rows a request may return (required)
    Bits mask;                // AND of the request's named filters (optional)
    Csr exclude, allow;       // rows, per query (rows == b) or shared (rows == 1)
    const int64_t* always = nullptr;  // rows the graph plan scores besides its candidates (if eligible):
    int64_t n_always = 0;             // rows whose norm exceeds max_norm, which the graph places approximately
    const int64_t* always_indptr = nullptr;  // [b + 1]: query q's always rows are always[indptr[q]:indptr[q+1]]
                                             // (null: all n_always rows for every query)
    int64_t n_live = 0;       // popcount of live
    int64_t n_candidates = 64;
    int64_t exact_below = 0;  // score the eligible rows exactly when at most this many remain
};

class HnswIndex {
public:
    HnswIndex(int64_t dim, int64_t capacity, int64_t M, int64_t ef_construction, int64_t seed, float max_norm);
    HnswIndex(int64_t dim, const std::string& path, int64_t capacity, float max_norm);  // hnswlib's format
    ~HnswIndex();

    int64_t dim() const { return dim_; }
    float max_norm() const { return max_norm_; }
    int64_t width() const { return dim_ + (max_norm_ > 0 ? 2 : 1); }  // floats per stored row
    int64_t size() const;
    int64_t capacity() const;
    void set_ef(int64_t ef);
    // Insert rows[j] with vector [vecs[j], bias[j]] (grows the graph when full).
    void add(const float* vecs, const float* bias, const int64_t* rows, int64_t n, int num_threads);
    void save(const std::string& path);
    // Top out.K rows per query; plans[q] = 1 when scored exactly, 0 when searched (may be null).
    void search(const SearchArgs& args, int64_t b, TopKOut out, int num_threads, int8_t* plans);

private:
    int64_t dim_;  // factor width; the graph stores width() floats per row
    float max_norm_;
    std::unique_ptr<hnswlib::SpaceInterface<float>> space_;
    std::unique_ptr<hnswlib::HierarchicalNSW<float>> hnsw_;
    PhaseLock lock_;
};

}  // namespace ctxrec
