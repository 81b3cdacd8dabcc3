"""The demo's workload: long-document QA and multi-round chat, with shared prefixes.

Prompts are token id lists made from locally generated text (no downloads).
Each request names the engine it goes to, so that shared prefixes are first
computed on one engine and then reused on others (pulled through the mesh)
and on the same engine later (its own kvmesh store).
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class DemoRequest:
    kind: str  # "doc-qa" or "chat"
    engine: int
    prompt: list[int]
    label: str
    # chat rounds extend the previous round's prompt and answer
    extend_from: "DemoRequest | None" = None
    output: list[int] = field(default_factory=list)


def doc_qa(tokenize, sample_text, engines: int, docs: int, questions: int,
           doc_tokens: int) -> list[DemoRequest]:
    out = []
    for d in range(docs):
        doc = tokenize(sample_text(doc_tokens * 2, seed=100 + d))[:doc_tokens]
        for q in range(questions):
            question = tokenize(f" Question {q}: what does part {q} of document {d} say?")
            out.append(DemoRequest("doc-qa", (d + q) % engines, doc + question, f"doc{d} q{q}"))
    return out


def chat(tokenize, sample_text, engines: int, rounds: int, turn_tokens: int) -> list[DemoRequest]:
    """Round r's prompt: the whole conversation so far (prompts and answers) plus turn r."""
    system = tokenize(sample_text(turn_tokens * 4, seed=7))[: turn_tokens * 2]
    out: list[DemoRequest] = []
    for r in range(rounds):
        turn = tokenize(sample_text(turn_tokens, seed=200 + r))[:turn_tokens]
        own = system + turn if r == 0 else turn
        out.append(DemoRequest("chat", r % engines, own, f"chat r{r}",
                               extend_from=out[-1] if out else None))
    return out


def full_prompt(req: DemoRequest) -> list[int]:
    """The tokens a request sends: its history (for chat rounds) and its own part."""
    if req.extend_from is None:
        return req.prompt
    parent = req.extend_from
    return full_prompt(parent) + parent.output + req.prompt
