"""Console scripts. Each entry point imports its module lazily so ``--help`` stays fast."""

from __future__ import annotations

from collections.abc import Sequence


def synth_main(argv: Sequence[str] | None = None) -> int:
    """``occle-synth``: write procedural driving scenes in the SemanticKITTI layout."""
    from occle_core.synth.cli import main

    return main(argv)


def train_main(argv: Sequence[str] | None = None) -> int:
    """``occle-train``: label-efficient training (single process or torchrun)."""
    from occle_core.train import main

    return main(argv)


def eval_main(argv: Sequence[str] | None = None) -> int:
    """``occle-eval``: IoU / mIoU over a split, JSON and PNG output."""
    from occle_core.evaluate import main

    return main(argv)


def adapt_main(argv: Sequence[str] | None = None) -> int:
    """``occle-adapt``: label-free fine-tuning of a checkpoint on a user's own frames."""
    from occle_core.adapt import main

    return main(argv)


def predict_main(argv: Sequence[str] | None = None) -> int:
    """``occle-predict``: run a checkpoint on frames of a sequence and write labels / PNGs."""
    from occle_core.predictor import main

    return main(argv)


def pseudo_main(argv: Sequence[str] | None = None) -> int:
    """``occle-pseudo``: 2D pseudo labels of an image or a dataset with a dataset-specific segmenter."""
    from occle_core.pseudo.cli import main

    return main(argv)


def inspect_main(argv: Sequence[str] | None = None) -> int:
    """``occle-inspect``: read one real frame, print its points / cameras / labels, render it."""
    from occle_core.inspect import main

    return main(argv)
