#include "rescore.hpp"

#include "kernels.hpp"

namespace ctxrec {
using namespace detail;
namespace {

// A CSR list with every row sorted and de-duplicated (copied once per call).
struct SortedLists {
    std::vector<int64_t> indptr, idx;
    int64_t rows = 0;
    bool present() const { return rows > 0; }
    // [begin, end) of the list that applies to query q.
    std::pair<const int64_t*, const int64_t*> row(int64_t q) const {
        int64_t r = rows == 1 ? 0 : q;
        return {idx.data() + indptr[r], idx.data() + indptr[r + 1]};
    }
};

SortedLists prepare(const Csr& csr, int64_t n_items, const char* name) {
    SortedLists out;
    out.rows = csr.rows;
    if (csr.rows == 0) return out;
    out.indptr.assign(static_cast<size_t>(csr.rows + 1), 0);
    for (int64_t r = 0; r < csr.rows; ++r) {
        const int64_t a = csr.indptr[r], e = csr.indptr[r + 1];
        const size_t start = out.idx.size();
        for (int64_t j = a; j < e; ++j) {
            const int64_t v = csr.indices[j];
            if (v < 0 || v >= n_items)
                throw std::invalid_argument(std::string(name) + "_indices holds " + std::to_string(v) + " (row " +
                                            std::to_string(r) + "), outside the item range [0, " +
                                            std::to_string(n_items) + ")");
            out.idx.push_back(v);
        }
        std::sort(out.idx.begin() + static_cast<std::ptrdiff_t>(start), out.idx.end());
        out.idx.erase(std::unique(out.idx.begin() + static_cast<std::ptrdiff_t>(start), out.idx.end()),
                      out.idx.end());
        out.indptr[static_cast<size_t>(r + 1)] = static_cast<int64_t>(out.idx.size());
    }
    return out;
}

}  // namespace

int resolve_threads(int num_threads) {
    if (num_threads < 0) throw std::invalid_argument("num_threads must be >= 0 (0 = all cores), got " +
                                                     std::to_string(num_threads));
    if (num_threads == 0) {
        unsigned hc = std::thread::hardware_concurrency();
        return hc == 0 ? 1 : static_cast<int>(hc);
    }
    return num_threads;
}

void rescore(const ScoreSpec& sp, int64_t b, const int64_t* candidates, int64_t c, const Csr& exclude,
             const Csr& allow, TopKOut out, int num_threads) {
    const int nt = resolve_threads(num_threads);
    const SortedLists excl = prepare(exclude, sp.n_items, "exclude");
    const SortedLists allw = prepare(allow, sp.n_items, "allow");
    const int64_t per_task = std::max<int64_t>(1, std::min<int64_t>(64, b / (4 * nt) + 1));
    const int64_t n_tasks = (b + per_task - 1) / per_task;
    parallel_for(n_tasks, nt, [&](int64_t task) {
        std::vector<int64_t> ids, tmp;
        std::vector<float> s;
        TopKHeap heap(out.K);
        const int64_t q_end = std::min(b, (task + 1) * per_task);
        for (int64_t q = task * per_task; q < q_end; ++q) {
            ids.clear();
            const int64_t* row = candidates + q * c;
            for (int64_t j = 0; j < c; ++j) {
                const int64_t v = row[j];
                if (v == -1) continue;
                if (v < 0 || v >= sp.n_items)
                    throw std::invalid_argument("candidates[" + std::to_string(q) + ", " + std::to_string(j) +
                                                "] = " + std::to_string(v) + " is outside the item range [0, " +
                                                std::to_string(sp.n_items) + ") (use -1 for padding)");
                ids.push_back(v);
            }
            std::sort(ids.begin(), ids.end());
            ids.erase(std::unique(ids.begin(), ids.end()), ids.end());
            if (allw.present()) {
                auto r = allw.row(q);
                tmp.clear();
                std::set_intersection(ids.begin(), ids.end(), r.first, r.second, std::back_inserter(tmp));
                ids.swap(tmp);
            }
            if (excl.present()) {
                auto r = excl.row(q);
                tmp.clear();
                std::set_difference(ids.begin(), ids.end(), r.first, r.second, std::back_inserter(tmp));
                ids.swap(tmp);
            }
            s.resize(ids.size());
            score_list(sp, q, ids.data(), static_cast<int64_t>(ids.size()), s.data());
            heap.entries().clear();
            push_scores(heap, q, ids.data(), s.data(), static_cast<int64_t>(ids.size()));
            heap.write(out.ids + q * out.K, out.scores + q * out.K);
        }
    });
}

void topk_full(const ScoreSpec& sp, int64_t b, const Csr& exclude, const Csr& allow, TopKOut out,
               int num_threads) {
    const int nt = resolve_threads(num_threads);
    const SortedLists excl = prepare(exclude, sp.n_items, "exclude");
    const SortedLists allw = prepare(allow, sp.n_items, "allow");
    const int64_t n = sp.n_items;
    if (b == 0) return;
    constexpr int64_t G = 8;       // queries sharing one pass over an item block
    constexpr int64_t BLOCK = 256;  // items per block
    const int64_t n_groups = (b + G - 1) / G;
    // Split the catalog too when there are fewer query groups than threads.
    int64_t splits = 1;
    if (n_groups < nt) splits = std::max<int64_t>(1, std::min<int64_t>(nt / n_groups, n / 16384));
    const int64_t span = (n + splits - 1) / splits;
    // partial[(group * splits + split) * G + qi] holds that task's best K entries.
    std::vector<std::vector<Entry>> partial(static_cast<size_t>(n_groups * splits * G));

    parallel_for(n_groups * splits, nt, [&](int64_t task) {
        const int64_t grp = task / splits, split = task % splits;
        const int64_t q0 = grp * G, g = std::min(G, b - q0);
        const int64_t lo = split * span, hi = std::min(n, lo + span);
        std::vector<TopKHeap> heaps;
        heaps.reserve(static_cast<size_t>(g));
        for (int64_t qi = 0; qi < g; ++qi) heaps.emplace_back(out.K);
        if (allw.present()) {
            std::vector<int64_t> ids;
            std::vector<float> s;
            for (int64_t qi = 0; qi < g; ++qi) {
                const int64_t q = q0 + qi;
                auto ar = allw.row(q);
                const int64_t* a0 = std::lower_bound(ar.first, ar.second, lo);
                const int64_t* a1 = std::lower_bound(a0, ar.second, hi);
                ids.assign(a0, a1);
                if (excl.present()) {
                    auto er = excl.row(q);
                    std::vector<int64_t> keep;
                    std::set_difference(ids.begin(), ids.end(), er.first, er.second, std::back_inserter(keep));
                    ids.swap(keep);
                }
                s.resize(ids.size());
                score_list(sp, q, ids.data(), static_cast<int64_t>(ids.size()), s.data());
                push_scores(heaps[static_cast<size_t>(qi)], q, ids.data(), s.data(), static_cast<int64_t>(ids.size()));
            }
        } else {
            std::vector<float> s(static_cast<size_t>(G * BLOCK));
            std::vector<const int64_t*> ex(static_cast<size_t>(g)), ex_end(static_cast<size_t>(g));
            for (int64_t qi = 0; qi < g; ++qi) {
                if (excl.present()) {
                    auto er = excl.row(q0 + qi);
                    ex[qi] = std::lower_bound(er.first, er.second, lo);
                    ex_end[qi] = er.second;
                } else {
                    ex[qi] = ex_end[qi] = nullptr;
                }
            }
            for (int64_t j0 = lo; j0 < hi; j0 += BLOCK) {
                const int64_t j1 = std::min(hi, j0 + BLOCK), w = j1 - j0;
                score_block(sp, q0, g, j0, j1, s.data());
                for (int64_t qi = 0; qi < g; ++qi) {
                    TopKHeap& heap = heaps[static_cast<size_t>(qi)];
                    const float* row = s.data() + qi * w;
                    const int64_t*& e = ex[static_cast<size_t>(qi)];
                    for (int64_t j = 0; j < w; ++j) {
                        const int64_t item = j0 + j;
                        if (e != nullptr) {
                            while (e != ex_end[qi] && *e < item) ++e;
                            if (e != ex_end[qi] && *e == item) continue;
                        }
                        const float v = row[j];
                        if (!std::isfinite(v)) bad_score(q0 + qi, item, v);
                        if (heap.full() && v < heap.worst()) continue;  // fast reject
                        heap.push(v, item);
                    }
                }
            }
        }
        for (int64_t qi = 0; qi < g; ++qi)
            partial[static_cast<size_t>(task * G + qi)].swap(heaps[static_cast<size_t>(qi)].entries());
    });

    for (int64_t q = 0; q < b; ++q) {
        const int64_t grp = q / G, qi = q % G;
        TopKHeap heap(out.K);
        for (int64_t split = 0; split < splits; ++split)
            for (const Entry& e : partial[static_cast<size_t>((grp * splits + split) * G + qi)]) heap.push(e.s, e.id);
        heap.write(out.ids + q * out.K, out.scores + q * out.K);
    }
}

}  // namespace ctxrec
