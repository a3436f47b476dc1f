"""Replay agents: recorded predictions played back as an ``Agent``, and the recorded images.

A recorded file (wide or long, see ``eval.recorded.records``) holds answers, not images. Each
row gets an ``ImageRef`` whose sha256 is derived from the file's hash and the row id
(``recorded_image_sha256``), so the graph, its checkpoints and the replay agents agree on the
identity of an image that is not there. A replay agent also finds an answer by the row id or the
image file name, so real image files with recorded answers work too.

Rounds: for agent ``X`` in a wide file, round 0 plays ``X_initial_*`` when those columns exist
(else ``X_*``) and every later round plays ``X_*``; in a long file the ``round`` column says which
answer belongs to which round (a round past the last recorded one replays the last).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path

from agents.types import REEVAL_SUFFIX, EvidenceView, Prediction
from core.errors import InputError
from core.images import ImageRef, LabelledImage
from core.task import Task
from eval.recorded.records import RecordSet, read_records

INITIAL_SUFFIX = "_initial"
SPEC_PREFIX = "replay:"


def recorded_image_sha256(file_sha256: str, row_id: str) -> str:
    """The stable identity of a recorded row's (absent) image."""
    return hashlib.sha256(f"{file_sha256}:{row_id}".encode()).hexdigest()


def recorded_images(
    path: str | Path, *, task: Task | None = None, records: RecordSet | None = None
) -> list[LabelledImage]:
    """One ``LabelledImage`` per row of a recorded file, in file order.

    ``source`` is the row's image file name (its id when the file has none); ``extra`` keeps
    the row ``id``.
    """
    rs = records if records is not None else read_records(path, task=task)
    out: dict[str, LabelledImage] = {}
    for r in rs.records:
        if r.id in out:
            continue
        ref = ImageRef(source=r.image or r.id, sha256=recorded_image_sha256(rs.sha256, r.id))
        out[r.id] = LabelledImage(image=ref, truth=r.truth, extra={"id": r.id})
    return list(out.values())


class ReplayAgent:
    """Plays back recorded answers; never raises: an unknown image gets ``Prediction.failure``.

    ``answers`` maps a row id to its answers by round; ``keys`` maps other keys (sha256, image
    file name) to row ids.
    """

    def __init__(
        self,
        *,
        name: str,
        answers: Mapping[str, Mapping[int, Prediction]],
        keys: Mapping[str, str] | None = None,
        can_reevaluate: bool | None = None,
        source: str = "",
    ) -> None:
        self.name = name
        self.answers = {rid: dict(by_round) for rid, by_round in answers.items()}
        self.keys = dict(keys or {})
        self.source = source
        self.can_reevaluate = (
            any(r > 0 for by_round in self.answers.values() for r in by_round)
            if can_reevaluate is None
            else can_reevaluate
        )
        self.calls = 0

    @classmethod
    def from_records(
        cls, records: RecordSet, agent: str, *, name: str | None = None
    ) -> ReplayAgent:
        """Agent ``agent`` of a record set: wide files use ``<agent>_initial`` for round 0;
        ``<agent>@reeval`` records (``second_looks_as_sources``) are its round 1."""
        name = name or agent
        found = records.agents
        initial = f"{agent}{INITIAL_SUFFIX}"
        second = f"{agent}{REEVAL_SUFFIX}"
        answers: dict[str, dict[int, Prediction]] = {}
        if agent not in found and initial not in found:
            raise InputError(
                f"no recorded agent '{agent}' (agents: {', '.join(found)})", path=records.path
            )
        for r in records.records:
            if r.agent == agent:
                by_round = answers.setdefault(r.id, {})
                if initial in found:
                    by_round[max(r.round, 1)] = r.to_prediction(name, max(r.round, 1))
                else:
                    by_round[r.round] = r.to_prediction(name, r.round)
            elif r.agent == initial:
                answers.setdefault(r.id, {})[0] = r.to_prediction(name, 0)
            elif r.agent == second:
                answers.setdefault(r.id, {})[1] = r.to_prediction(name, 1)
        keys: dict[str, str] = {}
        for r in records.records:
            keys[recorded_image_sha256(records.sha256, r.id)] = r.id
            if r.image:
                keys.setdefault(r.image, r.id)
        return cls(name=name, answers=answers, keys=keys, source=records.path)

    @classmethod
    def from_file(
        cls, path: str | Path, agent: str, *, task: Task | None = None, name: str | None = None
    ) -> ReplayAgent:
        return cls.from_records(read_records(path, task=task), agent, name=name)

    def _row_id(self, image: ImageRef) -> str | None:
        for key in (image.sha256, image.name, image.source):
            if key in self.answers:
                return key
            if key in self.keys:
                return self.keys[key]
        return None

    async def predict(
        self,
        image: ImageRef,
        task: Task,
        *,
        round: int = 0,
        previous: Prediction | None = None,
        evidence: EvidenceView | None = None,
    ) -> Prediction:
        self.calls += 1
        return self.answer(image, round)

    def answer(self, image: ImageRef, round: int) -> Prediction:
        """The recorded answer for ``image`` in ``round`` (what ``predict`` plays back)."""
        rid = self._row_id(image)
        if rid is None or not self.answers.get(rid):
            return Prediction.failure(
                self.name, f"no recorded answer for image '{image.source}'", round=round
            )
        by_round = self.answers[rid]
        recorded = [r for r in by_round if r <= round]
        if not recorded:
            return Prediction.failure(
                self.name, f"no recorded answer for round {round} of '{image.source}'", round=round
            )
        pred = by_round[max(recorded)]
        return pred if pred.round == round else _with_round(pred, round)


def _with_round(pred: Prediction, round_: int) -> Prediction:
    return Prediction.from_dict({**pred.to_dict(), "round": round_})


def parse_replay_spec(spec: str) -> tuple[str, str]:
    """``replay:<file>#<agent>`` -> (file, agent)."""
    if not spec.startswith(SPEC_PREFIX) or "#" not in spec:
        raise InputError(f"replay agent spec must be 'replay:<file>#<agent>', got {spec!r}")
    path, agent = spec[len(SPEC_PREFIX) :].rsplit("#", 1)
    if not path or not agent:
        raise InputError(f"replay agent spec must be 'replay:<file>#<agent>', got {spec!r}")
    return path, agent


def replay_agent_from_spec(spec: str, *, task: Task | None = None) -> ReplayAgent:
    """Build a ``ReplayAgent`` from ``replay:<file>#<agent>``."""
    path, agent = parse_replay_spec(spec)
    return ReplayAgent.from_file(path, agent, task=task)
