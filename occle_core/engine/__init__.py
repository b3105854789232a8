"""Training machinery: the :class:`~occle_core.engine.trainer.Trainer`, torch.distributed set-up, RNG state
and seeds (exact resume), and the learning-rate schedule. The ``occle-train`` command line is
``occle_core/train.py``."""
