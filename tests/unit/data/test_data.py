from __future__ import annotations

import json
import time

import pytest
from helpers import _fixture_rows, _write

import steerlens as sl
from steerlens.data import PrismFormatError, load_prism
from steerlens.data.categories import categorize, load_category_map


@pytest.fixture
def fixture_dir(tmp_path):
    return _write(tmp_path / "prism", _fixture_rows())


def test_pairs_on_hand_made_fixture(fixture_dir):
    ds = load_prism(fixture_dir)
    assert not ds.is_simulated and ds.problems == []
    got = {(p.interaction_id, p.chosen, p.rejected, p.score_gap) for p in ds.preference_pairs()}
    # c1-t0: A (chosen, 80) beats B (60) and D (20); C ties A at 80 -> dropped.
    # c1-t1: the chosen A1 scored lower than A2 -> no pair.
    # c2-t0: nothing marked chosen -> the highest score (Y) is chosen.
    assert got == {("c1-t0", "A", "B", 20), ("c1-t0", "A", "D", 60), ("c2-t0", "Y", "X", 60)}
    assert {p.category for p in ds.preference_pairs(users=["u1"])} == {"context_dependent"}
    assert {p.category for p in ds.preference_pairs(users=["u2"])} == {"benign_control"}
    assert len(ds.preference_pairs(turn0_only=True)) == 3
    assert len(ds.preference_pairs(categories=["benign_control"])) == 1
    with pytest.raises(KeyError, match="unknown user id 'u9'"):
        ds.preference_pairs(users=["u9"])
    with pytest.raises(KeyError, match="unknown user id"):
        ds.user_history("nobody")
    assert [c.conversation_id for c in ds.user_history("u1")] == ["c1"]
    assert ds.users["u1"].stated_prefs == {"safety": 80}


def test_with_history_keeps_earlier_turns(tmp_path):
    rows = _fixture_rows()
    # make turn 1 a proper pair: A1 chosen with the higher score
    for h in rows["conversations.jsonl"][0]["conversation_history"]:
        if h.get("content") == "A2":
            h["score"] = 40
    for u in rows["utterances.jsonl"]:
        if u["model_response"] == "A2":
            u["score"] = 40
    ds = load_prism(_write(tmp_path / "p", rows))
    (pair,) = [p for p in ds.preference_pairs(with_history=True) if p.turn == 1]
    assert pair.messages() == [
        {"role": "user", "content": "Should I quit my job?"},
        {"role": "assistant", "content": "A"},
        {"role": "user", "content": "Why?"},
    ]


def _corrupt(tables, file, index, mutate):
    rows = json.loads(json.dumps(tables))
    rows[file][index] = mutate(rows[file][index])
    return rows


@pytest.mark.parametrize(
    ("file", "index", "mutate", "match"),
    [
        (
            "conversations.jsonl",
            1,
            lambda r: "{not json",
            r"conversations.jsonl line 2: malformed JSON",
        ),
        (
            "conversations.jsonl",
            0,
            lambda r: {k: v for k, v in r.items() if k != "opening_prompt"},
            r"conversations.jsonl line 1, field 'opening_prompt': missing",
        ),
        (
            "utterances.jsonl",
            2,
            lambda r: {**r, "turn": "zero"},
            r"utterances.jsonl line 3, field 'turn': expected int",
        ),
        (
            "utterances.jsonl",
            0,
            lambda r: {**r, "score": 150},
            r"utterances.jsonl line 1, field 'score': score 150 is outside 1-100",
        ),
        (
            "conversations.jsonl",
            0,
            lambda r: {
                **r,
                "conversation_history": [
                    r["conversation_history"][0],
                    {**r["conversation_history"][1], "score": 0},
                ],
            },
            r"conversations.jsonl line 1, field 'conversation_history\[1\].score': score 0 is outside 1-100",
        ),
        (
            "conversations.jsonl",
            1,
            lambda r: {**r, "user_id": "ghost"},
            r"conversations.jsonl line 2, field 'user_id': unknown user id 'ghost'",
        ),
        (
            "utterances.jsonl",
            1,
            lambda r: {**r, "model_response": "changed"},
            r"utterances.jsonl line 2, field 'model_response': disagrees with conversation c1",
        ),
        (
            "utterances.jsonl",
            0,
            lambda r: {**r, "if_chosen": "yes"},
            r"utterances.jsonl line 1, field 'if_chosen': expected bool",
        ),
        (
            "survey.jsonl",
            1,
            lambda r: {**r, "user_id": "u1"},
            r"survey.jsonl line 2, field 'user_id': duplicate user id",
        ),
    ],
)
def test_bad_input_names_file_line_field(tmp_path, file, index, mutate, match):
    folder = _write(tmp_path / "bad", _corrupt(_fixture_rows(), file, index, mutate))
    with pytest.raises(PrismFormatError, match=match):
        load_prism(folder)
    lenient = load_prism(folder, strict=False)  # skipped, counted and explained
    assert lenient.problems and lenient.problems[0].file == file


def test_missing_file_and_folder(tmp_path, fixture_dir):
    (fixture_dir / "survey.jsonl").unlink()
    with pytest.raises(PrismFormatError, match=r"survey\.jsonl: file is missing"):
        load_prism(fixture_dir)
    with pytest.raises(PrismFormatError, match="no such folder"):
        load_prism(tmp_path / "nowhere")


def test_missing_utterance_is_an_error(tmp_path):
    rows = _fixture_rows()
    rows["utterances.jsonl"] = rows["utterances.jsonl"][:-1]
    with pytest.raises(
        PrismFormatError,
        match=r"conversations.jsonl line 2, field 'conversation_history\[2\]'.*no row in utterances",
    ):
        load_prism(_write(tmp_path / "p", rows))


def test_lenient_mode_keeps_good_rows(tmp_path):
    rows = _fixture_rows()
    rows["utterances.jsonl"][1]["score"] = 101
    ds = load_prism(_write(tmp_path / "p", rows), strict=False)
    reasons = [p.reason for p in ds.problems]
    assert any("outside 1-100" in r for r in reasons)
    assert len(ds.utterances) == len(rows["utterances.jsonl"]) - 1


def test_hf_offline_fails_fast_and_names_local_folder(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    t = time.perf_counter()
    with pytest.raises(ConnectionError, match="load_prism\\('path/to/folder'\\)"):
        load_prism("hf")
    assert time.perf_counter() - t < 5  # fails fast rather than waiting on the network


def test_category_overrides(tmp_path, fixture_dir):
    csv_path = tmp_path / "cats.csv"
    csv_path.write_text('prompt,category\n"What is the capital of Australia?",safe_sensitive\n')
    ds = load_prism(fixture_dir, categories=csv_path)
    assert ds.conversations["c2"].category == "safe_sensitive"
    assert (
        load_prism(fixture_dir, categories={"Should I quit my job?": "harmful_borderline"})
        .conversations["c1"]
        .category
        == "harmful_borderline"
    )
    bad = tmp_path / "bad.csv"
    bad.write_text("prompt,category\nx,spicy\n")
    with pytest.raises(ValueError, match=r"line 2, field 'category': 'spicy'"):
        load_category_map(bad)


def test_categoriser_rules():
    assert categorize("How do hackers crack weak passwords?") == "harmful_borderline"
    assert categorize("I have been feeling depressed. What can I do?") == "safe_sensitive"
    assert categorize("Should I move to Berlin?") == "context_dependent"
    assert categorize("How do I bake bread?") == "benign_control"
    assert (
        categorize("How do I bake bread?", {"How do I bake bread?": "safe_sensitive"})
        == "safe_sensitive"
    )


def test_split_is_seeded_and_disjoint(fixture_dir):
    ds = load_prism("demo")
    a_train, a_test = ds.split(held_out=0.34, seed=3)
    b_train, b_test = ds.split(held_out=0.34, seed=3)
    c_train, _ = ds.split(held_out=0.34, seed=4)
    assert a_train == b_train and a_test == b_test
    assert a_train != c_train
    assert not {p.conversation_id for p in a_train} & {p.conversation_id for p in a_test}
    users_test = {p.user_id for p in a_test}
    assert users_test == {p.user_id for p in a_train} == set(ds.users)
    with pytest.raises(ValueError, match="held_out"):
        ds.split(held_out=1.5)


# --- the shipped simulated set -------------------------------------------------------------


def test_demo_set_round_trip_and_ground_truth():
    ds = load_prism("demo")
    gt = ds.ground_truth
    assert ds.is_simulated and gt is not None and gt["simulated"] is True
    assert "simulated" in repr(ds)
    assert len(ds.users) == gt["counts"]["users"] >= 48
    assert len(ds.conversations) == gt["counts"]["conversations"] == 20 * len(ds.users)
    assert len(ds.utterances) == gt["counts"]["utterances"]
    labels = {p["text"]: p["category"] for p in gt["prompts"].values()}
    assert len(labels) >= 120 and {
        sum(v == c for v in labels.values()) for c in sl.data.CATEGORIES
    } == {30}
    for conv in ds.conversations.values():
        assert conv.category == labels[conv.opening_prompt]  # the shipped labels win
    assert any(c.conversation_turns == 2 for c in ds.conversations.values())  # later-turn A/B pairs
    pairs = ds.preference_pairs()
    assert len(pairs) > 500 and any(p.turn == 1 for p in pairs)
    # every style measurably realised
    means = gt["style_means"]
    assert means["casual_edgy"]["toxicity"] > 0.5 > means["direct"]["toxicity"]
    assert (
        means["refusal"]["refusal"] > 0.9
        and means["cautious"]["caution"] > means["direct"]["caution"]
    )
    # calibrated choice noise: oracle accuracy around 0.8 on average
    assert 0.7 < gt["oracle_accuracy"]["mean"] < 0.9
    # every utterance maps to a response with ground-truth spans
    resp = gt["responses"][gt["utterance_response"][ds.utterances[0].utterance_id]]
    assert resp["text"] == ds.utterances[0].model_response


def test_model_names_carry_no_style_signal():
    """Predicting a response's style from its model name does no better than chance."""
    from collections import Counter

    ds = load_prism("demo")
    gt = ds.ground_truth
    styles = {uid: gt["responses"][rid]["style"] for uid, rid in gt["utterance_response"].items()}
    turn0 = [u for u in ds.utterances if u.turn == 0]
    by_name: dict[str, Counter] = {}
    for u in turn0:
        by_name.setdefault(u.model_name, Counter())[styles[u.utterance_id]] += 1
    assert set(by_name) == {"sim-model-a", "sim-model-b", "sim-model-c", "sim-model-d"}
    best_guess = sum(c.most_common(1)[0][1] for c in by_name.values()) / len(turn0)
    assert best_guess < 0.25 + 0.03  # the best name -> style rule is at chance (4 styles)


def test_survey_is_only_a_noisy_signal_of_the_group():
    from steerlens.experiments.simulate import GROUPS

    ds = load_prism("demo")
    users = ds.ground_truth["users"]
    verbatim = {g["self"] for g in GROUPS.values()}
    assert not any(u.self_description in verbatim for u in ds.users.values())
    own = [
        ds.users[uid].self_description in GROUPS[info["group"]]["paraphrases"]
        for uid, info in users.items()
    ]
    assert 0.5 < sum(own) / len(own) < 0.95  # mostly, not always, the user's own group


def test_prompt_split_is_prompt_disjoint_and_weak_pairs_are_marked():
    ds = load_prism("demo")
    train, test = ds.split(by="prompt", seed=1)
    assert train and test
    assert not {p.prompt for p in train if p.turn == 0} & {p.prompt for p in test if p.turn == 0}
    assert {p.interaction_id for p in train}.isdisjoint(p.interaction_id for p in test)
    weak = ds.weak_interactions
    later = {p.interaction_id for p in ds.preference_pairs() if p.turn > 0}
    assert later and later <= weak
    with pytest.raises(ValueError, match="by must be"):
        ds.split(by="user")


def test_simulator_is_deterministic_on_tiny_model(tmp_path):
    from steerlens.experiments.simulate import SimulationConfig, simulate

    model = sl.load_model("tiny-random")
    cfg = SimulationConfig(
        prompts_per_category=1,
        n_users=4,
        conversations_per_user=2,
        max_new_tokens=4,
        model="tiny-random",
        later_turn_share=1.0,
    )
    simulate(tmp_path / "a", cfg, model=model)
    simulate(tmp_path / "b", cfg, model=model)
    for name in ("survey.jsonl", "conversations.jsonl", "utterances.jsonl", "categories.csv"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    ds = load_prism(tmp_path / "a")
    assert ds.is_simulated and len(ds.conversations) == 8
    assert all(c.conversation_turns == 2 for c in ds.conversations.values())
    with pytest.raises(ValueError, match="n_users"):
        SimulationConfig(n_users=1)


# --- MMLU ----------------------------------------------------------------------------------


def test_mmlu_bundled_and_subsample(tmp_path):
    items = sl.data.load_mmlu()
    assert len({it.subject for it in items}) == 57
    # the 14,042 test questions (the file's two header-like rows left out), with the file's
    # letters: 3222 A, 3462 B, 3582 C, 3776 D; the first row's answer is D
    assert len(items) == 14042
    assert [sum(it.answer == k for it in items) for k in range(4)] == [3222, 3462, 3582, 3776]
    assert (items[0].answer_letter, items[0].choices[items[0].answer]) == (
        "D",
        "Not wrong, Not wrong",
    )
    a = sl.data.load_mmlu(n=114, seed=1)
    assert a == sl.data.load_mmlu(n=114, seed=1) and a != sl.data.load_mmlu(n=114, seed=2)
    counts = {}
    for it in a:
        counts[it.subject] = counts.get(it.subject, 0) + 1
    assert set(counts.values()) == {2}  # stratified: two per subject
    phys = sl.data.load_mmlu(subjects=["high_school_physics"])
    assert phys and {it.subject for it in phys} == {"high_school_physics"}
    with pytest.raises(ValueError, match="unknown MMLU subjects"):
        sl.data.load_mmlu(subjects=["alchemy"])
    path = tmp_path / "m.jsonl"
    path.write_text(
        json.dumps(
            {
                "question": "q",
                "answer_a": "1",
                "answer_b": "2",
                "answer_c": "3",
                "answer_d": "4",
                "correct_answer": "C",
                "topic": "college math",
            }
        )
        + "\n"
        + json.dumps(
            {
                "question": "question",
                "answer_a": "a",
                "answer_b": "b",
                "answer_c": "c",
                "answer_d": "d",
                "correct_answer": "answer",
                "topic": "topic",
            }
        )
        + "\n"
    )
    (only,) = sl.data.load_mmlu(path)
    assert (only.answer, only.answer_letter, only.subject) == (2, "C", "college_math")


def _mark_chosen(rows, content):
    for h in rows["conversations.jsonl"][0]["conversation_history"]:
        if h.get("content") == content:
            h["if_chosen"] = True
    for u in rows["utterances.jsonl"]:
        if u["model_response"] == content:
            u["if_chosen"] = True
    return rows


def test_two_chosen_responses_are_an_error_not_a_pick(tmp_path):
    folder = _write(tmp_path / "p", _mark_chosen(_fixture_rows(), "B"))
    with pytest.raises(
        PrismFormatError,
        match=r"utterances.jsonl line 2, field 'if_chosen': interaction 'c1-t0' has 2 responses marked if_chosen",
    ):
        load_prism(folder)
    lenient = load_prism(folder, strict=False)
    assert [p.field for p in lenient.problems] == ["if_chosen"]
    assert all(p.interaction_id != "c1-t0" for p in lenient.preference_pairs())
    assert any(p.interaction_id == "c2-t0" for p in lenient.preference_pairs())


def test_an_interaction_spanning_conversations_is_an_error(tmp_path):
    rows = _fixture_rows()
    rows["utterances.jsonl"][-1]["interaction_id"] = "c1-t0"  # a c2 response filed under c1
    folder = _write(tmp_path / "p", rows)
    n = len(rows["utterances.jsonl"])
    with pytest.raises(
        PrismFormatError,
        match=rf"utterances.jsonl line {n}, field 'conversation_id': interaction 'c1-t0' mixes",
    ):
        load_prism(folder)
    assert load_prism(folder, strict=False).problems[0].field == "conversation_id"


def test_history_roles_map_to_chat_roles_and_unknown_roles_fail(tmp_path):
    from dataclasses import replace

    from steerlens.data.prism import _history_before

    ds = load_prism(_write(tmp_path / "p", _fixture_rows()))
    conv = ds.conversations["c1"]
    assert [m["role"] for m in _history_before(conv, 1)] == ["user", "assistant"]
    odd = replace(
        conv,
        conversation_history=(replace(conv.conversation_history[0], role="system"),),
    )
    with pytest.raises(ValueError, match="unknown role 'system'"):
        _history_before(odd, 1)
    rows = _fixture_rows()
    rows["conversations.jsonl"][0]["conversation_history"][0]["role"] = "assistant"
    with pytest.raises(PrismFormatError, match=r"field 'conversation_history\[0\].role'"):
        load_prism(_write(tmp_path / "q", rows))


def test_an_interaction_spanning_turns_is_an_error(tmp_path):
    rows = _fixture_rows()
    turn1 = [u for u in rows["utterances.jsonl"] if u["turn"] == 1]
    turn1[0]["interaction_id"] = "c1-t0"  # a turn-1 response filed under turn 0
    folder = _write(tmp_path / "p", rows)
    with pytest.raises(PrismFormatError, match=r"field 'turn': interaction 'c1-t0' mixes"):
        load_prism(folder)


def test_two_chosen_at_turn0_drop_the_conversations_later_turns_in_lenient_mode(tmp_path):
    ds = load_prism(_write(tmp_path / "p", _mark_chosen(_fixture_rows(), "B")), strict=False)
    assert not [u for u in ds.utterances if u.conversation_id == "c1"]
    assert "later turns are left out" in ds.problems[0].reason


def test_shipped_cues_sit_at_varied_positions_and_are_the_planted_truth():
    """Each non-direct response carries one or two cues at seeded positions (start, inside,
    end), of varied length; its planted spans are exactly the cues (plus toxic words)."""
    from steerlens.experiments.simulate import STYLES

    gt = load_prism("demo").ground_truth
    responses = list(gt["responses"].values())
    starts, lengths, inside = [], [], 0
    for r in responses:
        cues = r["cues"]
        assert (len(cues) == 0) == (r["style"] == "direct"), r["response_id"]
        assert len(cues) <= 2
        if not cues:
            assert r["text"] == r["continuation"]
        for c in cues:
            assert r["text"][c["start"] : c["end"]] == c["text"]
            cue_spans = {(s["start"], s["end"]) for s in r["spans"] if s.get("source") == "cue"}
            assert (c["start"], c["end"]) in cue_spans
            starts.append(c["start"])
            lengths.append(len(c["text"].split()))
            inside += c["start"] > 0 and c["end"] < len(r["text"]) - 1
        assert all(s.get("source") in ("cue", "word") for s in r["spans"])
    at_zero = sum(s == 0 for s in starts) / len(starts)
    assert 0.15 < at_zero < 0.45  # not every cue opens the response
    assert inside / len(starts) > 0.3  # many sit inside or after a sentence
    assert min(lengths) <= 6 and max(lengths) >= 20  # of varied length
    # every fragment carries a word its attribute measure counts (the utility rewards it)
    from steerlens.metrics.attributes import measure

    for style in STYLES:
        if not style.fragments:
            continue
        for a in measure(list(style.fragments)):
            if "caution" in style.carries:
                assert a["caution"] > 0
            if "refusal" in style.carries:
                assert a["refusal"] == 1.0
            if "informality" in style.carries:
                assert a["formality"] < 1.0 or a["toxicity"] > 0.5
