"""Teachers as views of the trainable state: the frozen base, an EMA, a window's snapshot,
and a WiSE-FT blend, all without a second model.

The state kept is one tensor per learning piece: with LoRA the adapter's product
scale * B @ A [out, in] (the EMA averages the products, not the factors, whose average is
not the average model); otherwise the trainable parameters themselves. A view makes the
model compute as that teacher for the duration:

- LoRA: each adapter adds the teacher's product instead of its own (base: none at all);
- other modes: the parameters' data are swapped for the teacher's and swapped back (the
  base is the frozen copy the model keeps).

Costs: an EMA or a snapshot holds one such tensor set (LoRA: out x in per adapted weight;
otherwise a copy of the trainable parameters); a view costs the forward pass done in it.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Literal

import torch
from torch import nn

from streamer.learning.lora import LoRADelta
from streamer.learning.model import ClipModel

View = Literal["student", "base", "ema", "window", "wise"]


class Teachers:
    def __init__(self, model: ClipModel, ema_decay: float, keep_ema: bool) -> None:
        self.model = model
        self.decay = ema_decay
        self.keep_ema = keep_ema
        self.adapters = {n: m for n, m in model.net.named_modules() if isinstance(m, LoRADelta)}
        self.params = {} if self.adapters else dict(model.trainable_parameters())
        self.ema: dict[str, torch.Tensor] | None = self.current() if keep_ema else None
        self.window: dict[str, torch.Tensor] | None = None  # taken when a window closes

    # -- state ---------------------------------------------------------------------------
    def current(self, grad: bool = False) -> dict[str, torch.Tensor]:
        """The student's learning pieces (with their gradient when `grad`)."""
        with torch.set_grad_enabled(grad):
            if self.adapters:
                out = {n: m.delta() for n, m in self.adapters.items()}
            else:
                out = {n: p if grad else p.detach() for n, p in self.params.items()}
            return out if grad else {n: t.detach().clone() for n, t in out.items()}

    def base_pieces(self) -> dict[str, torch.Tensor]:
        if self.adapters:
            return {n: torch.zeros_like(m.delta().detach()) for n, m in self.adapters.items()}
        base = dict(self.model.frozen_base.named_parameters())
        return {n: base[n].detach() for n in self.params}

    def pieces(self, kind: View) -> dict[str, torch.Tensor]:
        if kind == "base":
            return self.base_pieces()
        if kind == "ema":
            return self.ema if self.ema is not None else self.current()
        if kind == "window":
            return self.window if self.window is not None else self.base_pieces()
        return self.current()

    @torch.no_grad()
    def after_update(self, applied: torch.Tensor) -> None:
        """Fold the student into the EMA: ema <- decay * ema + (1 - decay) * student, where
        the update was applied (`applied`, a flag on the device: no read-back)."""
        if self.ema is None:
            return
        weight = applied.float() * (1 - self.decay)
        for name, ema in self.ema.items():
            now = self.adapters[name].delta() if self.adapters else self.params[name]
            ema.lerp_(now.detach().to(ema.dtype), weight.to(ema.device))

    def window_closed(self) -> None:
        """The previous-phase teacher (Mod-X): the student as it was when a window closed."""
        self.window = self.current()

    # -- views ---------------------------------------------------------------------------
    @contextmanager
    def view(self, kind: View, alpha: float = 1.0) -> Iterator[nn.Module]:
        """The network computing as `kind` (no gradient); `wise` = base + alpha * (student -
        base). Yields the module to pass to the model's encoders."""
        if kind == "student":
            yield self.model.net
            return
        with torch.no_grad():
            if kind == "base":
                with self.model.base() as net:
                    yield net
                return
            pieces = self._blend(alpha) if kind == "wise" else self.pieces(kind)
            with self._applied(pieces):
                yield self.model.net

    def _blend(self, alpha: float) -> dict[str, torch.Tensor]:
        now, base = self.current(), self.base_pieces()
        return {n: base[n] + alpha * (now[n] - base[n]) for n in now}

    @contextmanager
    def _applied(self, pieces: dict[str, torch.Tensor]) -> Iterator[None]:
        if self.adapters:
            for name, module in self.adapters.items():
                module.override = pieces[name]
            try:
                yield
            finally:
                for module in self.adapters.values():
                    module.override = None
            return
        saved = {n: p.data for n, p in self.params.items()}
        for name, param in self.params.items():
            param.data = pieces[name].to(param.device, param.dtype)
        try:
            yield
        finally:
            for name, param in self.params.items():
                param.data = saved[name]

    # -- checkpoint ----------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        cpu = lambda d: None if d is None else {n: t.cpu() for n, t in d.items()}  # noqa: E731
        return {"ema": cpu(self.ema), "window": cpu(self.window)}

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        state = state or {}
        device = self.model.device
        on = lambda d: None if d is None else {n: t.to(device) for n, t in d.items()}  # noqa: E731
        if self.keep_ema:
            self.ema = on(state.get("ema")) or self.current()
        self.window = on(state.get("window"))
