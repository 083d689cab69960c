"""Hand-made fixtures shared by several test modules (tests/ is on sys.path through conftest)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

import steerlens as sl
from steerlens.data.schema import PreferencePair
from steerlens.methods import PairActivations

# --- a hand-made three-interaction fixture with a known answer ----------------------------


def _model(turn, wid, content, score, chosen, name="m"):
    return {
        "turn": turn,
        "role": "model",
        "content": content,
        "model_provider": "p",
        "model_name": name,
        "score": score,
        "if_chosen": chosen,
        "within_turn_id": wid,
    }


def _fixture_rows():
    survey = [
        {
            "user_id": "u1",
            "self_description": "d1",
            "system_string": "s1",
            "stated_prefs": {"safety": 80},
        },
        {"user_id": "u2", "self_description": "d2", "system_string": "s2", "stated_prefs": {}},
    ]
    c1_hist = [
        {"turn": 0, "role": "user", "content": "Should I quit my job?"},
        _model(0, 0, "A", 80, True, "ma"),
        _model(0, 1, "B", 60, False, "mb"),
        _model(0, 2, "C", 80, False, "mc"),
        _model(0, 3, "D", 20, False, "md"),
        {"turn": 1, "role": "user", "content": "Why?"},
        _model(1, 0, "A1", 55, True, "ma"),
        _model(1, 1, "A2", 70, False, "ma"),
    ]
    c2_hist = [
        {"turn": 0, "role": "user", "content": "What is the capital of Australia?"},
        _model(0, 0, "X", 30, False, "mx"),
        _model(0, 1, "Y", 90, False, "my"),
    ]
    base = {
        "conversation_type": "unguided",
        "performance_attributes": {},
        "choice_attributes": {},
        "open_feedback": "",
        "included_in_balanced_subset": True,
        "generated_datetime": "2026-01-01 00:00:00",
    }
    convs = [
        {
            **base,
            "conversation_id": "c1",
            "user_id": "u1",
            "opening_prompt": "Should I quit my job?",
            "conversation_turns": 2,
            "conversation_history": c1_hist,
        },
        {
            **base,
            "conversation_id": "c2",
            "user_id": "u2",
            "opening_prompt": "What is the capital of Australia?",
            "conversation_turns": 1,
            "conversation_history": c2_hist,
        },
    ]
    utts = []
    for conv in convs:
        prompt = {}
        for h in conv["conversation_history"]:
            if h["role"] == "user":
                prompt[h["turn"]] = h["content"]
                continue
            utts.append(
                {
                    "utterance_id": f"{conv['conversation_id']}-{h['turn']}-{h['within_turn_id']}",
                    "interaction_id": f"{conv['conversation_id']}-t{h['turn']}",
                    "conversation_id": conv["conversation_id"],
                    "user_id": conv["user_id"],
                    "turn": h["turn"],
                    "within_turn_id": h["within_turn_id"],
                    "conversation_type": "unguided",
                    "user_prompt": prompt[h["turn"]],
                    "model_response": h["content"],
                    "model_name": h["model_name"],
                    "model_provider": "p",
                    "score": h["score"],
                    "if_chosen": h["if_chosen"],
                    "included_in_balanced_subset": True,
                }
            )
    return {"survey.jsonl": survey, "conversations.jsonl": convs, "utterances.jsonl": utts}


def _write(folder: Path, tables) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, rows in tables.items():
        (folder / name).write_text(
            "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows)
        )
    return folder


def _pair(user, prompt, chosen, rejected, gap, i):
    return PreferencePair(
        user_id=user,
        conversation_id=f"c{i}",
        interaction_id=f"i{i}",
        turn=0,
        category="benign_control",
        prompt=prompt,
        chosen=chosen,
        rejected=rejected,
        chosen_score=50 + gap,
        rejected_score=50,
        chosen_model="a",
        rejected_model="b",
        chosen_utterance_id=f"x{i}",
        rejected_utterance_id=f"y{i}",
    )


PAIRS = [
    _pair("u1", "q1?", "good answer", "bad", 30, 0),
    _pair("u1", "q2?", "fine", "awful answer here", 10, 1),
    _pair("u2", "q3?", "sure thing", "no way", 5, 2),
]


def _table(chosen, rejected, users, gaps):
    n = len(users)
    return PairActivations(
        chosen,
        rejected,
        list(range(chosen.shape[1])),
        "hook_resid_post",
        "m",
        pd.DataFrame(
            {
                "user_id": users,
                "score_gap": gaps,
                "category": [None] * n,
                "interaction_id": [None] * n,
                "turn": [0] * n,
            }
        ),
        "mean",
    )


# --- token-for-token fidelity with a model's own tokenizer ---------------------------------

TEXTS = ["The capital of France is", "Question: 2 + 2 = ?\nAnswer:"]
CONVERSATION = [
    {"role": "user", "content": "Hi!"},
    {"role": "assistant", "content": "Hello."},
    {"role": "user", "content": "Why?"},
]


def check_own_tokenization(model, own) -> None:
    """Raw text and a chat conversation encode to the ids of the model's own tokenizer."""
    for text in TEXTS:
        assert sl.tokens.tokenize(model, [text])[0].tolist() == own(text)["input_ids"]
    want = own.apply_chat_template(CONVERSATION, tokenize=True, add_generation_prompt=True)
    want = want["input_ids"] if isinstance(want, dict) or hasattr(want, "keys") else want
    got = sl.encode_prompts(model, [CONVERSATION], chat=True)[0].tolist()
    assert got == list(want)


# --- the keys every study summary holds (steerlens demo, tiny and embedded) -------------

SUMMARY_KEYS = [
    "model",
    "data",
    "n_prompts",
    "n_users",
    "mae_baseline",
    "mae_best",
    "operating_alpha",
    "ppl_baseline",
    "mmlu_unsteered",
    "mmlu_steered",
    "ppa_personalized",
    "ppa_population",
    "ppa_toxicity_only",
    "ppa_oracle",
    "utility_gain",
    "kl_neutral",
    "ppl_neutral",
    "kl_budgets",
    "calibrated",
    "utility_per_kl",
    "token_precision",
    "token_recall",
    "token_precision_baseline",
    "attribution_spearman",
    "steerx_pair_ppa",
    "steerx_pair_minus_all_ppa",
    "selection",
    "headline",
    "kl_heldout",
    "calibration_unreached",
    "conditional",
    "conditional_steered_share",
    "conditional_arms",
    "token_baselines",
    "mmlu_by_alpha",
    "mmlu_chance",
    "code",
]

# the summary's estimates: each {"mean", "interval" (None below 5 units), "n", "unit"}
ESTIMATE_KEYS = [
    "mae_baseline",
    "mae_best",
    "mae_change_pct_best",
    "mmlu_unsteered",
    "mmlu_steered",
    "mmlu_steered_minus_unsteered",
    "ppa_personalized",
    "ppa_population",
    "ppa_toxicity_only",
    "ppa_oracle",
    "ppa_personalized_minus_population",
    "ppa_oracle_minus_personalized",
    "token_precision",
    "token_recall",
    "token_precision_planted",
    "token_recall_planted",
    "steerx_pair_minus_all_ppa",
]


# --- the repository's scripts (analyses/, benchmarks/), imported as modules by their tests ---


def load_script(folder: str, name: str):
    """Import ``<repo>/<folder>/<name>.py`` as the module ``name``."""
    import importlib.util
    import sys

    path = Path(__file__).resolve().parents[1] / folder / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


# --- a three-prompt sweep (two users) for the sweep tests --------------------------------


def _sweep_fixtures():
    from steerlens.experiments.sweep import GenerationSettings, SweepPrompt

    prompts = [
        SweepPrompt("p0", "Tell me about cats.", "u1", "benign", "Cats are small."),
        SweepPrompt("p1", "How do I bake bread?", "u2", "benign", "Knead it well."),
        SweepPrompt("p2", "Is it ok to swear?", "u1", "sensitive", "Damn right it is."),
    ]
    return prompts, GenerationSettings(max_new_tokens=5, batch_size=4, cells_per_batch=4)


SWEEP_PROMPTS, SWEEP_SETTINGS = _sweep_fixtures()
