"""torchrun's agent for a single-host run (`bastion train`, `bastion launch --on local`), offline.

The same agent as `python -m torch.distributed.run`, with this process's host-name lookups answered from /etc/hosts
only (`launch.worker.confine_name_lookups`): torchrun calls `socket.getfqdn()` for every event it records, and
torch's c10d reverse-resolves the address of every store connection, which on a dual-stack socket
(::ffff:127.0.0.1) matches no /etc/hosts line and goes to the network's name server. The workers confine their own
lookups the same way (`bastion _worker`, told by the worker environment).
"""

from __future__ import annotations

import sys

from bastion.errors import USER_ERROR_EXIT


def main() -> None:
    from bastion.launch.worker import confine_name_lookups

    confine_name_lookups()
    import logging

    from torch.distributed.run import main as torchrun

    # after one worker fails, the agent logs a warning for each one it stops ("Sending process N closing signal
    # SIGTERM"): a line per surviving rank on every restart, saying nothing that the failure's own line does not
    # nor does its "failed (exitcode: 2)" line when a worker refused the request and said why
    logging.getLogger("torch.distributed.elastic.multiprocessing.api").addFilter(
        lambda record: not str(record.msg).startswith("Sending process")
        and f"exitcode: {USER_ERROR_EXIT})" not in record.getMessage())
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    try:
        torchrun()
    except ChildFailedError as exc:
        codes = {failure.exitcode for failure in exc.failures.values()}
        if codes == {USER_ERROR_EXIT}:
            sys.exit(USER_ERROR_EXIT)  # every failed worker printed its guidance; torchrun's table adds nothing
        print(exc, file=sys.stderr, flush=True)  # which ranks failed, without the agent's own traceback
        sys.exit(1)


if __name__ == "__main__":
    main()
