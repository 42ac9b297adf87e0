"""A fixed, generated list of reference sentences for checking exported encoders.

The export step embeds these texts with the original PyTorch model and stores the
result next to the ONNX files (``reference.npz``), so tests can compare every ONNX
variant against PyTorch without needing PyTorch. The texts are generated from
templates with a fixed seed (no data files): ``corpus`` holds description-length
texts (product, recipe, film, place, app and job descriptions, 35–90 words) and
``queries`` holds short search-style requests (3–12 words). The same seed always
gives the same texts; ``REFSET_VERSION`` changes when the generator does.
"""
from __future__ import annotations

import random

REFSET_VERSION = 1

_ADJ = ["lightweight", "durable", "compact", "elegant", "rugged", "cozy", "minimalist", "vintage", "modern",
        "handmade", "waterproof", "affordable", "premium", "colorful", "quiet", "powerful", "gentle", "spicy",
        "fresh", "hearty", "dark", "funny", "tense", "heartwarming", "sprawling", "remote", "busy", "calm"]
_PRODUCTS = [("running shoe", "breathable mesh upper and a cushioned foam sole"),
             ("backpack", "padded laptop sleeve and water-resistant zippers"),
             ("coffee grinder", "conical steel burrs and eighteen grind settings"),
             ("desk lamp", "dimmable warm LED light and a flexible arm"),
             ("winter jacket", "recycled down insulation and a detachable hood"),
             ("kitchen knife", "forged carbon steel blade and a walnut handle"),
             ("yoga mat", "non-slip natural rubber surface and alignment lines"),
             ("bluetooth speaker", "deep bass, twelve hours of battery and a splash-proof case"),
             ("office chair", "adjustable lumbar support and breathable mesh back"),
             ("tent", "two-person dome, aluminium poles and a rain fly"),
             ("wristwatch", "sapphire crystal, automatic movement and a leather strap"),
             ("blender", "1200-watt motor and a glass jar that resists scratches"),
             ("board game", "cooperative play for two to five players and a modular map"),
             ("electric toothbrush", "pressure sensor and a travel case"),
             ("cast iron skillet", "pre-seasoned surface that goes from stove to oven"),
             ("noise-cancelling headphones", "adaptive cancellation and thirty hours of playback")]
_USES = ["daily commutes", "long weekend hikes", "small apartments", "busy families", "first-time cooks",
         "remote workers", "marathon training", "camping trips", "late-night reading", "gift giving",
         "students on a budget", "outdoor parties", "home offices", "rainy climates"]
_DISHES = [("lentil soup", "red lentils, cumin, lemon and smoked paprika"),
           ("mushroom risotto", "arborio rice, porcini, white wine and parmesan"),
           ("chicken curry", "coconut milk, ginger, garlic and garam masala"),
           ("banana bread", "ripe bananas, brown butter and toasted walnuts"),
           ("fish tacos", "crispy cod, lime slaw and chipotle crema"),
           ("vegetable stir fry", "broccoli, snap peas, soy sauce and sesame"),
           ("beef stew", "slow-cooked chuck, carrots, potatoes and red wine"),
           ("greek salad", "tomatoes, cucumber, feta, olives and oregano"),
           ("pancakes", "buttermilk batter, maple syrup and fresh berries"),
           ("ramen", "rich pork broth, soft eggs, noodles and scallions"),
           ("chocolate mousse", "dark chocolate, whipped cream and sea salt"),
           ("falafel wrap", "chickpea fritters, tahini, pickles and flatbread")]
_OCCASIONS = ["a quick weeknight dinner", "a lazy Sunday brunch", "feeding a crowd", "meal prep for the week",
              "a cold winter evening", "a summer picnic", "a romantic dinner for two", "kids' lunchboxes"]
_GENRES = ["thriller", "romantic comedy", "science fiction adventure", "documentary", "crime drama",
           "animated family film", "horror story", "historical epic", "coming-of-age drama", "heist caper"]
_HEROES = ["a retired detective", "a young astronaut", "two estranged sisters", "a struggling jazz musician",
           "a small-town teacher", "an ambitious chef", "a runaway teenager", "a widowed farmer",
           "a hacker with a secret", "a stubborn old sailor", "an exiled prince", "a nervous bank clerk"]
_PLOTS = ["must solve one last case before the city falls apart", "discovers a signal from a distant planet",
          "reunite to sell their late mother's house", "gets one chance to play a legendary club",
          "fights to save a failing school", "opens a restaurant in a rival's neighbourhood",
          "crosses the country to find a missing father", "battles drought and debt to keep the land",
          "uncovers a conspiracy inside a tech giant", "sets out on a final voyage around the cape",
          "returns home to reclaim a stolen throne", "is mistaken for the mastermind of a robbery"]
_SETTINGS = ["in 1970s New York", "on a crumbling space station", "in a sleepy coastal village",
             "during the Great Depression", "in modern-day Tokyo", "across the Scottish highlands",
             "in a snowed-in mountain lodge", "on the streets of Mumbai"]
_PLACES = [("boutique hotel", "rooftop terrace, rain showers and a breakfast of local produce"),
           ("beach resort", "three pools, a spa and private cabanas on white sand"),
           ("mountain cabin", "wood stove, hot tub and trails starting at the door"),
           ("city hostel", "shared kitchen, free walking tours and a lively bar"),
           ("vineyard guesthouse", "wine tastings, quiet rooms and views over the valley"),
           ("ski chalet", "boot warmers, a sauna and ski-in ski-out access")]
_APPS = [("budgeting app", "tracks spending, sorts transactions into categories and sends bill reminders"),
         ("meditation app", "offers guided sessions, sleep stories and breathing exercises"),
         ("language learning app", "teaches vocabulary through short daily lessons and speech practice"),
         ("fitness tracker app", "logs workouts, counts steps and plans interval runs"),
         ("recipe app", "suggests meals from what is in your fridge and builds shopping lists"),
         ("photo editor", "removes backgrounds, fixes lighting and adds film-style filters"),
         ("podcast player", "downloads episodes, skips silences and syncs across devices")]
_JOBS = [("data analyst", "build dashboards, clean messy data and present findings to managers"),
         ("line cook", "prepare sauces, run the grill station and keep the kitchen spotless"),
         ("nurse", "care for patients on a busy surgical ward and coordinate with doctors"),
         ("software engineer", "design backend services, review code and improve reliability"),
         ("warehouse associate", "pick orders, operate forklifts and track inventory"),
         ("graphic designer", "create brand identities, posters and social media campaigns")]

_QUERY_PATTERNS = [
    "{adj} {product}", "{product} for {use}", "best {product} under 100 dollars", "{dish} recipe",
    "easy {dish} for {occasion}", "{adj} {genre}", "{genre} {setting}", "{genre} about {hero}",
    "{adj} {place} with a pool", "{place} near the mountains", "{app} for beginners", "free {app}",
    "{job} jobs near me", "remote {job} position", "something light after a long day",
    "{adj} {dish}", "gift ideas for {use}", "movie like a {genre}",
]
# Used only once the patterns above run out of new combinations (~1,800 of them), so the
# first queries of any seed are the same as before these were added.
_MORE_QUERY_PATTERNS = [
    "{adj} {product} for {use}", "{adj} {genre} {setting}", "{dish} for {occasion} with {adj} flavour",
    "{adj} {app} for {use}", "{adj} {place} for {use}",
]


def _pick(rng: random.Random, seq):
    return seq[rng.randrange(len(seq))]


def _description(rng: random.Random) -> str:
    kind = rng.randrange(6)
    a, b = _pick(rng, _ADJ), _pick(rng, _ADJ)
    if kind == 0:
        p, feat = _pick(rng, _PRODUCTS)
        use = _pick(rng, _USES)
        s = [f"This {a} {p} comes with {feat}.", f"It was designed for {use} and packs down small.",
             f"Reviewers call it {b} and say it holds up well after months of use.",
             "Ships in plastic-free packaging with a two-year warranty.",
             f"Pair it with our other gear for {_pick(rng, _USES)}."]
    elif kind == 1:
        d, ing = _pick(rng, _DISHES)
        s = [f"A {a} {d} made with {ing}.", f"Ready in {rng.choice([20, 30, 45, 60, 90])} minutes, "
             f"it is perfect for {_pick(rng, _OCCASIONS)}.", f"The flavour is {b} without being heavy.",
             "Leftovers keep in the fridge for three days and reheat well.",
             f"Serve it with crusty bread or a {_pick(rng, _ADJ)} side salad."]
    elif kind == 2:
        g, h, pl, st = _pick(rng, _GENRES), _pick(rng, _HEROES), _pick(rng, _PLOTS), _pick(rng, _SETTINGS)
        s = [f"A {a} {g} set {st}.", f"When everything goes wrong, {h} {pl}.",
             f"Along the way old friendships are tested and {_pick(rng, _HEROES)} turns out to be "
             "more than they seem.", f"Critics praised its {b} tone and the final twenty minutes."]
    elif kind == 3:
        p, feat = _pick(rng, _PLACES)
        s = [f"A {a} {p} with {feat}.", f"Guests love it for {_pick(rng, _USES)} and the {b} atmosphere.",
             f"It is a short drive from the old town and {rng.choice([5, 10, 15, 25])} minutes from the "
             "nearest station.", "Free cancellation up to two days before arrival."]
    elif kind == 4:
        p, feat = _pick(rng, _APPS)
        s = [f"A {a} {p} that {feat}.", f"People use it for {_pick(rng, _USES)} because it stays {b}.",
             "Works offline and keeps your data on the device.",
             f"Rated {rng.choice(['4.2', '4.5', '4.7', '4.8'])} stars by more than "
             f"{rng.choice([10, 50, 200, 900])} thousand users."]
    else:
        j, duty = _pick(rng, _JOBS)
        s = [f"We are hiring a {a} {j} to {duty}.", f"Our team is {b}, friendly and growing fast.",
             f"The role suits someone who enjoys {_pick(rng, _USES)} and learning on the job.",
             "Benefits include flexible hours, health cover and paid training."]
    keep = rng.randrange(max(2, len(s) - 2), len(s) + 1)
    return " ".join(s[:keep])


def _random_query(rng: random.Random, patterns=_QUERY_PATTERNS) -> str:
    pat = _pick(rng, patterns)
    return pat.format(adj=_pick(rng, _ADJ), product=_pick(rng, _PRODUCTS)[0], use=_pick(rng, _USES),
                      dish=_pick(rng, _DISHES)[0], occasion=_pick(rng, _OCCASIONS), genre=_pick(rng, _GENRES),
                      setting=_pick(rng, _SETTINGS), hero=_pick(rng, _HEROES), place=_pick(rng, _PLACES)[0],
                      app=_pick(rng, _APPS)[0], job=_pick(rng, _JOBS)[0])


def reference_texts(n_corpus: int = 2000, n_queries: int = 200, seed: int = 20260127) -> tuple[list[str], list[str]]:
    """The generated reference set, deterministic for a given seed.

    Parameters
    ----------
    n_corpus : int
        Distinct description-length texts.
    n_queries : int
        Distinct short queries.
    seed : int

    Returns
    -------
    corpus : list of str [n_corpus]
    queries : list of str [n_queries]
    """
    rng = random.Random(seed)
    corpus: list[str] = []
    seen: set[str] = set()
    misses = 0
    while len(corpus) < n_corpus:
        t = _description(rng)
        if t not in seen:
            seen.add(t)
            corpus.append(t)
            misses = 0
        else:
            misses += 1
            if misses >= 20000:
                raise ValueError(f"n_corpus = {n_corpus}: the templates ran out of distinct texts at {len(corpus)}")
    queries: list[str] = []
    patterns, misses = _QUERY_PATTERNS, 0
    while len(queries) < n_queries:
        q = _random_query(rng, patterns)
        if q not in seen:
            seen.add(q)
            queries.append(q)
            misses = 0
            continue
        misses += 1
        if misses == 2000 and patterns is _QUERY_PATTERNS:
            patterns, misses = _QUERY_PATTERNS + _MORE_QUERY_PATTERNS, 0
        elif misses >= 20000:
            raise ValueError(f"n_queries = {n_queries}: the templates ran out of distinct queries at {len(queries)}")
    return corpus, queries
