"""The workers manager: the root nursery every layer runs in, and the way out.

Structured concurrency does the hard part: every service runs as a task of one nursery, so
an exception in any layer cancels all the others, and the nursery only returns once every
task has finished. The manager adds what a VPN needs around that:

* a graceful stop (`request_stop`): run the exit hooks (send EXIT / OCC exit so the server
  frees our slot at once), give them a bounded time, then cancel the root scope;
* SIGINT/SIGTERM mapped to that graceful stop (the CLI enables it), and any other signal
  the owner lists in `also_stop_on` (the server stops on SIGHUP/SIGUSR1, to restart or for
  good, rather than die at once of the default action) or hands to a function in
  `also_handle` (the server's SIGUSR2 status report). Every stopping signal is recorded
  in `stop_signals`, also those that come while the stop runs, so that the owner can tell
  a restart (SIGHUP) from a stop for good (a SIGTERM during that restart's stop). All of
  them are listened for before set-up runs, and what the caller's own handler kept before
  the manager ran (`kept_signals`, cli_common.StartupSignals) is acted on as soon as the
  manager listens: a signal during start-up is never a death by its default action.
  `handle_signal` is the same action for a signal named by other means (the management
  interface's `signal`);
* cleanups (remove routes and addresses, close the TUN) that run on every exit path,
  including cancellation and errors, in reverse order of registration;
* a name per service, so a failure is reported as "layer X failed: reason".
"""

from __future__ import annotations

import logging
import signal
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any

import trio

from trivpn.errors import TrivpnError

log = logging.getLogger("trivpn.workers")

#: How long exit notifications may take before everything is cancelled anyway.
EXIT_GRACE = 1.0


class ServiceFailed(Exception):
    """Wraps a layer's exception with the layer's name (the original is `__cause__`)."""

    def __init__(self, service: str, exc: BaseException) -> None:
        super().__init__(f"{service}: {exc}")
        self.service = service
        self.error = exc


def start_named(
    nursery: trio.Nursery, name: str, fn: Callable[..., Awaitable[Any]], *args: Any
) -> None:
    """Start a service in `nursery`; its failure is re-raised as ServiceFailed(name, error)."""

    async def wrapped() -> None:
        try:
            await fn(*args)
        except (trio.Cancelled, KeyboardInterrupt):
            raise
        except Exception as exc:
            raise ServiceFailed(name, exc) from exc

    nursery.start_soon(wrapped, name=name)


def _causes(exc: BaseException) -> list[BaseException]:
    """Every leaf under `exc`, through exception groups and service wrappers at any depth (a
    layer with its own nursery wraps a group: ServiceFailed(name, ExceptionGroup([...])))."""
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for e in exc.exceptions for leaf in _causes(e)]
    if isinstance(exc, ServiceFailed):
        return _causes(exc.error)
    return [exc]


#: what a layer raises when another layer ended first and closed the channel between them:
#: a side effect of that other failure, never its cause
SIDE_EFFECTS = (trio.BrokenResourceError, trio.ClosedResourceError)


def primary_error(exc: BaseException) -> BaseException:
    """The error that caused a failure, dug out of exception groups and service wrappers:
    an error we raised on purpose (TrivpnError) first, then any other but a closed-channel
    side effect, then those, then a Cancelled."""
    leaves = _causes(exc)
    inner = [e for e in leaves if not isinstance(e, trio.Cancelled)]
    ours = [e for e in inner if isinstance(e, TrivpnError)]
    causes = [e for e in inner if not isinstance(e, SIDE_EFFECTS)]
    return (ours or causes or inner or leaves)[0]


class WorkersManager:
    def __init__(
        self, *, handle_signals: bool = False, exit_grace: float = EXIT_GRACE,
        also_stop_on: Mapping[signal.Signals, str] | None = None,
        also_handle: Mapping[signal.Signals, Callable[[], None]] | None = None,
        kept_signals: Callable[[], Iterable[int]] | None = None,
    ) -> None:
        self.handle_signals = handle_signals
        #: more signals that stop gracefully, each with the note logged when it comes
        self.also_stop_on = dict(also_stop_on or {})
        #: signals that call a function (and stop nothing)
        self.also_handle = dict(also_handle or {})
        #: the signals the caller's own handler kept until the manager listens (taken once)
        self._kept_signals = kept_signals
        #: signals that came after the manager's handlers went in, before its receiver opened
        self._early: list[int] = []
        self._listening = False
        self.exit_grace = exit_grace
        self.nursery: trio.Nursery | None = None
        self.cancel_scope = trio.CancelScope()
        self._cleanups: list[Callable[[], Any]] = []
        self._exit_hooks: list[Callable[[], Awaitable[None]]] = []
        self._stopping = False
        self._stop_pending = False
        self._started = False  # `run` was called
        self.stop_reason: str | None = None
        #: the stopping signals received (each kind once, in order), also those that came
        #: while the stop ran: what the owner decides on once `run` returned (a restart?)
        self.stop_signals: list[signal.Signals] = []

    def add_cleanup(self, fn: Callable[[], Any]) -> None:
        """Register a synchronous cleanup; runs on every exit path, newest first."""
        self._cleanups.append(fn)

    def add_exit_hook(self, fn: Callable[[], Awaitable[None]]) -> None:
        """Register an async exit notification, run (bounded) before a graceful stop."""
        self._exit_hooks.append(fn)

    def start_service(self, name: str, fn: Callable[..., Awaitable[Any]], *args: Any) -> None:
        assert self.nursery is not None, "start services inside run()"
        start_named(self.nursery, name, fn, *args)

    def request_stop(self, reason: str = "stop requested") -> None:
        """Begin a graceful stop (idempotent). Asked before `run`, the run stops before
        its set-up starts anything; after it, nothing is left to stop."""
        if self._stopping or (self.nursery is None and self._started):
            return
        self._stopping = True
        self.stop_reason = reason
        if self.nursery is None:
            self._stop_pending = True  # `run` starts it
            return
        try:
            self.nursery.start_soon(self._graceful_stop)
        except RuntimeError:
            # the nursery closes when its last task ends, but `run` only forgets it when
            # next scheduled: `trivpn.serve()` / `trivpn.connect()` cancelled from outside
            # asked in between, and start_soon's "Nursery is closed to new arrivals"
            # replaced the cancellation
            log.debug("stop requested (%s) while the run was ending", reason)

    @property
    def _signal_set(self) -> tuple[signal.Signals, ...]:
        return (signal.SIGINT, signal.SIGTERM, *self.also_stop_on, *self.also_handle)

    def handle_signal(self, sig: signal.Signals) -> None:
        """What `sig` does to the run: SIGINT, SIGTERM and `also_stop_on` stop it gracefully,
        `also_handle` calls its function. While stopping, a SIGINT/SIGTERM cuts the stop
        short (the exit hooks are not waited for); an `also_stop_on` signal is only noted
        (a SIGHUP during a restart's stop must neither hurry it nor stack a second
        restart). The OS signals come here and so does the management interface's
        `signal`, so both act and log alike."""
        if (action := self.also_handle.get(sig)) is not None:
            action()
            return
        self._note_stop_signal(sig)
        if self._stopping and sig in self.also_stop_on:
            log.info("%s while stopping: noted, the stop under way goes on", sig.name)
        elif self._stopping:
            log.warning("%s while stopping: stopping now", sig.name)
            self.cancel_scope.cancel()
        else:
            note = self.also_stop_on.get(sig)
            log.info("%s received, %s", sig.name, note or "shutting down")
            self.request_stop(sig.name)

    def _note_stop_signal(self, sig: signal.Signals) -> None:
        if sig not in self.stop_signals:  # each kind once: a flood stays bounded
            self.stop_signals.append(sig)

    async def _graceful_stop(self) -> None:
        with trio.move_on_after(self.exit_grace):
            for hook in self._exit_hooks:
                try:
                    await hook()
                except Exception as exc:  # an exit notice is best effort
                    log.debug("exit hook failed: %s", exc)
        self.cancel_scope.cancel()

    async def _signals(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        with trio.open_signal_receiver(*self._signal_set) as signals:
            self._listening = True
            early, self._early = self._early, []
            for signum in dict.fromkeys(early):  # each kind once, in order of arrival
                self.handle_signal(signal.Signals(signum))
            task_status.started()
            async for signum in signals:
                self.handle_signal(signal.Signals(signum))

    def _hold_signals(self) -> dict[int, Any]:
        """While the manager's own signal receiver is closed, its signals are never obeyed
        by their default action or a KeyboardInterrupt. Before it opens they are kept, with
        those the caller kept (`kept_signals`), and acted on once it listens. From the
        moment the nursery ends through the cleanups they are logged (and noted in
        `stop_signals`), not obeyed: trio's receiver redelivers the signals still queued
        when it closes, and a third Ctrl+C or SIGTERM then raised KeyboardInterrupt into the
        cleanups or killed the process before the routes, DNS and firewall rules were
        removed (no fail-open).
        Only in the main thread, where handlers can be set; returns the handlers to restore."""
        import threading

        if not self.handle_signals or threading.current_thread() is not threading.main_thread():
            return {}

        def held(signum: int, _frame: object) -> None:
            if not self._listening:
                if signum not in self._early:  # each kind once: a flood stays bounded
                    self._early.append(signum)
            else:
                sig = signal.Signals(signum)
                if sig not in self.also_handle:  # a SIGTERM now still means "for good"
                    self._note_stop_signal(sig)
                log.warning("%s while stopping: the cleanup finishes first", sig.name)

        previous: dict[int, Any] = {}
        for sig in self._signal_set:
            previous[sig] = signal.signal(sig, held)
        if self._kept_signals is not None:  # after ours went in: none is lost in between
            self._early[:0] = self._kept_signals()
        return previous

    async def run(self, setup: Callable[[WorkersManager], Awaitable[None]]) -> None:
        """Run `setup` (which starts services) and keep every service under one scope."""
        self._started = True
        held = self._hold_signals()
        try:
            with self.cancel_scope:
                async with trio.open_nursery() as nursery:
                    self.nursery = nursery
                    if self.handle_signals:
                        # listening before setup runs: a SIGINT during set-up (blocking work
                        # such as an nft call included) is a graceful stop, never a
                        # KeyboardInterrupt thrown into whatever code was running
                        await nursery.start(self._signals, name="signals")
                    if self._stop_pending:
                        self._stop_pending = False
                        nursery.start_soon(self._graceful_stop)
                    if not self._stopping:  # else: asked before the run, or by a kept signal
                        await setup(self)
        finally:
            self.nursery = None
            self._listening = True  # from here on the held signals are only logged
            for fn in reversed(self._cleanups):
                try:
                    fn()
                except Exception as exc:
                    log.warning("cleanup failed: %s", exc)
            self._cleanups.clear()
            for sig, handler in held.items():
                signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
