"""Evidence: the labelled neighbours retrieved for one image and the class vote they give."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from agents.types import Neighbour


@dataclass(frozen=True)
class Evidence:
    """Retrieved neighbours (best first) and the vote over the task's labels.

    ``vote_rule`` names how ``vote`` was computed (``similarity-share`` is the reference
    study's rule). A recorded vote without neighbours (replay) has ``neighbours == ()``.
    ``retriever`` names the agent that retrieved it (the graph fills it in when empty): the
    vote's trust profile goes by that name.
    """

    neighbours: tuple[Neighbour, ...]
    vote: dict[str, float]
    vote_rule: str = "similarity-share"
    k: int = 0
    model: str = ""
    extra: dict[str, Any] = field(default_factory=dict)
    retriever: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "neighbours", tuple(self.neighbours))
        object.__setattr__(self, "vote", {str(k): float(v) for k, v in self.vote.items()})

    @property
    def top_label(self) -> str | None:
        return max(self.vote, key=self.vote.__getitem__) if self.vote else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "neighbours": [
                {"id": n.id, "label": n.label, "similarity": n.similarity, "source": n.source}
                for n in self.neighbours
            ],
            "vote": dict(self.vote),
            "vote_rule": self.vote_rule,
            "k": self.k,
            "model": self.model,
            "retriever": self.retriever,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Evidence:
        return cls(
            neighbours=tuple(Neighbour(**n) for n in data.get("neighbours", [])),
            vote=data.get("vote", {}),
            vote_rule=data.get("vote_rule", "similarity-share"),
            k=int(data.get("k", 0)),
            model=data.get("model", ""),
            retriever=str(data.get("retriever") or ""),
        )
