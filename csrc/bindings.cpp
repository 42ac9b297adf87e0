// Thin pybind11 layer over rescore.cpp: numpy buffers in and out without copies,
// dtype/shape/contiguity validated with errors that name the argument, the GIL
// released around all work.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cmath>
#include <string>

#include "index.hpp"
#include "rerank.hpp"
#include "rescore.hpp"

namespace py = pybind11;
using ctxrec::Bits;
using ctxrec::Csr;
using ctxrec::HnswIndex;
using ctxrec::SearchArgs;
using ctxrec::ScoreSpec;
using ctxrec::TopKOut;

namespace {

std::string shape_str(const py::array& a) {
    std::string s = "(";
    for (py::ssize_t i = 0; i < a.ndim(); ++i) s += (i ? ", " : "") + std::to_string(a.shape(i));
    return s + (a.ndim() == 1 ? ",)" : ")");
}

std::string dtype_str(const py::array& a) { return py::str(a.dtype()).cast<std::string>(); }

// Returns the buffer of a C-contiguous array of dtype T with the given ndim; never copies.
template <class T>
const T* view(const py::handle& obj, const char* name, int ndim, const char* want) {
    if (!py::isinstance<py::array>(obj))
        throw py::type_error(std::string(name) + " must be a numpy array of " + want + ", got " +
                             py::str(py::type::of(obj)).cast<std::string>());
    py::array a = py::reinterpret_borrow<py::array>(obj);
    if (!a.dtype().equal(py::dtype::of<T>()))
        throw py::value_error(std::string(name) + " must have dtype " + want + ", got " + dtype_str(a) +
                              " (convert it once, e.g. np.ascontiguousarray(x, dtype=np." + want + "))");
    if (a.ndim() != ndim)
        throw py::value_error(std::string(name) + " must be " + std::to_string(ndim) + "-D, got shape " +
                              shape_str(a));
    if (!(a.flags() & py::array::c_style))
        throw py::value_error(std::string(name) + " must be C-contiguous (np.ascontiguousarray)");
    return static_cast<const T*>(a.data());
}

int64_t dim(const py::handle& obj, int axis) { return py::reinterpret_borrow<py::array>(obj).shape(axis); }

// The message is only built when the check fails (this runs on every call).
#define EXPECT(ok, msg)                               \
    do {                                              \
        if (!(ok)) throw py::value_error(msg);        \
    } while (0)

void check_finite(const float* p, int64_t rows, int64_t cols, const char* name) {
    for (int64_t i = 0; i < rows * cols; ++i)
        if (!std::isfinite(p[i]))
            throw py::value_error(std::string(name) + " holds NaN or inf at row " + std::to_string(i / cols) +
                                  ", column " + std::to_string(i % cols));
}

struct Inputs {
    ScoreSpec spec;
    Csr exclude, allow;
    int64_t b = 0;
};

Csr csr_arg(const py::object& indptr, const py::object& indices, int64_t b, const char* name) {
    Csr c;
    const std::string ip = std::string(name) + "_indptr", ix = std::string(name) + "_indices";
    if (indptr.is_none() && indices.is_none()) return c;
    EXPECT(!indptr.is_none() && !indices.is_none(), ip + " and " + ix + " must be given together");
    c.indptr = view<int64_t>(indptr, ip.c_str(), 1, "int64");
    c.indices = view<int64_t>(indices, ix.c_str(), 1, "int64");
    const int64_t rows = dim(indptr, 0) - 1;
    EXPECT(rows == b || rows == 1, ip + " must have length b + 1 = " + std::to_string(b + 1) +
                                       " (one list per query) or 2 (one list for all), got " +
                                       std::to_string(rows + 1));
    EXPECT(c.indptr[0] == 0, ip + "[0] must be 0, got " + std::to_string(c.indptr[0]));
    for (int64_t r = 0; r < rows; ++r)
        EXPECT(c.indptr[r] <= c.indptr[r + 1], ip + " must be non-decreasing (row " + std::to_string(r) + ")");
    EXPECT(c.indptr[rows] == dim(indices, 0), ip + "[-1] = " + std::to_string(c.indptr[rows]) +
                                                  " must equal len(" + ix + ") = " + std::to_string(dim(indices, 0)));
    c.rows = rows;
    return c;
}

Inputs parse(const py::object& queries, const py::object& item_vecs, const py::object& item_bias,
             const py::object& text_queries, const py::object& item_text, float text_weight,
             const py::object& tri_queries, const py::object& item_tri, float tri_weight,
             const py::object& exclude_indptr, const py::object& exclude_indices, const py::object& allow_indptr,
             const py::object& allow_indices) {
    Inputs in;
    ScoreSpec& sp = in.spec;
    sp.items = view<float>(item_vecs, "item_vecs", 2, "float32");
    sp.queries = view<float>(queries, "queries", 2, "float32");
    sp.n_items = dim(item_vecs, 0);
    sp.dim = dim(item_vecs, 1);
    in.b = dim(queries, 0);
    EXPECT(dim(queries, 1) == sp.dim, "queries has " + std::to_string(dim(queries, 1)) +
                                        " columns but item_vecs has " + std::to_string(sp.dim));
    check_finite(sp.queries, in.b, sp.dim, "queries");
    if (!item_bias.is_none()) {
        sp.bias = view<float>(item_bias, "item_bias", 1, "float32");
        EXPECT(dim(item_bias, 0) == sp.n_items, "item_bias has length " + std::to_string(dim(item_bias, 0)) +
                                                    ", expected n_items = " + std::to_string(sp.n_items));
    }
    auto extra = [&](const py::object& qs, const py::object& table, const char* qname, const char* tname,
                     const float*& qp, const float*& tp, int64_t& width) {
        if (qs.is_none() && table.is_none()) return;
        EXPECT(!qs.is_none() && !table.is_none(), std::string(qname) + " and " + tname + " must be given together");
        tp = view<float>(table, tname, 2, "float32");
        qp = view<float>(qs, qname, 2, "float32");
        width = dim(table, 1);
        EXPECT(dim(table, 0) == sp.n_items, std::string(tname) + " has " + std::to_string(dim(table, 0)) +
                                                " rows, expected n_items = " + std::to_string(sp.n_items));
        EXPECT(dim(qs, 0) == in.b && dim(qs, 1) == width,
               std::string(qname) + " must have shape (" + std::to_string(in.b) + ", " + std::to_string(width) +
                   "), got " + shape_str(py::reinterpret_borrow<py::array>(qs)));
        check_finite(qp, in.b, width, qname);
    };
    extra(text_queries, item_text, "text_queries", "item_text", sp.text_q, sp.item_text, sp.d);
    extra(tri_queries, item_tri, "tri_queries", "item_tri", sp.tri_q, sp.item_tri, sp.t);
    EXPECT(std::isfinite(text_weight), "text_weight must be finite, got " + std::to_string(text_weight));
    EXPECT(std::isfinite(tri_weight), "tri_weight must be finite, got " + std::to_string(tri_weight));
    sp.w_text = text_weight;
    sp.w_tri = tri_weight;
    in.exclude = csr_arg(exclude_indptr, exclude_indices, in.b, "exclude");
    in.allow = csr_arg(allow_indptr, allow_indices, in.b, "allow");
    return in;
}

template <class Run>
py::tuple run_topk(const Inputs& in, int64_t k, int num_threads, Run&& run) {
    EXPECT(k >= 0, "k must be >= 0, got " + std::to_string(k));
    const int nt = ctxrec::resolve_threads(num_threads);  // validates before any work
    py::array_t<int64_t> ids({in.b, k});
    py::array_t<float> scores({in.b, k});
    TopKOut out{ids.mutable_data(), scores.mutable_data(), k};
    {
        py::gil_scoped_release release;
        run(out, nt);
    }
    return py::make_tuple(ids, scores);
}

Bits bits_arg(const py::object& obj, int64_t n_rows, const char* name) {
    Bits bt;
    if (obj.is_none()) return bt;
    bt.w = view<uint64_t>(obj, name, 1, "uint64");
    const int64_t words = (n_rows + 63) / 64;
    EXPECT(dim(obj, 0) >= words, std::string(name) + " has " + std::to_string(dim(obj, 0)) + " words, " +
                                     std::to_string(n_rows) + " rows need " + std::to_string(words));
    bt.n = n_rows;
    return bt;
}

const char* kScoreDoc = R"(
    Score s(q, i) = queries[q] . item_vecs[i] + item_bias[i]
                  + text_weight * text_queries[q] . item_text[i]
                  + tri_weight  * tri_queries[q]  . item_tri[i]

    All float arrays must be float32 and all index arrays int64, C-contiguous; nothing
    is copied or converted (a wrong dtype raises ValueError naming the argument).
    exclude_* / allow_* are CSR lists of item indices: indptr of length b + 1 (one list
    per query) or 2 (one list for every query). Excluded items never appear; with an
    allow list only listed items can appear. Results are sorted by score descending,
    ties by smaller item index; each item appears at most once; rows with fewer than k
    eligible items are padded with id -1 and score -inf. Non-finite inputs raise
    ValueError. num_threads: worker threads (0 = all cores). The GIL is released.

    Returns (ids int64 [b, k], scores float32 [b, k]).
)";

}  // namespace

PYBIND11_MODULE(_core, m) {
    m.doc() = "ctxrec compiled core: exact candidate rescoring and full-catalog top-K selection";

    m.def(
        "rescore",
        [](py::object queries, py::object item_vecs, py::object item_bias, py::object candidates, int64_t k,
           py::object text_queries, py::object item_text, float text_weight, py::object tri_queries,
           py::object item_tri, float tri_weight, py::object exclude_indptr, py::object exclude_indices,
           py::object allow_indptr, py::object allow_indices, int num_threads) {
            Inputs in = parse(queries, item_vecs, item_bias, text_queries, item_text, text_weight, tri_queries,
                              item_tri, tri_weight, exclude_indptr, exclude_indices, allow_indptr, allow_indices);
            const int64_t* cand = view<int64_t>(candidates, "candidates", 2, "int64");
            EXPECT(dim(candidates, 0) == in.b, "candidates has " + std::to_string(dim(candidates, 0)) +
                                                   " rows but queries has " + std::to_string(in.b));
            const int64_t c = dim(candidates, 1);
            return run_topk(in, k, num_threads, [&](TopKOut out, int nt) {
                ctxrec::rescore(in.spec, in.b, cand, c, in.exclude, in.allow, out, nt);
            });
        },
        (std::string("Exact rescoring of candidate item indices [b, c] (-1 = padding) and top-k selection.\n") +
         kScoreDoc)
            .c_str(),
        py::arg("queries"), py::arg("item_vecs"), py::arg("item_bias"), py::arg("candidates"), py::arg("k"),
        py::kw_only(), py::arg("text_queries") = py::none(), py::arg("item_text") = py::none(),
        py::arg("text_weight") = 1.0f, py::arg("tri_queries") = py::none(), py::arg("item_tri") = py::none(),
        py::arg("tri_weight") = 1.0f, py::arg("exclude_indptr") = py::none(),
        py::arg("exclude_indices") = py::none(), py::arg("allow_indptr") = py::none(),
        py::arg("allow_indices") = py::none(), py::arg("num_threads") = 1);

    m.def(
        "topk_full",
        [](py::object queries, py::object item_vecs, py::object item_bias, int64_t k, py::object text_queries,
           py::object item_text, float text_weight, py::object tri_queries, py::object item_tri, float tri_weight,
           py::object exclude_indptr, py::object exclude_indices, py::object allow_indptr,
           py::object allow_indices, int num_threads) {
            Inputs in = parse(queries, item_vecs, item_bias, text_queries, item_text, text_weight, tri_queries,
                              item_tri, tri_weight, exclude_indptr, exclude_indices, allow_indptr, allow_indices);
            return run_topk(in, k, num_threads, [&](TopKOut out, int nt) {
                ctxrec::topk_full(in.spec, in.b, in.exclude, in.allow, out, nt);
            });
        },
        (std::string("Exact top-k over the whole catalog (blocked scoring + partial selection).\n") + kScoreDoc)
            .c_str(),
        py::arg("queries"), py::arg("item_vecs"), py::arg("item_bias"), py::arg("k"), py::kw_only(),
        py::arg("text_queries") = py::none(), py::arg("item_text") = py::none(), py::arg("text_weight") = 1.0f,
        py::arg("tri_queries") = py::none(), py::arg("item_tri") = py::none(), py::arg("tri_weight") = 1.0f,
        py::arg("exclude_indptr") = py::none(), py::arg("exclude_indices") = py::none(),
        py::arg("allow_indptr") = py::none(), py::arg("allow_indices") = py::none(),
        py::arg("num_threads") = 1);


    m.def(
        "rerank",
        [](py::object candidates, py::object scores, int64_t k, py::object item_vecs, py::object item_text,
           float diversity, py::object cat_indptr, py::object cat_indices, py::object cat_weights, py::object target,
           float calibrate, float alpha, py::object penalty, float exposure, bool return_terms, int num_threads) {
            ctxrec::RerankSpec sp;
            const int64_t* cand = view<int64_t>(candidates, "candidates", 2, "int64");
            const float* sc = view<float>(scores, "scores", 2, "float32");
            const int64_t b = dim(candidates, 0), c = dim(candidates, 1);
            EXPECT(dim(scores, 0) == b && dim(scores, 1) == c,
                   "scores must have the shape of candidates (" + std::to_string(b) + ", " + std::to_string(c) +
                       "), got " + shape_str(py::reinterpret_borrow<py::array>(scores)));
            EXPECT(k >= 0, "k must be >= 0, got " + std::to_string(k));
            sp.vecs = view<float>(item_vecs, "item_vecs", 2, "float32");
            sp.n_items = dim(item_vecs, 0);
            sp.dim = dim(item_vecs, 1);
            if (!item_text.is_none()) {
                sp.text = view<float>(item_text, "item_text", 2, "float32");
                sp.d = dim(item_text, 1);
                EXPECT(dim(item_text, 0) == sp.n_items, "item_text has " + std::to_string(dim(item_text, 0)) +
                                                            " rows, expected n_items = " + std::to_string(sp.n_items));
            }
            EXPECT(diversity >= 0.f && diversity <= 1.f, "diversity must be in [0, 1], got " + std::to_string(diversity));
            EXPECT(std::isfinite(calibrate) && calibrate >= 0.f, "calibrate must be >= 0, got " + std::to_string(calibrate));
            EXPECT(alpha > 0.f && alpha <= 1.f, "alpha must be in (0, 1], got " + std::to_string(alpha));
            sp.lambda = diversity;
            sp.gamma = calibrate;
            sp.alpha = alpha;
            if (!target.is_none()) {
                EXPECT(!cat_indptr.is_none() && !cat_indices.is_none() && !cat_weights.is_none(),
                       "target needs cat_indptr, cat_indices and cat_weights (the items' categories)");
                sp.target = view<float>(target, "target", 2, "float32");
                EXPECT(dim(target, 0) == b, "target has " + std::to_string(dim(target, 0)) + " rows but there are " +
                                                std::to_string(b) + " queries");
                sp.n_cat = dim(target, 1);
                check_finite(sp.target, b, sp.n_cat, "target");
                for (int64_t i = 0; i < b * sp.n_cat; ++i)
                    EXPECT(sp.target[i] >= 0.f, "target holds a negative value at row " + std::to_string(i / sp.n_cat));
                sp.cat_indptr = view<int64_t>(cat_indptr, "cat_indptr", 1, "int64");
                sp.cat_idx = view<int64_t>(cat_indices, "cat_indices", 1, "int64");
                sp.cat_w = view<float>(cat_weights, "cat_weights", 1, "float32");
                EXPECT(dim(cat_indptr, 0) == b * c + 1, "cat_indptr must have length b * c + 1 = " +
                                                             std::to_string(b * c + 1) + " (one list per candidate)");
                const int64_t nnz = dim(cat_indices, 0);
                EXPECT(dim(cat_weights, 0) == nnz, "cat_weights must have the length of cat_indices");
                EXPECT(sp.cat_indptr[0] == 0 && sp.cat_indptr[b * c] == nnz,
                       "cat_indptr must start at 0 and end at len(cat_indices) = " + std::to_string(nnz));
                for (int64_t i = 0; i < b * c; ++i)
                    EXPECT(sp.cat_indptr[i] <= sp.cat_indptr[i + 1], "cat_indptr must be non-decreasing (row " +
                                                                         std::to_string(i) + ")");
                for (int64_t x = 0; x < nnz; ++x) {
                    EXPECT(sp.cat_idx[x] >= 0 && sp.cat_idx[x] < sp.n_cat,
                           "cat_indices[" + std::to_string(x) + "] = " + std::to_string(sp.cat_idx[x]) +
                               " is outside [0, n_cat = " + std::to_string(sp.n_cat) + ")");
                    EXPECT(std::isfinite(sp.cat_w[x]) && sp.cat_w[x] >= 0.f,
                           "cat_weights[" + std::to_string(x) + "] must be finite and >= 0");
                }
            }
            EXPECT(std::isfinite(exposure) && exposure >= 0.f, "exposure must be >= 0, got " + std::to_string(exposure));
            sp.eta = exposure;
            if (!penalty.is_none()) {
                sp.penalty = view<float>(penalty, "penalty", 2, "float32");
                EXPECT(dim(penalty, 0) == b && dim(penalty, 1) == c,
                       "penalty must have the shape of candidates (" + std::to_string(b) + ", " + std::to_string(c) + ")");
                for (int64_t i = 0; i < b * c; ++i)
                    EXPECT(std::isfinite(sp.penalty[i]) && sp.penalty[i] >= 0.f && sp.penalty[i] <= 1.f,
                           "penalty must be in [0, 1] (row " + std::to_string(i / c) + ", column " +
                               std::to_string(i % c) + ")");
            }
            const int nt = ctxrec::resolve_threads(num_threads);
            py::array_t<int64_t> ids({b, k});
            py::array_t<float> out({b, k});
            py::array_t<float> terms(return_terms ? std::vector<py::ssize_t>{b, k, 4} : std::vector<py::ssize_t>{0});
            {
                py::gil_scoped_release release;
                ctxrec::rerank(sp, b, cand, sc, c, k, ids.mutable_data(), out.mutable_data(),
                               return_terms ? terms.mutable_data() : nullptr, nt);
            }
            if (return_terms) return py::tuple(py::make_tuple(ids, out, terms));
            return py::tuple(py::make_tuple(ids, out));
        },
        R"(
    Greedy beyond-accuracy re-ranking of scored candidates (csrc/rerank.hpp): pick k of each
    row's candidates [b, c] (-1 = padding; each row sorted by its scores [b, c], descending),
    step by step the one maximising
        (1 - diversity) * rel - diversity * max cosine to the picks - calibrate * KL(target || mix)
            - exposure * penalty
    with rel the score rescaled to best = 1, k-th best = 0; cosine over item_text rows when both
    items have text, else over item_vecs; mix the picks' category mix (cat_* CSR aligned with
    candidates, row-major: each candidate's category weights, normalised per candidate) smoothed
    towards the target [b, n_cat] by alpha; penalty [b, c] each candidate's exposure penalty in
    [0, 1]. Ties: the earlier candidate.

    Returns (ids int64 [b, k], scores float32 [b, k]) in the order picked (the candidates'
    scores; -1 / -inf padding), plus terms float32 [b, k, 4] (rel, similarity penalty, KL after
    the pick, exposure penalty) with return_terms. The GIL is released.)",
        py::arg("candidates"), py::arg("scores"), py::arg("k"), py::arg("item_vecs"), py::kw_only(),
        py::arg("item_text") = py::none(), py::arg("diversity") = 0.0f, py::arg("cat_indptr") = py::none(),
        py::arg("cat_indices") = py::none(), py::arg("cat_weights") = py::none(), py::arg("target") = py::none(),
        py::arg("calibrate") = 0.0f, py::arg("alpha") = 0.01f, py::arg("penalty") = py::none(),
        py::arg("exposure") = 0.0f, py::arg("return_terms") = false, py::arg("num_threads") = 1);
    m.def("rerank_pool_bound", &ctxrec::pool_bound, py::arg("diversity"), py::arg("calibrate"), py::arg("alpha") = 0.01f,
          py::arg("exposure") = 0.0f,
          "rel below which a candidate can never be picked by rerank: -(2 diversity + calibrate log(1/alpha) + "
          "exposure) / (1 - diversity); -inf for diversity >= 1.");

    py::class_<HnswIndex>(m, "HnswIndex", R"(
    hnswlib graph over [item_vec, item_bias] rows (inner product, or max_norm > 0: nearest
    neighbours on a sphere of radius max_norm, see csrc/index.hpp), searched with the engine's
    filters inside the traversal and rescored exactly, in one GIL-free call per request or batch.
    Rows are hnswlib labels; the file format is hnswlib's (save / HnswIndex.load).
    Searches run concurrently with each other; inserts (add) interleave with searches one row
    at a time (hnswlib's search is not safe against a concurrent insert).)")
        .def(py::init([](int64_t dim, int64_t capacity, int64_t M, int64_t ef_construction, int64_t seed,
                         float max_norm) {
                 EXPECT(dim >= 1 && M >= 2 && ef_construction >= 1 && capacity >= 0,
                        "dim >= 1, M >= 2, ef_construction >= 1 and capacity >= 0 are required");
                 EXPECT(std::isfinite(max_norm) && max_norm >= 0, "max_norm must be finite and >= 0");
                 return std::make_unique<HnswIndex>(dim, capacity, M, ef_construction, seed, max_norm);
             }),
             py::arg("dim"), py::arg("capacity"), py::arg("M") = 16, py::arg("ef_construction") = 200,
             py::arg("seed") = 0, py::arg("max_norm") = 0.0f,
             "Empty graph for rows of dim factors (+ the bias column), room for capacity rows (grows on add).\n"
             "max_norm: 0 for an inner-product graph; > 0 places the rows on a sphere of that radius\n"
             "(at least the largest |[v, b]|) under L2, see csrc/index.hpp.")
        .def_static(
            "load",
            [](const std::string& path, int64_t dim, int64_t capacity, float max_norm) {
                py::gil_scoped_release release;
                return std::make_unique<HnswIndex>(dim, path, capacity, max_norm);
            },
            py::arg("path"), py::arg("dim"), py::arg("capacity"), py::arg("max_norm"),
            "Read hnswlib's file at path; every row must be < capacity and the vectors dim + 1 wide.")
        .def_property_readonly("dim", &HnswIndex::dim)
        .def_property_readonly("max_norm", &HnswIndex::max_norm)
        .def_property_readonly("size", &HnswIndex::size, "Rows in the graph (visible or not).")
        .def_property_readonly("capacity", &HnswIndex::capacity)
        .def("set_ef", [](HnswIndex& ix, int64_t ef) {
                EXPECT(ef >= 1, "ef must be >= 1, got " + std::to_string(ef));
                py::gil_scoped_release release;
                ix.set_ef(ef);
            }, py::arg("ef"))
        .def("save", [](HnswIndex& ix, const std::string& path) {
                py::gil_scoped_release release;
                ix.save(path);
            }, py::arg("path"))
        .def(
            "add",
            [](HnswIndex& ix, py::object vecs, py::object bias, py::object rows, int num_threads) {
                const float* v = view<float>(vecs, "vecs", 2, "float32");
                const int64_t* r = view<int64_t>(rows, "rows", 1, "int64");
                const int64_t n = dim(vecs, 0);
                EXPECT(dim(vecs, 1) == ix.dim(), "vecs has " + std::to_string(dim(vecs, 1)) +
                                                     " columns, the index has dim = " + std::to_string(ix.dim()));
                EXPECT(dim(rows, 0) == n, "rows has " + std::to_string(dim(rows, 0)) + " entries, vecs has " +
                                              std::to_string(n) + " rows");
                const float* bp = nullptr;
                if (!bias.is_none()) {
                    bp = view<float>(bias, "bias", 1, "float32");
                    EXPECT(dim(bias, 0) == n, "bias has length " + std::to_string(dim(bias, 0)) + ", expected " +
                                                  std::to_string(n));
                }
                check_finite(v, n, ix.dim(), "vecs");
                for (int64_t j = 0; j < n; ++j) EXPECT(r[j] >= 0, "rows[" + std::to_string(j) + "] is negative");
                const int nt = ctxrec::resolve_threads(num_threads);
                py::gil_scoped_release release;
                ix.add(v, bp, r, n, nt);
            },
            py::arg("vecs"), py::arg("bias"), py::arg("rows"), py::arg("num_threads") = 1,
            "Insert rows (int64 [n], new labels) with vectors [vecs (float32 [n, dim]), bias (float32 [n])].")
        .def(
            "search",
            [](HnswIndex& ix, py::object queries, py::object item_vecs, py::object item_bias, int64_t k,
               py::object live, int64_t n_rows, int64_t n_live, py::object text_queries, py::object item_text,
               float text_weight, py::object tri_queries, py::object item_tri, float tri_weight, py::object mask,
               py::object exclude_indptr, py::object exclude_indices, py::object allow_indptr,
               py::object allow_indices, py::object always, py::object always_indptr, int64_t n_candidates,
               int64_t exact_below, int num_threads, bool return_plans) {
                Inputs in = parse(queries, item_vecs, item_bias, text_queries, item_text, text_weight, tri_queries,
                                  item_tri, tri_weight, exclude_indptr, exclude_indices, allow_indptr, allow_indices);
                EXPECT(in.spec.dim == ix.dim(), "queries have " + std::to_string(in.spec.dim) +
                                                  " columns, the index has dim = " + std::to_string(ix.dim()));
                EXPECT(n_rows >= 0 && n_rows <= in.spec.n_items,
                       "n_rows = " + std::to_string(n_rows) + " must be in [0, rows of item_vecs = " +
                           std::to_string(in.spec.n_items) + "]");
                SearchArgs a;
                a.spec = in.spec;
                a.exclude = in.exclude;
                a.allow = in.allow;
                a.live = bits_arg(live, n_rows, "live");
                EXPECT(a.live.present(), "live is required");
                a.mask = bits_arg(mask, n_rows, "mask");
                a.n_live = n_live;
                if (!always.is_none()) {
                    a.always = view<int64_t>(always, "always", 1, "int64");
                    a.n_always = dim(always, 0);
                    for (int64_t j = 0; j < a.n_always; ++j)
                        EXPECT(a.always[j] >= 0 && a.always[j] < n_rows,
                               "always holds " + std::to_string(a.always[j]) + ", outside [0, n_rows)");
                    if (!always_indptr.is_none()) {
                        a.always_indptr = view<int64_t>(always_indptr, "always_indptr", 1, "int64");
                        EXPECT(dim(always_indptr, 0) == in.b + 1, "always_indptr must have b + 1 entries");
                        EXPECT(a.always_indptr[0] == 0 && a.always_indptr[in.b] == a.n_always,
                               "always_indptr must start at 0 and end at len(always)");
                        for (int64_t q = 0; q < in.b; ++q)
                            EXPECT(a.always_indptr[q] <= a.always_indptr[q + 1], "always_indptr must not decrease");
                    }
                } else {
                    EXPECT(always_indptr.is_none(), "always_indptr needs always");
                }
                a.n_candidates = std::max<int64_t>(1, n_candidates);
                a.exact_below = exact_below;
                py::array_t<int8_t> plans(in.b);
                int8_t* pp = return_plans ? plans.mutable_data() : nullptr;
                py::tuple res = run_topk(in, k, num_threads, [&](TopKOut out, int nt) { ix.search(a, in.b, out, nt, pp); });
                if (return_plans) return py::tuple(py::make_tuple(res[0], res[1], plans));
                return res;
            },
            (std::string("Top-k rows per query: graph search with the filters inside it, then exact rescoring.\n\n"
                         "    live: uint64 bitset of the rows a request may return (rows >= n_rows never are);\n"
                         "    n_live: its popcount. mask: uint64 bitset, AND of the request's named filters.\n"
                         "    item_bias None scores without the bias (item-item similarity: the graph is\n"
                         "    searched with [q, 0]). allow_* rows must be sorted and unique. When at most\n"
                         "    exact_below rows are eligible, they are scored exactly instead of searched.\n"
                         "    always: int64 rows a graph search also scores (when eligible): rows past max_norm,\n"
                         "    the items nearest a request's text. always_indptr: [b + 1], per-query ranges of always\n"
                         "    (default: every query scores all of them).\n"
                         "    return_plans adds an int8 [b] array: 1 = scored exactly, 0 = graph search.\n") +
             kScoreDoc)
                .c_str(),
            py::arg("queries"), py::arg("item_vecs"), py::arg("item_bias"), py::arg("k"), py::kw_only(),
            py::arg("live"), py::arg("n_rows"), py::arg("n_live"), py::arg("text_queries") = py::none(),
            py::arg("item_text") = py::none(), py::arg("text_weight") = 1.0f, py::arg("tri_queries") = py::none(),
            py::arg("item_tri") = py::none(), py::arg("tri_weight") = 1.0f, py::arg("mask") = py::none(),
            py::arg("exclude_indptr") = py::none(), py::arg("exclude_indices") = py::none(),
            py::arg("allow_indptr") = py::none(), py::arg("allow_indices") = py::none(),
            py::arg("always") = py::none(), py::arg("always_indptr") = py::none(), py::arg("n_candidates") = 64, py::arg("exact_below") = 0, py::arg("num_threads") = 1,
            py::arg("return_plans") = false);

    m.def("resolve_threads", &ctxrec::resolve_threads, py::arg("num_threads"),
          "Worker threads that num_threads resolves to (0 = all cores).");
}
