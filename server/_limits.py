"""The HTTP edge's default limits (``server._edge`` enforces them) and the error of one, in a
module of their own so that the command line, ``ServeOptions`` and the metrics read them without
importing Hypercorn: the ledger process, the projector and the dispatcher never serve HTTP."""

CONNECTIONS_MAX = 1000
CONNECTIONS_PER_ADDRESS_MAX = 500  # half of the total: one address never takes every connection
BODY_TIMEOUT_S = 10.0


class BodyTimeout(Exception):
    """The request body did not arrive whole within the body timeout."""

    def __init__(self, timeout_s: float) -> None:
        super().__init__(f"the request body did not arrive within {timeout_s:g} s")
        self.timeout_s = timeout_s
