"""Simulated PRISM: project-written prompts, model-written responses, simulated users.

Nobody knows real PRISM users' true preferences, and the real set cannot be downloaded
offline. This module writes a PRISM-format set whose users' preferences are *known*:

1. 120 prompts written for the project (30 per study category, ``data/prompts.py``) and a
   generic follow-up for each.
2. Four candidate responses per prompt, one per response style (direct, cautious, refusal,
   casual/edgy). A 135M model often ignores style instructions, so the model continues a
   style-specific opening written for the project (greedy); the opening only steers the
   continuation and is not part of the response. The style is then *planted* as one or two
   cues (``_compose``): phrases drawn from a style's fragment pool (1-3 fragments, so of
   varied length; every fragment carries at least one word an attribute measure counts and
   others it does not), inserted at seeded random word boundaries of the continuation
   (at its start, inside or after its first sentence, at its end). The planted truth is
   exactly the cues' character spans (plus toxic words the model wrote itself), so neither
   a position rule (the first k tokens) nor the measures' word lists find them for free.
3. Later turns: the user's follow-up, answered twice by the style the user chose (two
   cue draws of that style), as PRISM's within-model A/B pair. Two variants of one style are
   a near coin flip for any method: ``ground_truth.json`` lists them as
   ``weak_interactions``, and PPA analyses use turn-0 pairs.
4. Attributes measured per response (``metrics/attributes.py``): toxicity, refusal, caution,
   length, formality.
5. Simulated users with latent weights over the attributes' z-scores (a majority, users who
   want more caution, users who want less), scoring responses 1-100 and choosing by a
   Bradley-Terry / Plackett-Luce draw (Gumbel noise on the utility). Each user's noise is
   calibrated so that their latent utility agrees with their own preference pairs about 80%
   of the time: the oracle preference accuracy, the ceiling of any method on this set.
   20 conversations a user by default (``--thin``: 6, PRISM-like).
6. Nothing outside the choices gives a user's group away for free: model names are assigned
   to styles in a fresh random order in every conversation (a name predicts the style at
   chance), and the survey carries the group only as a noisy signal (a paraphrased
   self-description, from another group a quarter of the time; stated preferences with
   noise).

Written in the PRISM schema (``survey.jsonl``, ``conversations.jsonl``, ``utterances.jsonl``)
plus ``ground_truth.json`` and ``categories.csv``. Regenerate with
``python -m steerlens.experiments.simulate --out steerlens/data/demo --seed 0`` (``make data``).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from steerlens.core.models import load_model
from steerlens.data.categories import agreement, write_category_map
from steerlens.data.prompts import CATEGORIES, FOLLOW_UPS, PROMPTS
from steerlens.metrics.attributes import ATTRIBUTES, measure, toxic_word_spans
from steerlens.run.generation import generate

logger = logging.getLogger(__name__)

__all__ = ["GROUPS", "STYLES", "SimulationConfig", "Style", "simulate"]


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
# The names of the simulated "models": each conversation assigns them to the four styles in a
# fresh random order, so a name says nothing about a response's style (PRISM's names identify
# models, not styles).
MODEL_NAMES = ("sim-model-a", "sim-model-b", "sim-model-c", "sim-model-d")
CONVERSATION_TYPE = {
    "benign_control": "unguided",
    "context_dependent": "values guided",
    "harmful_borderline": "controversy guided",
    "safe_sensitive": "controversy guided",
}


@dataclass
class SimulationConfig:
    """Sizes and knobs of the simulated set (defaults: the shipped demo set)."""

    seed: int = 0
    model: str = "smollm2-135m-instruct"
    prompts_per_category: int = 30
    n_users: int = 48
    # 20 turn-0 conversations a user resolve personalised vs population PPA on the shipped set;
    # ``--thin`` gives PRISM's ~6 (about five conversations a user on real PRISM).
    conversations_per_user: int = 20
    later_turn_share: float = 0.5
    # Survey fields are a noisy signal of the group: a self-description from another group
    # with this probability, and stated preferences with Gaussian noise of this s.d. (points).
    survey_swap: float = 0.25
    stated_noise: float = 15.0
    max_new_tokens: int = 40
    target_oracle_accuracy: float = 0.8
    weight_noise: float = 0.25
    batch_size: int = 16
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not 1 <= self.prompts_per_category <= len(PROMPTS["benign_control"]):
            raise ValueError(f"prompts_per_category must be 1..{len(PROMPTS['benign_control'])}")
        if self.n_users < 3:
            raise ValueError("n_users must be >= 3 (one per group)")
        n_prompts = 4 * self.prompts_per_category
        if not 1 <= self.conversations_per_user <= n_prompts:
            raise ValueError(f"conversations_per_user must be 1..{n_prompts}")
        if not 0.5 < self.target_oracle_accuracy < 1.0:
            raise ValueError("target_oracle_accuracy must be in (0.5, 1)")
        if not 0.0 <= self.later_turn_share <= 1.0:
            raise ValueError("later_turn_share must be in [0, 1]")
        if not 0.0 <= self.survey_swap <= 1.0 or self.stated_noise < 0:
            raise ValueError("survey_swap must be in [0, 1] and stated_noise >= 0")


def _gen_jobs(model: Any, jobs: list[dict[str, Any]], cfg: SimulationConfig) -> list[str]:
    conversations = [[{"role": "system", "content": j["system"]}, *j["messages"]] for j in jobs]
    texts = generate(
        model,
        conversations,
        response_prefix=[j["opening"] for j in jobs],
        max_new_tokens=cfg.max_new_tokens,
        batch_size=cfg.batch_size,
        progress_bar=True,
        engine="tl",  # the path that made the shipped files: regeneration reproduces them
    )
    return [t.strip() for t in texts]


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


def _compose(raw: list[dict[str, Any]], seed: int) -> list[dict[str, Any]]:
    """Each response record with its text (cues planted in the model's continuation), its
    measured attributes and its ground-truth spans: the cues' spans for each attribute the
    style carries, and toxic words the model wrote outside them."""
    rng = np.random.default_rng([seed, 2])
    styles = {s.name: s for s in STYLES}
    texts, cue_spans = [], []
    for r in raw:
        text, spans = _insert_cues(r["continuation"], styles[r["style"]], rng)
        texts.append(text)
        cue_spans.append(spans)
    out = []
    for r, text, spans, a in zip(raw, texts, cue_spans, measure(texts), strict=True):
        style = styles[r["style"]]
        planted = [
            {"attribute": c, "start": s0, "end": e0, "source": "cue"}
            for s0, e0 in spans
            for c in style.carries
        ]
        planted += [
            {"attribute": "toxicity", "start": a0, "end": b0, "source": "word"}
            for a0, b0 in toxic_word_spans(text)
            if not ("toxicity" in style.carries and any(s0 <= a0 and b0 <= e0 for s0, e0 in spans))
        ]
        out.append(
            {
                **r,
                "text": text,
                "cues": [{"start": s0, "end": e0, "text": text[s0:e0]} for s0, e0 in spans],
                "attributes": a,
                "spans": sorted(planted, key=lambda x: (x["start"], x["end"], x["attribute"])),
            }
        )
    return out


def _responses(
    model: Any, cfg: SimulationConfig, rng: np.random.Generator
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    prompts = [
        {
            "prompt_id": f"{cat}-{i:02d}",
            "category": cat,
            "text": PROMPTS[cat][i],
            "follow_up": FOLLOW_UPS[int(rng.integers(len(FOLLOW_UPS)))],
        }
        for cat in CATEGORIES
        for i in range(cfg.prompts_per_category)
    ]
    first: list[dict[str, Any]] = []
    for p in prompts:
        for s in STYLES:
            first.append(
                {
                    "prompt": p,
                    "style": s,
                    "turn": 0,
                    "variant": 0,
                    "opening": s.openings[int(rng.integers(len(s.openings)))],
                    "system": s.system,
                    "messages": [{"role": "user", "content": p["text"]}],
                }
            )
    for job, text in zip(first, _gen_jobs(model, first, cfg), strict=True):
        job["continuation"] = text
    second: list[dict[str, Any]] = []
    for job in first:
        picks = rng.choice(len(job["style"].openings), size=2, replace=False)
        for v, k in enumerate(picks):
            second.append(
                {
                    **job,
                    "turn": 1,
                    "variant": v,
                    "opening": job["style"].openings[int(k)],
                    "messages": [
                        *job["messages"],
                        {"role": "assistant", "content": job["opening"] + job["continuation"]},
                        {"role": "user", "content": job["prompt"]["follow_up"]},
                    ],
                }
            )
    for job, text in zip(second, _gen_jobs(model, second, cfg), strict=True):
        job["continuation"] = text
    raw = [
        {
            "response_id": f"{job['prompt']['prompt_id']}-t{job['turn']}-{job['style'].name}-v{job['variant']}",
            "prompt_id": job["prompt"]["prompt_id"],
            "turn": job["turn"],
            "style": job["style"].name,
            "variant": job["variant"],
            "model_name": job["style"].model_name,
            "opening": job["opening"],
            "continuation": job["continuation"],
        }
        for job in first + second
    ]
    return raw, {p["prompt_id"]: p for p in prompts}


def _users(cfg: SimulationConfig, rng: np.random.Generator) -> list[dict[str, Any]]:
    names = list(GROUPS)
    counts = [round(GROUPS[g]["share"] * cfg.n_users) for g in names]
    counts[0] += cfg.n_users - sum(counts)
    users = []
    for g, n in zip(names, counts, strict=True):
        for _ in range(n):
            w = np.asarray(GROUPS[g]["weights"]) + rng.normal(0, cfg.weight_noise, len(ATTRIBUTES))
            users.append(
                {"group": g, "weights": dict(zip(ATTRIBUTES, w.round(4).tolist(), strict=True))}
            )
    order = rng.permutation(len(users))
    out = []
    for k, i in enumerate(order):
        out.append({"user_id": f"user{k:03d}", **users[int(i)]})
    return out


def _pair_accuracy(u: np.ndarray, noisy: np.ndarray) -> tuple[int, int]:
    """Agreements and pairs of (chosen = argmax noisy) vs each lower-scored candidate."""
    scores = _scores(noisy)
    c = int(np.argmax(noisy))
    agree = n = 0
    for j in range(len(u)):
        if j != c and scores[j] < scores[c]:
            n += 1
            agree += int(u[c] > u[j])
    return agree, n


def _scores(noisy: np.ndarray) -> np.ndarray:
    """1-100 scores, monotone in the noisy utility (so the chosen response scores highest)."""
    return np.clip(np.round(50 + 50 * np.tanh(noisy / 4)), 1, 100).astype(int)


def _calibrate(sets: list[np.ndarray], target: float, seed: int) -> tuple[float, float]:
    """Gumbel scale tau whose expected oracle pair accuracy on these candidate sets is ~target."""
    rng = np.random.default_rng(seed)
    draws = [rng.gumbel(size=(200, len(u))) for u in sets]

    def acc(tau: float) -> float:
        a = n = 0
        for u, g in zip(sets, draws, strict=True):
            for row in g:
                da, dn = _pair_accuracy(u, u + tau * row)
                a, n = a + da, n + dn
        return a / n if n else 1.0

    lo, hi = 0.0, 1.0
    while acc(hi) > target and hi < 64:
        lo, hi = hi, hi * 2
    for _ in range(14):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if acc(mid) > target else (lo, mid)
    tau = (lo + hi) / 2
    return tau, acc(tau)


_GEN_KEYS = ("seed", "model", "prompts_per_category", "max_new_tokens")


def _reusable(out: Path, cfg: SimulationConfig) -> dict[str, Any] | None:
    path = out / "ground_truth.json"
    if not path.exists():
        return None
    old = json.loads(path.read_text())
    if any(old["config"].get(k) != getattr(cfg, k) for k in _GEN_KEYS):
        return None
    return old


def _load_responses(
    out: Path, cfg: SimulationConfig, model: Any, reuse_responses: bool, t0: float
) -> tuple[list[dict[str, Any]], dict[str, Any], float, str]:
    """Responses and prompts (reused from ``out`` or generated), generation seconds, model name."""
    old = _reusable(out, cfg) if reuse_responses else None
    if old is not None:
        raw = [_raw(r) for r in old["responses"].values()]
        prompts, gen_seconds, model_name = old["prompts"], old["generation_seconds"], old["model"]
        logger.info("reusing %d responses from %s", len(raw), out)
    else:
        model = model if model is not None else load_model(cfg.model)
        # Separate streams: responses, cues and users can be redrawn independently.
        raw, prompts = _responses(model, cfg, np.random.default_rng([cfg.seed, 0]))
        gen_seconds, model_name = time.perf_counter() - t0, str(model.cfg.model_name)
    return _compose(raw, cfg.seed), prompts, gen_seconds, model_name


_RAW_KEYS = ("response_id", "prompt_id", "turn", "style", "variant", "model_name", "opening")


def _raw(response: dict[str, Any]) -> dict[str, Any]:
    """A stored response as the model wrote it: its continuation (sets written before the
    cues were planted kept the opening at the head of ``text``)."""
    cont = response.get("continuation")
    if cont is None:
        cont = response["text"][len(response["opening"]) :]
    return {**{k: response[k] for k in _RAW_KEYS}, "continuation": cont}


def _standardise(responses: list[dict[str, Any]]) -> tuple[np.ndarray, np.ndarray]:
    """Store each response's attribute z-scores under ``"z"``; returns the means and s.d.s."""
    matrix = np.array([[r["attributes"][a] for a in ATTRIBUTES] for r in responses])
    mean, std = matrix.mean(0), matrix.std(0) + 1e-9
    for r, row in zip(responses, matrix, strict=True):
        r["z"] = dict(zip(ATTRIBUTES, ((row - mean) / std).round(4).tolist(), strict=True))
    return mean, std


def _utility(w: np.ndarray, cands: list[dict[str, Any]]) -> np.ndarray:
    """A user's latent utility (weights @ attribute z-scores) of each candidate."""
    return np.array([w @ np.array([c["z"][a] for a in ATTRIBUTES]) for c in cands])


def _plans(
    users: list[dict[str, Any]],
    pids: list[str],
    by_key: dict[tuple[str, int, str, int], dict[str, Any]],
    cfg: SimulationConfig,
    rng: np.random.Generator,
) -> list[tuple[dict[str, Any], np.ndarray, list[dict[str, Any]]]]:
    """Each user's conversations: prompts, candidate order, model names, a second turn or not."""
    plans = []
    for user in users:
        w = np.array([user["weights"][a] for a in ATTRIBUTES])
        chosen_pids = rng.choice(len(pids), size=cfg.conversations_per_user, replace=False)
        convs = []
        for k in chosen_pids:
            pid = pids[int(k)]
            order = rng.permutation(len(STYLES))
            cands0 = [by_key[(pid, 0, STYLES[int(i)].name, 0)] for i in order]
            names = rng.permutation(len(MODEL_NAMES))
            convs.append(
                {
                    "pid": pid,
                    "cands0": cands0,
                    "names": {
                        s.name: MODEL_NAMES[int(n)] for s, n in zip(STYLES, names, strict=True)
                    },
                    "later": bool(rng.random() < cfg.later_turn_share),
                    "u0": _utility(w, cands0),
                }
            )
        plans.append((user, w, convs))
    return plans


def _calibrate_user(
    user: dict[str, Any],
    w: np.ndarray,
    convs: list[dict[str, Any]],
    by_key: dict[tuple[str, int, str, int], dict[str, Any]],
    cfg: SimulationConfig,
) -> float:
    """The user's Gumbel scale tau (also stored on the user with its expected accuracy)."""
    sets = [c["u0"] for c in convs]
    # later-turn candidates are same-style variants: include them in calibration too
    for c in convs:
        if c["later"]:
            style = c["cands0"][int(np.argmax(c["u0"]))]["style"]  # representative
            pair = [by_key[(c["pid"], 1, style, v)] for v in (0, 1)]
            sets.append(_utility(w, pair))
    tau, expected = _calibrate(
        sets, cfg.target_oracle_accuracy, seed=cfg.seed + int(user["user_id"][4:])
    )
    user["tau"], user["expected_oracle_accuracy"] = round(tau, 4), round(expected, 4)
    return tau


def _turns(
    c: dict[str, Any],
    prompt: dict[str, Any],
    w: np.ndarray,
    tau: float,
    by_key: dict[tuple[str, int, str, int], dict[str, Any]],
    rng: np.random.Generator,
) -> list[tuple[int, str, list[dict[str, Any]], np.ndarray, np.ndarray]]:
    """A conversation's turns (turn, user text, candidates, utility, noisy utility)."""
    turn_sets: list[tuple[int, str, list[dict[str, Any]], np.ndarray, np.ndarray]] = []
    noisy0 = c["u0"] + tau * rng.gumbel(size=len(c["u0"]))
    turn_sets.append((0, prompt["text"], c["cands0"], c["u0"], noisy0))
    chosen_style = c["cands0"][int(np.argmax(noisy0))]["style"]
    if c["later"]:
        pair = [by_key[(c["pid"], 1, chosen_style, v)] for v in (0, 1)]
        u1 = _utility(w, pair)
        turn_sets.append((1, prompt["follow_up"], pair, u1, u1 + tau * rng.gumbel(size=2)))
    return turn_sets


def _conversation(
    c: dict[str, Any],
    ci: int,
    user: dict[str, Any],
    prompt: dict[str, Any],
    turn_sets: list[tuple[int, str, list[dict[str, Any]], np.ndarray, np.ndarray]],
    conversations: list[dict[str, Any]],
    utterances: list[dict[str, Any]],
    weak: list[str],
) -> tuple[int, int]:
    """Append one conversation and its utterances; returns its oracle agreements and pairs."""
    base_time = dt.datetime(2026, 1, 1, 9, 0, 0)
    cid = f"c{len(conversations):04d}"
    history: list[dict[str, Any]] = [{"turn": 0, "role": "user", "content": prompt["text"]}]
    agree = npairs = 0
    for turn, text, cands, u, noisy in turn_sets:
        scores = _scores(noisy)
        chosen = int(np.argmax(noisy))
        da, dn = _pair_accuracy(u, noisy)
        agree, npairs = agree + da, npairs + dn
        if turn > 0:
            history.append({"turn": turn, "role": "user", "content": text})
        for j, cand in enumerate(cands):
            history.append(
                {
                    "turn": turn,
                    "role": "model",
                    "content": cand["text"],
                    "model_provider": "steerlens-sim",
                    "model_name": c["names"][cand["style"]],
                    "score": int(scores[j]),
                    "if_chosen": j == chosen,
                    "within_turn_id": j,
                }
            )
            utterances.append(
                {
                    "utterance_id": f"ut{len(utterances):05d}",
                    "interaction_id": f"{cid}-t{turn}",
                    "conversation_id": cid,
                    "user_id": user["user_id"],
                    "turn": turn,
                    "within_turn_id": j,
                    "conversation_type": CONVERSATION_TYPE[prompt["category"]],
                    "user_prompt": text,
                    "model_response": cand["text"],
                    "model_name": c["names"][cand["style"]],
                    "model_provider": "steerlens-sim",
                    "score": int(scores[j]),
                    "if_chosen": j == chosen,
                    "included_in_balanced_subset": True,
                    "_response_id": cand["response_id"],
                }
            )
        if turn > 0:  # two openings of one style: a near coin flip, marked as weak
            weak.append(f"{cid}-t{turn}")
    conversations.append(
        {
            "conversation_id": cid,
            "user_id": user["user_id"],
            "conversation_type": CONVERSATION_TYPE[prompt["category"]],
            "opening_prompt": prompt["text"],
            "conversation_turns": len(turn_sets),
            "conversation_history": history,
            "performance_attributes": {},
            "choice_attributes": {},
            "open_feedback": "",
            "included_in_balanced_subset": True,
            "generated_datetime": (
                base_time + dt.timedelta(minutes=37 * len(conversations) + ci)
            ).isoformat(sep=" "),
        }
    )
    return agree, npairs


def _summary(
    cfg: SimulationConfig,
    model_name: str,
    gen_seconds: float,
    t0: float,
    counts: dict[str, int],
    mean: np.ndarray,
    std: np.ndarray,
    responses: list[dict[str, Any]],
    users: list[dict[str, Any]],
    prompts: dict[str, Any],
) -> dict[str, Any]:
    """The set's summary (``summary.json``, also the head of ``ground_truth.json``)."""
    style_means = {
        s.name: {
            a: round(
                float(np.mean([r["attributes"][a] for r in responses if r["style"] == s.name])), 4
            )
            for a in ATTRIBUTES
        }
        for s in STYLES
    }
    accs = [u["oracle_accuracy"] for u in users if u["oracle_accuracy"] is not None]
    return {
        "simulated": True,
        "description": "Simulated PRISM-format set made by steerlens.experiments.simulate: prompts written for "
        "the project, responses by the model below, simulated users. Not real PRISM data.",
        "config": asdict(cfg),
        "model": model_name,
        "generation_seconds": round(gen_seconds, 1),
        "total_seconds": round(time.perf_counter() - t0, 1),
        "counts": counts,
        "attributes": list(ATTRIBUTES),
        "attribute_mean": dict(zip(ATTRIBUTES, mean.round(4).tolist(), strict=True)),
        "attribute_std": dict(zip(ATTRIBUTES, std.round(4).tolist(), strict=True)),
        "style_means": style_means,
        "oracle_accuracy": {
            "mean": round(float(np.mean(accs)), 4),
            "min": min(accs),
            "max": max(accs),
        },
        "categoriser_agreement": {
            k: round(v, 4)
            for k, v in agreement((p["text"], p["category"]) for p in prompts.values()).items()
        },
    }


def simulate(
    out_dir: str | Path,
    config: SimulationConfig | None = None,
    model: Any = None,
    *,
    reuse_responses: bool = False,
) -> dict[str, Any]:
    """Generate the simulated set into ``out_dir``; returns the summary also saved in it.

    With ``reuse_responses``, responses already in ``out_dir`` made with the same seed, model,
    prompts and length are kept and only users and their choices are drawn again.
    """
    cfg = config or SimulationConfig()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    responses, prompts, gen_seconds, model_name = _load_responses(
        out, cfg, model, reuse_responses, t0
    )
    rng = np.random.default_rng([cfg.seed, 1])

    mean, std = _standardise(responses)
    by_key = {(r["prompt_id"], r["turn"], r["style"], r["variant"]): r for r in responses}
    users = _users(cfg, rng)
    plans = _plans(users, sorted(prompts), by_key, cfg, rng)

    survey: list[dict[str, Any]] = []
    weak: list[str] = []
    conversations: list[dict[str, Any]] = []
    utterances: list[dict[str, Any]] = []
    for user, w, convs in plans:
        tau = _calibrate_user(user, w, convs, by_key, cfg)
        agree = npairs = 0
        for ci, c in enumerate(convs):
            prompt = prompts[c["pid"]]
            turn_sets = _turns(c, prompt, w, tau, by_key, rng)
            da, dn = _conversation(c, ci, user, prompt, turn_sets, conversations, utterances, weak)
            agree, npairs = agree + da, npairs + dn
        user["oracle_accuracy"] = round(agree / npairs, 4) if npairs else None
        user["n_pairs"] = npairs
        survey.append(_survey_row(user, cfg, rng))

    response_of = {u["utterance_id"]: u.pop("_response_id") for u in utterances}
    counts = {
        "users": len(users),
        "conversations": len(conversations),
        "utterances": len(utterances),
        "responses": len(responses),
        "prompts": len(prompts),
    }
    summary = _summary(
        cfg, model_name, gen_seconds, t0, counts, mean, std, responses, users, prompts
    )
    gt = {
        **summary,
        "groups": GROUPS,
        "styles": [asdict(s) for s in STYLES],
        "users": {u["user_id"]: {k: v for k, v in u.items() if k != "user_id"} for u in users},
        "weak_interactions": weak,
        "prompts": prompts,
        "responses": {r["response_id"]: r for r in responses},
        "utterance_response": response_of,
    }
    _write_jsonl(out / "survey.jsonl", survey)
    _write_jsonl(out / "conversations.jsonl", conversations)
    _write_jsonl(out / "utterances.jsonl", utterances)
    (out / "ground_truth.json").write_text(json.dumps(gt, indent=1, sort_keys=True))
    (out / "summary.json").write_text(json.dumps(summary, indent=1, sort_keys=True))
    write_category_map(out / "categories.csv", {p["text"]: p["category"] for p in prompts.values()})
    logger.info("simulated set written to %s in %.0f s", out, summary["total_seconds"])
    return summary


def _survey_row(
    user: dict[str, Any], cfg: SimulationConfig, rng: np.random.Generator
) -> dict[str, Any]:
    """A survey row that carries the user's group only as a noisy signal."""
    group = user["group"]
    if rng.random() < cfg.survey_swap:  # people describe themselves imperfectly
        others = [g for g in GROUPS if g != group]
        group = others[int(rng.integers(len(others)))]
    texts = GROUPS[group]["paraphrases"]
    wts = user["weights"]

    def stated(value: float) -> int:
        return int(np.clip(round(value + rng.normal(0, cfg.stated_noise)), 1, 100))

    return {
        "user_id": user["user_id"],
        "self_description": texts[int(rng.integers(len(texts)))],
        "system_string": texts[int(rng.integers(len(texts)))],
        "stated_prefs": {
            "safety": stated(50 - 25 * wts["toxicity"] + 15 * wts["caution"]),
            "helpfulness": stated(60 - 20 * wts["refusal"]),
            "fluency": stated(55 + 20 * wts["formality"]),
            "factuality": stated(70),
            "creativity": stated(50 - 15 * wts["formality"]),
        },
    }


def _write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    with path.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False, sort_keys=True) + "\n")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="Write steerlens's simulated PRISM-format set.")
    ap.add_argument("--out", default="steerlens/data/demo")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--users", type=int, default=48)
    ap.add_argument("--prompts-per-category", type=int, default=30)
    ap.add_argument(
        "--thin",
        action="store_true",
        help="PRISM-like thin users: 6 conversations each instead of 20",
    )
    ap.add_argument(
        "--reuse-responses",
        action="store_true",
        help="keep the responses already in --out; redraw users and choices only",
    )
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    cfg = SimulationConfig(
        seed=args.seed,
        model=args.model,
        n_users=args.users,
        prompts_per_category=args.prompts_per_category,
        conversations_per_user=6 if args.thin else 20,
    )
    summary = simulate(args.out, cfg, reuse_responses=args.reuse_responses)
    keys = ("counts", "style_means", "oracle_accuracy", "generation_seconds", "total_seconds")
    logger.info(json.dumps({k: summary[k] for k in keys}, indent=1))


if __name__ == "__main__":  # pragma: no cover
    main()
