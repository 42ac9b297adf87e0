"""Word lists and small text helpers shared by the questions and the conversation."""
from __future__ import annotations

import re
from typing import Sequence

import numpy as np


WORD = re.compile(r"[a-z][a-z'\-]+")
TOKEN = re.compile(r"[a-z0-9][a-z0-9'\-]*")
STOP_WORDS = frozenset("""
a about above after again against all also am an and any are as at be because been before being below between both
but by can could did do does doing down during each few for from further had has have having he her here hers
herself him himself his how i if in into is it its itself just me more most my myself no nor not now of off on once
only or other our ours out over own same she should so some such than that the their theirs them themselves then
there these they this those through to too under until up very was we were what when where which while who whom why
will with would you your yours yourself year years genres genre film films movie movies story life find finds one
two three new get gets take takes make makes must goes comes come back world young becomes help tries who's it's
man woman men women when's he's she's they're their's into upon around while first last later named""".split())


def unit(x: np.ndarray) -> np.ndarray:
    """``x`` scaled to unit length (each row of a 2-D ``x``); zero vectors stay zero.

    Parameters
    ----------
    x : array [d] or [n, d]

    Returns
    -------
    float64 array of the same shape
    """
    x = np.asarray(x, np.float64)
    if x.ndim == 1:
        n = np.linalg.norm(x)
        return x / n if n > 0 else x
    n = np.linalg.norm(x, axis=1, keepdims=True)
    return np.where(n > 0, x / np.maximum(n, 1e-12), 0.0)


FILLER = frozenset("like want would love prefer something anything please maybe rather mood more some kind "
                    "type sort really just quite bit little think feel i'd i'm i'll let's give show".split())


def says_more(text: str, labels: Sequence[str]) -> bool:
    """Whether ``text`` has content words beyond the option labels it names.

    Parameters
    ----------
    text : str
    labels : sequence of str
        The option labels named in ``text``.

    Returns
    -------
    bool
    """
    used = {w for lab in labels for w in TOKEN.findall(lab.lower())}
    used |= {w + "s" for w in used}
    return any(len(w) >= 3 and w not in STOP_WORDS and w not in FILLER and w not in used
               for w in TOKEN.findall(text.lower()))



def singular(name: str) -> str:
    """``name`` without a plural ``s`` (``"genres"`` -> ``"genre"``; ``"class"`` unchanged).

    Parameters
    ----------
    name : str

    Returns
    -------
    str
    """
    return name[:-1] if name.endswith("s") and not name.endswith("ss") else name
