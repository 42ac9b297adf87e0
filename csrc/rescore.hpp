// ctxrec core: exact scoring of candidate sets and of whole catalogs, top-K selection.
//
// Score of item i for query q:
//     s(q, i) = <queries[q], items[i]> + bias[i]
//             + w_text * <text_q[q], item_text[i]>     (optional text-match term)
//             + w_tri  * <tri_q[q],  item_tri[i]>      (optional three-way term)
// Results are sorted by score descending, ties broken by the smaller item index, so
// the output is deterministic. Each item appears at most once per query.
#pragma once

#include <cstdint>
#include <stdexcept>
#include <string>

namespace ctxrec {

// Row-major float32 tables and per-query vectors; optional terms have null pointers.
struct ScoreSpec {
    int64_t n_items = 0;
    int64_t dim = 0;                     // factor dimension (Python's k is the result count)
    const float* items = nullptr;        // [n_items, dim]
    const float* bias = nullptr;         // [n_items] or null
    const float* queries = nullptr;      // [b, dim]
    int64_t d = 0;                       // text dimension
    const float* item_text = nullptr;    // [n_items, d] or null
    const float* text_q = nullptr;       // [b, d] or null
    float w_text = 0.f;
    int64_t t = 0;                       // three-way dimension
    const float* item_tri = nullptr;     // [n_items, t] or null
    const float* tri_q = nullptr;        // [b, t] or null
    float w_tri = 0.f;
};

// Per-query item lists in CSR form. rows == 1 means one list shared by every query;
// rows == 0 means "no list". Indices are item indices in [0, n_items).
struct Csr {
    const int64_t* indptr = nullptr;
    const int64_t* indices = nullptr;
    int64_t rows = 0;
};

struct TopKOut {
    int64_t* ids = nullptr;   // [b, K], -1 where fewer than K items remain
    float* scores = nullptr;  // [b, K], -inf where fewer than K items remain
    int64_t K = 0;
};

// Rescore candidate ids [b, c] (-1 = padding; duplicates allowed) and select the top K.
void rescore(const ScoreSpec& spec, int64_t b, const int64_t* candidates, int64_t c,
             const Csr& exclude, const Csr& allow, TopKOut out, int num_threads);

// Score every item (or every allowed item) for each of b queries and select the top K.
void topk_full(const ScoreSpec& spec, int64_t b, const Csr& exclude, const Csr& allow,
               TopKOut out, int num_threads);

// Number of worker threads "0 = all cores" resolves to.
int resolve_threads(int num_threads);

}  // namespace ctxrec
