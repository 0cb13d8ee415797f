"""What a long command shows while it runs, on stderr: one bar per phase of the start
(pretrained students, teacher), named, with its ETA; then the outer steps' bar, and under it a
bar for each validation. `quiet` shows nothing; stdout is never written."""

from __future__ import annotations

import sys

from tqdm import tqdm


class Progress:
    """Bars for a distillation's phases; call it as distill()'s `progress` hook."""

    def __init__(self, quiet: bool, outer_steps: int, first_step: int = 0):
        self.quiet = quiet
        self.outer_steps, self.first_step = outer_steps, first_step
        self.start_bar: tqdm | None = None
        self.phase: str | None = None
        self.outer: tqdm | None = None
        self.inner: tqdm | None = None

    def _bar(self, **kwargs) -> tqdm:
        return tqdm(file=sys.stderr, disable=self.quiet, dynamic_ncols=True, **kwargs)

    def __call__(self, phase: str, done: int, total: int) -> None:
        """A phase of the start (distill()'s `progress` hook)."""
        if phase != self.phase or self.start_bar is None:
            self._close_start()
            self.phase = phase
            self.start_bar = self._bar(total=total, desc=phase, unit="step")
        assert self.start_bar is not None
        self.start_bar.update(done - self.start_bar.n)
        if done >= total:  # the phase is over: its bar stops its clock
            self._close_start()

    def _close_start(self) -> None:
        if self.start_bar is not None:
            self.start_bar.close()
            self.start_bar = None

    def outer_bar(self) -> tqdm:
        """The outer steps' bar, made when the start is over."""
        if self.outer is None:
            self._close_start()
            self.outer = self._bar(total=self.outer_steps, initial=self.first_step,
                                   desc="outer steps", unit="step", position=0)
        return self.outer

    def outer_step(self, meta_loss: float) -> None:
        bar = self.outer_bar()
        bar.set_postfix(meta_loss=f"{meta_loss:.4f}")
        bar.update(1)

    def validation(self, step: int, total: int) -> None:
        """A validation at outer step `step` begins: its students train up to `total` steps."""
        self.outer_bar()
        self.inner = self._bar(total=total, desc=f"validation at outer step {step}",
                               unit="step", position=1, leave=False)

    def validation_step(self, done: int) -> None:
        if self.inner is not None:
            self.inner.update(done - self.inner.n)

    def validated(self, metric: str, value: float) -> None:
        if self.inner is not None:
            self.inner.close()
            self.inner = None
        self.outer_bar().set_postfix({f"valid {metric}": f"{value:.4f}"})

    def note(self, text: str) -> None:
        """One line for the user (the plan of a run), unless quiet."""
        if not self.quiet:
            tqdm.write(text, file=sys.stderr)

    def close(self) -> None:
        for bar in (self.start_bar, self.inner, self.outer):
            if bar is not None:
                bar.close()
