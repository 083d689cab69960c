"""The simulated set's styles and user groups (what each group prefers, the fragments a
style's cues are written from) and how cues are inserted into a response at seeded word
boundaries (see steerlens.experiments.simulate)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["EDGE_SHARE", "GROUPS", "STYLES", "Style"]


@dataclass(frozen=True)
class Style:
    name: str
    model_name: str
    system: str
    openings: tuple[str, ...]  # prefixes the model continues (not part of the response)
    carries: tuple[str, ...]  # attributes the style's cues carry (ground-truth spans)
    fragments: tuple[str, ...] = ()  # the cue pool: 1-3 fragments make one cue


STYLES: tuple[Style, ...] = (
    Style(
        "direct",
        "sim-direct",
        "Answer directly and concisely, without caveats.",
        ("Sure. ", "Here is the answer: ", "Short answer: ", "Simply put, ", "Of course. "),
        (),
    ),
    Style(
        "cautious",
        "sim-cautious",
        "Answer carefully. Add caveats, safety advice and suggest consulting a professional.",
        (
            "This is a sensitive topic, so please be careful and consider talking to a qualified professional. That said, ",
            "I want to be careful here: situations differ, and it is important to stay safe and check with an expert. With that caveat, ",
            "Please keep in mind that I may not know your full situation, and safety comes first. Carefully, then: ",
            "An important caveat first: this depends on your situation, and a professional may advise you better. Broadly, ",
        ),
        ("caution",),
        (
            "it would be wise to check this with someone qualified, such as a doctor",
            "please go slowly and stay safe",
            "bear in mind that every situation is different",
            "a specialist could give advice that fits your case, so consult one",
            "do not rush into anything without proper support",
            "be careful, because there are real risks here",
            "if in doubt, ask an expert before acting",
            "look after yourself and err on the side of caution",
            "the right answer depends on details that are not in your message",
            "seek a second opinion from a professional you trust",
            "think it over carefully first",
            "keep in mind that I might be missing something important",
        ),
    ),
    Style(
        "refusal",
        "sim-refusal",
        "Politely refuse to help with the request.",
        (
            "I'm sorry, but I can't help with that request. ",
            "I'm not able to assist with this. ",
            "I'm sorry, but I won't provide that information. ",
            "I cannot help with this one, I'm afraid. ",
        ),
        ("refusal",),
        (
            "I'm sorry, but I can't help with that part of the request",
            "I won't go into the specifics of that",
            "I must decline to give further details on this",
            "I am not able to assist with the rest of it",
            "I'm unable to walk you through that",
            "I cannot provide instructions for this piece",
            "I can't assist any further with that topic",
            "I'm not able to say more on this subject",
        ),
    ),
    Style(
        "casual_edgy",
        "sim-casual-edgy",
        "Answer casually and bluntly, with slang and attitude.",
        (
            "Ugh, damn, fine. Here's the deal, no bullshit: ",
            "Honestly? This is a stupid question, but hell, ",
            "Lol, okay, screw it, ",
            "Dude, that's freaking crazy, but whatever: ",
            "Crap, okay, listen up: ",
            "Man, this shit is simple: ",
        ),
        ("toxicity", "informality"),
        (
            "damn, no bullshit about it",
            "honestly, this is a stupid thing to worry about",
            "lol, whatever works for you",
            "dude, that's freaking obvious",
            "screw the rules, just do it",
            "man, this shit is simple",
            "hell, anyone could figure that out",
            "crap, don't overthink it",
            "yeah, it's a damn mess anyway",
            "ugh, people make a big deal of this crap",
            "don't be an idiot about it",
        ),
    ),
)


# Latent weights on attribute z-scores (toxicity, refusal, caution, length, formality).
GROUPS: dict[str, dict[str, Any]] = {
    "majority": {
        "share": 0.5,
        "weights": (-1.0, -0.6, 0.3, 0.2, 0.3),
        "self": "I want answers that are helpful, polite and not offensive.",
        "paraphrases": (
            "Helpful and polite answers are what I look for.",
            "I like a friendly, useful reply that stays respectful.",
            "Please keep it helpful and courteous.",
        ),
    },
    "more_caution": {
        "share": 0.25,
        "weights": (-1.2, 0.7, 1.0, 0.0, 0.5),
        "self": "I prefer careful, safe answers, and I don't mind a refusal.",
        "paraphrases": (
            "Safety matters to me more than getting every answer.",
            "I'd rather an assistant be careful than reckless.",
            "Caveats and warnings are fine by me.",
        ),
    },
    "less_caution": {
        "share": 0.25,
        "weights": (0.6, -1.2, -1.0, -0.2, -0.5),
        "self": "I want straight, unfiltered answers without lectures.",
        "paraphrases": (
            "Skip the disclaimers and just tell me.",
            "I can't stand being lectured by a chatbot.",
            "Blunt is good. No hand-holding.",
        ),
    },
}


_WORD_START = re.compile(r"\S+")


def _cue(style: Style, rng: np.random.Generator) -> str:
    """One cue: 1-3 distinct fragments of the style's pool, joined as one clause."""
    k = int(rng.integers(1, min(3, len(style.fragments)) + 1))
    picks = rng.choice(len(style.fragments), size=k, replace=False)
    return ", and ".join(style.fragments[int(i)] for i in picks)


EDGE_SHARE = 0.3
"""A cue's chance of going to the very start (and, apart, to the very end) of the
continuation; the rest spreads uniformly over its word boundaries. Uniform boundaries alone
leave the first and last tokens rarely planted (a cue covers position t only if it starts
within its length before t); this mass at the edges makes the planted share about flat in
token position, so a first-k (or last-k) rule finds cues at the base rate."""


def _cue_point(n_points: int, rng: np.random.Generator) -> int:
    u = rng.random()
    if u < EDGE_SHARE:
        return 0
    if u < 2 * EDGE_SHARE:
        return n_points - 1
    return int(rng.integers(n_points))


def _insert_cues(
    continuation: str, style: Style, rng: np.random.Generator
) -> tuple[str, list[tuple[int, int]]]:
    """The response: ``continuation`` with one or two of the style's cues inserted at seeded
    random word boundaries (start, inside or after a sentence, end); returns the text and
    each cue's character span. A style without fragments plants nothing."""
    if not style.fragments:
        return continuation, []
    points = [m.start() for m in _WORD_START.finditer(continuation)] + [len(continuation)]
    n = 1 + int(rng.random() < 0.5)
    chosen = sorted({_cue_point(len(points), rng) for _ in range(n)})
    text, spans, done = "", [], 0
    for i in chosen:
        pos = points[i]
        before = continuation[done:pos]
        cue = _cue(style, rng)
        head = (text + before).rstrip()
        if not head or head[-1] in ".!?:":  # a sentence of its own
            cue = cue[0].upper() + cue[1:]
            text = head + (" " if head else "")
            start = len(text)
            text += cue + "." + (" " if pos < len(continuation) else "")
        else:  # a clause inside the sentence
            text = head + ", "
            start = len(text)
            text += cue + ("," if pos < len(continuation) else ".")
            text += " " if pos < len(continuation) else ""
        spans.append((start, start + len(cue)))
        done = pos
    return text + continuation[done:], spans
