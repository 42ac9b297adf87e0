#include "rerank.hpp"

#include <cmath>
#include <limits>
#include <stdexcept>
#include <string>
#include <vector>

#include "kernels.hpp"

namespace ctxrec {
using namespace detail;

double pool_bound(float lambda, float gamma, float alpha, float eta) {
    if (lambda >= 1.f) return -std::numeric_limits<double>::infinity();
    const double span = 2.0 * lambda + static_cast<double>(gamma) * std::log(1.0 / static_cast<double>(alpha)) + eta;
    return -span / (1.0 - lambda);
}

namespace {

inline float inv_norm(const float* row, int64_t n) {
    const float s = dot(row, row, n);
    return s > 0.f ? 1.f / std::sqrt(s) : 0.f;
}

// KL(p || (1 - alpha) q + alpha p) over the categories with p > 0; q = (counts + (k - n_sel) p) / k,
// the mix of a k-item list whose n_sel chosen items are completed by the target (see rerank.hpp).
inline double kl(const float* p, const double* counts, double n_sel, double k, int64_t n_cat, double alpha) {
    double out = 0.0;
    for (int64_t c = 0; c < n_cat; ++c) {
        const double pc = p[c];
        if (pc <= 0.0) continue;
        const double qc = (1.0 - alpha) * (k > 0 ? (counts[c] + (k - n_sel) * pc) / k : 0.0) + alpha * pc;
        out += pc * std::log(pc / qc);
    }
    return out;
}

CTXREC_CLONES
void rerank_one(const RerankSpec& sp, int64_t q, const int64_t* row, const float* srow, int64_t c, int64_t k,
                int64_t* out_ids, float* out_scores, float* terms) {
    std::vector<int64_t> ids, pos;
    std::vector<float> s;
    ids.reserve(static_cast<size_t>(c));
    for (int64_t j = 0; j < c; ++j) {
        const int64_t v = row[j];
        if (v == -1) continue;
        ids.push_back(v);
        pos.push_back(q * c + j);
        s.push_back(srow[j]);
    }
    const int64_t m = static_cast<int64_t>(ids.size());
    const int64_t kk = std::min(k, m);
    // rel: best = 1, k-th best = 0 (a pool-independent scale)
    const float top = m ? s[0] : 0.f, kth = m ? s[static_cast<size_t>(kk ? kk - 1 : 0)] : 0.f;
    const double spread = top > kth ? static_cast<double>(top) - kth : 1.0;
    std::vector<double> rel(static_cast<size_t>(m)), maxsim(static_cast<size_t>(m), -1.0);
    for (int64_t j = 0; j < m; ++j) rel[j] = (static_cast<double>(s[j]) - kth) / spread;
    const bool diverse = sp.lambda > 0.f;
    const bool calib = sp.gamma > 0.f && sp.target != nullptr && sp.cat_indptr != nullptr;
    std::vector<float> tinv, vinv;
    if (diverse) {
        tinv.assign(static_cast<size_t>(m), 0.f);
        vinv.resize(static_cast<size_t>(m));
        for (int64_t j = 0; j < m; ++j) {
            if (sp.text) tinv[j] = inv_norm(sp.text + ids[j] * sp.d, sp.d);
            vinv[j] = inv_norm(sp.vecs + ids[j] * sp.dim, sp.dim);
        }
    }
    const float* p = calib ? sp.target + q * sp.n_cat : nullptr;
    std::vector<double> counts(calib ? static_cast<size_t>(sp.n_cat) : 0, 0.0), trial;
    std::vector<char> used(static_cast<size_t>(m), 0);
    const double lam = sp.lambda, gam = sp.gamma, alpha = sp.alpha, eta = sp.eta;
    const bool expo = sp.penalty != nullptr && sp.eta > 0.f;
    auto add_cats = [&](int64_t j, std::vector<double>& cnt, double sign) {  // j: a candidate of ids
        const int64_t a = sp.cat_indptr[pos[j]], e = sp.cat_indptr[pos[j] + 1];
        double tot = 0.0;
        for (int64_t x = a; x < e; ++x) tot += sp.cat_w[x];
        if (tot <= 0.0) return;
        for (int64_t x = a; x < e; ++x) cnt[static_cast<size_t>(sp.cat_idx[x])] += sign * sp.cat_w[x] / tot;
    };
    for (int64_t t = 0; t < kk; ++t) {
        int64_t best = -1;
        double best_obj = -std::numeric_limits<double>::infinity(), best_sim = 0.0, best_kl = 0.0, best_pen = 0.0;
        for (int64_t j = 0; j < m; ++j) {
            if (used[j]) continue;
            const double sim = t > 0 && diverse ? maxsim[j] : 0.0;
            double obj = (1.0 - lam) * rel[j] - lam * sim;
            double klj = 0.0;
            if (calib) {
                add_cats(j, counts, 1.0);
                klj = kl(p, counts.data(), static_cast<double>(t + 1), static_cast<double>(kk), sp.n_cat, alpha);
                add_cats(j, counts, -1.0);
                obj -= gam * klj;
            }
            const double pen = expo ? static_cast<double>(sp.penalty[pos[j]]) : 0.0;
            obj -= eta * pen;
            if (obj > best_obj) {
                best_obj = obj;
                best = j;
                best_sim = sim;
                best_kl = klj;
                best_pen = pen;
            }
        }
        used[best] = 1;
        out_ids[t] = ids[best];
        out_scores[t] = s[best];
        if (terms) {
            terms[t * 4 + 0] = static_cast<float>(rel[best]);
            terms[t * 4 + 1] = static_cast<float>(best_sim);
            terms[t * 4 + 2] = static_cast<float>(best_kl);
            terms[t * 4 + 3] = static_cast<float>(best_pen);
        }
        if (calib) add_cats(best, counts, 1.0);
        if (diverse && t + 1 < kk) {
            const int64_t bi = ids[best];
            const bool bt = sp.text && tinv[best] > 0.f;
            for (int64_t j = 0; j < m; ++j) {
                if (used[j]) continue;
                double sim;
                if (bt && tinv[j] > 0.f)
                    sim = static_cast<double>(dot(sp.text + bi * sp.d, sp.text + ids[j] * sp.d, sp.d)) * tinv[best] *
                          tinv[j];
                else
                    sim = static_cast<double>(dot(sp.vecs + bi * sp.dim, sp.vecs + ids[j] * sp.dim, sp.dim)) *
                          vinv[best] * vinv[j];
                if (sim > maxsim[j]) maxsim[j] = sim;
            }
        }
    }
    for (int64_t t = kk; t < k; ++t) {
        out_ids[t] = -1;
        out_scores[t] = -std::numeric_limits<float>::infinity();
        if (terms) terms[t * 4 + 0] = terms[t * 4 + 1] = terms[t * 4 + 2] = terms[t * 4 + 3] = 0.f;
    }
}

// Checked before the (exception-free, multi-versioned) selection runs.
void check_rows(const RerankSpec& sp, int64_t b, const int64_t* cand, const float* scores, int64_t c) {
    for (int64_t q = 0; q < b; ++q) {
        float last = std::numeric_limits<float>::infinity();
        for (int64_t j = 0; j < c; ++j) {
            const int64_t v = cand[q * c + j];
            if (v == -1) continue;
            if (v < 0 || v >= sp.n_items)
                throw std::invalid_argument("candidates[" + std::to_string(q) + ", " + std::to_string(j) + "] = " +
                                            std::to_string(v) + " is outside the item range [0, " +
                                            std::to_string(sp.n_items) + ") (use -1 for padding)");
            const float x = scores[q * c + j];
            if (!std::isfinite(x))
                throw std::invalid_argument("scores[" + std::to_string(q) + ", " + std::to_string(j) +
                                            "] is not finite");
            if (x > last)
                throw std::invalid_argument("scores row " + std::to_string(q) + " is not sorted descending (position " +
                                            std::to_string(j) + ")");
            last = x;
        }
    }
}

}  // namespace

void rerank(const RerankSpec& sp, int64_t b, const int64_t* cand, const float* scores, int64_t c, int64_t k,
            int64_t* out_ids, float* out_scores, float* terms, int num_threads) {
    const int nt = resolve_threads(num_threads);
    check_rows(sp, b, cand, scores, c);
    parallel_for(b, nt, [&](int64_t q) {
        rerank_one(sp, q, cand + q * c, scores + q * c, c, k, out_ids + q * k, out_scores + q * k,
                   terms ? terms + q * k * 4 : nullptr);
    });
}

}  // namespace ctxrec
