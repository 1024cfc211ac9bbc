"""MultiWorkerMirroredStrategy with two worker processes on 127.0.0.1, through the custom-loop recipe
of docs/reliability.md: both workers end with the same masks, quantizer ranges, weights and losses.
"""

import os
import socket
import subprocess
import sys
import tempfile
import time

import numpy as np
import pytest

from helpers import PROGRAMS, results_of
from keras_compress.schedules import PolynomialSchedule

#: The exit status of a worker whose port was taken (tests/programs/multi_worker.py, bind_port.py).
PORT_TAKEN = 75


def free_ports(count):
    """`count` ports on 127.0.0.1 that were free a moment ago (the system's choice for port 0).

    They are released before the workers bind them, so another process can take one in between: the
    workers then exit with PORT_TAKEN and `run_cluster` starts them again on new ports. (Keeping the sockets
    open does not help: TensorFlow's gRPC server binds without SO_REUSEPORT, so it cannot share a port.)
    """
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def start_cluster(program, ports, timeout):
    """Runs one `program` process per port (argv: its index, every port) and waits for all of them.

    As soon as one exits with a failure the others are killed: they would wait for it until `timeout`.

    Returns:
        `[(exit status, stdout, stderr)]`, one per worker.
    """
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}  # CPU workers, whatever the machine has
    # Output goes to files, not pipes: a worker must never block on a full pipe that nobody reads yet.
    files = [(tempfile.TemporaryFile("w+"), tempfile.TemporaryFile("w+")) for _ in ports]
    processes = [subprocess.Popen([sys.executable, str(PROGRAMS / program), str(i), *map(str, ports)],
                                  stdout=out, stderr=err, text=True, env=env)
                 for i, (out, err) in enumerate(files)]  # fmt: skip
    deadline = time.monotonic() + timeout
    try:
        while any(p.poll() is None for p in processes):
            if any(p.poll() not in (None, 0) for p in processes) or time.monotonic() > deadline:
                break
            time.sleep(0.2)
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
            process.wait()
    outputs = []
    for process, (out, err) in zip(processes, files):
        out.seek(0), err.seek(0)
        outputs.append((process.returncode, out.read(), err.read()))
        out.close(), err.close()
    return outputs


def run_cluster(program, attempts=5, first_ports=None, timeout=300):
    """Runs a cluster of two `program` workers on free ports; a port taken before its worker bound it
    (PORT_TAKEN) starts the whole cluster again on new ports, up to `attempts` times.

    Args:
        first_ports: the ports of the first attempt (default: `free_ports(2)`).

    Returns:
        `(outputs, attempts used)`, with `outputs` as `start_cluster` returns them.
    """
    for attempt in range(1, attempts + 1):
        ports = first_ports if attempt == 1 and first_ports else free_ports(2)
        outputs = start_cluster(program, ports, timeout)
        if not any(status == PORT_TAKEN for status, _, _ in outputs):
            return outputs, attempt
    raise AssertionError(f"{attempts} clusters in a row found a port taken: {outputs}")


@pytest.fixture(scope="module")
def workers():
    outputs, _ = run_cluster("multi_worker.py", timeout=300)
    for status, _, err in outputs:
        assert status == 0, err[-4000:]
    return [results_of(out) for _, out, _ in outputs]


def test_a_port_taken_before_the_workers_bind_it_starts_the_cluster_again_on_new_ports():
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]
    try:
        outputs, attempts = run_cluster("bind_port.py", first_ports=[port, free_ports(1)[0]], timeout=60)
    finally:
        taken.close()
    assert attempts == 2
    assert [status for status, _, _ in outputs] == [0, 0], outputs
    bound = [results_of(out)["port"] for _, out, _ in outputs]
    assert port not in bound and len(set(bound)) == 2


@pytest.mark.slow
def test_two_workers_end_with_the_same_masks_ranges_and_weights(workers):
    first, second = workers
    assert first["progress"] == second["progress"] == {"epochs": 2, "steps": 8}
    # The per-step schedule moved on both workers alike, step by step (4 steps per epoch).
    schedule = PolynomialSchedule(0.1, 0.6, 2)
    assert first["levels"] == second["levels"] == pytest.approx([schedule(step / 4) for step in range(8)])
    assert first["masks"].keys() == second["masks"].keys() and first["masks"]
    for key in first["masks"]:
        np.testing.assert_array_equal(first["masks"][key], second["masks"][key], err_msg=key)
    assert first["ranges"].keys() == second["ranges"].keys() and first["ranges"]
    for key in first["ranges"]:
        np.testing.assert_array_equal(first["ranges"][key], second["ranges"][key], err_msg=key)
    for key in first["weights"]:
        np.testing.assert_allclose(first["weights"][key], second["weights"][key], atol=1e-6, err_msg=key)
    np.testing.assert_allclose(first["losses"], second["losses"], rtol=1e-6)
    assert first["figures"] == pytest.approx(second["figures"])
    assert first["figures"]["magnitude_sparsity/sparsity_level"] == pytest.approx(schedule(7 / 4), abs=0.01)
