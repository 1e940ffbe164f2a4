#!/usr/bin/env python3
"""Checks the gateway's gRPC health and reflection with the Python clients others use:
`grpcio-health-checking` (grpc.health.v1 Check: SERVING, overall and for the Signer service)
and `grpcio-reflection` (its ProtoReflectionDescriptorDatabase speaks grpc.reflection.v1alpha:
list services, then resolve hsmgate.signer.v1.Signer and its Sign method), and the same
ServerReflectionInfo call under grpc.reflection.v1 (grpcio-reflection ships only the v1alpha
client; the two protocols' messages are identical, so its messages are sent to the v1 method).
All over mTLS with a client certificate of the dev config.

Usage: grpc_check.py HOST:PORT CA.pem CLIENT.pem CLIENT.key
"""

import sys

import grpc
from google.protobuf import descriptor_pool
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

SIGNER = "hsmgate.signer.v1.Signer"


def main():
    target, ca, cert, key = sys.argv[1:5]
    creds = grpc.ssl_channel_credentials(open(ca, "rb").read(), open(key, "rb").read(), open(cert, "rb").read())
    channel = grpc.secure_channel(target, creds)
    problems = []

    health = health_pb2_grpc.HealthStub(channel)
    for service in ["", SIGNER]:
        status = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=10).status
        name = health_pb2.HealthCheckResponse.ServingStatus.Name(status)
        print(f"health {service or '(server)'}: {name}")
        if name != "SERVING":
            problems.append(f"health {service or '(server)'} is {name}")

    try:
        database = ProtoReflectionDescriptorDatabase(channel)
        services = list(database.get_services())
        print(f"reflection v1alpha (grpcio-reflection): services {services}")
        pool = descriptor_pool.DescriptorPool(database)
        methods = [m.name for m in pool.FindServiceByName(SIGNER).methods]
        print(f"reflection v1alpha: {SIGNER} methods {methods}")
        if SIGNER not in services or "Sign" not in methods:
            problems.append("reflection v1alpha does not describe the Signer service")
    except grpc.RpcError as e:
        problems.append(f"reflection v1alpha: {e.code().name} {e.details()}")

    v1 = channel.stream_stream(
        "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
        request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
        response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
    )
    try:
        replies = list(v1(iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=10))
        services = [s.name for s in replies[0].list_services_response.service]
        print(f"reflection v1: services {services}")
        if SIGNER not in services:
            problems.append("reflection v1 does not list the Signer service")
    except grpc.RpcError as e:
        problems.append(f"reflection v1: {e.code().name} {e.details()}")

    for p in problems:
        print(f"FAIL: {p}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
