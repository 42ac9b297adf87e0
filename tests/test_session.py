"""Interactive sessions (ctxrec.session) on the small planted dataset with a hashing encoder."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from ctxrec.context import ContextSpec
from ctxrec.model import ContextFM
from ctxrec.recommender import Recommender
from ctxrec.session import Question, QuestionBank, Session
from _synthetic_data import HashingEncoder, planted_dataset

MORNING = {"timestamp": "2024-04-01T08:15:00Z"}
NIGHT = {"timestamp": "2024-04-01T22:30:00Z"}
N_ITEMS = 120


def is_morning(item_ids):
    return np.array([int(str(i)[1:]) < N_ITEMS // 2 for i in item_ids])


@pytest.fixture(scope="module")
def dataset():
    return planted_dataset(n_users=60, n_items=N_ITEMS, per_user=20)


@pytest.fixture(scope="module")
def rec(dataset):
    spec = ContextSpec(time=["timestamp"], categorical=["device"], text=["query"])
    return Recommender(spec, model=ContextFM(n_factors=8, epochs=4, random_state=1),
                       encoder=HashingEncoder()).fit(dataset)


@pytest.fixture(scope="module")
def bank(rec):
    return QuestionBank.from_recommender(rec, n_clusters=4, n_subclusters=3)


def session(rec, bank, user="u0", context=MORNING, **kw):
    return Session(rec, user, context, bank=bank, **kw)


# ---------------------------------------------------------------------------- the bank
def test_bank_is_derived_from_the_catalog(rec, bank):
    ids = [q.id for q in bank]
    assert ids[0] == "attr:kind" and "clusters" in ids and "attr:title" not in ids  # titles: free text
    kind = bank["attr:kind"]
    assert set(kind.options) == {"morning", "night"} and kind.kind == "attribute"
    m = kind.membership
    assert np.allclose(m.sum(1), 1) and np.array_equal(m[:, kind.options.index("night")] == 1,
                                                       ~is_morning(rec.item_ids_))
    top = bank["clusters"]
    assert top.n_options == 4 and top.option_vecs.shape == (4, HashingEncoder.dim)
    assert all(o.startswith("like ") for o in top.options)
    vocab = {"coffee", "news", "sunrise", "breakfast", "jogging", "jazz", "thriller", "stars", "cocktail",
             "midnight"}
    assert all(d and set(d.split(", ")) <= vocab for d in top.details)  # typical words of each cluster
    subs = [q for q in bank if q.id.startswith("clusters/")]
    assert subs and all(q.options[-1] == "something else" for q in subs)
    for q in bank:
        assert q.membership.shape == (N_ITEMS, q.n_options) and np.allclose(q.membership.sum(1), 1)
    assert QuestionBank.for_recommender(rec) is QuestionBank.for_recommender(rec)  # built once


def test_attribute_detection_numeric_lists_and_years():
    import pandas as pd
    from ctxrec.session.questions import _attribute_question
    genres = pd.Series([["Comedy"], ["Drama", "Comedy"], [], ["Drama"]] * 5)
    q = _attribute_question("genres", genres, 20, 20, 0.0)
    assert q.prompt == "Which genre are you in the mood for?" and q.options == ("Comedy", "Drama")
    assert np.allclose(q.membership[1], [0.5, 0.5]) and np.allclose(q.membership[2], [0.5, 0.5])
    years = pd.Series([1995.0, 1977.0, np.nan, 1999.0] * 10)
    q = _attribute_question("year", years, 40, 20, 0.0)
    assert q.options == ("1970s", "1990s") and q.prompt == "From which decade?"
    price = pd.Series(np.arange(100, dtype=float))
    assert _attribute_question("price", price, 100, 20, 0.0).n_options == 4  # quartiles
    assert _attribute_question("url", pd.Series([f"u{i}" for i in range(50)]), 50, 20, 0.0) is None
    assert _attribute_question("same", pd.Series(["x"] * 10), 10, 20, 0.0) is None  # nothing to learn


# ---------------------------------------------------------------------------- session basics
@pytest.mark.parametrize("ctx", [MORNING, {**NIGHT, "query": "jazz midnight"}])
def test_session_without_answers_equals_recommend(rec, bank, ctx):
    s = session(rec, bank, "u2", ctx)
    r = s.recommend()
    ref = rec.recommend("u2", ctx, k=10)
    assert r.item_ids == ref.item_ids
    assert np.allclose(r.scores, ref.scores, atol=1e-3)
    assert ("query" in ctx) == bool(s.turns)


def test_seen_items_excluded_and_cold_start(rec, bank, dataset):
    u = dataset.user_index("u0")
    seen = set(dataset.item_ids[dataset.items[dataset.users == u]])
    s = session(rec, bank, k=50)
    assert not seen & set(s.recommend().item_ids)
    s = session(rec, bank, user="nobody", context=NIGHT)
    r = s.recommend()
    assert r.cold_start and len(r.item_ids) == 10
    s = session(rec, bank, allow=["i1", "i2", "i100"], exclude=["i2"], exclude_seen=False)
    assert set(s.recommend().item_ids) == {"i1", "i100"}


def test_invalid_inputs(rec, bank):
    with pytest.raises(ValueError, match="timestamp"):
        session(rec, bank, context={"timestamp": "not a time"})
    with pytest.raises(ValueError, match="context must be a dict"):
        Session(rec, "u0", ["x"], bank=bank)
    with pytest.raises(ValueError, match="temperature"):
        session(rec, bank, temperature=0)
    small = QuestionBank([bank["attr:kind"]], N_ITEMS)
    with pytest.raises(ValueError, match="built for"):
        Session(rec, "u0", bank=QuestionBank([Question("x", "attribute", "x", "?", ("a", "b"), ("", ""),
                                                       np.full((3, 2), .5, np.float32))], 3))
    s = Session(rec, "u0", MORNING, bank=small)
    s.next_question()
    with pytest.raises(ValueError, match="out of range"):
        s.answer(5)
    with pytest.raises(ValueError, match="expected an option index"):
        s.answer(["night"])
    s.answer("night")
    with pytest.raises(ValueError, match="already answered"):
        s.answer("night", question="attr:kind")
    with pytest.raises(ValueError, match="already asked"):
        s.ask("attr:kind")


# ---------------------------------------------------------------------------- questions
def test_expected_information_gain_matches_definition(rec, bank):
    s = session(rec, bank, "u2", MORNING, pool=10_000)
    gains = s.question_gains()
    assert set(gains) == {q.id for q in bank}
    p = s._p
    for q in bank:
        L = 0.95 * q.membership.astype(np.float64) + 0.05 / q.n_options
        pa = p @ L
        h = -(pa * np.log(pa)).sum() + p @ (L * np.log(L)).sum(1)
        assert gains[q.id] == pytest.approx(h, abs=1e-9)
        assert 0 <= gains[q.id] <= np.log(q.n_options) + 1e-12
    q = s.next_question()
    assert q.id == max(gains, key=gains.get)
    assert s.next_question() is q  # pending until answered
    other = next(o for o in bank if o.id != q.id)
    s.answer(0, question=other.id)
    assert s.next_question() is q and s.asked == [other.id]  # answering another question keeps it pending


def test_questions_never_repeat_and_stop(rec, bank):
    s = session(rec, bank, confidence=1.0, min_gain=0.0)
    asked = []
    while (q := s.next_question()) is not None:
        asked.append(q.id)
        s.answer(0)
    assert sorted(asked) == sorted(q.id for q in bank) and s.asked == asked
    s = session(rec, bank, confidence=1.0, min_gain=0.0, max_questions=2)
    for _ in range(2):
        s.answer(0, question=s.next_question())
    assert s.next_question() is None
    assert session(rec, bank, confidence=1e-9).next_question() is None  # already confident
    assert session(rec, bank, confidence=1.0, min_gain=10.0).next_question() is None  # nothing gains enough
    s = session(rec, bank, confidence=1.0, min_gain=0.0)
    s.answer("night", question="attr:kind")
    assert s.question_gains().get("attr:kind") is None
    # once the belief is on night items, the kind question would have told nothing
    s2 = session(rec, bank, confidence=1.0, min_gain=0.0)
    s2.answer(s.bank["attr:kind"].options.index("night"), question="attr:kind")
    assert s2.recommend().item_ids == s.recommend().item_ids


def test_answers_move_the_ranking(rec, bank):
    # u0 is mostly-morning and it is morning: the top-K is morning items until they say night
    s = session(rec, bank, "u0", MORNING)
    assert is_morning(s.recommend().item_ids).mean() >= 0.8
    r = s.answer("night", question="attr:kind")
    assert is_morning(r.item_ids).mean() == 0
    assert s.turns[-1].choice == "night"
    # free text naming an option
    s = session(rec, bank, "u0", MORNING)
    s.ask("attr:kind")
    r = s.answer("Something for the NIGHT please")
    assert s.turns[-1].weights == [0.0, 1.0] or s.turns[-1].weights == [1.0, 0.0]
    assert s.turns[-1].choice == "night" and is_morning(r.item_ids).mean() == 0
    assert s._texts == []  # it only named the option: a choice, not a description
    s = session(rec, bank, "u0", MORNING)
    s.ask("attr:kind")
    s.answer("night, with some jazz")
    assert s.turns[-1].choice == "night" and len(s._texts) == 1  # says more: joins the conversation text
    # skipping changes nothing
    s = session(rec, bank, "u0", MORNING)
    before = s.recommend().item_ids
    s.ask("attr:kind")
    assert s.answer(None).item_ids == before and s.asked == ["attr:kind"] and s.turns[-1].kind == "skip"


def test_free_text_answer_read_through_the_encoder(rec, bank):
    q = bank["clusters"]
    night_opt = [j for j, d in enumerate(q.details) if "jazz" in d or "midnight" in d]
    s = session(rec, bank, "u0", MORNING)
    s.ask("clusters")
    r = s.answer("jazz cocktail midnight stars")
    w = np.array(s.turns[-1].weights)
    assert w.sum() == pytest.approx(1) and w[night_opt].sum() > 0.9
    assert is_morning(r.item_ids).mean() <= 0.1
    assert len(s._texts) == 1  # the answer joined the conversation text, encoded once


def test_newer_text_weighs_more(rec, bank):
    coffee, jazz = "coffee breakfast sunrise", "jazz midnight cocktail"
    s = session(rec, bank, "u2", {})
    s.say(coffee)
    jazz_last = s.say(jazz)
    v = s.text_vector()
    e = HashingEncoder().encode([coffee, jazz]).astype(np.float64)
    ref = 0.5 * e[0] + e[1]
    assert np.allclose(v, ref / np.linalg.norm(ref), atol=1e-6)
    s2 = session(rec, bank, "u2", {})
    s2.say(jazz)
    coffee_last = s2.say(coffee)
    assert is_morning(jazz_last.item_ids).mean() + 0.3 <= is_morning(coffee_last.item_ids).mean()
    assert [t.text for t in s.turns] == [coffee, jazz] and [t.kind for t in s.turns] == ["say", "say"]


def test_chosen_questions_beat_no_questions_and_random(rec, bank, dataset):
    """A tiny simulated-user benchmark drawn like the planted data: in the morning the user
    wants some morning item, at night some night item; answers are truthful."""
    rng = np.random.default_rng(0)
    half = N_ITEMS // 2
    targets = [(f"u{u}", MORNING if c % 2 else NIGHT, f"i{rng.integers(0, half) + (0 if c % 2 else half)}")
               for c, u in enumerate(rng.integers(0, 60, 40))]

    def truthful(q, t):
        return int(np.argmax(q.membership[rec.item_index(t)]))

    def ranks(policy):
        out = np.zeros((len(targets), 3))
        pick = np.random.default_rng(1)
        for c, (u, ctx, t) in enumerate(targets):
            s = session(rec, bank, u, ctx, confidence=1.0, min_gain=0.0, exclude_seen=False)
            out[c, 0] = np.sum(s.scores > s.scores[rec.item_index(t)]) + 1
            for step in (1, 2):
                q = s.next_question() if policy == "chosen" else \
                    s.ask([q.id for q in bank if q.id not in s.asked][pick.integers(len(bank) - step + 1)])
                s.answer(truthful(q, t))
                out[c, step] = np.sum(s.scores > s.scores[rec.item_index(t)]) + 1
        return out

    chosen, rand = ranks("chosen"), ranks("random")
    assert np.median(chosen[:, 2]) < 0.5 * np.median(chosen[:, 0])
    assert np.mean(chosen[:, 2]) < np.mean(rand[:, 2])


# ---------------------------------------------------------------------------- explanations, state
def test_explain(rec, bank):
    s = session(rec, bank, "u0", MORNING)
    s.say("jazz night")
    r = s.answer("night", question="attr:kind")
    ex = s.explain(r.item_ids[0])
    assert ex["rank"] == 1 and ex["score"] == pytest.approx(r.scores[0], abs=1e-6)
    assert sum(ex["contributions"].values()) == pytest.approx(ex["score"], abs=1e-4)
    assert set(ex["contributions"]) == {"user_affinity", "context", "request_text", "text_match", "answers",
                                        "popularity"}
    assert ex["answers"][0]["fits"] is True and ex["said"][0]["text"] == "jazz night"
    assert any("night" in x for x in ex["reasons"])
    morning_item = next(i for i in rec.item_ids_ if is_morning([i])[0])
    ex2 = s.explain(morning_item)
    assert ex2["answers"][0]["fits"] is False and ex2["contributions"]["answers"] < -1
    assert any("does not fit" in x for x in ex2["reasons"])
    with pytest.raises(KeyError):
        s.explain("no-such-item")


def test_state_is_json_ready(rec, bank):
    import json
    s = session(rec, bank, "u0", {**MORNING, "query": "coffee"})
    s.next_question()
    st = json.loads(json.dumps(s.state()))
    assert st["session_id"] == s.id and len(st["items"]) == 10 and st["question"]["options"]
    assert st["turns"][0] == {"kind": "request", "text": "coffee"} and 0 < st["confidence"] <= 1


def test_without_encoder(dataset):
    spec = ContextSpec(time=["timestamp"], categorical=["device"])
    r = Recommender(spec, model=ContextFM(n_factors=8, epochs=2, random_state=0), encoder=None).fit(dataset)
    b = QuestionBank.from_recommender(r)
    assert [q.id for q in b] == ["attr:kind"] and b["attr:kind"].option_vecs is None
    s = Session(r, "u0", MORNING, bank=b)
    s.ask("attr:kind")
    s.answer("any night item")  # read by naming the option
    assert s.turns[-1].choice == "night"


# ---------------------------------------------------------------------------- CLI
def test_cli_chat(dataset, tmp_path):
    spec = ContextSpec(time=["timestamp"], categorical=["device"])
    Recommender(spec, model=ContextFM(n_factors=8, epochs=2, random_state=0), encoder=None).fit(dataset) \
        .save(tmp_path / "m")
    out = subprocess.run([sys.executable, "-m", "ctxrec.cli", "chat", "--model", str(tmp_path / "m"), "--user", "u0",
                          "--context", '{"timestamp": "2024-04-01T08:15:00Z"}', "-k", "5"],
                         input="night\nwhy 1\nquit\n", capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "Which kind would you like?" in out.stdout and "morning" in out.stdout
    assert "fits your answer" in out.stdout
    bad = subprocess.run([sys.executable, "-m", "ctxrec.cli", "chat", "--model", str(tmp_path / "nope"),
                          "--user", "u0"], input="", capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "error" in bad.stderr


# ---------------------------------------------------------------------------- optional LLM (local stub)
@pytest.fixture()
def llm_stub():
    import json
    import threading
    from http.server import BaseHTTPRequestHandler, HTTPServer
    seen = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            seen.append((self.path, body))
            user = body["messages"][-1]["content"]
            if "Answer:" in user:
                reply = "2" if "after dark" in user else "garbage"
            else:
                reply = "Morning or night, what suits you?"
            out = json.dumps({"choices": [{"message": {"role": "assistant", "content": reply}}]}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(out)))
            self.end_headers()
            self.wfile.write(out)

        def log_message(self, *a):
            pass

    srv = HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{srv.server_address[1]}/v1", seen
    srv.shutdown()


def test_optional_llm_reads_answers_and_falls_back(rec, bank, llm_stub):
    from ctxrec.session import ChatLLM
    url, seen = llm_stub
    s = session(rec, bank, "u0", MORNING, llm=ChatLLM(url))
    q = s.ask("attr:kind")
    assert s.phrase() == "Morning or night, what suits you?"
    s.answer("something for after dark")  # names no option; the stub says option 2
    assert s.turns[-1].choice == q.options[1] and seen[-1][0] == "/v1/chat/completions"
    s2 = session(rec, bank, "u0", MORNING, llm=ChatLLM(url))
    s2.ask("attr:kind")
    s2.answer("the night one")  # the stub replies garbage: the session's own reading decides
    assert s2.turns[-1].choice == "night"
    down = ChatLLM("http://127.0.0.1:9/v1", timeout_s=0.5)  # nothing listens there
    s3 = session(rec, bank, "u0", MORNING, llm=down)
    s3.ask("attr:kind")
    assert s3.phrase() == bank["attr:kind"].prompt
    s3.answer("night please")
    assert s3.turns[-1].choice == "night" and down.failures == 2
    with pytest.raises(ValueError, match="http"):
        ChatLLM("ftp://x")


def test_session_store_is_bounded_and_expires(rec, bank):
    from ctxrec.session import SessionStore
    now = [0.0]
    store = SessionStore(max_sessions=2, ttl_s=10, clock=lambda: now[0])
    a, b, c = (session(rec, bank) for _ in range(3))
    store.add(a)
    now[0] = 1
    store.add(b)
    now[0] = 2
    assert store.get(a.id) is a  # a is now the most recently used
    store.add(c)  # over the bound: the least recently used (b) goes
    assert len(store) == 2 and store.evicted == 1
    with pytest.raises(KeyError, match="unknown or expired"):
        store.get(b.id)
    now[0] = 11.5  # c (used at 2) and a (used at 2) both unused for 9.5 s: still alive
    assert store.get(c.id) is c
    now[0] = 12.5  # a unused for 10.5 s: expired; c used at 11.5: alive
    with pytest.raises(KeyError):
        store.get(a.id)
    assert store.get(c.id) is c and store.expired == 1
    assert store.remove(c.id) and not store.remove(c.id) and len(store) == 0
    with pytest.raises(ValueError):
        SessionStore(max_sessions=0)


def test_filter_and_the_live_catalog(dataset):
    import pandas as pd
    rec = Recommender(ContextSpec(time=["timestamp"], text=["query"]), model=ContextFM(n_factors=8, epochs=2),
                      encoder=HashingEncoder()).fit(dataset)
    s = Session(rec, "u0", MORNING, k=20, filter={"kind": "night"})
    assert not is_morning(s.recommend().item_ids).any()
    with pytest.raises(ValueError, match="unknown filter 'colour'"):
        Session(rec, "u0", MORNING, filter={"colour": "red"})
    rec.add_items(pd.DataFrame({"item_id": ["new1"], "text": ["zebra unicorn banana"], "kind": ["brunch"]}))
    rec.remove_items(["i3"])
    s = Session(rec, "u0", MORNING, k=300, exclude_seen=False)  # its bank is built on the catalog now
    got = s.recommend().item_ids
    assert "new1" in got and "i3" not in got
    assert Session(rec, "u0", MORNING, filter={"kind": "brunch"}).recommend().item_ids == ["new1"]
    assert s.explain("new1")["item_id"] == "new1"


def test_session_recommend_takes_the_rerank_options(rec, bank):
    from ctxrec.errors import InputError
    s = session(rec, bank, "u2", {})
    plain = s.recommend(k=10)
    varied = s.recommend(k=10, diversity=0.9)
    assert varied.item_ids[0] == plain.item_ids[0] and varied.item_ids != plain.item_ids
    assert len(varied.rerank) == 10 and varied.rerank[0]["similarity"] == 0.0 and plain.rerank == []
    by_id = dict(zip(plain.item_ids, plain.scores))
    assert all(by_id[i] == pytest.approx(x) for i, x in zip(varied.item_ids, varied.scores) if i in by_id)
    cal = s.recommend(k=10, calibrate=5.0, calibrate_by="kind")
    mix = rec.engine_.category_mix("kind", cal.item_ids)
    assert set(mix) == set(rec.history_mix("u2", "kind"))  # the history's kinds are all in the list
    with pytest.raises(InputError) as e:
        s.recommend(k=10, diversity=3)
    assert e.value.field == "diversity"
    assert s.recommend(k=10).item_ids == plain.item_ids  # nothing changed by the options


@pytest.mark.parametrize("policy", ["thompson", "ucb"])
def test_session_recommend_explores(rec, bank, policy):
    from ctxrec.errors import InputError
    s = session(rec, bank, "u2", {})
    plain = s.recommend(k=10)
    assert s.recommend(k=10, explore=policy, explore_scale=0.0).item_ids == plain.item_ids and plain.explore == []
    a = s.recommend(k=10, explore=policy, explore_scale=3.0, seed=4)
    assert a.to_dict() == s.recommend(k=10, explore=policy, explore_scale=3.0, seed=4).to_dict()  # the seed fixes it
    assert len(a.explore) == 10 and np.all(np.diff(np.add(a.scores, a.explore)) <= 1e-9)
    by_id = dict(zip(s.recommend(k=300).item_ids, s.recommend(k=300).scores))
    assert np.allclose(a.scores, [by_id[i] for i in a.item_ids])  # the belief scores, not the explored ones
    if policy == "ucb":  # the bonus is the user's posterior's, as Recommender.recommend adds it
        want = rec.recommend("u2", {}, k=5, explore="ucb", explore_scale=3.0, allow=a.item_ids[:5])
        assert np.allclose(sorted(a.explore[:5]), sorted(want.explore), rtol=1e-5)
    both = s.recommend(k=10, explore=policy, explore_scale=3.0, seed=4, diversity=0.8)
    assert len(both.rerank) == len(both.explore) == 10 and both.rerank[0]["similarity"] == 0.0
    kept = session(rec, bank, "u2", {}, explore=policy, explore_scale=3.0, seed=4)  # the session's default
    assert kept.recommend(k=10).item_ids == a.item_ids
    for bad, field in (({"explore": "eps"}, "explore"), ({"explore": policy, "explore_scale": -1}, "explore_scale"),
                       ({"explore": policy, "seed": 2.5}, "seed")):
        with pytest.raises(InputError) as e:
            s.recommend(k=10, **bad)
        assert e.value.field == field
        with pytest.raises(InputError):
            session(rec, bank, "u2", {}, **bad)
    assert s.recommend(k=10).item_ids == plain.item_ids
