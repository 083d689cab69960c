"""PRISM loading: ``load_prism("demo" | "hf" | folder)`` -> ``PrismDataset``.

``"demo"`` is steerlens's *simulated* PRISM-format set (``steerlens/data/demo``, made by
``steerlens.experiments.simulate``): its users are simulated and their preferences are known. It is
never the real PRISM; ``PrismDataset.is_simulated`` says which one you hold.
"""

from __future__ import annotations

import json
import os
import random
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Literal, TypeVar

from steerlens.data.categories import categorize, load_category_map
from steerlens.data.schema import (
    Conversation,
    PreferencePair,
    PrismFormatError,
    Problem,
    Row,
    User,
    Utterance,
    parse_conversation,
    parse_user,
    parse_utterance,
)

__all__ = ["DEMO_DIR", "HF_REPO", "PrismDataset", "load_prism"]

DEMO_DIR = Path(__file__).parent / "demo"
HF_REPO = "HannahRoseKirk/prism-alignment"
FILES = ("survey.jsonl", "conversations.jsonl", "utterances.jsonl")
T = TypeVar("T")


@dataclass
class PrismDataset:
    """Users, conversations and utterances of PRISM (or a PRISM-format set), cross-checked."""

    users: dict[str, User]
    conversations: dict[str, Conversation]
    utterances: list[Utterance]
    source: str
    is_simulated: bool = False
    problems: list[Problem] = field(default_factory=list)
    ground_truth: dict[str, Any] | None = None

    def __repr__(self) -> str:
        kind = "simulated PRISM-format set" if self.is_simulated else "PRISM"
        return (
            f"PrismDataset({kind} from {self.source}: {len(self.users)} users, "
            f"{len(self.conversations)} conversations, {len(self.utterances)} utterances, "
            f"{len(self.problems)} skipped rows)"
        )

    # --- lookups --------------------------------------------------------------------------
    def _check_user(self, user_id: str) -> None:
        if user_id not in self.users:
            raise KeyError(
                f"unknown user id {user_id!r} ({len(self.users)} users in {self.source})"
            )

    def user_history(self, user_id: str) -> list[Conversation]:
        """A user's conversations, in id order."""
        self._check_user(user_id)
        return sorted(
            (c for c in self.conversations.values() if c.user_id == user_id),
            key=lambda c: c.conversation_id,
        )

    def interactions(self) -> dict[str, list[Utterance]]:
        """Utterances grouped by ``interaction_id`` (one user turn and its model responses)."""
        groups: dict[str, list[Utterance]] = defaultdict(list)
        for u in self.utterances:
            groups[u.interaction_id].append(u)
        return {k: sorted(v, key=lambda u: u.within_turn_id) for k, v in groups.items()}

    # --- preference pairs -----------------------------------------------------------------
    def preference_pairs(
        self,
        *,
        turn0_only: bool = False,
        with_history: bool = False,
        users: Iterable[str] | None = None,
        categories: Iterable[str] | None = None,
    ) -> list[PreferencePair]:
        """Chosen vs each lower-scored response of the same interaction; ties dropped.

        The chosen response is the one marked ``if_chosen`` (else the highest score); a
        response scored equal to it is a tie and gives no pair; one scored higher gives none
        either (the user's choice and scores disagree). ``with_history`` keeps earlier turns
        (user prompt and chosen reply) as chat messages on each pair.
        """
        wanted_users = set(users) if users is not None else None
        if wanted_users:
            for u in wanted_users:
                self._check_user(u)
        wanted_cats = set(categories) if categories is not None else None
        pairs: list[PreferencePair] = []
        for iid, group in sorted(self.interactions().items()):
            first = group[0]
            conv = self.conversations[first.conversation_id]
            if wanted_users is not None and first.user_id not in wanted_users:
                continue
            if wanted_cats is not None and conv.category not in wanted_cats:
                continue
            if turn0_only and first.turn != 0:
                continue
            marked = [u for u in group if u.if_chosen]
            chosen = marked[0] if marked else max(group, key=lambda u: u.score)
            history = _history_before(conv, first.turn) if with_history else ()
            for other in group:
                if other is chosen or other.score >= chosen.score:
                    continue
                pairs.append(
                    PreferencePair(
                        user_id=first.user_id,
                        conversation_id=first.conversation_id,
                        interaction_id=iid,
                        turn=first.turn,
                        category=conv.category,
                        prompt=first.user_prompt,
                        chosen=chosen.model_response,
                        rejected=other.model_response,
                        chosen_score=chosen.score,
                        rejected_score=other.score,
                        chosen_model=chosen.model_name,
                        rejected_model=other.model_name,
                        chosen_utterance_id=chosen.utterance_id,
                        rejected_utterance_id=other.utterance_id,
                        history=history,
                    )
                )
        return pairs

    @property
    def weak_interactions(self) -> set[str]:
        """Interactions whose pair is a near coin flip by construction (simulated sets: the
        later-turn A/B pairs of one style); empty for real PRISM."""
        return set((self.ground_truth or {}).get("weak_interactions", []))

    def split(
        self,
        held_out: float = 0.25,
        seed: int = 0,
        *,
        by: Literal["conversation", "prompt"] = "conversation",
        **pair_kwargs: Any,
    ) -> tuple[list[PreferencePair], list[PreferencePair]]:
        """Train / held-out pairs; no interaction is on both sides.

        ``by="conversation"``: per user, a share of their conversations is held out (each user
        with two or more keeps at least one on each side). ``by="prompt"``: a share of the
        opening prompts is held out for everyone, so no held-out prompt was seen in training.
        """
        if not 0.0 < held_out < 1.0:
            raise ValueError(f"held_out must be in (0, 1), got {held_out}")
        if by not in ("conversation", "prompt"):
            raise ValueError(f"by must be 'conversation' or 'prompt', got {by!r}")
        test_convs: set[str] = set()
        if by == "prompt":
            prompts = sorted({c.opening_prompt for c in self.conversations.values()})
            random.Random(f"{seed}:prompts").shuffle(prompts)
            k = min(len(prompts) - 1, max(1, round(held_out * len(prompts))))
            held = set(prompts[:k])
            test_convs = {cid for cid, c in self.conversations.items() if c.opening_prompt in held}
            pairs = self.preference_pairs(**pair_kwargs)
            return (
                [p for p in pairs if p.conversation_id not in test_convs],
                [p for p in pairs if p.conversation_id in test_convs],
            )
        for user_id in sorted(self.users):
            convs = [c.conversation_id for c in self.user_history(user_id)]
            if len(convs) < 2:
                continue
            rng = random.Random(f"{seed}:{user_id}")
            rng.shuffle(convs)
            k = min(len(convs) - 1, max(1, round(held_out * len(convs))))
            test_convs.update(convs[:k])
        pairs = self.preference_pairs(**pair_kwargs)
        return (
            [p for p in pairs if p.conversation_id not in test_convs],
            [p for p in pairs if p.conversation_id in test_convs],
        )


def _history_before(conv: Conversation, turn: int) -> tuple[dict[str, str], ...]:
    msgs: list[dict[str, str]] = []
    for item in conv.conversation_history:
        if item.turn >= turn:
            break
        if item.role not in _ROLES:
            raise ValueError(
                f"conversation {conv.conversation_id}: unknown role {item.role!r} in its history "
                f"(PRISM has {sorted(_ROLES)})"
            )
        if item.role == "user" or item.if_chosen:  # the chosen reply continued the conversation
            msgs.append({"role": _ROLES[item.role], "content": item.content})
    return tuple(msgs)


# PRISM's history roles -> chat-template roles.
_ROLES = {"user": "user", "model": "assistant"}


# --- loading ------------------------------------------------------------------------------
def load_prism(
    source: str | Path = "demo",
    *,
    strict: bool = True,
    categories: str | Path | Mapping[str, str] | None = None,
) -> PrismDataset:
    """Load PRISM or a PRISM-format set.

    Args:
        source: ``"demo"`` (shipped simulated set), ``"hf"`` (the hub dataset
            ``HannahRoseKirk/prism-alignment`` through ``datasets``; needs network), or a
            folder holding ``conversations.jsonl``, ``utterances.jsonl`` and ``survey.jsonl``.
        strict: raise ``PrismFormatError`` (file, line, field) at the first bad row. With
            ``strict=False`` bad rows are skipped and listed in ``dataset.problems``.
        categories: prompt -> category overrides (CSV ``prompt,category`` or a dict). A folder's
            own ``categories.csv`` is used next; the keyword rules last.
    """
    if str(source) == "hf":
        tables = _hf_tables()
        name, folder = f"hf:{HF_REPO}", None
    else:
        folder = DEMO_DIR if str(source) == "demo" else Path(source)
        if not folder.is_dir():
            raise PrismFormatError(str(folder), 0, None, "no such folder")
        tables = {f: _read_jsonl(folder / f) for f in FILES}
        name = "demo" if str(source) == "demo" else str(folder)
    problems: list[Problem] = []

    def guard(fn: Callable[[], T], file: str, line: int) -> T | None:
        try:
            return fn()
        except PrismFormatError as exc:
            if strict:
                raise
            problems.append(Problem(exc.file, exc.line, exc.field, exc.reason))
            return None

    users = _parse_users(tables["survey.jsonl"], guard)
    convs = _parse_conversations(tables["conversations.jsonl"], users, guard)
    utts = _parse_utterances(tables["utterances.jsonl"], users, convs, guard)
    _check_coverage(convs, utts, tables["conversations.jsonl"], guard)
    utts = _check_interactions(utts, tables["utterances.jsonl"], guard)

    mapping: dict[str, str] = {}
    gt = None
    simulated = False
    if folder is not None:
        if (folder / "categories.csv").exists():
            mapping.update(load_category_map(folder / "categories.csv"))
        if (folder / "ground_truth.json").exists():
            gt = json.loads((folder / "ground_truth.json").read_text())
            simulated = bool(gt.get("simulated", True))
    if categories is not None:
        mapping.update(load_category_map(categories))
    convs = {
        cid: _with_category(c, categorize(c.opening_prompt, mapping)) for cid, c in convs.items()
    }
    return PrismDataset(users, convs, utts, name, simulated, problems, gt)


def _with_category(conv: Conversation, category: str) -> Conversation:
    from dataclasses import replace

    return replace(conv, category=category)


Guard = Callable[[Callable[[], Any], str, int], Any]
Table = list[tuple[int, Any]]


def _read_jsonl(path: Path) -> Table:
    if not path.exists():
        raise PrismFormatError(
            path.name,
            0,
            None,
            f"file is missing from {path.parent} (a PRISM folder needs {', '.join(FILES)})",
        )
    rows: Table = []
    with path.open(encoding="utf-8") as f:
        for line, text in enumerate(f, start=1):
            if not text.strip():
                continue
            try:
                rows.append((line, json.loads(text)))
            except json.JSONDecodeError as exc:
                rows.append((line, _BadJSON(str(exc))))
    return rows


@dataclass
class _BadJSON:
    reason: str


def _rows(table: Table, file: str, guard: Guard) -> Iterator[Row]:
    for line, data in table:

        def make(data: Any = data, line: int = line) -> Row:
            if isinstance(data, _BadJSON):
                raise PrismFormatError(file, line, None, f"malformed JSON ({data.reason})")
            return Row(data, file, line)

        row = guard(make, file, line)
        if row is not None:
            yield row


def _records(table: Table, file: str, guard: Guard, build: Callable[[Row], T]) -> Iterator[T]:
    """Build a record from each row, through ``guard`` (raise, or skip and record)."""
    for row in _rows(table, file, guard):
        record = guard(partial(build, row), row.file, row.line)
        if record is not None:
            yield record


def _parse_users(table: Table, guard: Guard) -> dict[str, User]:
    users: dict[str, User] = {}

    def check(row: Row) -> User:
        user = parse_user(row)
        if user.user_id in users:
            raise row.err("user_id", f"duplicate user id {user.user_id!r}")
        return user

    for user in _records(table, "survey.jsonl", guard, check):
        users[user.user_id] = user
    return users


def _parse_conversations(
    table: Table, users: dict[str, User], guard: Guard
) -> dict[str, Conversation]:
    convs: dict[str, Conversation] = {}

    def check(row: Row) -> Conversation:
        conv = parse_conversation(row)
        if conv.user_id not in users:
            raise row.err("user_id", f"unknown user id {conv.user_id!r} (not in survey.jsonl)")
        if conv.conversation_id in convs:
            raise row.err("conversation_id", f"duplicate conversation id {conv.conversation_id!r}")
        return conv

    for conv in _records(table, "conversations.jsonl", guard, check):
        convs[conv.conversation_id] = conv
    return convs


def _parse_utterances(
    table: Table, users: dict[str, User], convs: dict[str, Conversation], guard: Guard
) -> list[Utterance]:
    out: list[Utterance] = []
    seen: set[str] = set()

    def check(row: Row) -> Utterance:
        u = parse_utterance(row)
        if u.user_id not in users:
            raise row.err("user_id", f"unknown user id {u.user_id!r} (not in survey.jsonl)")
        if u.utterance_id in seen:
            raise row.err("utterance_id", f"duplicate utterance id {u.utterance_id!r}")
        conv = convs.get(u.conversation_id)
        if conv is None:
            raise row.err(
                "conversation_id",
                f"conversation {u.conversation_id!r} is not in conversations.jsonl",
            )
        if conv.user_id != u.user_id:
            raise row.err(
                "user_id",
                f"{u.user_id!r} but conversation {conv.conversation_id} belongs to {conv.user_id!r}",
            )
        match = [
            h
            for h in conv.conversation_history
            if h.role == "model" and h.turn == u.turn and h.within_turn_id == u.within_turn_id
        ]
        if not match:
            raise row.err(
                "within_turn_id",
                f"no model response at turn {u.turn}, within_turn_id "
                f"{u.within_turn_id} in conversation {conv.conversation_id}",
            )
        h = match[0]
        for name, mine, theirs in (
            ("model_response", u.model_response, h.content),
            ("score", u.score, h.score),
            ("if_chosen", u.if_chosen, h.if_chosen),
        ):
            if mine != theirs:
                raise row.err(
                    name,
                    f"disagrees with conversation {conv.conversation_id} "
                    f"turn {u.turn} ({mine!r} vs {theirs!r})",
                )
        return u

    for u in _records(table, "utterances.jsonl", guard, check):
        seen.add(u.utterance_id)
        out.append(u)
    return out


def _check_coverage(
    convs: dict[str, Conversation], utts: list[Utterance], table: Table, guard: Guard
) -> None:
    """Every model response in a conversation must have its utterance row."""
    have = {(u.conversation_id, u.turn, u.within_turn_id) for u in utts}
    lines = {data.get("conversation_id"): line for line, data in table if isinstance(data, dict)}
    for cid, conv in convs.items():
        for i, h in enumerate(conv.conversation_history):
            if h.role == "model" and (cid, h.turn, h.within_turn_id) not in have:

                def fail(cid: str = cid, i: int = i, h: Any = h) -> None:
                    raise PrismFormatError(
                        "conversations.jsonl",
                        lines.get(cid, 0),
                        f"conversation_history[{i}]",
                        f"turn {h.turn} response {h.within_turn_id} has no row in utterances.jsonl",
                    )

                guard(fail, "conversations.jsonl", lines.get(cid, 0))


def _check_interactions(utts: list[Utterance], table: Table, guard: Guard) -> list[Utterance]:
    """One interaction = one user turn of one conversation, with at most one chosen response.

    A violation is an error naming the utterance row (strict) or a listed problem with the
    whole interaction left out (non-strict): never a silent pick of one of them.
    """
    lines = {data.get("utterance_id"): line for line, data in table if isinstance(data, dict)}
    groups: dict[str, list[Utterance]] = defaultdict(list)
    for u in utts:
        groups[u.interaction_id].append(u)
    bad: set[str] = set()
    ambiguous: dict[str, int] = {}  # conversation -> first turn with two chosen replies
    for iid, group in groups.items():
        first = group[0]
        reason = None
        for u in group[1:]:
            if (u.conversation_id, u.turn) != (first.conversation_id, first.turn):
                what = "conversation_id" if u.conversation_id != first.conversation_id else "turn"
                reason = (
                    u,
                    what,
                    f"interaction {iid!r} mixes conversation {first.conversation_id} turn "
                    f"{first.turn} with conversation {u.conversation_id} turn {u.turn}",
                )
                break
        chosen = [u for u in group if u.if_chosen]
        if reason is None and len(chosen) > 1:
            ids = ", ".join(u.utterance_id for u in chosen)
            reason = (
                chosen[1],
                "if_chosen",
                f"interaction {iid!r} has {len(chosen)} responses marked if_chosen ({ids}); "
                "the conversation's later turns are left out too (their history is ambiguous)",
            )
            ambiguous[first.conversation_id] = min(
                first.turn, ambiguous.get(first.conversation_id, first.turn)
            )
        if reason is None:
            continue
        row_u, field_name, text = reason

        def fail(u: Utterance = row_u, f: str = field_name, t: str = text) -> None:
            raise PrismFormatError("utterances.jsonl", lines.get(u.utterance_id, 0), f, t)

        guard(fail, "utterances.jsonl", lines.get(row_u.utterance_id, 0))
        bad.add(iid)
    return [
        u
        for u in utts
        if u.interaction_id not in bad
        and not (u.conversation_id in ambiguous and u.turn > ambiguous[u.conversation_id])
    ]


def _hf_tables() -> dict[str, Table]:
    """The three PRISM tables from the hub, or a fast, clear error without network."""
    hint = (
        f"load_prism('hf') needs network access to the hub dataset {HF_REPO}. Offline, download "
        "its conversations.jsonl, utterances.jsonl and survey.jsonl elsewhere and pass the "
        "folder: load_prism('path/to/folder'); load_prism('demo') is the shipped simulated set."
    )
    if any(
        os.environ.get(v, "").lower() in ("1", "true", "yes")
        for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")
    ):
        raise ConnectionError("offline mode is set (HF_HUB_OFFLINE/HF_DATASETS_OFFLINE). " + hint)
    os.environ.setdefault("HF_HUB_ETAG_TIMEOUT", "5")
    os.environ.setdefault("HF_HUB_DOWNLOAD_TIMEOUT", "10")
    try:
        from datasets import load_dataset

        tables = {}
        for file in FILES:
            ds = load_dataset(HF_REPO, file.removesuffix(".jsonl"), split="train")
            tables[file] = [(i + 1, dict(r)) for i, r in enumerate(ds)]
    except Exception as exc:
        raise ConnectionError(
            f"could not fetch {HF_REPO} ({type(exc).__name__}: {exc}). " + hint
        ) from exc
    return tables
