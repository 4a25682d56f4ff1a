"""The bounded set of label prompts a learner scores against."""

from __future__ import annotations

from collections import OrderedDict


class LabelSet:
    """At most `capacity` label prompts; past it, the least recently seen one leaves.

    Kept in order of arrival (the candidates' order), with recency on the side, so a stream
    of a few classes behaves exactly as an unbounded set would.
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._arrival: dict[str, None] = {}
        self._recency: OrderedDict[str, None] = OrderedDict()  # least recent first

    @property
    def labels(self) -> list[str]:
        return list(self._arrival)

    def __len__(self) -> int:
        return len(self._arrival)

    def see(self, prompt: str) -> None:
        if prompt in self._recency:
            self._recency.move_to_end(prompt)
            return
        self._arrival[prompt] = None
        self._recency[prompt] = None
        while len(self._recency) > self.capacity:
            oldest, _ = self._recency.popitem(last=False)
            del self._arrival[oldest]

    def state_dict(self) -> dict[str, list[str]]:
        return {"arrival": list(self._arrival), "recency": list(self._recency)}

    def load_state_dict(self, state: dict[str, list[str]] | list[str]) -> None:
        if isinstance(state, list):  # checkpoints before the bound: arrival order only
            state = {"arrival": state, "recency": state}
        recency = state["recency"][-self.capacity :]
        kept = set(recency)
        self._arrival = {p: None for p in state["arrival"] if p in kept}
        self._recency = OrderedDict((p, None) for p in recency)
