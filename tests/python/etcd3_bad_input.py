"""Malformed and hostile input on an agent's etcd endpoint, through Python's grpc and
etcd3: every case gets a clear error and the endpoint keeps serving. Prints "ok".

Usage: etcd3_bad_input.py HOST:PORT
"""

import sys

import etcd3
import grpc


def expect_error(what, call, code, text=None):
    try:
        call()
    except grpc.RpcError as error:
        assert error.code() == code, f"{what}: {error.code()} {error.details()}"
        if text:
            assert text in (error.details() or ""), f"{what}: {error.details()}"
        return
    except etcd3.exceptions.Etcd3Exception as error:
        assert code is None or text is None or text in str(error), f"{what}: {error}"
        return
    raise AssertionError(f"{what}: no error")


def main():
    endpoint = sys.argv[1]
    host, port = endpoint.rsplit(":", 1)
    client = etcd3.client(host=host, port=int(port), timeout=20)
    channel = grpc.insecure_channel(endpoint)
    raw = lambda method: channel.unary_unary(method)  # noqa: E731 - bytes in, bytes out

    # Bytes that are no protobuf message.
    expect_error("garbage Range", lambda: raw("/etcdserverpb.KV/Range")(b"\xff\xff\xff\xff"),
                 grpc.StatusCode.INTERNAL)
    # A method nobody serves.
    expect_error("unknown method", lambda: raw("/etcdserverpb.KV/Explode")(b""),
                 grpc.StatusCode.UNIMPLEMENTED)
    # A key that is not text, an empty key, a value over Corral's 1 MiB.
    expect_error("binary key", lambda: client.put(b"\xff\xfe", "v"), grpc.StatusCode.INVALID_ARGUMENT)
    expect_error("empty key", lambda: client.put("", "v"), grpc.StatusCode.INVALID_ARGUMENT)
    expect_error("huge value", lambda: client.put("big", b"x" * (1024 * 1024 + 1)),
                 grpc.StatusCode.INVALID_ARGUMENT)
    # A request over the endpoint's 2 MiB decode limit.
    expect_error("huge request", lambda: client.put("bigger", b"x" * (3 * 1024 * 1024)),
                 grpc.StatusCode.OUT_OF_RANGE)
    # A lease that does not exist, and what Corral does not do.
    expect_error("foreign lease", lambda: client.put("k", "v", lease=123456789),
                 grpc.StatusCode.NOT_FOUND)
    expect_error("defragment", lambda: client.defragment(), grpc.StatusCode.UNIMPLEMENTED)
    expect_error("auth off", lambda: etcd3.client(host=host, port=int(port), user="u",
                                                  password="p"),
                 grpc.StatusCode.FAILED_PRECONDITION, "authentication is not enabled")

    # Still serving.
    client.put("after", "fine")
    assert client.get("after")[0] == b"fine"
    print("ok")


if __name__ == "__main__":
    main()
