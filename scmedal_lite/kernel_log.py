"""Where a notebook kernel's own messages go: a log file instead of the terminal.

A kernel process writes to the standard error it inherits: TensorFlow's C++ start-up lines (``I0000 ...
oneDNN custom operations are on``, and ``E0000 ... failed call to cuInit`` on a machine without a GPU, which
``TF_CPP_MIN_LOG_LEVEL`` does not hold back because they come before TensorFlow reads it) and ipykernel's
``Kernel is running over TCP without encryption``. None of that is a notebook's output: the cells' own output
is in the executed notebook. Two kernels at a time printed about ten such lines each between the progress
lines of ``scmedal-lite run`` and ``make demo``, and an ``E0000`` line reads like a failure. With
:func:`logging_kernel_manager` the kernel's standard error is appended to a file instead, kept for when a
kernel dies (a crash report lands there too).

>>> import papermill as pm                                                                  # doctest: +SKIP
>>> pm.execute_notebook("in.ipynb", "out.ipynb",                                             # doctest: +SKIP
...                     kernel_manager_class=logging_kernel_manager("logs/in.log"))
"""

from __future__ import annotations

import os

from jupyter_client.manager import AsyncKernelManager


def logging_kernel_manager(path: str | os.PathLike) -> type[AsyncKernelManager]:
    """A kernel manager class (for nbclient's ``kernel_manager_class``, which papermill and jupyter-cache pass
    through) whose kernels append their standard error to ``path``; its folder is created."""
    path = os.fspath(path)

    class LoggingKernelManager(AsyncKernelManager):
        async def start_kernel(self, **kw):
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
            # kept open while the manager lives: a restart launches the kernel again with the same arguments
            self._kernel_log = open(path, "ab")             # noqa: SIM115
            kw.setdefault("stderr", self._kernel_log)
            return await super().start_kernel(**kw)

        async def shutdown_kernel(self, *args, **kw):
            try:
                return await super().shutdown_kernel(*args, **kw)
            finally:
                log = getattr(self, "_kernel_log", None)
                if log is not None:
                    log.close()

    return LoggingKernelManager
