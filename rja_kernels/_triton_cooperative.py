"""Co-resident programs for Triton's interpreter, so kernels whose programs meet at a barrier in
global memory (`_triton_common.sample_barrier`) run on CPU too.

The interpreter runs a grid's programs one after another: a program spinning until the others
arrive would spin forever. Inside `cooperative_programs()` every program of a launch gets its own
thread, and one token decides which runs: a program keeps it until it is *stuck*, i.e. it polls an
address (an atomic add of 0) and reads what its previous poll there read with no atomic update of
its own between, and then hands it to the next live program in program order. So exactly one
program runs at a time (no data races, the same interleaving on every run and machine), programs
switch only inside a barrier's wait, and a program that passes a barrier at its first poll (it was
the last to arrive) runs on. A missing or miscounted barrier therefore shows up deterministically:
the program running ahead reads what the others have not written yet.

When every live program is stuck and no update happened since the last of them got stuck, nobody
can ever arrive: `CooperativeDeadlock` names the stuck programs and the addresses they wait on.
"""

from __future__ import annotations

import contextlib
import inspect
import threading
from collections.abc import Iterator

import numpy as np
from triton.runtime import interpreter


class CooperativeDeadlock(RuntimeError):
    """Every live program of a cooperative launch waits on an arrival that can never come."""


class _Aborted(BaseException):
    """Raised in a program's thread to stop it after another program failed."""


class _Scheduler:
    """The token passed among the threads of one launch's programs."""

    def __init__(self, grid: tuple[int, int, int]) -> None:
        self.programs = [(x, y, z) for x in range(grid[0]) for y in range(grid[1]) for z in range(grid[2])]
        self.live = [True] * len(self.programs)
        self.stuck_since: list[int | None] = [None] * len(self.programs)
        self.last_poll: list[tuple[bytes, bytes] | None] = [None] * len(self.programs)
        self.updates = 0  # atomic updates so far: a stuck program can only be freed by a new one
        self.running = 0
        self.error: BaseException | None = None
        self.cond = threading.Condition()
        self.local = threading.local()

    def wait_turn(self, me: int) -> None:
        with self.cond:
            self.cond.wait_for(lambda: self.running == me or self.error is not None)
            if self.error is not None:
                raise _Aborted

    def _pass_token(self, me: int) -> None:
        """Gives the token to the next live program after `me` (called with the lock held)."""
        n = len(self.programs)
        for k in range(1, n + 1):
            nxt = (me + k) % n
            if self.live[nxt]:
                self.running = nxt
                break
        self.cond.notify_all()

    def atomic(self, ptr: np.ndarray, polled: bool, result: np.ndarray) -> None:
        """Bookkeeping after an atomic of the running program; hands the token on when it is stuck."""
        me = self.local.index
        if not polled:
            self.updates += 1
            self.last_poll[me] = None
            self.stuck_since[me] = None
            return
        poll = (ptr.tobytes(), result.tobytes())
        if self.last_poll[me] != poll:
            self.last_poll[me] = poll
            self.stuck_since[me] = None
            return
        with self.cond:
            self.stuck_since[me] = self.updates  # still stuck after the latest update
            live = [i for i, alive in enumerate(self.live) if alive]
            if all(self.stuck_since[i] == self.updates for i in live):
                self.error = CooperativeDeadlock(
                    "cooperative launch deadlocked: programs " + ", ".join(str(self.programs[i]) for i in live)
                    + " all wait at a barrier no other program can reach (addresses "
                    + ", ".join(sorted({hex(int(np.frombuffer(self.last_poll[i][0], np.uint64)[0]))
                                        for i in live})) + ")")
                self.cond.notify_all()
                raise _Aborted
            self._pass_token(me)
        self.wait_turn(me)

    def run(self, fn, args: dict) -> None:
        """Runs every program of the grid to its end, one token among their threads."""

        def program(index: int) -> None:
            self.local.index = index
            try:
                self.wait_turn(index)
                self.local.grid_idx = self.programs[index]
                fn(**args)
            except _Aborted:
                pass
            except BaseException as e:  # handed to the launching thread
                with self.cond:
                    if self.error is None:
                        self.error = e
                    self.cond.notify_all()
            finally:
                with self.cond:
                    self.live[index] = False
                    if self.running == index:
                        self._pass_token(index)

        threads = [threading.Thread(target=program, args=(i,), daemon=True) for i in range(len(self.programs))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if self.error is not None:
            raise self.error


_active: _Scheduler | None = None


class _LastProgramRunsAll:
    """Stands in for a kernel's function in the interpreter's loop over the grid, which calls it
    once per program: the last call runs every program under one `_Scheduler`. It shows the loop
    the function's globals (where the interpreter finds `triton.language` to patch), signature and
    name (by which it binds the arguments)."""

    def __init__(self, fn) -> None:
        self.fn = fn
        self.__globals__ = fn.__globals__
        self.__signature__ = inspect.signature(fn)
        self.__name__ = fn.__name__

    def __call__(self, **args) -> None:
        global _active
        builder = interpreter.interpreter_builder
        if builder.grid_idx != tuple(d - 1 for d in builder.grid_dim):
            return
        _active = _Scheduler(builder.grid_dim)
        try:
            _active.run(self.fn, args)
        finally:
            _active = None
_ADDS = (interpreter._ir.ATOMIC_OP.ADD, interpreter._ir.ATOMIC_OP.FADD)


@contextlib.contextmanager
def cooperative_programs() -> Iterator[None]:
    """Within: the interpreter runs each launch's programs as co-resident, token-passing threads."""
    builder = interpreter.interpreter_builder
    executor = interpreter.GridExecutor
    plain_call = executor.__call__
    plain_program_id, plain_rmw = builder.create_get_program_id, builder.create_atomic_rmw

    def call(self, *args, **kwargs):
        real_fn = self.fn
        self.fn = _LastProgramRunsAll(real_fn)
        try:
            return plain_call(self, *args, **kwargs)
        finally:
            self.fn = real_fn

    def program_id(axis):
        if _active is None:
            return plain_program_id(axis)
        return interpreter.TensorHandle(np.array([_active.local.grid_idx[axis]], dtype=np.int32), interpreter.tl.int32)

    def atomic_rmw(rmw_op, ptr, val, mask, sem, scope):
        result = plain_rmw(rmw_op, ptr, val, mask, sem, scope)
        if _active is not None:
            polled = rmw_op in _ADDS and not np.any(val.data[mask.data])
            _active.atomic(ptr.data, polled, result.data)
        return result

    executor.__call__ = call
    builder.create_get_program_id = program_id
    builder.create_atomic_rmw = atomic_rmw
    try:
        yield
    finally:
        executor.__call__ = plain_call
        del builder.create_get_program_id, builder.create_atomic_rmw  # the class's methods again
