"""Cancel chasing: a client's cancel, and the tasks workers hold unstarted.

    CANCEL ──> queued tasks dropped at once (BrokerState.cancel)
           ──> tasks prefetched on workers: WITHDRAW to each (_ask_back)
    WITHDRAWN for a cancel ──> what came back is dropped; what did not may
                  have moved (requeued, or out again): the cancel follows it (_seek)
    every worker answered, gone, or late (give_up) ──> CANCEL_REPLY
    WITHDRAWN for nothing pending ──> requeued (asked for idle workers or a
                  higher priority, or given back unasked by a busy worker)

No sockets: messages go out through the ``send`` it is given. WITHDRAW ids
come from one counter (``next_id``) shared with the loop's own asking back,
whose answers match no cancel and so are requeued.
"""
from __future__ import annotations

import itertools
import logging
from dataclasses import dataclass, field
from typing import Callable

from zeropool.broker.state import BrokerState
from zeropool.broker.stats import Stats
from zeropool.protocol import Cancel, CancelReply, TaskRow, Withdraw, Withdrawn

log = logging.getLogger("zeropool.broker")

# A task a cancel asked for may have moved meanwhile (asked back for an idle
# worker, then sent there): the cancel follows it this many times at most.
MAX_CANCEL_CHASES = 3


@dataclass(slots=True)
class PendingCancel:
    """A client's cancel waiting on workers to give back tasks they hold unstarted."""

    client_id: bytes
    request_id: int
    cancelled: list  # task ids
    # (WITHDRAW id, worker id) -> (when it was asked, task ids asked of it)
    waiting: dict = field(default_factory=dict)
    chases: int = 0


class CancelChaser:
    """The cancels that wait on workers, by WITHDRAW id."""

    def __init__(self, state: BrokerState, stats: Stats, send: Callable,
                 patience: float) -> None:
        """``patience``: how long a worker may take to answer a WITHDRAW
        before the cancel is answered without it (see give_up)."""
        self.state = state
        self.stats = stats
        self.send = send
        self.patience = patience
        self.pending: dict[int, PendingCancel] = {}
        self._ids = itertools.count(1)

    def next_id(self) -> int:
        """A WITHDRAW id that no cancel uses."""
        return next(self._ids)

    def cancel(self, client_id: bytes, cancel: Cancel, now: float) -> None:
        """Drop what is queued; ask workers for what they hold unstarted
        (unless ``queued_only``); answer once they have."""
        state = self.state
        cancelled = state.cancel(client_id, cancel.task_ids)
        self.stats.cancelled += len(cancelled)
        held = {} if cancel.queued_only else state.ask_back.unstarted(client_id, cancel.task_ids)
        if not held:
            self.send(client_id, CancelReply(cancel.request_id, cancelled))
            return
        self._ask_back(PendingCancel(client_id, cancel.request_id, cancelled), held, now)

    def on_withdrawn(self, worker_id: bytes, news: Withdrawn, payload: list,
                     now: float) -> None:
        """Tasks a worker gave back: for a cancel, dropped; else requeued."""
        state = self.state
        if not news.request_id:
            # Unasked: it is busy with long tasks and takes back its unused credit.
            taken = state.ask_back.given_back(worker_id, news.tasks)
            log.debug("worker %s took back its unused credit and gave back %d task(s) "
                      "waiting behind long ones", worker_id.hex(), len(taken))
        elif not self._answered_by(worker_id, news, now):
            # Asked for idle workers or higher priorities; or its client has gone meanwhile.
            taken = state.ask_back.withdraw(worker_id, news.tasks, requeue=True)
            log.debug("worker %s gave back %d task(s) for idle workers", worker_id.hex(),
                      len(taken))
        if news.credit:
            state.add_credit(worker_id, news.credit)

    def give_up(self, now: float) -> None:
        """A worker that has not answered a cancel's WITHDRAW within
        ``patience`` lives but is held up (a task holding its GIL): its part
        of the cancel is answered as if it gave nothing back (those tasks may
        run), so that cancel() does not wait as long as that task runs. Its
        late answer requeues what it gives back."""
        deadline = now - self.patience
        for request_id, pending in list(self.pending.items()):
            if request_id not in self.pending:
                continue  # answered meanwhile, under another of its WITHDRAW ids
            late = [key for key, (asked_at, _) in pending.waiting.items()
                    if key[0] == request_id and asked_at < deadline]
            for key in late:
                asked_at, _ = pending.waiting.pop(key)
                log.info("worker %s has not answered for %.1fs; cancelling without the "
                         "tasks it holds", key[1].hex(), now - asked_at)
            if late:
                self._answer(request_id)

    def workers_gone(self, worker_ids: list, now: float) -> None:
        """Cancels waiting on workers that are gone: their tasks are back in the
        queue (or failed), so the broker answers for them."""
        gone = set(worker_ids)
        for request_id, pending in list(self.pending.items()):
            for key in [key for key in pending.waiting if key[0] == request_id and key[1] in gone]:
                asked_at, task_ids = pending.waiting.pop(key)
                self._seek(pending, asked_at, set(task_ids), now)
            self._answer(request_id)

    def drop_client(self, client_id: bytes) -> None:
        """A gone client's cancels: nobody waits for their answers (its tasks'
        answers from workers are requeued or dropped as any other's)."""
        for request_id in [r for r, p in self.pending.items() if p.client_id == client_id]:
            del self.pending[request_id]

    def _answered_by(self, worker_id: bytes, news: Withdrawn, now: float) -> bool:
        """A worker's answer to a cancel's WITHDRAW: False if it answers none."""
        pending = self.pending.get(news.request_id)
        asked = (pending.waiting.pop((news.request_id, worker_id), None)
                 if pending is not None else None)
        if asked is None:
            return False
        asked_at, asked = asked
        mine = {(pending.client_id, task_id) for task_id in asked}
        taken = self.state.ask_back.withdraw(
            worker_id, [row for row in news.tasks if tuple(row) in mine], requeue=False)
        log.debug("worker %s gave back %d task(s) to cancel", worker_id.hex(), len(taken))
        self.stats.cancelled += len(taken)
        pending.cancelled.extend(task_id for _, task_id in taken)
        self._seek(pending, asked_at, set(asked) - {task_id for _, task_id in taken}, now)
        self._answer(news.request_id)
        return True

    def _ask_back(self, pending: PendingCancel, held: dict, now: float) -> None:
        """Ask workers for the tasks of a cancel they hold unstarted (worker id -> task ids)."""
        request_id = self.next_id()
        self.pending[request_id] = pending
        for worker_id, task_ids in held.items():
            pending.waiting[request_id, worker_id] = (now, task_ids)
            self.send(worker_id, Withdraw(request_id, [TaskRow(pending.client_id, t) for t in task_ids]))

    def _seek(self, pending: PendingCancel, asked_at: float, task_ids: set, now: float) -> None:
        """Tasks of a cancel that a worker asked at ``asked_at`` did not give back
        (or could not: it died). They may have come back meanwhile, unasked or
        asked for an idle worker: into the queue, where the cancel still
        applies, or out again to another worker, which the worker's answer does
        not cover, so that one is asked too."""
        if pending.client_id not in self.state.clients:
            return
        cancelled = self.state.cancel(pending.client_id, list(task_ids))
        self.stats.cancelled += len(cancelled)
        pending.cancelled.extend(cancelled)
        task_ids.difference_update(cancelled)
        if task_ids and pending.chases < MAX_CANCEL_CHASES:
            moved = self.state.ask_back.unstarted(pending.client_id, list(task_ids), since=asked_at)
            if moved:
                pending.chases += 1
                self._ask_back(pending, moved, now)

    def _answer(self, request_id: int) -> None:
        """Once no worker owes an answer to WITHDRAW ``request_id``, forget it;
        once none owes one for its cancel at all, answer the client."""
        pending = self.pending[request_id]
        if any(asked == request_id for asked, _ in pending.waiting):
            return
        del self.pending[request_id]
        if not pending.waiting and pending.client_id in self.state.clients:
            self.send(pending.client_id, CancelReply(pending.request_id, pending.cancelled))
