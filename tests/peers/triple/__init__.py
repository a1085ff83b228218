"""Triple peers (issue 20): independent Triple / gRPC clients and servers for the tests to drive.

* venv.py: ``<repo>/.venv-peers/apache-dubbo``, apache-dubbo's own venv (requirements.txt pins it);
* greeter.py: the Greeter service they all speak (interface, methods, protobuf well-known types);
* ad_server.py, ad_client.py: apache-dubbo (Apache's Python SDK) as provider and consumer;
* grpc_server.py, grpc_client.py: grpcio as provider and consumer of the same service;
* h2_capture.py: an HTTP/2 server that records what a client sends; h2_call.py: a bare HTTP/2 client
  that shows what a server answers;
* procs.py: the above as processes, for tests (tests/test_triple_peers.py runs them against each other).
"""
