// ctxrec core: beyond-accuracy re-ranking of a scored candidate list (issue 19).
//
// Greedy selection of k items from each query's candidates (sorted by score, as the search
// returns them). Step t adds the candidate j maximising
//     (1 - lambda) * rel(j)  -  lambda * max_{i in S} sim(i, j)  -  gamma * KL(p || q~(S + j))  -  eta * e(j)
// where S holds the items already chosen and
//   rel(j)  = (s_j - s_k) / (s_1 - s_k) + ... : the score rescaled so that the best candidate is 1
//             and the k-th best is 0 (1 when they tie), which does not depend on how many
//             candidates there are below the k-th, so a wider pool never changes the scale;
//   sim     = cosine of the items' text embeddings when both have text (a non-zero row), else
//             of their factor vectors (maximal marginal relevance, Carbonell & Goldstein 1998);
//   p       = the query's target category distribution (e.g. the user's history mix), q~ the
//             list's category mix smoothed towards p, q~ = (1 - alpha) q + alpha p (Steck 2018,
//             calibrated recommendations), with q the mix of the whole list of k items when the
//             slots not yet filled follow the target: q = (sum of the chosen items' category
//             weights + (k - |S + j|) p) / k. (Steck's greedy scores the partial list's mix, the
//             mean over S + j, which over-weights the first picks and costs far more accuracy
//             for the same final KL: benchmarks/results/beyond.md.) At the last pick both are the
//             final list's mix.
//   e       = the candidate's exposure penalty in [0, 1] (e.g. its share of recent impressions over
//             the most exposed item's), given per candidate.
// The first pick has no similarity term. Ties go to the earlier candidate (the higher score).
// An item whose rel is below -(2 lambda + gamma log(1/alpha) + eta) / (1 - lambda) can never be
// chosen while one of the top k is left, so a pool holding every candidate above that line
// gives exactly the result over the whole catalog (pool_bound).
#pragma once

#include <cstdint>

namespace ctxrec {

struct RerankSpec {
    int64_t n_items = 0;
    const float* vecs = nullptr;   // [n_items, dim] factor vectors (similarity fallback)
    int64_t dim = 0;
    const float* text = nullptr;   // [n_items, d] text embeddings or null
    int64_t d = 0;
    float lambda = 0.f;            // diversity weight in [0, 1]
    const int64_t* cat_indptr = nullptr;  // [b * c + 1]: each candidate's categories (CSR, row-major
                                          // over cand) or null
    const int64_t* cat_idx = nullptr;
    const float* cat_w = nullptr;         // weights >= 0 (an item's weights are normalised to sum 1)
    const float* target = nullptr;        // [b, n_cat] target distributions (sum 1) or null
    int64_t n_cat = 0;
    float gamma = 0.f;             // calibration weight >= 0
    float alpha = 0.01f;           // smoothing of the list's category mix towards the target
    const float* penalty = nullptr;  // [b * c] exposure penalty per candidate (in [0, 1]) or null
    float eta = 0.f;               // exposure weight >= 0
};

// cand [b, c] item indices (-1 = padding) with their scores [b, c], each row sorted by score
// descending; writes k chosen ids (-1 padded) and their original scores (-inf padded) per row
// in the order chosen. Also returns, per row, the selection objective's terms of each pick
// when terms != null ([b, k, 4]: relevance, similarity penalty, KL after the pick, exposure penalty).
void rerank(const RerankSpec& spec, int64_t b, const int64_t* cand, const float* scores, int64_t c, int64_t k,
            int64_t* out_ids, float* out_scores, float* terms, int num_threads);

// rel below which a candidate can never be picked (see above):
// -(2 lambda + gamma log(1/alpha) + eta) / (1 - lambda); -inf when lambda >= 1.
double pool_bound(float lambda, float gamma, float alpha, float eta);

}  // namespace ctxrec
