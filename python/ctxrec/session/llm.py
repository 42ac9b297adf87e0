"""An optional generative model behind an OpenAI-compatible endpoint that phrases questions and reads free answers."""
from __future__ import annotations

import re

from ctxrec.session.questions import Question


# ============================================================================ optional LLM
class ChatLLM:
    """Optional: a generative model behind an OpenAI-compatible endpoint.

    It phrases questions and reads free answers (``POST {url}/chat/completions``). Off by
    default (``Session(llm=None)``); any failure (unreachable, timeout, malformed reply, a
    reply that names no option) falls back to the session's own reading, so a session never
    depends on it.

    Parameters
    ----------
    url : str
        Base URL, e.g. "http://127.0.0.1:8080/v1".
    model : str
        The model name sent.
    api_key : str, optional
        Sent as a bearer token when given.
    timeout_s : float
        Seconds per call.

    Raises
    ------
    ValueError
        ``url`` is not an http(s) URL.
    """

    def __init__(self, url: str, model: str = "default", api_key: str | None = None, timeout_s: float = 5.0) -> None:
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            raise ValueError(f"llm url must be an http(s) URL, got {url!r}")
        self.url, self.model, self.api_key, self.timeout_s = url.rstrip("/"), model, api_key, float(timeout_s)
        self.failures = 0

    def _chat(self, system: str, user: str) -> str | None:
        import json
        import urllib.request
        body = json.dumps({"model": self.model, "temperature": 0, "max_tokens": 64,
                           "messages": [{"role": "system", "content": system}, {"role": "user", "content": user}]})
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        req = urllib.request.Request(f"{self.url}/chat/completions", data=body.encode(), headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=self.timeout_s) as r:
                out = json.loads(r.read().decode())
            text = out["choices"][0]["message"]["content"]
            return text.strip() if isinstance(text, str) else None
        except Exception:  # the session works without it
            self.failures += 1
            return None

    def phrase(self, q: Question) -> str | None:
        """A friendlier wording of ``q``.

        Parameters
        ----------
        q : Question

        Returns
        -------
        str or None
            None on failure.
        """
        opts = "; ".join(q.options)
        return self._chat("You rephrase a shop assistant's clarifying question in one short friendly sentence. "
                          "Reply with the sentence only.", f"Question: {q.prompt}\nOptions: {opts}")

    def parse(self, q: Question, text: str) -> int | None:
        """The option a free answer picks.

        Parameters
        ----------
        q : Question
        text : str
            The free answer.

        Returns
        -------
        int or None
            The 0-based option, or None (no option / failure).
        """
        opts = "\n".join(f"{j + 1}. {o}" for j, o in enumerate(q.options))
        reply = self._chat("Which numbered option does the user's answer choose? Reply with the number only, "
                           "or 0 if none.", f"Question: {q.prompt}\nOptions:\n{opts}\nAnswer: {text}")
        m = re.search(r"\d+", reply or "")
        j = int(m.group()) - 1 if m else -1
        return j if 0 <= j < q.n_options else None
