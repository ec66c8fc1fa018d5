"""Process-wide choices, made explicitly (``sm.settings``): verbosity, progress bars, deterministic ops.

Importing :mod:`scmedal_lite` changes nothing outside the package: no environment variable, no logger level, no
TensorFlow switch. An application turns on what it wants, as the command line and the tutorial notebooks do::

    import scmedal_lite as sm
    sm.settings.verbosity = "info"      # the package's log messages (and TensorFlow's Python logger)
    sm.settings.progress = False        # no progress bars (they go to stderr)
    sm.settings.deterministic = False   # faster, at the cost of bit-for-bit repeatability (default True)

or all at once: ``sm.settings.configure(verbosity="warning", progress=False, deterministic=True)``.

``verbosity`` sets the level of the ``scmedal_lite`` logger (and gives it a handler on stderr when it has none)
and, below ``"info"``, quiets the ``tensorflow`` and ``absl`` loggers; :meth:`Settings.quiet_tensorflow` also
sets ``TF_CPP_MIN_LOG_LEVEL`` for a TensorFlow not yet imported. ``deterministic`` (default True: same seed,
same data, same numbers) makes every training call ``tf.config.experimental.enable_op_determinism()`` when it
starts, never the import; setting it to False disables TensorFlow's op determinism (process-wide) and trainings
stop turning it on, for some speed.
"""

from __future__ import annotations

import logging
import os
import sys

__all__ = ["Settings", "settings"]

#: Names of the verbosity levels, quietest first; an int 0-3 indexes them.
VERBOSITY = ("error", "warning", "info", "debug")
_LEVELS = {"error": logging.ERROR, "warning": logging.WARNING, "info": logging.INFO, "debug": logging.DEBUG}


class Settings:
    """The package's process-wide settings (one instance: ``sm.settings``). Nothing is applied at import."""

    def __init__(self):
        self._verbosity = "warning"
        self._progress = True
        self._deterministic = True

    # ------------------------------------------------------------------ verbosity
    @property
    def verbosity(self) -> str:
        """``"error"``, ``"warning"`` (default), ``"info"`` or ``"debug"`` (or 0-3): the level of the package's
        log messages. Setting it configures the ``scmedal_lite`` logger (a stderr handler if it has none)."""
        return self._verbosity

    @verbosity.setter
    def verbosity(self, value) -> None:
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            raise TypeError(f"verbosity must be one of {VERBOSITY} or 0-3, got {value!r}")
        if isinstance(value, int):
            value = VERBOSITY[min(max(value, 0), len(VERBOSITY) - 1)]
        value = value.lower()
        if value not in _LEVELS:
            raise ValueError(f"verbosity must be one of {VERBOSITY} or 0-3, got {value!r}")
        self._verbosity = value
        logger = logging.getLogger("scmedal_lite")
        logger.setLevel(_LEVELS[value])
        if not any(getattr(h, "_scmedal", False) for h in logger.handlers):
            handler = logging.StreamHandler(sys.stderr)
            handler.setFormatter(logging.Formatter("%(name)s: %(message)s"))
            handler._scmedal = True
            logger.addHandler(handler)
        quiet = _LEVELS[value] > logging.INFO
        for name in ("tensorflow", "absl"):
            logging.getLogger(name).setLevel(logging.ERROR if quiet else logging.NOTSET)

    # ------------------------------------------------------------------ progress bars
    @property
    def progress(self) -> bool:
        """Whether the package draws progress bars (tqdm, on stderr) where a call does not say; default True."""
        return self._progress

    @progress.setter
    def progress(self, value) -> None:
        self._progress = _as_bool("progress", value)

    def resolve_progress(self, progress) -> bool:
        """A call's ``progress`` argument: None follows :attr:`progress`; else parsed like every parameter
        (``True``, ``"no"``, ...; :func:`scmedal_lite.validate.as_bool`)."""
        from .validate import as_bool

        return self._progress if progress is None else as_bool("progress", progress)

    # ------------------------------------------------------------------ determinism
    @property
    def deterministic(self) -> bool:
        """Whether training makes TensorFlow's ops deterministic (process-wide); default True, applied when a
        training starts (:func:`scmedal_lite.training.seed_everything`). Setting it imports TensorFlow and
        enables or disables op determinism at once."""
        return self._deterministic

    @deterministic.setter
    def deterministic(self, value) -> None:
        value = _as_bool("deterministic", value)
        import tensorflow as tf

        if value:
            tf.config.experimental.enable_op_determinism()
        else:
            from tensorflow.python.framework import config as tf_config

            tf_config.disable_op_determinism()
        self._deterministic = value

    # ------------------------------------------------------------------ all at once
    def configure(self, *, verbosity=None, progress=None, deterministic=None,
                  quiet_tensorflow: bool = False) -> Settings:
        """Set several settings at once (None leaves one as it is); returns the settings."""
        if quiet_tensorflow:
            self.quiet_tensorflow()
        if verbosity is not None:
            self.verbosity = verbosity
        if progress is not None:
            self.progress = progress
        if deterministic is not None:
            self.deterministic = deterministic
        return self

    @staticmethod
    def quiet_tensorflow() -> None:
        """Keep TensorFlow's C++ start-up messages off stderr: sets ``TF_CPP_MIN_LOG_LEVEL=2`` (unless it is
        set) when TensorFlow is not imported yet; its Python loggers to ERROR."""
        if "tensorflow" not in sys.modules:
            os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        for name in ("tensorflow", "absl"):
            logging.getLogger(name).setLevel(logging.ERROR)

    def __repr__(self) -> str:
        return (f"scmedal_lite settings: verbosity={self.verbosity!r}, progress={self.progress}, "
                f"deterministic={self.deterministic}")


def _as_bool(name: str, value) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    raise TypeError(f"{name} must be True or False, got {value!r}")


#: The one instance: ``sm.settings``.
settings = Settings()
