"""The explorer's state on the server: one model, the opened files, and every page action as
a plain function of a state (``Explorer``); the Dash callbacks only turn its results into
page elements, so each action is tested here without a browser."""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from steerlens.core.conditions import Condition
from steerlens.core.models import HookedModel, model_name
from steerlens.core.tokens import has_chat_template
from steerlens.core.vectors import SteeringVector
from steerlens.data.mmlu import neutral_texts
from steerlens.reporting import plots

from .export import as_command, as_python, as_sweep_yaml, provenance_line, vector_bytes
from .sources import Sources
from .state import DEFAULT_PROMPT, ExploreState
from .users import condition_table, threshold_view, user_card
from .workbench import describe, prepare_vector, run_ladder

__all__ = ["Cancelled", "Explorer", "Job", "token_cells"]

logger = logging.getLogger(__name__)
_KEEP = 16  # ladders kept (moving the α slider or reopening a link recomputes nothing)
DEFAULT_BUDGETS = (0.05, 0.2, 0.5)  # nats per token on neutral text, when a run gives no α grid


class Cancelled(Exception):
    """Raised at the next stage of a ladder whose job was cancelled."""


@dataclass
class Job:
    """One ladder computed in the background: its status line, result or error."""

    key: str
    status: str = "queued"
    result: dict[str, Any] | None = None
    error: str | None = None
    cancelled: threading.Event = field(default_factory=threading.Event)
    finished: threading.Event = field(default_factory=threading.Event)

    def report(self) -> dict[str, Any]:
        """What the page polls: ``done``, ``status``, ``error``, ``cancelled``."""
        return {
            "done": self.finished.is_set(),
            "status": self.status,
            "error": self.error,
            "cancelled": self.cancelled.is_set(),
        }


def _kl_colour(value: float, scale: float) -> str:
    share = 0.0 if scale <= 0 else min(1.0, value / scale)
    return f"rgba(228, 87, 86, {0.08 + 0.72 * share:.3f})" if share > 0.01 else "transparent"


def _projection_colour(value: float, scale: float) -> str:
    share = 0.0 if scale <= 0 else max(-1.0, min(1.0, value / scale))
    if abs(share) < 0.02:
        return "transparent"
    rgb = "228, 87, 86" if share > 0 else "76, 120, 168"
    return f"rgba({rgb}, {0.08 + 0.62 * abs(share):.3f})"


def _alternatives(label: str, top: list[Any]) -> str:
    return f"{label}: " + ", ".join(f"{t!r} {p:.2f}" for t, p in top)


def token_cells(row: dict[str, Any], colour_by: str, scale: float) -> list[dict[str, Any]]:
    """Per token of a ladder row: its text, background colour (its KL, or its projection on
    a red-blue scale), hover text (value, top alternatives with and without steering) and
    whether it changed from the unsteered reply or was steered."""
    cells = []
    for t in row["tokens"]:
        value = t["kl"] if colour_by == "kl" else t["projection"]
        colour = (_kl_colour if colour_by == "kl" else _projection_colour)(value, scale)
        title = "\n".join(
            [
                f"{t['text']!r}  KL {t['kl']:.3f} · projection {t['projection']:.2f}"
                + ("  (steered)" if t["steered"] else ""),
                _alternatives("steered", t["top_steered"]),
                _alternatives("unsteered", t["top_unsteered"]),
            ]
        )
        cells.append(
            {
                "text": t["text"],
                "background": colour,
                "title": title,
                "changed": t["changed"],
                "steered": t["steered"],
            }
        )
    return cells


class Explorer:
    """The model, the opened run / vectors, and the page's actions.

    Args:
        model: the loaded model (loaded once per process).
        sources: the run folder and vector folder opened.
        neutral_n: neutral texts (MMLU stems) the per-α KL and KL budgets average over.
    """

    def __init__(self, model: HookedModel, sources: Sources, *, neutral_n: int = 4) -> None:
        self.model, self.sources = model, sources
        self.neutral = neutral_texts(neutral_n, seed=0) if neutral_n else []
        self.lock = threading.Lock()  # one model: one computation at a time
        self._ladders: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self._conditions: dict[tuple[Any, ...], Any] = {}
        self.figures: dict[str, Any] | None = None  # the run's report figures, drawn once
        self._jobs: dict[str, Job] = {}
        self.chat = has_chat_template(model)  # the chat template's default, as in generate
        self._guard = threading.Lock()  # the kept ladders and the jobs, across threads

    # state -------------------------------------------------------------------------------
    def default_state(self) -> ExploreState:
        users = self.sources.users()
        user = next((u for u in users if self.sources.user_prompts(u)), None)
        prompts = self.sources.user_prompts(user) if user else []
        keys = self.sources.vector_keys(user)
        vector = "population" if "population" in keys else (keys[0] if keys else "")
        # the run's own α grid (its vectors are scaled for it); else α by KL budgets, a scale
        # every vector shares
        grid = sorted(set(self.sources.summary().get("config", {}).get("alphas") or []))
        ladder: dict[str, Any] = (
            {"alphas": tuple(grid)} if 3 <= len(grid) <= 7 else {"kl_budgets": DEFAULT_BUDGETS}
        )
        return ExploreState(
            prompt=prompts[0] if prompts else DEFAULT_PROMPT,
            vector=vector or "(give a vector file)",
            user=user,
            chat=self.chat,
            **ladder,
        )

    def state(self, query: str | None) -> ExploreState:
        """The state a URL's query string holds (the default view when empty)."""
        query = (query or "").lstrip("?")
        if not query:
            return self.default_state()
        return ExploreState.from_query(query)

    def vector(self, state: ExploreState) -> SteeringVector:
        return prepare_vector(self.sources.load_vector(state.vector), state, self.model)

    def vector_file(self, state: ExploreState) -> str:
        path = self.sources.vectors.get(state.vector)
        return str(path) if path is not None else state.vector

    # the workbench ------------------------------------------------------------------------
    def ladder_key(self, state: ExploreState) -> str:
        """What the ladder depends on: not the colouring or the user shown, nor the threshold
        unless the vector carries a condition."""
        vec = self.sources.load_vector(state.vector)
        keep = {"colour_by": "kl", "user": None}
        if vec.condition is None:
            keep["threshold"] = None
        return ExploreState.from_dict({**state.to_dict(), **keep}).to_query()

    def _kept(self, key: str) -> dict[str, Any] | None:
        with self._guard:
            if key in self._ladders:
                self._ladders.move_to_end(key)
                return self._ladders[key]
        return None

    def ladder(self, state: ExploreState, *, job: Job | None = None) -> dict[str, Any]:
        """The state's α ladder as plain data (kept: the same ladder recomputes nothing).
        With ``job``, its status follows the stages and its cancel stops at the next one."""
        key = self.ladder_key(state)
        kept = self._kept(key)
        if kept is not None:
            return kept
        vec = self.vector(state)

        def progress(message: str) -> None:
            if job is not None:
                if job.cancelled.is_set():
                    raise Cancelled(message)
                job.status = message

        with self.lock:
            progress("starting")
            result = run_ladder(
                self.model,
                state,
                vec,
                neutral=self.neutral,
                provenance=describe(self.model, vec, state),
                progress=progress,
            ).to_dict()
        with self._guard:
            self._ladders[key] = result
            while len(self._ladders) > _KEEP:
                self._ladders.popitem(last=False)
        return result

    # background jobs: the page stays live, shows the stage and can cancel ------------------
    def start(self, state: ExploreState) -> tuple[str, dict[str, Any] | None]:
        """Start computing the state's ladder in a thread; returns the job's id, and the
        ladder itself when it is already kept. A vector that cannot be used raises here. A
        job already running for the same ladder is reused; any other running job is
        cancelled (the page shows one view)."""
        self.vector(state)  # bad input: an error now, not in the thread
        key = self.ladder_key(state)
        kept = self._kept(key)
        if kept is not None:
            return "", kept
        with self._guard:
            for job_id, other in self._jobs.items():
                if not other.finished.is_set():
                    if other.key == key and not other.cancelled.is_set():
                        return job_id, None
                    other.cancelled.set()
            job = Job(key)
            job_id = uuid.uuid4().hex
            self._jobs[job_id] = job
            done = [k for k, j in self._jobs.items() if j.finished.is_set()]
            for old in done[: max(0, len(done) - _KEEP)]:
                del self._jobs[old]

        def work() -> None:
            try:
                job.result = self.ladder(state, job=job)
                job.status = "done"
            except Cancelled:
                job.status = "cancelled"
            except Exception as e:  # reported in the page, logged with its traceback
                logger.exception("explore: ladder failed")
                job.error = f"{type(e).__name__}: {e}" if not isinstance(e, ValueError) else str(e)
                job.status = "failed"
            finally:
                job.finished.set()

        threading.Thread(target=work, name=f"explore-{job_id[:8]}", daemon=True).start()
        return job_id, None

    def job(self, job_id: str) -> Job:
        with self._guard:
            job = self._jobs.get(job_id)
        if job is None:
            raise ValueError("that computation is not known to this server (restarted?)")
        return job

    def cancel(self, job_id: str) -> None:
        """Stop the job at its next stage; its result, if it finishes first, is kept."""
        self.job(job_id).cancelled.set()

    def view(self, ladder: dict[str, Any], index: int, colour_by: str) -> dict[str, Any]:
        """What the page shows at the slider's ``index``: both replies' token cells, the
        α = 0 badge and the readouts of every α."""
        rows = ladder["rows"]
        index = max(0, min(int(index), len(rows) - 1))
        row = rows[index]
        every = [t for r in [ladder["unsteered"], *rows] for t in r["tokens"]]
        if colour_by == "kl":
            scale = max((t["kl"] for t in every), default=0.0)
        else:
            scale = max((abs(t["projection"]) for t in every), default=0.0)
        repro = ladder.get("reproduced")
        badge = {
            True: "α = 0 reproduced the unsteered tokens",
            False: "α = 0 did NOT reproduce the unsteered tokens",
            None: "no α = 0 on this ladder",
        }[repro]
        readouts = [
            {
                "α": r["alpha"],
                "KL (reply)": r["kl"],
                "KL (neutral)": r["neutral_kl"],
                "perplexity": r["perplexity"],
                "repetition": r["repetition"],
                "tokens": r["length"],
                "condition fired": r["fired"],
                "first change": r["first_change"],
            }
            for r in rows
        ]
        return {
            "alpha": row["alpha"],
            "unsteered": token_cells(ladder["unsteered"], colour_by, scale),
            "steered": token_cells(row, colour_by, scale),
            "reproduced": repro,
            "badge": badge,
            "readouts": readouts,
            "provenance": provenance_line(ladder["provenance"]),
        }

    # the condition pane and the user card -------------------------------------------------
    def _condition_of(self, state: ExploreState) -> Condition | None:
        cond = None
        with contextlib.suppress(ValueError):
            cond = self.sources.load_vector(state.vector).condition
        return cond or self.sources.condition()

    def threshold(self, state: ExploreState) -> float | None:
        """The threshold the condition pane shows: the state's, else the fitted one."""
        cond = self._condition_of(state)
        if cond is None:
            return None
        return cond.threshold if state.threshold is None else state.threshold

    def condition(
        self, state: ExploreState, ladder: dict[str, Any] | None
    ) -> dict[str, Any] | None:
        """The condition pane: the vector's own condition or the run's; None without one."""
        cond = self._condition_of(state)
        if cond is None:
            return None
        prompts = self.sources.user_prompts(state.user) or [state.prompt]
        key = (id(cond), cond.threshold, state.chat, tuple(prompts))
        if key not in self._conditions:
            with self.lock:
                self._conditions[key] = condition_table(self.model, cond, prompts, chat=state.chat)
        threshold = cond.threshold if state.threshold is None else state.threshold
        view = threshold_view(self._conditions[key], cond.threshold, threshold)
        projection = ladder.get("condition_projection") if ladder else None
        return {
            "figure": plots.condition_projections(
                view, cond.threshold, threshold, prompt_projection=projection
            ),
            "fitted": cond.threshold,
            "threshold": threshold,
            "range": (float(view["projection"].min()), float(view["projection"].max())),
            "flipped": view.loc[view["flipped"], "prompt"].tolist(),
            "fires": int(view["fires"].sum()),
            "n": len(view),
        }

    def card(self, user: str | None) -> dict[str, Any] | None:
        return None if not user else user_card(self.sources, user)

    # exports -------------------------------------------------------------------------------
    def exports(self, ladder: dict[str, Any], state: ExploreState | None = None) -> dict[str, str]:
        """The view (``state``, by default the one the ladder was computed for) as a query,
        JSON, Python, a command and a sweep block, with the ladder's α."""
        state = state or ExploreState.from_dict(ladder["state"])
        prov, alphas = ladder["provenance"], list(ladder["alphas"])
        file = self.vector_file(state)
        return {
            "query": state.to_query(),
            "json": json.dumps({"state": state.to_dict(), "provenance": prov}, indent=1),
            "python": as_python(state, file, alphas, prov),
            "command": as_command(state, file, alphas, prov),
            "yaml": as_sweep_yaml(state, file, alphas, prov),
            "provenance": provenance_line(prov),
        }

    def export_vector(self, state: ExploreState, fmt: str, alpha: float = 1.0) -> tuple[str, bytes]:
        """The state's vector (its layers, its threshold) as a file; ``alpha`` is the
        coefficient lm-eval's file carries (the slider's α)."""
        vec = self.vector(state)
        prov = describe(self.model, vec, state)
        return vector_bytes(vec, fmt, prov, alpha=alpha)  # type: ignore[arg-type]

    def model_label(self) -> str:
        return model_name(self.model)
