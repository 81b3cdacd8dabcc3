"""How far one run's greedy outputs drift from another's: pure, tested from tables.

An output is {"tokens": [...], "logprobs": [...]} (the logprob of each
generated token). Two outputs are compared up to their first divergence:
after it each continues its own text, so later positions are not the same
question. At a matching position both runs chose the same token after the
same text, so |dlogprob| there is the change in the model's confidence that
the reused KV caused.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence


def first_divergence(got: dict, want: dict) -> int:
    """How many leading tokens the two outputs share."""
    n, limit = 0, min(len(got["tokens"]), len(want["tokens"]))
    while n < limit and got["tokens"][n] == want["tokens"][n]:
        n += 1
    return n


@dataclass(frozen=True, slots=True)
class Drift:
    prompts: int
    identical: int  # prompts whose every generated token is the same
    mean_matching: float  # tokens before the first divergence, mean over prompts
    tokens: int  # generated tokens per prompt (the longest)
    max_dlogprob: float  # over matching positions of every prompt
    mean_dlogprob: float
    positions: int  # matching positions compared


def drift(got: Sequence[dict], want: Sequence[dict]) -> Drift:
    """`got` against `want`, prompt by prompt (same order, same count)."""
    if len(got) != len(want):
        raise ValueError(f"{len(got)} outputs against {len(want)}")
    identical, matching, diffs = 0, [], []
    for g, w in zip(got, want):
        n = first_divergence(g, w)
        identical += n == len(g["tokens"]) == len(w["tokens"])
        matching.append(n)
        diffs += [abs(a - b) for a, b in zip(g["logprobs"][:n], w["logprobs"][:n])]
    return Drift(prompts=len(got), identical=identical,
                 mean_matching=sum(matching) / len(matching) if matching else 0.0,
                 tokens=max((len(w["tokens"]) for w in want), default=0),
                 max_dlogprob=max(diffs, default=0.0),
                 mean_dlogprob=sum(diffs) / len(diffs) if diffs else 0.0,
                 positions=len(diffs))
