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
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from steerlens.core.models import load_model
from steerlens.data.categories import write_category_map
from steerlens.data.prompts import CATEGORIES, FOLLOW_UPS, PROMPTS
from steerlens.experiments.simulate_calibration import (
    _calibrate,
    _pair_accuracy,
    _scores,
    _standardise,
    _utility,
)
from steerlens.experiments.simulate_config import (
    CONVERSATION_TYPE,
    MODEL_NAMES,
    SimulationConfig,
)
from steerlens.experiments.simulate_io import (
    _summary,
    _survey_row,
    _write_jsonl,
)
from steerlens.experiments.simulate_styles import (
    GROUPS,
    STYLES,
    Style,
    _insert_cues,
)
from steerlens.metrics.attributes import ATTRIBUTES, measure, toxic_word_spans
from steerlens.run.generation import generate

logger = logging.getLogger(__name__)

__all__ = ["GROUPS", "STYLES", "SimulationConfig", "Style", "simulate"]


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
