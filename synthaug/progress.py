"""The one progress callback every long-running library function accepts.

    def show(stage: str, done: int, total: int, info: dict) -> None:
        print(f"{stage}: {done}/{total} {info}")

    train_generator(config, manifest, out, progress=show)

``stage`` names the step ("autoencoder", "ldm", "generate", a sweep arm), ``done``/``total`` count
its units and ``info`` carries what there is to show (loss, it/s), possibly nothing. The CLI's rich
bars (``synthaug.console.stage_progress``) are one implementation. A function that is one counted loop
with no stages of its own (``CCELLAGenerator.generate``, ``write_phantom_dataset``, ``check_dataset``)
takes a plain ``(done, total)`` callable instead (``synthaug.console.progress_bar``).
"""

from __future__ import annotations

from typing import Protocol


class Progress(Protocol):
    def __call__(self, stage: str, done: int, total: int, info: dict, /) -> None: ...
