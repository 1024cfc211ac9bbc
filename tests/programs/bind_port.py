"""A stand-in for a worker of tests/programs/multi_worker.py that binds its port as TensorFlow's gRPC server does
(no SO_REUSEADDR / SO_REUSEPORT), for the test of the cluster launcher.

Usage: bind_port.py INDEX PORT... Prints `RESULTS {"port": PORT}` once bound; exits with status 75 (PORT_TAKEN)
when the port is in use.
"""

import errno
import json
import socket
import sys

PORT_TAKEN = 75

index, ports = int(sys.argv[1]), [int(port) for port in sys.argv[2:]]
server = socket.socket()
try:
    server.bind(("127.0.0.1", ports[index]))
except OSError as err:
    if err.errno != errno.EADDRINUSE:
        raise
    print(f"PORT TAKEN: 127.0.0.1:{ports[index]} ({err})", file=sys.stderr)
    sys.exit(PORT_TAKEN)
server.listen()
print("RESULTS " + json.dumps({"port": ports[index]}), flush=True)
server.close()
