"""Ports chosen free can be taken before a server binds them: the embedded servers are started
again on new ports rather than failing `restyle up`; SeaweedFS's ports leave room for their
gRPC twins (port + 10000)."""
from __future__ import annotations

import socket
import sys

import pytest

from streams.stack.embedded import (GRPC_OFFSET, ExitedWhileStarting, free_port, free_ports,
                                    free_ports_with_grpc, port_is_free, start_process,
                                    start_tansu, started_on_free_ports, wait_for_port)

# A server that binds the port it is given (and exits, as servers do, if it is taken).
SERVER = ("import socket, sys, time\n"
          "s = socket.socket(); s.bind(('127.0.0.1', int(sys.argv[1]))); s.listen()\n"
          "time.sleep(60)\n")


def test_a_port_taken_before_the_server_binds_it_is_chosen_again(tmp_path):
    squatter = socket.socket()
    squatter.bind(("127.0.0.1", 0))  # bound, not listening: the server's bind fails
    taken = squatter.getsockname()[1]
    offered = iter([taken])
    tried = []

    def start(port):
        port = port or next(offered, None) or free_port()
        tried.append(port)
        service = start_process("server", [sys.executable, "-c", SERVER, str(port)], tmp_path)
        wait_for_port(port, 30, service.process, "server")
        return service, port

    try:
        service, port = started_on_free_ports(start, "server", None)
        assert tried[0] == taken and port != taken and len(tried) == 2
        service.stop()
        # A port the caller chose is not replaced: its failure is the caller's to see.
        with pytest.raises(ExitedWhileStarting):
            started_on_free_ports(start, "server", taken)
    finally:
        squatter.close()


def test_seaweedfs_ports_and_their_grpc_twins_are_all_free_and_distinct():
    ports = free_ports_with_grpc(5)
    everything = set(ports) | {p + GRPC_OFFSET for p in ports}
    assert len(everything) == 10 and max(everything) < 65536
    assert all(port_is_free(p) for p in everything)


def test_tansu_starts_on_a_port_of_its_own(tmp_path):
    service, bootstrap = start_tansu(tmp_path)
    try:
        assert not port_is_free(int(bootstrap.rsplit(":", 1)[1]))
    finally:
        service.stop()


def test_a_process_the_stack_starts_can_be_stopped_with_sigterm(tmp_path):
    """Stop signals are held back while a process is started (so none is left unrecorded):
    the process itself must not inherit that."""
    service = start_process("sleeper", [sys.executable, "-c", "import time; time.sleep(60)"],
                            tmp_path)
    blocked = next(line for line in open(f"/proc/{service.process.pid}/status")
                   if line.startswith("SigBlk:"))
    assert int(blocked.split()[1], 16) == 0
    service.stop(timeout_s=5)
    assert service.process.returncode == -15  # it ended on SIGTERM, not on a kill


def test_ports_chosen_together_are_distinct_and_avoid_those_already_given():
    given = free_port()
    ports = free_ports(40, besides=(given,))
    assert len(set(ports)) == 40 and given not in ports
