"""The seed workload (docs/simulate.md) as a seeded model: who talks, when, and how much.

Each of N slots holds one live session at a time. A session runs a conversation of 3-10
messages (6-20 turns), in bursts of 1-5 messages at about 3 per second with a think time
between bursts; when it ends, a new session arrives in its slot. A share of slots hold a
power user: one long session whose history (hundreds of turns) is written before the load
starts, so even a short run reads and appends at the end of a long conversation.

A message is what the orchestrator does per user message: load_context, then append the
user turn and the reply: one assistant turn (plain text ~0.8 KB, or ~2 KB with product
cards in `attributes`), or a tool exchange (assistant tool call, `tool` result, assistant
answer) whose tool output is now and then tens to hundreds of KB.

Everything is drawn from random.Random streams seeded by (seed, slot), so a run with the
same seed and shape makes the same sessions, sizes and pauses (its timing still depends on
the machine). Session ids are the caller's: they must differ between runs on one store.
"""

from __future__ import annotations

import functools
import math
import random
from dataclasses import dataclass

from memsdk.models import Role, Turn

__all__ = [
    "HISTORY_BATCH_TURNS",
    "REF_KEY",
    "SessionPlan",
    "SlotScript",
    "WorkloadShape",
    "power_slots",
]

# Turns carry `attributes[REF_KEY] = "<session_id>#<message>.<index>"`: the verification
# pass finds each turn it sent by this, whether or not the append was acknowledged.
REF_KEY = "sim_ref"
# Pre-seeded history is written this many turns per append (the cap is 99 per append).
HISTORY_BATCH_TURNS = 50

_WORDS = (
    "manga horror volume cover price shipping author review gift edition hardcover series "
    "paperback bundle delivery tomorrow stock order return refund size colour black white "
    "recommend similar bestseller rating stars customers also bought chapter illustrated "
    "boxed set collector limited signed preorder release date discount coupon prime "
    "subscription kindle audiobook translation japanese english original sequel prequel "
    "character story plot ending spooky classic modern short long favourite genre"
)
_VOCABULARY = tuple(_WORDS.split())
_INTENTS = (
    "product_discovery",
    "product_question",
    "order_status",
    "recommendation",
    "returns",
    "smalltalk",
)
_TOOLS = ("search_catalog", "get_order", "check_stock", "get_reviews")
# Shares of a reply's kind; the rest is plain text.
_TOOL_SHARE = 0.10
_CARDS_SHARE = 0.35
# Of tool exchanges, this share returns a large output (tens to hundreds of KB).
_LARGE_TOOL_SHARE = 0.05
_LARGE_MIN_BYTES = 20_000
_LARGE_MAX_BYTES = 300_000
# A session never holds more turns than the verification pass can read back in one window
# (load_context's last_n caps at 10,000); a message appends at most this many turns.
_MAX_SESSION_TURNS = 9_000
_MAX_TURNS_PER_MESSAGE = 4


@dataclass(frozen=True, slots=True)
class WorkloadShape:
    """The knobs of the model; the defaults are the seed's figures."""

    sessions: int = 50
    burst_rate: float = 3.0  # messages per second within a burst
    think_s: float = 1.0  # mean pause between bursts
    power_share: float = 0.05  # share of slots that hold a power user
    power_turns: tuple[int, int] = (200, 2_000)  # pre-seeded history, log-uniform
    max_turn_bytes: int = 350_000  # large tool outputs stay well below it

    def __post_init__(self) -> None:
        if self.sessions < 1:
            raise ValueError("sessions must be >= 1")
        if self.burst_rate <= 0 or self.think_s < 0:
            raise ValueError("burst_rate must be > 0 and think_s >= 0")
        if not 0 <= self.power_share <= 1:
            raise ValueError("power_share must be in [0, 1]")
        low, high = self.power_turns
        if not 2 <= low <= high <= 9_000:
            raise ValueError("power_turns must be (low, high) with 2 <= low <= high <= 9000")


def power_slots(shape: WorkloadShape) -> int:
    """How many slots hold a power user: the share rounded, at least one if any and n >= 2."""
    if shape.power_share <= 0 or shape.sessions < 2:
        return 0
    return min(shape.sessions, max(1, round(shape.sessions * shape.power_share)))


@dataclass(frozen=True, slots=True)
class SessionPlan:
    """One conversation: who, how many messages, and the history written before the load."""

    slot: int
    number: int  # the slot's n-th session
    power: bool
    messages: int  # messages during the load (a power user's: more than a run needs)
    history_turns: int  # pre-seeded before the load (power users only)


@functools.cache
def _corpus() -> str:
    """64 KB of words, the same on every machine, that message text is cut from."""
    rng = random.Random(0x5EED)
    words: list[str] = []
    size = 0
    while size < 65_536:
        word = rng.choice(_VOCABULARY)
        words.append(word)
        size += len(word) + 1
    text = " ".join(words)
    return text + " " + text  # so a slice starting anywhere in the first half never wraps


class SlotScript:
    """The seeded sequence of sessions, messages and pauses of one slot."""

    def __init__(self, seed: int, slot: int, shape: WorkloadShape) -> None:
        self._rng = random.Random(f"memsdk-simulate:{seed}:{slot}")
        self._slot = slot
        self._shape = shape
        self._power = slot < power_slots(shape)
        self._sessions = 0
        self._left_in_burst = 0
        self._large_max = min(_LARGE_MAX_BYTES, int(shape.max_turn_bytes * 0.8))

    @property
    def power(self) -> bool:
        """True when this slot holds a power user."""
        return self._power

    def first_delay(self) -> float:
        """Arrivals are spread over the first second (or think time) instead of all at once."""
        return self._rng.uniform(0, max(1.0, self._shape.think_s))

    def next_session(self) -> SessionPlan:
        """The next conversation in this slot."""
        number = self._sessions
        self._sessions += 1
        self._left_in_burst = self._rng.randint(1, 5)
        if self._power:
            # The first power session starts with its history; it (and any later one) goes
            # on until the run ends or the session is as long as the verifier can read.
            history = 0
            if number == 0:
                low, high = self._shape.power_turns
                history = round(math.exp(self._rng.uniform(math.log(low), math.log(high))))
            messages = (_MAX_SESSION_TURNS - history) // _MAX_TURNS_PER_MESSAGE
            return SessionPlan(self._slot, number, True, messages, history)
        return SessionPlan(self._slot, number, False, self._rng.randint(3, 10), 0)

    def pause(self) -> float:
        """Seconds before the next message: a short gap within a burst, else a think time."""
        rng = self._rng
        self._left_in_burst -= 1
        if self._left_in_burst > 0:
            return rng.uniform(0.5, 1.5) / self._shape.burst_rate
        self._left_in_burst = rng.randint(1, 5)
        think = self._shape.think_s
        if think == 0:
            return 0.0
        return min(max(rng.expovariate(1 / think), 0.1 * think), 5 * think)

    def message(self, session_id: str, number: int) -> list[Turn]:
        """The turns appended for message `number` of a session: user turn, then the reply."""
        rng = self._rng
        ref = f"{session_id}#{number}"
        turns = [
            Turn(
                role="user",
                content=self._text(_lognormal(rng, 250, 0.6, 20, 2_000)),
                intent=rng.choice(_INTENTS),
            )
        ]
        kind = rng.random()
        if kind < _TOOL_SHARE:
            turns += self._tool_exchange(rng)
        elif kind < _TOOL_SHARE + _CARDS_SHARE:
            turns.append(
                Turn(
                    role="assistant",
                    content=self._text(_lognormal(rng, 600, 0.4, 100, 4_000)),
                    attributes=self._cards(rng),
                )
            )
        else:
            turns.append(
                Turn(role="assistant", content=self._text(_lognormal(rng, 800, 0.5, 100, 8_000)))
            )
        return [_tagged(t, f"{ref}.{i}") for i, t in enumerate(turns)]

    def history(self, session_id: str, turns: int) -> list[list[Turn]]:
        """A power user's past conversation, as appends of HISTORY_BATCH_TURNS turns."""
        rng = self._rng
        out: list[Turn] = []
        for i in range(turns):
            role: Role = "user" if i % 2 == 0 else "assistant"
            size = (
                _lognormal(rng, 250, 0.6, 20, 2_000)
                if role == "user"
                else _lognormal(rng, 800, 0.5, 100, 8_000)
            )
            turn = Turn(role=role, content=self._text(size))
            out.append(_tagged(turn, f"{session_id}#h{i}"))
        return [out[i : i + HISTORY_BATCH_TURNS] for i in range(0, len(out), HISTORY_BATCH_TURNS)]

    def _tool_exchange(self, rng: random.Random) -> list[Turn]:
        tool = rng.choice(_TOOLS)
        call_id = f"call_{rng.randrange(16**12):012x}"
        if rng.random() < _LARGE_TOOL_SHARE:
            low, high = math.log(_LARGE_MIN_BYTES), math.log(max(self._large_max, 20_001))
            output = round(math.exp(rng.uniform(low, high)))
        else:
            output = _lognormal(rng, 1_500, 0.6, 200, 8_000)
        return [
            Turn(
                role="assistant",
                content=self._text(_lognormal(rng, 120, 0.3, 20, 500)),
                attributes={"tool_call": {"id": call_id, "name": tool, "arguments": {"q": "x"}}},
            ),
            Turn(role="tool", content=self._text(output), attributes={"tool_call_id": call_id}),
            Turn(role="assistant", content=self._text(_lognormal(rng, 800, 0.5, 100, 8_000))),
        ]

    def _cards(self, rng: random.Random) -> dict[str, object]:
        # Strings and ints only: they come back from every store exactly as sent.
        cards = [
            {
                "asin": f"B{rng.randrange(10**9):09d}",
                "title": self._text(rng.randint(30, 80)),
                "price": f"{rng.randint(3, 80)}.{rng.randrange(100):02d}",
                "currency": "EUR",
                "image": f"https://images.example.com/{rng.randrange(16**10):010x}.jpg",
                "rating": rng.randint(30, 50),
                "badges": [self._text(12) for _ in range(rng.randint(0, 2))],
            }
            for _ in range(rng.randint(3, 5))
        ]
        suggestions = [self._text(rng.randint(15, 40)) for _ in range(rng.randint(2, 4))]
        return {"cards": cards, "suggestions": suggestions}

    def _text(self, size: int) -> str:
        corpus = _corpus()
        half = len(corpus) // 2
        parts: list[str] = []
        left = size
        while left > 0:
            take = min(left, half)
            start = self._rng.randrange(half)
            parts.append(corpus[start : start + take])
            left -= take
        return "".join(parts)


def _lognormal(rng: random.Random, median: float, sigma: float, low: int, high: int) -> int:
    return min(high, max(low, round(rng.lognormvariate(math.log(median), sigma))))


def _tagged(turn: Turn, ref: str) -> Turn:
    return Turn(
        role=turn.role,
        content=turn.content,
        intent=turn.intent,
        attributes={**turn.attributes, REF_KEY: ref},
    )
