"""Study conditions: prompt variant (plain or "think step by step") and chat template on/off.

A condition is written as `+`-joined words, e.g. `plain`, `think`, `chat`, `think+chat`.
The adversarial GSM8K variant is a task variant (see registry), not a condition,
so it is reported beside the plain score under every condition.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, List, Optional, Union

from mergekit_reasoning.core.errors import BenchError

THINK_INSTRUCTION = "Think step by step, then give the final answer."
_WORDS = {"plain", "think", "chat", "nochat"}


@dataclass(frozen=True)
class Condition:
    prompt: str = "plain"  # plain | think
    chat: bool = False

    @property
    def name(self) -> str:
        return "+".join([self.prompt] + (["chat"] if self.chat else []))

    @property
    def system_instruction(self) -> Optional[str]:
        """Passed to lm-eval, which puts it before the prompt (as a system turn under chat)."""
        return THINK_INSTRUCTION if self.prompt == "think" else None


def parse_condition(text: str) -> Condition:
    words = {w.strip().lower() for w in text.split("+") if w.strip()}
    unknown = words - _WORDS
    if unknown or not words:
        raise BenchError(f"unknown condition {text!r}; use words plain, think, chat joined by '+'")
    if {"plain", "think"} <= words or {"chat", "nochat"} <= words:
        raise BenchError(f"contradictory condition {text!r}")
    return Condition("think" if "think" in words else "plain", "chat" in words)


def parse_conditions(spec: Union[str, Iterable[Union[str, Condition]], None]) -> List[Condition]:
    """Conditions from a comma-separated string or a list; default: plain only."""
    if spec is None:
        return [Condition()]
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    out: List[Condition] = []
    for item in items:
        cond = item if isinstance(item, Condition) else parse_condition(item)
        if cond not in out:
            out.append(cond)
    return out or [Condition()]
