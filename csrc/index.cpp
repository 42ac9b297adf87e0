#include "index.hpp"

#include <hnswlib/hnswlib.h>

#include <fstream>
#include <queue>

#include "kernels.hpp"

namespace ctxrec {
using namespace detail;

namespace {

// Squared L2 distance, compiled for several x86-64 levels (the portable build still runs
// AVX-512/AVX2 where the CPU has them).
CTXREC_CLONES
float l2_distance(const void* a, const void* b, const void* param) {
    const int64_t n = static_cast<int64_t>(*static_cast<const size_t*>(param));
    const float* __restrict x = static_cast<const float*>(a);
    const float* __restrict y = static_cast<const float*>(b);
    float acc = 0.f;
#pragma omp simd reduction(+ : acc)
    for (int64_t i = 0; i < n; ++i) {
        const float t = x[i] - y[i];
        acc += t * t;
    }
    return acc;
}

// Inner-product distance 1 - <a, b>, as hnswlib's InnerProductSpace.
CTXREC_CLONES
float ip_distance(const void* a, const void* b, const void* param) {
    const int64_t n = static_cast<int64_t>(*static_cast<const size_t*>(param));
    const float* __restrict x = static_cast<const float*>(a);
    const float* __restrict y = static_cast<const float*>(b);
    float acc = 0.f;
#pragma omp simd reduction(+ : acc)
    for (int64_t i = 0; i < n; ++i) acc += x[i] * y[i];
    return 1.f - acc;
}

class Space : public hnswlib::SpaceInterface<float> {
public:
    Space(size_t dim, bool l2) : dim_(dim), l2_(l2) {}
    size_t get_data_size() override { return dim_ * sizeof(float); }
    hnswlib::DISTFUNC<float> get_dist_func() override { return l2_ ? &l2_distance : &ip_distance; }
    void* get_dist_func_param() override { return &dim_; }

private:
    size_t dim_;
    bool l2_;
};

struct ReadGuard {
    PhaseLock& l;
    explicit ReadGuard(PhaseLock& lock) : l(lock) { l.lock_read(); }
    ~ReadGuard() { l.unlock_read(); }
};
struct WriteGuard {
    PhaseLock& l;
    explicit WriteGuard(PhaseLock& lock) : l(lock) { l.lock_write(); }
    ~WriteGuard() { l.unlock_write(); }
};

// Rows eligible for one request, checked on every node the graph search would return.
struct RowFilter : hnswlib::BaseFilterFunctor {
    Bits live, mask;
    const uint64_t* excluded = nullptr;  // scratch bitset of this query's excluded rows (or null)
    const uint64_t* allowed = nullptr;   // scratch bitset of this query's allow-list (or null)
    bool operator()(hnswlib::labeltype label) override {
        const int64_t r = static_cast<int64_t>(label);
        if (!live.test(r)) return false;  // also rejects rows past the request's snapshot
        const uint64_t bit = uint64_t{1} << (r & 63);
        if (mask.w && !(mask.w[r >> 6] & bit)) return false;
        if (excluded && (excluded[r >> 6] & bit)) return false;
        if (allowed && !(allowed[r >> 6] & bit)) return false;
        return true;
    }
};

// A per-thread bitset that is all zeros between uses: set() the bits of a list, clear() them after.
struct Scratch {
    std::vector<uint64_t> w;
    const int64_t* a = nullptr;
    const int64_t* e = nullptr;
    const uint64_t* set(const int64_t* begin, const int64_t* end, int64_t n_rows) {
        const size_t words = static_cast<size_t>((n_rows + 63) / 64);
        if (w.size() < words) w.resize(words, 0);
        for (const int64_t* p = begin; p != end; ++p) w[static_cast<size_t>(*p >> 6)] |= uint64_t{1} << (*p & 63);
        a = begin;
        e = end;
        return w.data();
    }
    void clear() {
        for (const int64_t* p = a; p != e; ++p) w[static_cast<size_t>(*p >> 6)] = 0;
        a = e = nullptr;
    }
};

std::pair<const int64_t*, const int64_t*> csr_row(const Csr& c, int64_t q) {
    if (c.rows == 0) return {nullptr, nullptr};
    const int64_t r = c.rows == 1 ? 0 : q;
    return {c.indices + c.indptr[r], c.indices + c.indptr[r + 1]};
}

void check_rows(const Csr& c, int64_t n_rows, const char* name) {
    if (c.rows == 0) return;
    for (int64_t j = 0; j < c.indptr[c.rows]; ++j) {
        const int64_t v = c.indices[j];
        if (v < 0 || v >= n_rows)
            throw std::invalid_argument(std::string(name) + "_indices holds " + std::to_string(v) +
                                        ", outside the row range [0, " + std::to_string(n_rows) + ")");
    }
}

}  // namespace

// ---------------------------------------------------------------------------------- PhaseLock
void PhaseLock::lock_read() {
    std::unique_lock<std::mutex> l(m_);
    if (writers_ == 0 && wait_w_ == 0) {
        ++readers_;
        return;
    }
    ++wait_r_;
    const uint64_t gen = gen_;
    cv_.wait(l, [&] { return writers_ == 0 && (wait_w_ == 0 || gen_ != gen); });
    --wait_r_;
    if (gen_ != gen && admitted_ > 0) --admitted_;
    ++readers_;
}

void PhaseLock::unlock_read() {
    std::unique_lock<std::mutex> l(m_);
    if (--readers_ == 0) cv_.notify_all();
}

void PhaseLock::lock_write() {
    std::unique_lock<std::mutex> l(m_);
    ++wait_w_;
    cv_.wait(l, [&] { return readers_ == 0 && admitted_ == 0 && (writers_ == 0 || wait_r_ == 0); });
    --wait_w_;
    ++writers_;
}

void PhaseLock::unlock_write() {
    std::unique_lock<std::mutex> l(m_);
    if (--writers_ == 0) {
        if (wait_r_ > 0) {  // the readers waiting now go before any writer
            admitted_ = wait_r_;
            ++gen_;
        }
        cv_.notify_all();
    }
}

// ---------------------------------------------------------------------------------- HnswIndex
HnswIndex::HnswIndex(int64_t dim, int64_t capacity, int64_t M, int64_t ef_construction, int64_t seed, float max_norm)
    : dim_(dim), max_norm_(max_norm), space_(new Space(static_cast<size_t>(width()), max_norm > 0)) {
    hnsw_.reset(new hnswlib::HierarchicalNSW<float>(space_.get(), static_cast<size_t>(std::max<int64_t>(capacity, 1)),
                                                    static_cast<size_t>(M), static_cast<size_t>(ef_construction),
                                                    static_cast<size_t>(seed)));
}

namespace {

// hnswlib's file header, checked against what the caller expects before hnswlib reads the rest
// (a crafted header would otherwise steer its reads and allocations).
void check_header(const std::string& path, int64_t width, int64_t capacity) {
    std::ifstream in(path, std::ios::binary);
    if (!in) throw std::invalid_argument(path + ": cannot open");
    in.seekg(0, std::ios::end);
    const auto file_size = static_cast<uint64_t>(in.tellg());
    in.seekg(0);
    size_t offset0, max_el, count, per_el, label_off, data_off, maxM, maxM0, M, efc;
    int maxlevel;
    unsigned int entry;
    double mult;
    auto rd = [&](auto& v) { in.read(reinterpret_cast<char*>(&v), sizeof(v)); };
    rd(offset0), rd(max_el), rd(count), rd(per_el), rd(label_off), rd(data_off), rd(maxlevel), rd(entry);
    rd(maxM), rd(maxM0), rd(M), rd(mult), rd(efc);
    if (!in) throw std::invalid_argument(path + ": truncated header");
    const size_t data = static_cast<size_t>(width) * sizeof(float);
    const size_t links0 = maxM0 * sizeof(unsigned int) + sizeof(unsigned int);
    auto bad = [&](const std::string& what) { throw std::invalid_argument(path + ": " + what); };
    if (M < 2 || M > 4096 || maxM != M || maxM0 != 2 * M) bad("implausible M / maxM / maxM0 in the header");
    if (offset0 != 0 || data_off != links0 || label_off != links0 + data) bad("element layout differs from a " +
                                                                              std::to_string(width) + "-float index");
    if (per_el != label_off + sizeof(size_t)) bad("element size differs from the layout");
    if (count != static_cast<size_t>(capacity)) bad("holds " + std::to_string(count) + " rows, expected " +
                                                    std::to_string(capacity));
    if (count > 0 && entry >= count) bad("entry point " + std::to_string(entry) + " outside the rows");
    // hnswlib numbers rows with 32-bit ids: a capacity below the rows or past 2^32 is no index it wrote
    if (max_el < count || max_el > 0xFFFFFFFFull) bad("implausible capacity " + std::to_string(max_el));
    if (maxlevel < 0 || maxlevel > 64 || !(mult > 0) || !(mult < 100)) bad("implausible level parameters");
    if (file_size < 96 + static_cast<uint64_t>(count) * per_el) bad("shorter than its rows");
    (void)efc;
}

}  // namespace

HnswIndex::HnswIndex(int64_t dim, const std::string& path, int64_t capacity, float max_norm)
    : dim_(dim), max_norm_(max_norm), space_(new Space(static_cast<size_t>(width()), max_norm > 0)) {
    check_header(path, width(), capacity);
    hnsw_.reset(new hnswlib::HierarchicalNSW<float>(space_.get(), path, false,
                                                    static_cast<size_t>(std::max<int64_t>(capacity, 1))));
    if (hnsw_->data_size_ != static_cast<size_t>(width()) * sizeof(float))
        throw std::invalid_argument(path + ": the index holds vectors of " +
                                    std::to_string(hnsw_->data_size_ / sizeof(float)) + " floats, expected " +
                                    std::to_string(width()));
    // Every link must name a row of the graph that exists at that level, or a search walks off it.
    const size_t n = hnsw_->cur_element_count;
    auto bad = [&](const std::string& what) { throw std::invalid_argument(path + ": " + what); };
    if (n > 0 && (hnsw_->enterpoint_node_ >= n || hnsw_->element_levels_[hnsw_->enterpoint_node_] < hnsw_->maxlevel_))
        bad("entry point is not a row of the top level");
    for (size_t i = 0; i < n; ++i) {
        const auto id = static_cast<hnswlib::tableint>(i);
        const int levels = hnsw_->element_levels_[i];
        if (levels < 0 || levels > hnsw_->maxlevel_) bad("row " + std::to_string(i) + " has an implausible level");
        for (int l = 0; l <= levels; ++l) {
            hnswlib::linklistsizeint* ll = l == 0 ? hnsw_->get_linklist0(id) : hnsw_->get_linklist(id, l);
            const size_t cnt = hnsw_->getListCount(ll);
            if (cnt > (l == 0 ? hnsw_->maxM0_ : hnsw_->maxM_))
                bad("row " + std::to_string(i) + " has " + std::to_string(cnt) + " links at level " + std::to_string(l));
            const auto* links = reinterpret_cast<const hnswlib::tableint*>(ll + 1);
            for (size_t j = 0; j < cnt; ++j)
                if (links[j] >= n || hnsw_->element_levels_[links[j]] < l)
                    bad("row " + std::to_string(i) + " links to " + std::to_string(links[j]) + " at level " +
                        std::to_string(l) + ", not a row of that level");
        }
    }
    for (size_t i = 0; i < hnsw_->cur_element_count; ++i) {
        const auto label = hnsw_->getExternalLabel(static_cast<hnswlib::tableint>(i));
        if (label >= static_cast<size_t>(std::max<int64_t>(capacity, 1)))
            throw std::invalid_argument(path + ": element " + std::to_string(i) + " has row " + std::to_string(label) +
                                        ", outside [0, " + std::to_string(capacity) + ")");
    }
}

HnswIndex::~HnswIndex() = default;

int64_t HnswIndex::size() const { return static_cast<int64_t>(hnsw_->getCurrentElementCount()); }
int64_t HnswIndex::capacity() const { return static_cast<int64_t>(hnsw_->getMaxElements()); }

void HnswIndex::set_ef(int64_t ef) {
    WriteGuard g(lock_);
    hnsw_->setEf(static_cast<size_t>(ef));
}

void HnswIndex::save(const std::string& path) {
    ReadGuard g(lock_);  // excludes inserts; searches may go on
    hnsw_->saveIndex(path);
}

void HnswIndex::add(const float* vecs, const float* bias, const int64_t* rows, int64_t n, int num_threads) {
    if (n <= 0) return;
    const int64_t need = size() + n;
    if (need > capacity()) {
        WriteGuard g(lock_);
        hnsw_->resizeIndex(static_cast<size_t>(std::max<int64_t>(need, capacity() + capacity() / 2)));
    }
    const int64_t D = width();
    const double phi2 = static_cast<double>(max_norm_) * max_norm_;
    auto insert = [&](int64_t j, float* buf) {
        std::copy(vecs + j * dim_, vecs + (j + 1) * dim_, buf);
        buf[dim_] = bias ? bias[j] : 0.f;
        double sq = 0;
        if (max_norm_ > 0)
            for (int64_t i = 0; i <= dim_; ++i) sq += static_cast<double>(buf[i]) * buf[i];
        if (max_norm_ > 0) buf[dim_ + 1] = static_cast<float>(std::sqrt(std::max(phi2 - sq, 0.0)));  // |row| = R
        hnsw_->addPoint(buf, static_cast<hnswlib::labeltype>(rows[j]));
    };
    int64_t start = 0;
    if (size() == 0) {  // hnswlib: the first element must go in alone
        std::vector<float> buf(static_cast<size_t>(D));
        WriteGuard g(lock_);
        insert(0, buf.data());
        start = 1;
    }
    constexpr int64_t CHUNK = 1;  // inserts per hold of the write side: a reader waits for one insert at most
    const int64_t n_chunks = (n - start + CHUNK - 1) / CHUNK;
    parallel_for(n_chunks, resolve_threads(num_threads), [&](int64_t c) {
        std::vector<float> buf(static_cast<size_t>(D));
        const int64_t a = start + c * CHUNK, e = std::min(n, a + CHUNK);
        WriteGuard g(lock_);
        for (int64_t j = a; j < e; ++j) insert(j, buf.data());
    });
}

void HnswIndex::search(const SearchArgs& args, int64_t b, TopKOut out, int num_threads, int8_t* plans) {
    const ScoreSpec& sp = args.spec;
    const int64_t n_rows = args.live.n;
    check_rows(args.exclude, n_rows, "exclude");
    check_rows(args.allow, n_rows, "allow");
    const int64_t words = (n_rows + 63) / 64;
    int64_t eligible = args.n_live;
    if (args.mask.present()) {
        eligible = 0;
        for (int64_t i = 0; i < words; ++i) eligible += __builtin_popcountll(args.live.w[i] & args.mask.w[i]);
    }
    const bool plain = !args.mask.present() && args.exclude.rows == 0 && args.allow.rows == 0 && args.n_live == size();
    const int64_t n_cand = std::max(args.n_candidates, out.K);
    const int nt = resolve_threads(num_threads);

    parallel_for(b, nt, [&](int64_t q) {
        thread_local Scratch ex_bits, al_bits;
        TopKHeap heap(out.K);
        std::vector<int64_t> ids;
        std::vector<float> s;
        auto flush = [&]() {
            s.resize(ids.size());
            score_list(sp, q, ids.data(), static_cast<int64_t>(ids.size()), s.data());
            push_scores(heap, q, ids.data(), s.data(), static_cast<int64_t>(ids.size()));
            ids.clear();
        };
        const auto ex = csr_row(args.exclude, q);
        const auto al = csr_row(args.allow, q);
        const uint64_t* exw = ex.first != ex.second ? ex_bits.set(ex.first, ex.second, n_rows) : nullptr;
        int64_t count = al.first ? (al.second - al.first) : eligible;
        count -= (ex.second - ex.first);
        // a request for a quarter of the eligible rows or more is scored exactly: a graph search that
        // wide visits most of the graph anyway, and an inner-product graph may not reach every row
        const bool exact = count <= args.exact_below || size() == 0 || 4 * out.K >= count;
        if (plans) plans[q] = exact ? 1 : 0;
        RowFilter f;
        f.live = args.live;
        f.mask = args.mask;
        f.excluded = exw;
        if (exact) {
            constexpr size_t BATCH = 512;
            ids.reserve(BATCH);
            if (al.first) {
                for (const int64_t* p = al.first; p != al.second; ++p) {
                    if (!f(static_cast<hnswlib::labeltype>(*p))) continue;
                    ids.push_back(*p);
                    if (ids.size() == BATCH) flush();
                }
            } else {
                for (int64_t i = 0; i < words; ++i) {
                    uint64_t w = args.live.w[i];
                    if (args.mask.w) w &= args.mask.w[i];
                    if (exw) w &= ~exw[i];
                    while (w) {
                        const int64_t r = i * 64 + __builtin_ctzll(w);
                        w &= w - 1;
                        if (r >= n_rows) break;
                        ids.push_back(r);
                        if (ids.size() == BATCH) flush();
                    }
                }
            }
            if (!ids.empty()) flush();
        } else {
            if (al.first) f.allowed = al_bits.set(al.first, al.second, n_rows);
            std::vector<float> aug(static_cast<size_t>(width()), 0.f);
            std::copy(sp.queries + q * sp.dim, sp.queries + (q + 1) * sp.dim, aug.begin());
            aug[static_cast<size_t>(dim_)] = sp.bias ? 1.f : 0.f;  // [q, 1, 0]: nearest row = best q.v + b
            std::priority_queue<std::pair<float, hnswlib::labeltype>> found;
            {
                ReadGuard g(lock_);
                found = hnsw_->searchKnn(aug.data(), static_cast<size_t>(n_cand), plain ? nullptr : &f);
            }
            if (al.first) al_bits.clear();
            ids.reserve(found.size());
            while (!found.empty()) {
                const int64_t r = static_cast<int64_t>(found.top().second);
                found.pop();
                if (r < n_rows) ids.push_back(r);  // plain search: a row past the snapshot is not yet visible
            }
            if (plain) ids.erase(std::remove_if(ids.begin(), ids.end(), [&](int64_t r) { return !args.live.test(r); }),
                                 ids.end());
            const int64_t a0 = args.always_indptr ? args.always_indptr[q] : 0;
            const int64_t a1 = args.always_indptr ? args.always_indptr[q + 1] : args.n_always;
            if (a1 > a0) {
                if (al.first) f.allowed = al_bits.set(al.first, al.second, n_rows);
                for (int64_t j = a0; j < a1; ++j)
                    if (f(static_cast<hnswlib::labeltype>(args.always[j]))) ids.push_back(args.always[j]);
                if (al.first) al_bits.clear();
                std::sort(ids.begin(), ids.end());
                ids.erase(std::unique(ids.begin(), ids.end()), ids.end());
            }
            flush();
        }
        if (exw) ex_bits.clear();
        heap.write(out.ids + q * out.K, out.scores + q * out.K);
    });
}

}  // namespace ctxrec
