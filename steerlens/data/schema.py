"""PRISM records (Kirk et al. 2024) and the row validation that builds them.

Every check raises ``PrismFormatError`` naming the file, line and field. The loader's
``strict=False`` collects these instead and skips the row.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "Conversation",
    "HistoryItem",
    "PreferencePair",
    "PrismFormatError",
    "Problem",
    "User",
    "Utterance",
]


class PrismFormatError(ValueError):
    """Bad PRISM input: carries ``file``, ``line`` (1-based; 0 = whole file) and ``field``."""

    def __init__(self, file: str, line: int, field: str | None, reason: str):
        self.file, self.line, self.field, self.reason = file, line, field, reason
        where = f"{file} line {line}" if line else file
        super().__init__(f"{where}, field {field!r}: {reason}" if field else f"{where}: {reason}")


@dataclass(frozen=True)
class Problem:
    """A row skipped under ``strict=False``."""

    file: str
    line: int
    field: str | None
    reason: str


@dataclass(frozen=True)
class HistoryItem:
    turn: int
    role: str
    content: str
    model_provider: str | None = None
    model_name: str | None = None
    score: int | None = None
    if_chosen: bool | None = None
    within_turn_id: int | None = None


@dataclass(frozen=True)
class User:
    user_id: str
    self_description: str
    system_string: str
    stated_prefs: dict[str, Any]
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Conversation:
    conversation_id: str
    user_id: str
    conversation_type: str
    opening_prompt: str
    conversation_turns: int
    conversation_history: tuple[HistoryItem, ...]
    performance_attributes: dict[str, Any]
    choice_attributes: dict[str, Any]
    open_feedback: str
    included_in_balanced_subset: bool
    generated_datetime: str
    category: str = "benign_control"


@dataclass(frozen=True)
class Utterance:
    utterance_id: str
    interaction_id: str
    conversation_id: str
    user_id: str
    turn: int
    within_turn_id: int
    conversation_type: str
    user_prompt: str
    model_response: str
    model_name: str
    model_provider: str
    score: int
    if_chosen: bool
    included_in_balanced_subset: bool


@dataclass(frozen=True)
class PreferencePair:
    """One user's chosen response against one lower-scored response of the same interaction."""

    user_id: str
    conversation_id: str
    interaction_id: str
    turn: int
    category: str
    prompt: str
    chosen: str
    rejected: str
    chosen_score: int
    rejected_score: int
    chosen_model: str
    rejected_model: str
    chosen_utterance_id: str
    rejected_utterance_id: str
    history: tuple[dict[str, str], ...] = ()

    @property
    def score_gap(self) -> int:
        return self.chosen_score - self.rejected_score

    def messages(self) -> list[dict[str, str]]:
        """The prompt as chat messages, earlier turns (if kept) first."""
        return [*self.history, {"role": "user", "content": self.prompt}]


class Row:
    """Typed field access on one JSON row, raising ``PrismFormatError`` with its location."""

    def __init__(self, data: Any, file: str, line: int):
        if not isinstance(data, dict):
            raise PrismFormatError(
                file, line, None, f"expected a JSON object, got {type(data).__name__}"
            )
        self.data, self.file, self.line = data, file, line

    def err(self, name: str | None, reason: str) -> PrismFormatError:
        return PrismFormatError(self.file, self.line, name, reason)

    def get(self, name: str, kind: type | tuple[type, ...], *, optional: bool = False) -> Any:
        if name not in self.data:
            if optional:
                return None
            raise self.err(name, "missing")
        value = self.data[name]
        if value is None and optional:
            return None
        if isinstance(value, bool) and kind is int:
            raise self.err(name, f"expected int, got bool {value!r}")
        if not isinstance(value, kind):
            want = kind.__name__ if isinstance(kind, type) else "/".join(k.__name__ for k in kind)
            raise self.err(name, f"expected {want}, got {type(value).__name__} {value!r}")
        return value

    def score(self, name: str = "score") -> int:
        value = self.get(name, (int, float))
        if isinstance(value, float):
            if not value.is_integer():
                raise self.err(name, f"score {value!r} is not a whole number")
            value = int(value)
        if not 1 <= value <= 100:
            raise self.err(name, f"score {value} is outside 1-100")
        return int(value)


def history_item(row: Row, raw: Any, index: int) -> HistoryItem:
    name = f"conversation_history[{index}]"
    if not isinstance(raw, dict):
        raise row.err(name, f"expected an object, got {type(raw).__name__}")
    sub = Row(raw, row.file, row.line)
    try:
        role = sub.get("role", str)
        turn = sub.get("turn", int)
        content = sub.get("content", str)
        if role == "user":
            return HistoryItem(turn, role, content)
        if role != "model":
            raise sub.err("role", f"expected 'user' or 'model', got {role!r}")
        return HistoryItem(
            turn,
            role,
            content,
            model_provider=sub.get("model_provider", str),
            model_name=sub.get("model_name", str),
            score=sub.score(),
            if_chosen=sub.get("if_chosen", bool),
            within_turn_id=sub.get("within_turn_id", int),
        )
    except PrismFormatError as exc:
        raise row.err(f"{name}.{exc.field}", exc.reason) from None


def parse_user(row: Row) -> User:
    known = {"user_id", "self_description", "system_string", "stated_prefs"}
    prefs = row.get("stated_prefs", dict, optional=True) or {}
    return User(
        user_id=row.get("user_id", str),
        self_description=row.get("self_description", str, optional=True) or "",
        system_string=row.get("system_string", str, optional=True) or "",
        stated_prefs=dict(prefs),
        extra={k: v for k, v in row.data.items() if k not in known},
    )


def parse_conversation(row: Row) -> Conversation:
    history = row.get("conversation_history", list)
    return Conversation(
        conversation_id=row.get("conversation_id", str),
        user_id=row.get("user_id", str),
        conversation_type=row.get("conversation_type", str),
        opening_prompt=row.get("opening_prompt", str),
        conversation_turns=row.get("conversation_turns", int),
        conversation_history=tuple(history_item(row, h, i) for i, h in enumerate(history)),
        performance_attributes=row.get("performance_attributes", dict, optional=True) or {},
        choice_attributes=row.get("choice_attributes", dict, optional=True) or {},
        open_feedback=row.get("open_feedback", str, optional=True) or "",
        included_in_balanced_subset=bool(
            row.get("included_in_balanced_subset", bool, optional=True)
        ),
        generated_datetime=str(row.get("generated_datetime", str, optional=True) or ""),
    )


def parse_utterance(row: Row) -> Utterance:
    return Utterance(
        utterance_id=row.get("utterance_id", str),
        interaction_id=row.get("interaction_id", str),
        conversation_id=row.get("conversation_id", str),
        user_id=row.get("user_id", str),
        turn=row.get("turn", int),
        within_turn_id=row.get("within_turn_id", int),
        conversation_type=row.get("conversation_type", str),
        user_prompt=row.get("user_prompt", str),
        model_response=row.get("model_response", str),
        model_name=row.get("model_name", str),
        model_provider=row.get("model_provider", str),
        score=row.score(),
        if_chosen=row.get("if_chosen", bool),
        included_in_balanced_subset=bool(
            row.get("included_in_balanced_subset", bool, optional=True)
        ),
    )
