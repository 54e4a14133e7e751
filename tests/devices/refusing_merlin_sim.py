"""LiberTEM-live's Merlin simulator with a control server that refuses chosen commands.

A real Merlin answers a command it cannot carry out with an error code in its
reply (1 busy, 2 command not recognised, 3 parameter out of range);
``libertem-live-mib-sim`` always answers 0. This script runs that simulator
unchanged except for the error code of the replies named in the environment
variable ``STEMCAL_SIM_REFUSE``: ``;``-separated ``METHOD,PARAM,CODE,TIMES``
(``TIMES`` -1: always), e.g. ``SET,NUMFRAMESTOACQUIRE,1,1`` (busy, once).
The command itself is still handled as the simulator does.

Usage: ``python refusing_merlin_sim.py PATH.hdr [libertem-live-mib-sim options]``.
"""
from __future__ import annotations

import logging
import os

from libertem_live.detectors.merlin import sim

logger = logging.getLogger("refusing_merlin_sim")


def _rules(text: str) -> dict[tuple[str, str], list[int]]:
    rules = {}
    for item in filter(None, (part.strip() for part in text.split(";"))):
        method, param, code, times = item.split(",")
        rules[(method.upper(), param.upper())] = [int(code), int(times)]
    return rules


class ControlSocketServer(sim.ControlSocketServer):
    """The simulator's control server; replies to refused commands carry an error code."""

    rules = _rules(os.environ.get("STEMCAL_SIM_REFUSE", ""))

    def encode_response(self, response_parts: list[str]) -> bytes:
        rule = self.rules.get((response_parts[0].upper(), response_parts[1].upper()))
        if rule is not None and rule[1] != 0:
            rule[1] -= 1
            logger.info("refusing %s %s with error code %d", response_parts[0],
                        response_parts[1], rule[0])
            response_parts = [*response_parts[:-1], str(rule[0])]
        return super().encode_response(response_parts)


if __name__ == "__main__":
    sim.ControlSocketServer = ControlSocketServer  # CameraSim builds it by this name
    sim.main()
