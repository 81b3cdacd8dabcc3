"""The demo's workload: long-document QA and multi-round chat, with shared prefixes.

Prompts are token id lists made from locally generated text (no downloads).
Each request names the engine it goes to, so that a shared prefix is first
computed on one engine, then reused by that engine (from vLLM's own prefix
cache, then, once that cache was reset, from its kvmesh store) and by the
others (pulled through the mesh).
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class DemoRequest:
    kind: str  # "doc-qa" or "chat"
    engine: int
    prompt: list[int]
    label: str
    # Empty the engine's own vLLM prefix cache first (as an eviction would), so
    # that what it reuses can only come from kvmesh.
    reset_first: bool = False
    # chat rounds extend the previous round's prompt and answer
    extend_from: "DemoRequest | None" = None
    output: list[int] = field(default_factory=list)


def doc_qa(tokenize, sample_text, engines: int, docs: int, questions: int,
           doc_tokens: int) -> list[DemoRequest]:
    """Questions over each document; see `qa_route` for where each goes."""
    out = []
    for d in range(docs):
        doc = tokenize(sample_text(doc_tokens * 2, seed=100 + d))[:doc_tokens]
        for q in range(questions):
            question = tokenize(f" Question {q}: what does part {q} of document {d} say?")
            engine, reset = qa_route(d, q, engines)
            out.append(DemoRequest("doc-qa", engine, doc + question, f"doc{d} q{q}",
                                   reset_first=reset))
    return out


def qa_route(doc: int, question: int, engines: int) -> tuple[int, bool]:
    """(engine, reset its vLLM prefix cache first) of a document's question.

    The document's home engine (doc % engines) takes q0 (computes the document),
    q1 (the same engine again: vLLM's own prefix cache) and q2 after a reset
    (kvmesh's local store); q3 on go to the other engines in turn (a peer's KV).
    """
    home = doc % engines
    if question < 3 or engines == 1:
        return home, question == 2
    return (home + 1 + (question - 3) % (engines - 1)) % engines, False


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


def warm_up_prompts(tokenize, sample_text, engines: int, tokens: int) -> list[list[int]]:
    """One throwaway prompt per engine, shared with nothing else, sent before any
    timed request: an engine's first request carries its warm-up (lazy
    initialisation, first touches of memory), which no row should."""
    return [tokenize(sample_text(tokens * 2, seed=900 + i))[:tokens] for i in range(engines)]
